"""A run's past: its attempts (``exec-status RUN --attempts``) and one job's tries (``--job``)."""

from __future__ import annotations

import os
import time
from collections import Counter
from typing import Any

from ..protocol import attempts
from ..errors import CorruptFileError, ExecutionerError, PoolError, WorkflowErrors
from ..protocol.layout import PoolLayout, RunLayout
from ..execution.tasks import task_name, task_rows, task_set
from ..protocol.ready import arrays_of
from ..protocol.records import load_job, read_job
from ..protocol.snapshot import snapshot
from ..protocol.units import Chunk, parse_unit
from ..workflow.arrays import TASK_SEP


def _all_records(run: RunLayout) -> dict[str, dict[str, Any]]:
    out = {}
    for job_id, (_, path) in snapshot(run).items():
        try:
            record, _ = read_job(path, job_id)
        except OSError:
            continue
        if record is not None:  # unusable: left out of the counts (exec-status shows why)
            out[job_id] = record
    return out


FULL_UP_TO = 2000  # jobs up to which --attempts also reads every job file and plans (well under 2 s)


def attempts_status(pool: PoolLayout, run: RunLayout, full: bool = True) -> dict[str, Any]:
    """Every attempt: when, who, why, flags, its plan in numbers, and how its tries ended;
    and what a plain resume would do now. Without ``full`` (a big run's text view), only
    what the attempt records say: how the tries ended and the next plan need every job file
    read (and the plan, the workflow checked), seconds for 100,000 jobs; ``tries`` is then
    None and ``next`` says how to get them."""
    outcomes: dict[int, Counter[str]] = {}
    for record in (_all_records(run) if full else {}).values():
        for t in record.get("tries", []):
            outcomes.setdefault(t.get("attempt", 1), Counter())[t.get("status", "?")] += 1
    rows = []
    for a in attempts.all_records(run):
        n = a.get("attempt", 1)
        planned = Counter(s.get("action") for s in a.get("plan", []))
        rows.append({"attempt": n, "time": a.get("time"), "who": a.get("who"), "why": a.get("why"),
                     "flags": {k: v for k, v in (a.get("flags") or {}).items() if v},
                     "sha256": a.get("sha256"), "changes": len(a.get("changes", [])),
                     "planned": dict(planned), "tries": dict(outcomes.get(n, {})) if full else None})
    nxt = _next_resume(pool, run) if full else {"left_out": "how the tries ended and what a plain resume "
                                                "would do now: --attempts --all (reads every job file)"}
    return {"run_id": run.run_id, "attempts": rows, "next": nxt}


def _next_resume(pool: PoolLayout, run: RunLayout) -> dict[str, Any]:
    from ..coordinator.plan import Options, plan_resume, workflow_for_resume

    try:
        plan = plan_resume(pool, run, workflow_for_resume(run, None), Options())
    except (WorkflowErrors, ExecutionerError, OSError, ValueError) as e:
        return {"error": str(e)}
    return {"attempt": plan.attempt, "planned": dict(Counter(s.action for s in plan.steps)),
            "steps": [s.row() for s in plan.steps], "checks": plan.checks}


def job_history(run: RunLayout, job_id: str) -> dict[str, Any]:
    """Every try of one job (or task ``sim:4``) across attempts, with absolute log paths; for
    an array (``sim``), every task's state and last try."""
    arrays = arrays_of(run)
    name, _, index = job_id.partition(TASK_SEP)
    if name in arrays:
        units = _units_of(run, name, arrays)
        if not index:
            return _array_tasks(run, name, units)
        return _task_history(run, name, index, units)
    found = snapshot(run).get(job_id)
    if found is None:
        removed = run.job(job_id, "removed")
        if not os.path.exists(removed):
            raise PoolError(f"no job {job_id!r} in this run", run.root)
        found = ("removed", removed)
    state, path = found
    try:
        record = load_job(path, job_id)
    except CorruptFileError as e:
        raise PoolError(f"the file of job {job_id!r} cannot be used: {e.message}", path) from None
    except OSError as e:
        raise PoolError(f"cannot read the file of job {job_id!r}: {e.strerror or e}", path) from None
    reason = None
    if state == "waiting" and record.get("held"):
        state = "held"
    elif state == "done" and record.get("skipped"):
        state = "skipped"
    elif state == "waiting":  # blocked when something upstream failed: as the run view judges it
        state, reason = _waiting_state(run, job_id)
    tries = []
    for t in record.get("tries", []):
        logs = {k: os.path.join(run.root, t[k]) if t.get(k) else None for k in ("stdout", "stderr")}
        tries.append({"attempt": t.get("attempt", 1), "try": t.get("try"), "status": t.get("status"),
                      "host": t.get("host"), "worker": t.get("worker"), "start": t.get("start"),
                      "duration": t.get("duration"), "exit_code": t.get("exit_code"),
                      "reason": t.get("reason"), **logs})
    if state == "running":  # the try under way is one too: from its claim's lock, if written yet
        from .reading import token_of
        from ..protocol.store import claim_lock

        token = token_of(path)
        lock = claim_lock(run, job_id, token, record) if token else None
        number = len(record.get("tries", [])) + 1
        if lock is None or lock.get("try") == number:
            started = (lock or {}).get("claimed_at")
            tries.append({"attempt": record.get("attempt", 1), "try": number, "status": "running",
                          "host": (lock or {}).get("host"), "worker": (lock or {}).get("worker"), "start": started,
                          "duration": round(time.time() - started, 3) if isinstance(started, (int, float)) else None,
                          "exit_code": None, "reason": None, "stdout": run.log(job_id, number, "out"),
                          "stderr": run.log(job_id, number, "err")})
    return {"run_id": run.run_id, "job": job_id, "state": state, "reason": reason, "attempt": record.get("attempt", 1),
            "skipped": record.get("skipped"), "held": bool(record.get("held")), "tries": tries}


