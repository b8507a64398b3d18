"""What a run or a pool looks like right now, computed from the folders alone."""

from __future__ import annotations

import graphlib
import os
import time
from dataclasses import dataclass
from typing import Any

from ..coordinator.coord import describe, holder, interrupted_change, is_stopped, since_text
from ..errors import CorruptFileError, PoolError
from ..liveness.watch import Watch
from ..protocol import fsio
from ..protocol.layout import PoolLayout, RunLayout, split_private_name
from ..protocol.ready import arrays_of
from ..protocol.graph import read_graph
from ..protocol.rebuild import known_jobs, quarantine_reason
from ..protocol.records import RUN_RECORD_MAX, slurm_ids
from ..protocol.units import Chunk, Coverage, overlapping, parse_unit, unit_name
from ..protocol.snapshot import snapshot, staged_jobs
from .counts import plain_counts
from .reading import read_jobs
from ..protocol.store import read_run_record

JOB_STATES = ("waiting", "queued", "running", "done", "failed", "blocked")
# Shown as job states, counted as the folder they are in (the --json count keys are fixed).
COUNTED_AS = {"held": "waiting", "skipped": "done", "lost": "waiting"}
REBUILT = "a worker's sweep or the next resume rebuilds it from the workflow"
LOST_REASON = f"in no state folder (quarantined, or deleted): {REBUILT}"


@dataclass
class JobView:
    id: str
    state: str
    record: dict[str, Any] | None
    claim: dict[str, Any] | None = None
    reason: str | None = None
    count: int | None = None  # its tries, when ``record`` keeps only the last (see views.reading)

    def needs(self) -> list[Any]:
        deps = (self.record or {}).get("dependencies")
        return deps if isinstance(deps, list) else []

    def row(self) -> dict[str, Any]:
        r = self.record or {}
        tries = r.get("tries", [])
        last = tries[-1] if tries else {}
        host = (self.claim or {}).get("host") if self.state == "running" else last.get("host")
        return {"id": self.id, "state": self.state, "tries": len(tries) if self.count is None else self.count,
                "exit_code": r.get("last_exit_code"), "duration": last.get("duration"),
                "host": host, "reason": self.reason}


class ArrayView(JobView):
    """An array, one row: its tasks counted per state from its chunk files' names alone
    (see executioner.protocol.units); ``record`` is one of its chunk files, for its
    dependencies."""

    def __init__(self, job: str, size: int, units: list[tuple[str, Chunk, str]], record: dict[str, Any] | None):
        self.size = size
        self.units = units  # (state, chunk, path)
        self.counts = {s: 0 for s in (*JOB_STATES, "held", "lost")}
        # A chunk in a private folder (leaving running/ as pieces) counts only the tasks
        # of its pieces not placed yet: the others are in their folders already.
        placed = [u for u in units if not _in_private(u[2])]
        out = Coverage([chunk.unit for _, chunk, _ in placed], {job: size})
        for state, chunk, path in units:
            if state == "waiting" and _held(path):  # kept waiting by --failed-only
                state = "held"
            self.counts[state] += len(chunk) - (len(out.positions(job, chunk.lo, chunk.hi))
                                                if _in_private(path) else 0)
        every = Coverage([chunk.unit for _, chunk, _ in units], {job: size})
        self.counts["lost"] = size - every.tasks.get(job, 0)
        super().__init__(job, self.derived(), record)
        pairs = overlapping([chunk for _, chunk, _ in placed])
        if pairs:  # never a count that is wrong without saying so
            twice = sum(len(chunk) for _, chunk, _ in placed) - out.tasks.get(job, 0)
            a, b = placed[pairs[0][0]], placed[pairs[0][1]]
            self.note = (f"{twice} tasks counted twice: chunk files overlap ({a[0]}/{a[1].unit}.json and "
                         f"{b[0]}/{b[1].unit}.json{' and more' if len(pairs) > 1 else ''}); a worker quarantines one")

    def derived(self) -> str:
        c = self.counts
        for state in ("running", "queued"):
            if c[state]:
                return state
        if c["waiting"] or c["lost"]:
            return "waiting"
        if c["failed"] or c["blocked"]:
            return "failed"
        return "held" if c["held"] else "done"

    def needs(self) -> list[Any]:
        """What it needs as a whole (task by task dependencies are judged per task)."""
        each = set(((self.record or {}).get("spec") or {}).get("elementwise") or ())
        return [d for d in super().needs() if d not in each]

    def positions(self, state: str) -> Coverage:
        return Coverage([chunk.unit for s, chunk, _ in self.units if s == state], {self.id: self.size})

    def block(self, count: int, reason: str) -> None:
        """``count`` of its waiting tasks can never run."""
        self.counts["waiting"] -= count
        self.counts["blocked"] += count
        self.reason = reason
        self.state = self.derived()

    note: str | None = None

    def row(self) -> dict[str, Any]:
        counts = {k: v for k, v in self.counts.items() if v}
        shown = ", ".join(f"{v} {k}" for k, v in counts.items())
        slurm = ((self.record or {}).get("slurm") or {}).get("job_id")
        if slurm and any(self.counts[s] for s in ("waiting", "queued", "running")):
            shown += f"; Slurm array {str(slurm).split('_')[0]}"  # the Slurm-DAG backend's (see slurm_arrays)
        return {"id": self.id, "state": self.state, "tasks": self.size, "counts": counts, "tries": None,
                "exit_code": None, "duration": None, "host": None,
                "reason": "; ".join(x for x in (shown, self.reason, self.note) if x)}


