"""What a submit, resume, rollback or from-job will do, job by job, and whether it may.

A plan is computed from the run's folders and the workflow alone and writes nothing, so
``--dry-run`` is just a plan printed. Each job gets one step: ``run``, ``skip``,
``blocked`` or ``remove``, with the reason, and where its file goes (``dst``; None leaves
the file alone). Checks that fail (definition changes of done jobs without ``--force``,
live claims, unreadable job files) refuse the whole change.
"""

from __future__ import annotations

import difflib
import graphlib
import os
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from ..protocol import attempts, fence
from ..protocol.attempts import DEFINITION_FIELDS
from ..errors import Refused, RunBusy, WorkflowError, WorkflowErrors
from ..protocol.layout import STAGE_SEP, STATES, PoolLayout, RunLayout, split_running_name
from ..liveness.reap import judge_now, judge_private_now
from ..protocol.rebuild import known_jobs
from ..protocol.scrub import read_checked
from ..protocol.snapshot import snapshot
from .coord import interrupted_change
from ..protocol.store import SPEC_DEFAULTS, new_chunk_record, new_job_record, read_run_record
from ..protocol.units import Chunk, parse_unit, unit_name
from .arrays import ArrayPlan, missing_outputs, new_units, unit_pieces
from .plantext import step_lines
from ..workflow.arrays import chunk_size, chunks
from ..workflow import JobSpec, Workflow

Build = Callable[[dict[str, Any] | None], dict[str, Any]]


@dataclass(frozen=True)
class Options:
    failed_only: bool = False
    no_retry_failed: bool = False
    force: bool = False
    from_jobs: tuple[str, ...] = ()
    rollback_to: tuple[str, ...] = ()
    stale_after: float = 60.0
    backend: str | None = None  # "slurm": the run's jobs go to Slurm, one Slurm job each
    priority: int | None = None  # the run's, over every job's (exec-submit --priority); None: keep

    @property
    def why(self) -> str:
        return "rollback" if self.rollback_to else "from-job" if self.from_jobs else "resume"

    def flags(self) -> dict[str, Any]:
        return {"failed_only": self.failed_only, "no_retry_failed": self.no_retry_failed,
                "force": self.force, "from_job": list(self.from_jobs), "rollback_to": list(self.rollback_to),
                "backend": self.backend, **({} if self.priority is None else {"priority": self.priority})}


@dataclass
class Current:
    """A job's file as it is now."""

    state: str
    record: dict[str, Any] | None  # None: unreadable
    token: str | None = None  # for running/
    live: str | None = None  # running/: why its claim is live (None: stale)
    stale: str | None = None  # running/: why its claim is stale
    private: str | None = None  # running/: the private folder it is in (being taken out of running/)
    problem: str | None = None  # why the file cannot be used, when record is None


@dataclass
class Step:
    job: str
    action: str  # run | skip | blocked | remove
    reason: str
    src: str | None  # state now; None for an added job
    dst: str | None = None  # state after; None: the file is left as it is
    build: Build | None = None  # new content from the content found when grabbed
    take: str | None = None  # running/: take the claim back first, with this reason
    token: str | None = None
    private: str | None = None  # ... out of this private folder (see executioner.protocol.fence)
    held: bool = False  # the new content keeps it waiting (--failed-only)
    # a chunk split into pieces (dst "pieces"): [(state, unit, record)] from the content grabbed
    pieces: Callable[[dict[str, Any] | None], list[tuple[str, str, dict[str, Any]]]] | None = None
    stays: bool = False  # the job is left as it is, or its file would be rewritten to mean the same

    def row(self) -> dict[str, Any]:
        return {"job": self.job, "action": self.action, "reason": self.reason,
                "from": self.src, "to": self.dst}