def _waiting_state(run: RunLayout, job_id: str) -> tuple[str, str | None]:
    """``blocked`` (upstream failed: ...) or ``waiting`` (for: ...), from the listings and
    graph.json as the run view says it (no job file but this one's is read for that)."""
    from ..protocol.store import read_run_record
    from .jobs import job_views

    try:
        record = read_run_record(run)
    except (OSError, ValueError, ExecutionerError):
        return "waiting", None
    views = job_views(run, record.get("jobs", 0), details=False, may_hold=record.get("attempt") != 1,
                      attempt=record.get("attempt", 1))
    v = next((v for v in views if v.id == job_id), None)
    if v is None or v.state not in ("blocked", "waiting"):
        return "waiting", None
    if v.state == "waiting" and not v.reason:
        by_id = {x.id: x for x in views}
        left = [d for d in v.needs() if isinstance(d, str) and (d not in by_id or by_id[d].state != "done")]
        return "waiting", f"waits for {', '.join(left[:5])}{' ...' if len(left) > 5 else ''}" if left else None
    return v.state, v.reason


Unit = tuple[str, Chunk, "dict[str, Any] | None", "str | None"]  # state, chunk, record, why unusable
UNUSABLE = "its file cannot be used ({}); a worker quarantines it"


def _units_of(run: RunLayout, job: str, arrays: dict[str, int]) -> list[Unit]:
    """The array's chunk files now: (state, chunk, record, None), by first task; one that
    cannot be used (torn, unreadable, of the wrong shape) with None and why, so that its
    tasks are listed with the reason rather than left out or called lost."""
    out: list[Unit] = []
    for unit, (state, path) in snapshot(run).items():
        chunk = parse_unit(unit, arrays)
        if chunk is None or chunk.job != job:
            continue
        try:
            record, problem = read_job(path, unit)
        except FileNotFoundError:
            continue  # moved meanwhile
        except OSError as e:
            record, problem = None, e.strerror or str(e)
        out.append((state, chunk, record, problem))
    return sorted(out, key=lambda u: u[1].lo)


def _names(units: list[Unit]) -> Any:
    """The array's TaskSet (names by position) from any usable chunk; None if there is none."""
    spec = next((r["spec"] for _, _, r, _ in units if r is not None), None)
    return None if spec is None else task_set(spec)


def _array_tasks(run: RunLayout, job: str, units: list[Unit]) -> dict[str, Any]:
    rows = []
    names = _names(units)
    for state, chunk, record, problem in units:
        if record is None:
            for p in range(chunk.lo, chunk.hi + 1):
                rows.append({"task": f"{job}:{names.index(p) if names else p}", "state": state, "tries": None,
                             "exit_code": None, "duration": None, "host": None,
                             "reason": UNUSABLE.format(problem), "unit": chunk.unit})
            continue
        tasks = task_set(record["spec"], record.get("lines"), chunk.lo)
        slurm_id = (record.get("slurm") or {}).get("job_id") if state in ("waiting", "queued") else None
        slurm = f"Slurm job {slurm_id}" if slurm_id else None  # its element (see backends.slurm_arrays)
        for p in range(chunk.lo, chunk.hi + 1):
            tries = list(task_rows(record, p))
            last = tries[-1] if tries else {}
            rows.append({"task": task_name(job, tasks, p), "state": state, "tries": len(tries),
                         "exit_code": last.get("exit_code"), "duration": last.get("duration"),
                         "host": last.get("host"), "reason": last.get("reason") if state == "failed" else slurm,
                         "unit": chunk.unit})
    return {"run_id": run.run_id, "job": job, "array": True, "tasks": rows}


def _task_history(run: RunLayout, job: str, index: str, units: list[Unit]) -> dict[str, Any]:
    tasks = _names(units)
    if tasks is None:
        bad = next((u for u in units if u[2] is None), None)
        if bad is None:
            raise PoolError(f"no task of array {job!r} is in a state folder now", run.root)
        raise PoolError(f"no chunk file of array {job!r} can be used now: {bad[0]}/{bad[1].unit}.json: "
                        f"{UNUSABLE.format(bad[3])}", run.root)
    position = tasks.position(int(index)) if index.lstrip("-").isdigit() else None
    if position is None:
        raise PoolError(f"no task {job}:{index} in this run (its tasks are {job}:{tasks.index(0)} to "
                        f"{job}:{tasks.index(len(tasks) - 1)})", run.root)
    found = next((u for u in units if u[1].lo <= position <= u[1].hi), None)
    if found is None:
        raise PoolError(f"task {job}:{index} is in no state folder now (lost: a worker rebuilds it)", run.root)
    state, chunk, record, problem = found
    if record is None:
        raise PoolError(f"task {job}:{index} is in {state}/{chunk.unit}.json, but {UNUSABLE.format(problem)}",
                        run.root)
    tries = []
    for t in task_rows(record, position):
        logs = {k: os.path.join(run.root, t[k]) if t.get(k) else None for k in ("stdout", "stderr")}
        tries.append({"attempt": t.get("attempt", 1), "try": t.get("try"), "status": t.get("status"),
                      "host": t.get("host"), "worker": t.get("worker"), "start": t.get("start"),
                      "duration": t.get("duration"), "exit_code": t.get("exit_code"),
                      "reason": t.get("reason"), **logs})
    return {"run_id": run.run_id, "job": f"{job}:{index}", "state": state, "unit": chunk.unit,
            "attempt": record.get("attempt", 1), "skipped": record.get("skipped"), "held": bool(record.get("held")),
            "tries": tries}