def job_views(run: RunLayout, expected: int = 0, details: bool = True, may_hold: bool = True,
              attempt: Any = None) -> list[JobView]:
    """Every job of the run in its shown state (an array: one view counting its tasks from
    its chunk files' names). Without ``details`` (enough to count them: the pool view) only
    the files in waiting/ are read, for the dependencies and the held mark that make a job
    blocked or held; the rest are known from the listing alone. And not even those when
    nothing can be blocked (no job in failed/) nor held (``may_hold`` False: no resume has
    run, and only a resume holds jobs), or when the run's graph.json (its dependencies and
    held jobs, executioner.protocol.graph) is there."""
    views: dict[str, JobView] = {}
    arrays = arrays_of(run)
    chunks: dict[str, list[tuple[str, Chunk, str]]] = {}
    jobs = snapshot(run, expected, staged=True)
    graph = read_graph(run, attempt)  # with details, for its order only: the files say the rest
    read_waiting = details or (graph is None and (may_hold or any(state == "failed" for state, _ in jobs.values())))
    to_read: list[tuple[str, str, str]] = []
    for job_id, (state, path) in jobs.items():
        chunk = parse_unit(job_id, arrays) if arrays else None
        if chunk is not None:
            chunks.setdefault(chunk.job, []).append((state, chunk, path))
            continue
        if not details and (state != "waiting" or not read_waiting):
            known = None
            if graph is not None and state == "waiting" and not details:
                known = {"dependencies": graph[0].get(job_id) or [], "held": job_id in graph[1]}
            views[job_id] = JobView(job_id, state, known)
            continue
        to_read.append((job_id, state, path))
    for job_id, read in read_jobs(run, to_read).items():
        views[job_id] = JobView(job_id, jobs[job_id][0], read.record, read.claim, count=read.tries,
                                reason=None if read.problem is None else f"its file cannot be used ({read.problem}); "
                                "a worker quarantines it")
    for job, size in arrays.items():
        views[job] = ArrayView(job, size, chunks.get(job, []), _one_record(chunks.get(job, [])))
    if len(views) < expected:
        for job_id in known_jobs(run) - set(views):
            note = quarantine_reason(run, job_id)
            reason = LOST_REASON if note is None else f"in no state folder: quarantined ({note}); {REBUILT}"
            views[job_id] = JobView(job_id, "lost", None, reason=reason)
    _mark_blocked_tasks(views)  # first: a task blocked this way blocks what needs all its array
    order = graph.order if graph is not None else None
    _mark_blocked(views, order)
    _mark_held(views, order)
    for v in views.values():
        if isinstance(v, ArrayView):
            continue
        r = v.record or {}
        if v.state == "done" and r.get("skipped"):
            v.state, v.reason = "skipped", str(r["skipped"].get("reason", "skipped"))
        if v.state == "failed" and not v.reason:
            v.reason = r.get("reason")
        elif v.state == "running" and v.claim:
            v.reason = f"on {v.claim.get('host')} (worker {v.claim.get('worker')})"
        elif v.state == "queued" and r.get("not_before") and r["not_before"] > time.time():
            # not_before is in the storage's clock; shown as a local time, close enough to read
            v.reason = "retry after " + time.strftime("%H:%M:%S", time.localtime(r["not_before"]))
        if v.state == "waiting" and not v.reason:
            lost = [d for d in r.get("dependencies") or [] if d in views and views[d].state == "lost"]
            if lost:
                v.reason = f"waits for {', '.join(lost)}, which is lost (a worker rebuilds it)"
        if v.state in ("waiting", "queued") and (r.get("slurm") or {}).get("job_id"):
            v.reason = f"Slurm job {r['slurm']['job_id']}" + (f"; {v.reason}" if v.reason else "")
    return sorted(views.values(), key=lambda v: v.id) if details else list(views.values())