@dataclass
class Plan:
    run_id: str
    attempt: int
    why: str
    options: Options
    workflow: Workflow
    steps: list[Step] = field(default_factory=list)
    changes: list[dict[str, Any]] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)
    backend_before: str = "workers"  # the run's backend now
    order: list[str] = field(default_factory=list)  # the workflow's jobs, each after those it needs
    limits_before: dict[str, Any] = field(default_factory=dict)  # the run's limits now (run.json)

    @property
    def refused(self) -> bool:
        return any(not c["ok"] for c in self.checks)

    @property
    def nothing_to_do(self) -> bool:
        """A resume that would move no job and accept no change: it writes nothing, not even
        its attempt record (four resumes racing must not leave three ghost attempts). Never
        for the Slurm-DAG backend, whose resume also resubmits Slurm jobs cancelled meanwhile,
        nor with ``--priority`` or changed ``limits`` (run.json and limits/ change)."""
        backend = self.options.backend or self.backend_before
        return (self.attempt > 1 and all(s.stays for s in self.steps) and not self.changes
                and backend == self.backend_before == "workers" and self.options.priority is None
                and dict(self.workflow.limits) == self.limits_before)

    def idle_text(self) -> str:
        """What a resume with nothing to do says."""
        srcs = [s.src for s in self.steps]
        if all(src == "done" for src in srcs):
            return "nothing to do: the run is done"
        blocked = sum(1 for s in self.steps if s.action == "blocked")
        held = sum(1 for s in self.steps if s.held)
        waiting = srcs.count("waiting") - blocked - held
        queued, running, failed = srcs.count("queued"), srcs.count("running"), srcs.count("failed")
        if queued or running or waiting:
            extra = "".join(f", {n} {what}" for n, what in ((waiting, "waiting"), (failed, "failed")) if n)
            return (f"nothing to do: attempt {self.attempt - 1} is in progress ({queued} queued, {running} running"
                    f"{extra})")
        left = ", ".join(f"{n} {what}" for n, what in ((failed, "failed"), (blocked, "blocked"), (held, "held")) if n)
        return f"nothing to do: attempt {self.attempt - 1} has stopped ({left})"

    def check(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append({"check": name, "ok": ok, "detail": detail})

    def text(self, verbose: bool = False) -> str:
        """What the plan does: a few lines per kind of move (see coordinator.plantext), or
        with ``verbose`` a line per job; an array's chunks left as they are: one line."""
        arrays = {j.id: len(j.tasks) for j in self.workflow.jobs if j.tasks is not None}
        rows: list[tuple[str, str, str, str | None, str | None]] = []
        skipped: dict[str, list[int]] = {}  # array -> [files, tasks] left as they are
        for s in self.steps:
            chunk = parse_unit(s.job, arrays) if arrays else None
            if chunk is not None and s.action == "skip" and s.dst is None:
                counts = skipped.setdefault(chunk.job, [0, 0])
                counts[0] += 1
                counts[1] += len(chunk)
                continue
            rows.append((s.action, s.job, s.reason, s.src, s.dst))
        for job, (files, tasks) in skipped.items():  # an array's untouched chunks: one line
            rows.append(("skip", job, f"{tasks} task(s) in {files} chunk file(s) left as they are", "array", None))
        lines = [f"attempt {self.attempt} of run {self.run_id} ({self.why}):"]
        lines += step_lines(rows, verbose)
        if self.changes:
            lines.append("changes since the last attempt:")
            lines += [f"  {_change_text(c)}" for c in self.changes]
        lines.append("checks:")
        lines += [f"  {'ok  ' if c['ok'] else 'FAIL'} {c['check']}: {c['detail']}" for c in self.checks]
        return "\n".join(lines)


def _change_text(c: dict[str, Any]) -> str:
    if c["field"] == "job":
        return f"{c['job']}: {c['new']}" + ("" if c["new"] == "added" else " (needs --force)" * c["needs_force"])
    tag = " (needs --force)" if c["needs_force"] else ""
    return f"{c['job']}: {c['field']}: {_short(c['old'])} -> {_short(c['new'])}{tag}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ---- reading the run ---------------------------------------------------------------------
def read_current(pool: PoolLayout, run: RunLayout, stale_after: float, now: float,
                 known: set[str] | None = None) -> dict[str, Current]:
    """Every job of the run, where it is and what it holds; running claims judged live or not.

    A job caught moving (listed, then gone when read; or a job the run knows, seen nowhere)
    makes us look again: a job missed here would be planned as new and placed a second time.
    """
    expected = 0
    try:
        expected = int(read_run_record(run).get("jobs", 0))
    except (OSError, ValueError):
        pass
    out = None
    for _ in range(20):
        out = _read_once(pool, run, stale_after, now, expected)
        if out is not None and not (known or set()) - set(out):
            return out
        time.sleep(0.05)
    from .coord import busy_message

    busy = busy_message(run)
    if busy:
        raise RunBusy(busy, run.run_id)
    if out is None:
        raise Refused(f"run {run.run_id} kept changing while it was read; try again", run.run_id)
    return out  # a known job missing for a whole second: gone (quarantined, deleted); the plan says so


def _read_once(pool: PoolLayout, run: RunLayout, stale_after: float, now: float,
               expected: int) -> dict[str, Current] | None:
    out = {}
    for job_id, (state, path) in snapshot(run, expected).items():
        try:
            record, problem = read_checked(path, job_id)
        except FileNotFoundError:
            return None
        cur = Current(state, record, problem=problem)
        if state == "running":
            parts = split_running_name(os.path.basename(path))
            private = None if parts else fence.Private.parse(run, os.path.basename(os.path.dirname(path)))
            cur.token = parts[1] if parts else private.token if private else ""
            cur.private = private.name if private else None
            if record is not None:
                try:
                    if private is not None:
                        verdict = judge_private_now(private, stale_after, now)
                    else:
                        verdict, _ = judge_now(pool, run, job_id, cur.token, record, stale_after, now)
                except FileNotFoundError:
                    return None
                if verdict.stale:
                    cur.stale = verdict.reason
                else:
                    cur.live = verdict.reason
        out[job_id] = cur
    if interrupted_change(run):
        out.update(_settled(run, out))
    return out


def _settled(run: RunLayout, seen: dict[str, Current]) -> dict[str, Current]:
    """Jobs crashed coordinators left in .coord/, where the next one will put them (it
    finishes a committed change and undoes any other), so a dry run shows the truth."""
    out = {}
    for stage in sorted(os.listdir(run.staging_root)) if os.path.isdir(run.staging_root) else []:
        committed = os.path.exists(run.staging_commit(stage))
        folder = os.path.join(run.staging(stage), "new") if committed else run.staging(stage)
        for name in os.listdir(folder) if os.path.isdir(folder) else []:
            state, sep, rest = name.partition(STAGE_SEP)
            job_id = rest[: -len(".json")] if rest.endswith(".json") else ""
            if sep and job_id and state in STATES and job_id not in seen:
                try:
                    record, problem = read_checked(os.path.join(folder, name), job_id)
                except FileNotFoundError:
                    continue
                out[job_id] = Current(state, record, problem=problem)
    return out


def workflow_for_resume(run: RunLayout, path: str | None) -> Workflow:
    """The workflow given, or the copy the run's last attempt used (with the run's workdir)."""
    from dataclasses import replace

    from ..workflow import load_workflow

    if path:
        return load_workflow(path)
    number = attempts.current(run)
    copy = attempts.workflow_of(run, number)
    if copy is None:
        raise WorkflowErrors([WorkflowError("the run has no copy of its workflow; pass the file", run.root)])
    record = read_run_record(run)
    workflow = load_workflow(copy, recorded=False, inputs=lambda job, _src: run.attempt_lines(number, job))
    return replace(workflow, workdir=record["workdir"], path=record.get("source") or copy)


# ---- planning ----------------------------------------------------------------------------
def plan_resume(pool: PoolLayout, run: RunLayout, workflow: Workflow, options: Options,
                now: float | None = None) -> Plan:
    now = time.time() if now is None else now
    record = read_run_record(run)
    known = known_jobs(run)
    current = read_current(pool, run, options.stale_after, now, known)
    return make_plan(run.run_id, attempts.current(run) + 1, workflow, current, options,
                     run_level={"env": record.get("env"), "workdir": record.get("workdir"),
                                "backend": record.get("backend") or "workers", "arrays": record.get("arrays") or {}},
                     missing=known - set(current))


def make_plan(run_id: str, attempt: int, workflow: Workflow, current: dict[str, Current],
              options: Options, run_level: dict[str, Any] | None = None,
              missing: set[str] | None = None) -> Plan:
    """The plan for attempt ``attempt``; ``current`` is empty for a new run. ``missing``: jobs
    the run had whose files are gone (quarantined as broken, or deleted by hand)."""
    missing = missing or set()
    specs = {s.id: s for s in workflow.jobs}
    check_options(workflow, options, run_level, specs)
    task_rollbacks = [n for n in options.rollback_to if n not in specs]  # sim:4 (checked above)
    options_jobs = replace(options, rollback_to=tuple(n for n in options.rollback_to if n in specs))
    old_sizes = dict((run_level or {}).get("arrays") or {})
    units, current = _split_units(current, old_sizes)
    why = options.why if (current or units) else ("from-job" if options.from_jobs else "submit")
    plan = Plan(run_id, attempt, why, options, workflow,
                backend_before=str((run_level or {}).get("backend") or "workers"),
                limits_before=dict((run_level or {}).get("limits") or {}) if run_level else dict(workflow.limits))
    dependents = workflow.dependents()
    order = static_order({s.id: s.dependencies for s in workflow.jobs})
    plan.order = order

    def descendants(roots: set[str]) -> set[str]:
        seen, todo = set(roots), list(roots)
        while todo:
            for d in dependents[todo.pop()]:
                if d not in seen:
                    seen.add(d)
                    todo.append(d)
        return seen

    def ancestors(roots: set[str]) -> set[str]:
        seen: set[str] = set()
        todo = [d for r in roots for d in specs[r].dependencies]
        while todo:
            j = todo.pop()
            if j not in seen:
                seen.add(j)
                todo.extend(specs[j].dependencies)
        return seen

    options, all_options = options_jobs, options
    _diff(plan, specs, current, run_level, workflow)
    _diff_arrays(plan, specs, units, old_sizes)
    changed: dict[str, list[str]] = {c["job"]: [] for c in plan.changes}
    for c in plan.changes:
        if c["field"] in DEFINITION_FIELDS:
            changed[c["job"]].append(c["field"])
    run_level_changed = [c["field"] for c in plan.changes if c["job"] == "*"]

    # Jobs that run again although done, and why; then everything downstream of them.
    rerun: dict[str, str] = {}
    for j in order:
        cur = current.get(j)
        if specs[j].is_array:
            why_all = _array_rerun(j, specs[j], units.get(j, []), options, changed, run_level_changed,
                                   bool(current or units))
            if why_all:
                rerun[j] = why_all
            continue
        if j in options.rollback_to:
            rerun[j] = f"rolled back (--rollback-to {j})"
        elif j in options.from_jobs and current:
            rerun[j] = f"runs from here (--from-job {j})"
        elif cur is None or cur.state != "done" or cur.record is None or options.failed_only:
            continue  # (--failed-only: only failed jobs run again, whatever else changed)
        elif (changed.get(j) or run_level_changed) and options.force:
            rerun[j] = "definition changed: " + ", ".join(changed.get(j) or run_level_changed)
        elif gone := _missing_outputs(workflow, specs[j]):
            rerun[j] = "outputs missing: " + ", ".join(gone)
        elif specs[j].always_rerun:
            rerun[j] = "always_rerun"
    # One task rolled back (sim:4): task 4 of what depends on it task by task, all of what
    # needs the whole array (and everything downstream of that).
    task_rerun: dict[str, dict[int, str]] = {}
    for name in task_rollbacks:
        job, _, index = name.partition(":")
        position = specs[job].tasks.position(int(index))  # type: ignore[union-attr]
        task_rerun.setdefault(job, {})[position] = f"rolled back (--rollback-to {name})"
    for j in order:
        for d in specs[j].dependencies:
            if d in task_rerun and j not in rerun:
                if d in specs[j].elementwise:
                    for p in task_rerun[d]:
                        task_rerun.setdefault(j, {}).setdefault(p, f"downstream of {specs[d].id}:{specs[d].tasks.index(p)}")  # type: ignore[union-attr]
                else:
                    rerun.setdefault(j, f"downstream of {d} (a task rolled back)")
    for root in list(rerun):
        for d in descendants({root}) - {root}:
            rerun.setdefault(d, f"downstream of {root}")
    skipped = ancestors(set(options.from_jobs)) - descendants(set(options.from_jobs))
    clash = sorted(set(options.rollback_to) & skipped)
    if clash:
        raise WorkflowErrors([WorkflowError(
            f"--rollback-to {j} asks to run it again, but --from-job {', '.join(options.from_jobs)} assumes it "
            "done (it is upstream); give one or the other", workflow.path, j, "--rollback-to") for j in clash])

    final_done: set[str] = set()
    failed_upstream: dict[str, str] = {}
    live: list[str] = []
    for j in order:
        spec, cur = specs[j], current.get(j)
        state = cur.state if cur else None
        record = cur.record if cur else None
        if cur is not None and record is None:
            plan.steps.append(Step(j, "skip", "job file unreadable", state))
            continue
        if spec.is_array:
            if not (current or units):
                skip = f"assumed done (--from-job {', '.join(options.from_jobs)})" if j in skipped else None
                plan.steps += _chunk_steps(spec, run_id, attempt, dependents[j], skip)
                continue
            ap = ArrayPlan(spec, rerun_all=rerun.get(j), rerun=task_rerun.get(j, {}),
                           skipped=(f"assumed done (--from-job {', '.join(options.from_jobs)})" if j in skipped else None))
            if not ap.rerun_all and not ap.skipped and not options.failed_only:
                done_here = [p for c, cur in units.get(j, []) if cur.state == "done" and c.hi < ap.size
                             for p in range(c.lo, c.hi + 1)]
                for p, gone in missing_outputs(workflow, spec, done_here).items():
                    ap.rerun.setdefault(p, f"outputs missing: {gone}")
            plan.steps += _array_steps(ap, units.get(j, []), all_options, attempt, run_id, dependents[j], plan.why,
                                       live, old_sizes.get(j))
            continue
        step = _step(j, spec, cur, rerun, skipped, options, failed_upstream, final_done, attempt,
                     dependents, run_id)
        _mind_claim(step, cur, plan.why, live)
        plan.steps.append(step)
        if step.dst == "done" or (step.dst is None and state == "done"):
            final_done.add(j)
    for j in sorted(set(units) - {s for s in specs if specs[s].is_array}):
        for chunk, cur in units[j]:
            step = Step(chunk.unit, "remove", "not in the workflow any more: kept under removed/", cur.state,
                        dst="removed", build=lambda r: r or {})
            _mind_claim(step, cur, plan.why, live, " (job removed)")
            plan.steps.append(step)
    for j in sorted(set(current) - set(specs)):
        cur = current[j]
        step = Step(j, "remove", "not in the workflow any more: kept under removed/", cur.state,
                    dst="removed", build=lambda r: r or {})
        _mind_claim(step, cur, plan.why, live, " (job removed)")
        plan.steps.append(step)
    for step in plan.steps:
        if step.job in missing and step.src is None:
            step.reason = "recreated from the workflow (its file was missing)"
            step.build = _with_lost_try(step.build, attempt)
    for change in plan.changes:
        if change["job"] in missing and change["new"] == "added":
            change["old"], change["new"] = "missing", "recreated"
    _checks(plan, current, live, options, missing)
    backend = options.backend or plan.backend_before
    if live and all(s.stays for s in plan.steps) and not plan.changes and backend == plan.backend_before:
        # live claims are only left running (nothing to do, or only run.json changes: the
        # run's priority, its limits): nothing to refuse
        for c in plan.checks:
            if c["check"] == "claims":
                c["ok"], c["detail"] = True, "left running: " + "; ".join(live)
    return plan


def _split_units(current: dict[str, Current], sizes: dict[str, int]
                 ) -> tuple[dict[str, list[tuple[Chunk, Current]]], dict[str, Current]]:
    """The chunk files of the run's arrays (by array) apart from its plain jobs."""
    units: dict[str, list[tuple[Chunk, Current]]] = {}
    plain = {}
    for name, cur in current.items():
        chunk = parse_unit(name, sizes) if sizes else None
        if chunk is None:
            plain[name] = cur
        else:
            units.setdefault(chunk.job, []).append((chunk, cur))
    for found in units.values():
        found.sort(key=lambda u: u[0].lo)
    return units, plain


def _array_rerun(j: str, spec: JobSpec, found: list[tuple[Chunk, Current]], options: Options,
                 changed: dict[str, list[str]], run_level_changed: list[str], resuming: bool) -> str | None:
    """Why every task of array ``j`` runs again, if they all do."""
    if j in options.rollback_to:
        return f"rolled back (--rollback-to {j})"
    if j in options.from_jobs and resuming:
        return f"runs from here (--from-job {j})"
    if options.failed_only or not any(cur.state == "done" for _, cur in found):
        return None
    if (changed.get(j) or run_level_changed) and options.force:
        return "definition changed: " + ", ".join(changed.get(j) or run_level_changed)
    if spec.always_rerun:
        return "always_rerun"
    return None


def _array_steps(ap: ArrayPlan, found: list[tuple[Chunk, Current]], options: Options, attempt: int, run_id: str,
                 dependents: list[str], why: str, live: list[str], old_size: int | None) -> list[Step]:
    """One step per chunk file of the array now (left, rewritten, or split into pieces), and
    new chunks for tasks no file holds."""
    steps = []
    for chunk, cur in found:
        if cur.record is None:
            steps.append(Step(chunk.unit, "skip", "job file unreadable", cur.state))
            continue
        if cur.state == "running":
            if cur.live and not options.force:
                live.append(f"chunk {chunk.unit} is {cur.live}")
                steps.append(Step(chunk.unit, "run", f"{cur.live}; left running", cur.state))
                continue
            step = Step(chunk.unit, "run", cur.stale and "stale claim: requeued" or "taken back", cur.state,
                        dst="queued", build=_requeued(ap, chunk, attempt, run_id, dependents))
            _mind_claim(step, cur, why, live)
            steps.append(step)
            continue
        if chunk.lo >= ap.size:  # the array shrank: past its end now
            steps.append(Step(chunk.unit, "remove", "past the array's end now: kept under removed/", cur.state,
                              dst="removed", build=lambda r: r or {}))
            continue
        groups, build = unit_pieces(ap, chunk, cur.state, options, attempt, run_id, dependents, None)
        if len(groups) == 1 and groups[0][2] == cur.state == "done" and not groups[0][4]:
            steps.append(Step(chunk.unit, "skip", _done_in(cur.record), cur.state))
            continue
        if len(groups) == 1 and groups[0][2] == cur.state == "failed":
            steps.append(Step(chunk.unit, "skip", groups[0][5], cur.state))
            continue
        reason = "; ".join(f"{unit_name(ap.spec.id, lo, hi)} -> {dst}: {w}" for lo, hi, dst, _, _, w in groups)
        action = "run" if any(g[2] in ("queued", "waiting") and not g[3] for g in groups) else "skip"
        if len(groups) == 1:
            lo, hi, dst, held, skip, w = groups[0]
            step = Step(chunk.unit, action, w, cur.state, dst=dst, build=lambda r, b=build: b(r)[0][2],
                        held=held)
            step.stays = (dst == cur.state and bool(cur.record.get("held")) == held and not skip
                          and not cur.record.get("skipped"))
        else:
            step = Step(chunk.unit, action, reason, cur.state, dst="pieces", build=None, pieces=build)
        steps.append(step)
    have = [c for c, _ in found]
    for unit, chunk in new_units(ap.spec, have, run_id, attempt, dependents):
        dst = "waiting" if ap.spec.dependencies else "queued"
        grown = old_size is not None and chunk.lo >= old_size
        build = (lambda c: lambda _f: new_chunk_record(run_id, ap.spec, c.lo, c.hi, dependents, attempt))(chunk)
        steps.append(Step(unit, "run", "added (the array grew)" if grown else "recreated (its tasks were in no file)",
                          None, dst, build if grown else _with_lost_try(build, attempt)))
    return steps


def _requeued(ap: ArrayPlan, chunk: Chunk, attempt: int, run_id: str, dependents: list[str]) -> Build:
    def make(found: dict[str, Any] | None) -> dict[str, Any]:
        record = new_chunk_record(run_id, ap.spec, chunk.lo, min(chunk.hi, ap.size - 1), dependents, attempt)
        if found is not None:
            record["tries"] = found.get("tries", [])
        return record
    return make


def _diff_arrays(plan: Plan, specs: dict[str, JobSpec], units: dict[str, list[tuple[Chunk, Current]]],
                 old_sizes: dict[str, int]) -> None:
    """Changes of each array's definition (one chunk file holds it) and of its size."""
    for j, found in sorted(units.items()):
        spec = specs.get(j)
        record = next((cur.record for _, cur in found if cur.record is not None), None)
        if spec is None or record is None:
            continue
        any_done = any(cur.state == "done" for _, cur in found)
        stored = record["spec"]
        old = {**SPEC_DEFAULTS, **stored, "dependencies": sorted(record["dependencies"])}
        new = {**spec.to_spec(), "dependencies": sorted(spec.dependencies)}
        for key in new:
            a, b = old.get(key), new[key]
            if key == "tasks" and isinstance(a, dict) and isinstance(b, dict):
                a = {k: v for k, v in a.items() if k not in ("count", "chunk")}
                b = {k: v for k, v in b.items() if k not in ("count", "chunk")}
                if a == b and old_sizes.get(j) != len(spec.tasks or ()):
                    shrink = len(spec.tasks or ()) < old_sizes.get(j, 0)
                    plan.changes.append({"job": j, "field": "tasks", "old": old_sizes.get(j),
                                         "new": len(spec.tasks or ()), "needs_force": shrink and any_done})
                    continue
            if a != b:
                plan.changes.append({"job": j, "field": key, "old": a, "new": b,
                                     "needs_force": any_done and key in (*DEFINITION_FIELDS, "tasks", "elementwise")})


def _chunk_steps(spec: JobSpec, run_id: str, attempt: int, dependents: list[str],
                 skip: str | None = None) -> list[Step]:
    """A new array: one step per chunk (see executioner.protocol.units), queued if it needs
    nothing, else waiting (a worker's promotion queues it when its upstream is done); or
    done without running, when ``skip`` says why (upstream of --from-job)."""
    assert spec.tasks is not None
    size = chunk_size(len(spec.tasks), spec.tasks.chunk)
    dst = "done" if skip else "waiting" if spec.dependencies else "queued"
    steps = []
    for lo, hi in chunks(len(spec.tasks), size):
        def build(_found: dict[str, Any] | None, lo: int = lo, hi: int = hi) -> dict[str, Any]:
            record = new_chunk_record(run_id, spec, lo, hi, dependents, attempt)
            if skip:
                record["skipped"] = {"reason": skip, "attempt": attempt}
            return record
        steps.append(Step(unit_name(spec.id, lo, hi), "skip" if skip else "run", skip or "new", None, dst, build))
    return steps


def _mind_claim(step: Step, cur: Current | None, why: str, live: list[str], note: str = "") -> None:
    """A step on a job in running/: a live claim is noted (it refuses without --force), and if
    the step moves the job, its claim is taken back first (stale, or live with --force)."""
    if cur is None or cur.state != "running":
        return
    if cur.live:
        live.append(f"job {step.job} is {cur.live}")
    if step.dst is not None:
        step.token = cur.token
        step.private = cur.private
        step.take = (f"taken back by exec-submit --{why} --force{note}" if cur.live
                     else f"stale claim requeued by exec-submit --{why}: {cur.stale}")


def static_order(needs: dict[str, tuple[str, ...]]) -> list[str]:
    """``graphlib.TopologicalSorter(needs).static_order()``, in the very same order (the plan's
    steps, its text and its attempt record keep theirs), without graphlib's search for a
    cycle on every call: validation has refused cycles already. Twice as fast at 100,000
    jobs; a cycle all the same is left to graphlib, which raises CycleError."""
    waits: dict[str, int] = {}
    dependents: dict[str, list[str]] = {}
    for job, deps in needs.items():  # nodes in the order graphlib first meets them
        if job not in waits:
            waits[job], dependents[job] = 0, []
        for d in deps:
            if d not in waits:
                waits[d], dependents[d] = 0, []
            waits[job] += 1
            dependents[d].append(job)
    ready = [j for j, n in waits.items() if n == 0]
    order: list[str] = []
    while ready:  # graphlib hands out every ready node, then marks them done in that order
        order += ready
        after: list[str] = []
        for j in ready:
            for k in dependents[j]:
                waits[k] -= 1
                if waits[k] == 0:
                    after.append(k)
        ready = after
    if len(order) != len(waits):
        return list(graphlib.TopologicalSorter(needs).static_order())  # raises CycleError
    return order


def check_options(workflow: Workflow, options: Options, run_level: dict[str, Any] | None = None,
                  specs: dict[str, JobSpec] | None = None) -> None:
    """What make_plan refuses before it plans anything: the options against the workflow
    (a submit checks this before it writes anything, then plans once)."""
    specs = specs if specs is not None else {s.id: s for s in workflow.jobs}
    _check_names(workflow, specs, options)


def _check_names(workflow: Workflow, specs: dict[str, JobSpec], options: Options) -> None:
    errors = []
    for flag, names in (("--from-job", options.from_jobs), ("--rollback-to", options.rollback_to)):
        for name in names:
            job, sep, index = name.partition(":")
            if sep and job in specs and flag == "--rollback-to":  # one task of an array: sim:4
                tasks = specs[job].tasks
                # Named by the option, not by a workflow file and key: on a resume the user
                # may have passed no file at all (the run's own copy is used).
                if tasks is None:
                    errors.append(WorkflowError(f"{flag} {name}: {job!r} is not an array: roll back the job itself"))
                elif not index.lstrip("-").isdigit() or tasks.position(int(index)) is None:
                    errors.append(WorkflowError(f"{flag} {name}: no task {name!r} (its tasks are {job}:{tasks.index(0)}"
                                                f" to {job}:{tasks.index(len(tasks) - 1)})"))
                continue
            if name not in specs:
                close = difflib.get_close_matches(name, list(specs), n=3)
                hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
                errors.append(WorkflowError(f"{flag} {name}: no job {name!r} in the workflow{hint}"))
    if errors:
        raise WorkflowErrors(errors)


def _diff(plan: Plan, specs: dict[str, JobSpec], current: dict[str, Current],
          run_level: dict[str, Any] | None, workflow: Workflow) -> None:
    any_done = any(c.state == "done" for c in current.values())
    for key in ("env", "workdir"):
        if run_level is not None and run_level.get(key) != getattr(workflow, key):
            plan.changes.append({"job": "*", "field": key, "old": run_level.get(key),
                                 "new": getattr(workflow, key), "needs_force": any_done})
    for j in sorted(set(current) | set(specs)):
        cur, spec = current.get(j), specs.get(j)
        if spec is not None and spec.is_array:
            continue  # see _diff_arrays
        if spec is None:
            plan.changes.append({"job": j, "field": "job", "old": "present", "new": "removed",
                                 "needs_force": True})
            continue
        if cur is None:
            if current:
                plan.changes.append({"job": j, "field": "job", "old": None, "new": "added",
                                     "needs_force": False})
            continue
        if cur.record is None:
            continue
        old = {**SPEC_DEFAULTS, **cur.record["spec"], "dependencies": sorted(cur.record["dependencies"])}
        new = {**spec.to_spec(), "dependencies": sorted(spec.dependencies)}
        for key in new:
            if old.get(key) != new[key]:
                plan.changes.append({"job": j, "field": key, "old": old.get(key), "new": new[key],
                                     "needs_force": cur.state == "done" and key in DEFINITION_FIELDS})


def _with_lost_try(build: Build | None, attempt: int) -> Build:
    """A job recreated because its file was gone keeps a ``lost`` try saying so (and
    max_lost counts it); its earlier tries went with its file."""
    from ..protocol.store import try_record

    assert build is not None

    def make(found: dict[str, Any] | None) -> dict[str, Any]:
        record = build(found)
        if found is None:
            record["tries"] = [try_record(1, attempt, "lost", start=None, end=time.time(), worker=None, host=None,
                                          worker_pid=None, reason="its file was in no state folder (quarantined, "
                                          "or deleted); recreated from the workflow by exec-submit --resume")]
        return record
    return make


def _missing_outputs(workflow: Workflow, spec: JobSpec) -> list[str]:
    cwd = os.path.normpath(os.path.join(workflow.workdir, spec.workdir or ""))
    return [o for o in spec.outputs if not os.path.exists(os.path.join(cwd, o))]


def _done_in(record: dict[str, Any]) -> str:
    if record.get("skipped"):
        return str(record["skipped"].get("reason", "skipped"))
    tries = record.get("tries") or [{}]
    return f"done in attempt {tries[-1].get('attempt', 1)}"


def _step(j: str, spec: JobSpec, cur: Current | None, rerun: dict[str, str], skipped: set[str],
          options: Options, failed_upstream: dict[str, str], final_done: set[str], attempt: int,
          dependents: dict[str, list[str]], run_id: str) -> Step:
    """One job's step; jobs come in dependency order, so ``final_done`` holds its upstream.
    Marked ``stays`` when the job is left where it is as it is: done and skipped, failed and
    not retried, running and left running, or a queued or waiting job whose file would be
    rewritten into the same folder, neither held nor released (a change of its definition
    is in ``plan.changes``)."""
    step = _choose(j, spec, cur, rerun, skipped, options, failed_upstream, final_done, attempt, dependents, run_id)
    if cur is not None and cur.record is not None:
        step.stays = step.dst is None or (step.dst == cur.state and bool(cur.record.get("held")) == step.held
                                          and not cur.record.get("skipped"))
    return step


def _choose(j: str, spec: JobSpec, cur: Current | None, rerun: dict[str, str], skipped: set[str],
            options: Options, failed_upstream: dict[str, str], final_done: set[str], attempt: int,
            dependents: dict[str, list[str]], run_id: str) -> Step:
    state = cur.state if cur else None
    record = cur.record if cur else None
    ready = final_done.issuperset(spec.dependencies)

    def build(held: bool = False, skip: str | None = None) -> Build:
        def make(found: dict[str, Any] | None) -> dict[str, Any]:
            new = new_job_record(run_id, spec, dependents[j], attempt)
            if found is not None:
                new["tries"] = found.get("tries", [])
                new["last_exit_code"] = found.get("last_exit_code")
                if found.get("slurm"):
                    new["slurm"] = found["slurm"]  # a Slurm job still pending for it is reused
            new["held"] = held
            new["skipped"] = {"reason": skip, "attempt": attempt} if skip else None
            return new
        return make

    if j in skipped:
        if state == "done":
            return Step(j, "skip", _done_in(record or {}), state)
        why = f"assumed done (--from-job {', '.join(options.from_jobs)})"
        return Step(j, "skip", why, state, dst="done", build=build(skip=why))
    if j in rerun:
        return Step(j, "run", rerun[j], state, "queued" if ready else "waiting", build())
    if state is None:
        return Step(j, "run", "added" if cur is None and attempt > 1 else "new", None,
                    "queued" if ready else "waiting", build())
    assert record is not None
    if state == "done":
        return Step(j, "skip", _done_in(record), state)
    blocker = next((failed_upstream[d] for d in spec.dependencies if d in failed_upstream), None)
    if state == "failed":
        if options.no_retry_failed:
            failed_upstream[j] = j
            return Step(j, "skip", "failed, not retried (--no-retry-failed)", state)
        tries = record.get("tries") or [{}]
        why = f"failed in attempt {tries[-1].get('attempt', 1)}: requeued"
        if blocker:  # its own upstream stays failed: it cannot run anyway
            failed_upstream[j] = blocker
            return Step(j, "blocked", f"upstream failed: {blocker}", state, "waiting", build())
        return Step(j, "run", why, state, "queued" if ready else "waiting", build())
    if blocker:
        failed_upstream[j] = blocker
        return Step(j, "blocked", f"upstream failed: {blocker}", state, "waiting", build())
    if state == "running":
        if cur and cur.live:
            return Step(j, "run", f"{cur.live}; left running", state)
        return Step(j, "run", "stale claim: requeued", state, "queued" if ready else "waiting", build())
    if options.failed_only:
        return Step(j, "skip", "held until a plain resume (--failed-only)", state, "waiting", build(held=True),
                    held=True)
    why = "waiting for its dependencies" if not ready else "never ran" if not record["tries"] else "queued"
    return Step(j, "run", why, state, "queued" if ready else "waiting", build())


def _checks(plan: Plan, current: dict[str, Current], live: list[str], options: Options,
            missing: set[str]) -> None:
    unreadable = [f"{j} ({c.problem})" if c.problem else j for j, c in sorted(current.items()) if c.record is None]
    problems = [f"unreadable: {', '.join(unreadable)}"] if unreadable else []
    plan.check("job files readable", not problems,
               "; ".join(problems) or ("all readable" if not missing else
                                       f"recreating from the workflow, with a lost try: {', '.join(sorted(missing))} "
                                       "(in no state folder: see quarantine/)"))
    forced = [c for c in plan.changes if c["needs_force"]]
    if not forced:
        plan.check("definitions", True, f"{len(plan.changes)} change(s), none needs --force")
    elif options.force:
        plan.check("definitions", True, f"{len(forced)} change(s) accepted with --force")
    else:
        plan.check("definitions", False, f"{len(forced)} change(s) to done or removed jobs need --force: "
                   + "; ".join(_change_text(c) for c in forced))
    if not live:
        plan.check("claims", True, "no live claims")
    elif options.force:
        plan.check("claims", True, f"--force: {'; '.join(live)}")
    else:
        plan.check("claims", False, "; ".join(f"{x}; wait, or use --force" for x in live))