def _in_private(path: str) -> bool:
    """Is this file in a private folder of running/ (a unit on its way out)?"""
    return split_private_name(os.path.basename(os.path.dirname(path))) is not None


def _held(path: str) -> bool:
    """Is this waiting chunk held (by --failed-only)? Only waiting chunks are read for it."""
    try:
        record = fsio.read_json(path)
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and bool(record.get("held"))


def _one_record(units: list[tuple[str, Chunk, str]]) -> dict[str, Any] | None:
    """Any readable chunk file of an array (they all hold its dependencies)."""
    for _, _, path in sorted(units, key=lambda u: u[0] != "waiting"):
        try:
            record = fsio.read_json(path)
        except (OSError, ValueError):
            continue
        if isinstance(record, dict):
            return record
    return None


def _mark_blocked_tasks(views: dict[str, JobView]) -> None:
    """Tasks waiting for an element-wise upstream task that failed, or that is itself
    blocked (in dependency order, so a chain of arrays blocks task by task)."""
    arrays = {k: v for k, v in views.items() if isinstance(v, ArrayView)}
    if not arrays:
        return
    order = graphlib.TopologicalSorter({k: [d for d in (v.record or {}).get("dependencies") or []
                                            if d in arrays] for k, v in arrays.items()})
    bad: dict[str, Coverage] = {}
    try:
        ordered = list(order.static_order())
    except graphlib.CycleError:
        return
    for job in ordered:
        v = arrays[job]
        each = [d for d in ((v.record or {}).get("spec") or {}).get("elementwise") or [] if d in arrays]
        blocked: list[str] = []
        if each and v.counts["waiting"]:
            for state, chunk, _ in v.units:
                if state != "waiting":
                    continue
                for p in range(chunk.lo, chunk.hi + 1):
                    for d in each:
                        if arrays[d].positions("failed").covers(d, p, p) or bad[d].covers(d, p, p):
                            blocked.append(unit_name(job, p, p))
                            break
            if blocked:
                names = ", ".join(f"{job}:{b.rpartition('.')[2]}" for b in blocked[:3])
                v.block(len(blocked), f"{names}{' …' if len(blocked) > 3 else ''}: upstream task failed")
        bad[job] = Coverage(blocked, {job: v.size})


def _first_upstream(views: dict[str, JobView], source: Any, passes: Any,
                    order: list[str] | None = None) -> dict[str, str | None]:
    """:func:`_walk_upstream`, in one pass when ``order`` (graph.json's: each job after
    those it needs) is given and is such an order for these views; the same answer for
    every job that passes (a job's dependencies are judged before it, in their order)."""
    found: dict[str, str | None] = {j: j for j, v in views.items() if source(v)}
    if not found:
        return found
    if order is None:
        return _walk_upstream(views, source, passes, found)
    unknown = object()
    for j in order:
        v = views.get(j)
        if v is None or j in found or not passes(v):
            continue
        result = None
        for d in v.needs():
            if type(d) is not str:
                continue
            r = found.get(d, unknown)
            if r is unknown:
                upstream = views.get(d)
                if upstream is not None and passes(upstream):  # not judged yet: not such an order
                    return _walk_upstream(views, source, passes, {k: k for k, x in views.items() if source(x)})
                continue  # neither a source nor passing (or not a job at all)
            if r is not None:
                result = r
                break
        found[j] = result
    if any(j not in found for j, v in views.items() if passes(v)):  # a job the order leaves out
        return _walk_upstream(views, source, passes, {k: k for k, x in views.items() if source(x)})
    return found


def _walk_upstream(views: dict[str, JobView], source: Any, passes: Any,
                   found: dict[str, str | None]) -> dict[str, str | None]:
    """For every job that is a source or passes: itself if ``source(view)``, else (when
    ``passes(view)``) the first source found upstream through its dependencies, in order,
    or None.

    Iterative and memoised: linear in jobs + edges on any DAG shape (a 100,000-job chain,
    a ladder whose paths number 2^30), and safe on a cycle in hand-edited files. The
    predicates are asked once per job, the walk touches only dicts and lists (one stack
    for all of it). ``found``: the sources, each found as itself."""
    deps_of: dict[str, list[Any]] = {}
    for j, v in views.items():
        if j not in found and passes(v):
            deps_of[j] = v.needs()
    unknown = object()
    stack: list[str] = []
    at: list[int] = []  # where each job on the stack is in its dependencies
    on_path: set[str] = set()
    for root in deps_of:
        if root in found:
            continue
        stack.append(root)
        at.append(0)
        on_path.add(root)
        while stack:
            job_id = stack[-1]
            deps = deps_of[job_id]
            i = at[-1]
            result, descend = None, None
            while i < len(deps):
                d = deps[i]
                i += 1
                if type(d) is not str or d in on_path:  # junk in a hand-edited file, or a cycle
                    continue
                r = found.get(d, unknown)
                if r is unknown:
                    if d in deps_of:
                        descend = d
                        break
                    found[d] = None  # neither a source nor passing (or not a job at all)
                elif r is not None:
                    result = r
                    break
            if descend is not None:
                at[-1] = i - 1  # look at this dependency again once it is known
                stack.append(descend)
                at.append(0)
                on_path.add(descend)
                continue
            found[job_id] = result
            stack.pop()
            at.pop()
            on_path.discard(job_id)
    return found


def _mark_blocked(views: dict[str, JobView], order: list[str] | None = None) -> None:
    """A waiting job is blocked when a job it needs (directly or not) has failed. An array
    with a failed task has failed for what needs all of it; an array's waiting tasks are
    blocked when what it needs as a whole has failed."""
    def failed(v: JobView) -> bool:
        return v.state == "failed" or (isinstance(v, ArrayView) and (v.counts["failed"] > 0 or v.counts["blocked"] > 0))

    def waits(v: JobView) -> bool:
        return v.state == "waiting"

    upstream = _first_upstream(views, failed, waits, order)
    for v in views.values():
        if v.state != "waiting":
            continue
        found = upstream.get(v.id)
        if found and found != v.id:
            if isinstance(v, ArrayView):
                v.block(v.counts["waiting"], f"upstream failed: {found}")
            else:
                v.state = "blocked"
                v.reason = f"upstream failed: {found}"


def _mark_held(views: dict[str, JobView], order: list[str] | None = None) -> None:
    """Held (by --failed-only): a waiting job so marked, or one downstream of it."""
    held = _first_upstream(views, lambda v: v.state == "waiting" and bool((v.record or {}).get("held")),
                           lambda v: v.state == "waiting", order)
    for v in views.values():
        if v.state == "waiting" and held.get(v.id):
            h = held[v.id]
            v.state = "held"
            v.reason = "held until a plain resume (--failed-only)" if h == v.id else f"upstream held: {h}"


def run_state(states: dict[str, int]) -> str:
    """From the number of jobs in each shown state."""
    if states.get("queued") or states.get("running") or states.get("waiting") or states.get("lost"):
        return "running"
    if states.get("failed") or states.get("blocked"):
        return "failed"
    if states.get("held"):
        return "held"
    return "done"


def run_status(run: RunLayout, jobs: bool = True, lazy: bool = False) -> dict[str, Any]:
    """The run's state and jobs (without ``jobs``: its state and counts only, which reads
    far fewer files); state ``corrupt`` (with ``reason``) if run.json is broken. With
    ``lazy``, ``jobs`` is an iterator making each row as it is taken (100,000 rows are
    written out one by one, never held as one list: see views.text.write_json)."""
    try:
        record = read_run_record(run)
    except FileNotFoundError:
        raise PoolError("not a run directory (no run.json)", run.root) from None
    except CorruptFileError as e:
        return {"run_id": run.run_id, "name": None, "state": "corrupt",
                "counts": {s: 0 for s in JOB_STATES}, "jobs": [],
                "reason": f"run.json is corrupt ({e.message}); workers skip this run"}
    fast = None if jobs else plain_counts(run, record.get("jobs", 0), record.get("attempt", 1))
    views = [] if fast is not None else job_views(run, record.get("jobs", 0), details=jobs,
                                                  may_hold=record.get("attempt") != 1, attempt=record.get("attempt", 1))
    counts = {s: 0 for s in JOB_STATES}
    shown: dict[str, int] = {}
    for state, n in (fast or {}).items():
        if n:
            counts[COUNTED_AS.get(state, state)] += n
            shown[state] = n
    for v in views:
        if isinstance(v, ArrayView):
            for state, n in v.counts.items():
                if n:
                    counts[COUNTED_AS.get(state, state)] += n
                    shown[state] = shown.get(state, 0) + n
            continue
        counts[COUNTED_AS.get(v.state, v.state)] += 1
        shown[v.state] = shown.get(v.state, 0) + 1
    out = {"run_id": record.get("run_id", run.run_id), "name": record.get("name"),
           "state": run_state(shown), "counts": counts, "jobs": []}
    if jobs:
        rows = (v.row() for v in views)
        out["jobs"] = rows if lazy else list(rows)
    try:
        slurm = slurm_ids(fsio.read_json(run.slurm_record, RUN_RECORD_MAX))
        if slurm:
            out["slurm"] = slurm  # Slurm job ids of the run's workers ("workers") or jobs ("dag")
    except (OSError, ValueError):
        pass
    note = change_note(run)
    if note:
        out["reason"] = note
    return out


def change_note(run: RunLayout, watch: Watch | None = None, mono: float | None = None) -> str | None:
    """What ``exec-status`` says while ``.coord/`` holds a change: who is making it, or that
    it was interrupted (no lock, or a lock judged abandoned); None if nothing is staged."""
    try:
        if not os.listdir(run.staging_root):
            return None
    except FileNotFoundError:
        return None
    n = len(staged_jobs(run, new=True))
    jobs = f"{n} job is" if n == 1 else f"{n} jobs are"
    if not interrupted_change(run, watch, mono):
        info = holder(run) or {}
        stopped = "; the process is stopped" if is_stopped(info) else ""
        return (f"a resume of this run is in progress ({describe(info)}, {info.get('action', '?')}, since "
                f"{since_text(info)}{stopped}): {jobs} staged in .coord/")
    return (f"a resume of this run was interrupted: {jobs} waiting in {run.staging_root}, unseen by workers; "
            f"run `exec-submit --resume {run.run_id}` to finish or undo it")


def last_update(run: RunLayout) -> float:
    stamps = []
    for d in run.all_dirs():
        try:
            stamps.append(os.stat(d).st_mtime)
        except FileNotFoundError:
            pass
    return max(stamps, default=0.0)


def pool_status(pool: PoolLayout) -> dict[str, Any]:
    if not os.path.isdir(pool.root):
        raise PoolError("no such pool directory", pool.root)
    runs = []
    for run_id in pool.run_ids():
        try:
            status = run_status(pool.run(run_id), jobs=False)
        except (PoolError, OSError) as e:  # one run we cannot read never hides the others
            why = e.message if isinstance(e, PoolError) else f"{e.filename or run_id}: {e.strerror or e}"
            status = {"run_id": run_id, "name": None, "state": "corrupt", "counts": {s: 0 for s in JOB_STATES},
                      "reason": f"cannot be read: {why}"}
        row = {k: status[k] for k in ("run_id", "name", "state", "counts")}
        if "reason" in status:
            row["reason"] = status["reason"]
        runs.append(row)
    return {"runs": runs}


def is_run_dir(path: str) -> bool:
    return os.path.exists(os.path.join(path, "run.json"))
