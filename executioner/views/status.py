"""What a run or a pool looks like right now, computed from the folders alone."""

from __future__ import annotations

import os
import shlex
import time
from collections import Counter
from typing import Any

from ..coordinator.coord import describe, holder, interrupted_change, is_stopped, since_text
from ..errors import CorruptFileError, PoolError
from ..liveness.watch import Watch
from ..protocol import fsio
from ..protocol.layout import PoolLayout, RunLayout
from ..protocol.records import RUN_RECORD_MAX, cancelled_info, slurm_ids
from ..protocol.snapshot import staged_jobs
from ..protocol.store import read_run_record
from .counts import plain_counts
from .jobs import detail, job_views
from .rows import COUNTED_AS, JOB_STATES, ArrayView
from .select import choose


def run_state(states: dict[str, int]) -> str:
    """From the number of jobs in each shown state."""
    if states.get("queued") or states.get("running") or states.get("waiting") or states.get("lost"):
        return "running"
    if states.get("failed") or states.get("blocked"):
        return "failed"
    if states.get("held"):
        return "held"
    return "done"


def run_status(run: RunLayout, jobs: bool = True, lazy: bool = False, states: frozenset[str] | None = None,
               limit: int | None = None, problems_first: bool = False,
               workers: list[Any] | None = None) -> dict[str, Any]:
    """The run's state and jobs (without ``jobs``: its state and counts only, which reads
    far fewer files); state ``corrupt`` (with ``reason``) if run.json is broken. With
    ``lazy``, ``jobs`` is an iterator making each row as it is taken (100,000 rows are
    written out one by one, never held as one list: see views.text.write_json).

    ``states``: only the rows of these states (the counts stay the whole run's); ``limit``:
    above that many rows, a summary (see views.select), and ``left_out`` counts per state
    the rows it leaves out; ``problems_first``: failed, then running jobs first. With
    either of the first two only the files of the rows shown are read."""
    try:
        record = read_run_record(run)
    except FileNotFoundError:
        raise PoolError("not a run directory (no run.json)", run.root) from None
    except CorruptFileError as e:
        return {"run_id": run.run_id, "name": None, "state": "corrupt",
                "counts": {s: 0 for s in JOB_STATES}, "jobs": [],
                "reason": f"run.json is corrupt ({e.message}); workers skip this run"}
    fast = None if jobs else plain_counts(run, record.get("jobs", 0), record.get("attempt", 1))
    partial = jobs and (states is not None or limit is not None)
    views = [] if fast is not None else job_views(run, record.get("jobs", 0), details=jobs and not partial,
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
    left: Counter[str] = Counter()
    if partial:
        if states is not None and "skipped" in states and "done" not in states:
            detail(run, views, [v for v in views if v.state == "done"])  # which done jobs were skipped
        views, left = choose(views, states, limit, problems_first)
        detail(run, views, views)
    elif problems_first:
        views, _ = choose(views, None, None, True)
    if jobs:
        rows = (v.row() for v in views)
        out["jobs"] = rows if lazy else list(rows)
    if left:
        out["left_out"] = dict(left)
    try:
        slurm = slurm_ids(fsio.read_json(run.slurm_record, RUN_RECORD_MAX))
        if slurm:
            out["slurm"] = slurm  # Slurm job ids of the run's workers ("workers") or jobs ("dag")
    except (OSError, ValueError):
        pass
    cancelled = cancelled_of(run, record)
    if cancelled is not None and out["state"] == "running":
        # its jobs wait in queued/ and waiting/ for Slurm jobs that will never start
        out["state"] = "cancelled"
        out["reason"] = (f"its Slurm jobs were cancelled at {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(cancelled['at']))}"
                         f"{' by ' + cancelled['by'] if cancelled['by'] else ''}; `exec-submit --pool "
                         f"{shlex.quote(os.path.dirname(run.root))} --resume {run.run_id}` submits them again")
    note = change_note(run)
    if note:
        out["reason"] = note
    if out["state"] == "running" and record.get("backend") != "slurm":
        if not counts["running"]:
            out.update(_stranded(run, workers))
        if "warning" not in out and record.get("placement") and counts["queued"]:
            out.update(_unfit(run))
    return out


def _unfit(run: RunLayout) -> dict[str, str]:
    """``{"warning": ...}`` when queued jobs need what no live worker has (GPUs, a tag), from
    the run's placement index, one listing of queued/ and the workers' files (as --wait)."""
    from .advice import Advisor

    lines = Advisor(run, alone_after=None).check()
    said = [line.split(": warning: ", 1)[-1] for line in lines]
    return {"warning": "; ".join(said) + " (see --why)"} if said else {}


def _stranded(run: RunLayout, workers: list[Any] | None) -> dict[str, str]:
    """``{"warning": ...}`` when no live worker serves a run that has work left and nothing
    running (not for the Slurm-DAG backend: Slurm runs its jobs; Slurm workers may be pending
    in Slurm's queue, which is said instead)."""
    from .advice import idle_note
    from .workers import read_workers

    pool = PoolLayout(os.path.dirname(run.root))
    note = idle_note(pool, run, read_workers(pool) if workers is None else workers)
    if note is None:
        return {}
    if os.path.exists(run.slurm_record):
        note = (f"no live worker yet: its Slurm workers may be pending (squeue; ids in {run.slurm_record})")
    return {"warning": note}


def cancelled_of(run: RunLayout, record: dict[str, Any]) -> dict[str, Any] | None:
    """What ``exec-submit --cancel`` recorded, for a run still on the Slurm-DAG backend
    (a resume onto pool workers leaves the marker, but the run is no longer Slurm's)."""
    if record.get("backend") != "slurm":
        return None
    try:
        return cancelled_info(fsio.read_json(run.slurm_cancelled, RUN_RECORD_MAX))
    except (OSError, ValueError):
        return None


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
    """When a job last moved (or a try started, or an attempt was recorded). Not waiting/:
    a worker's sweep takes and drops its lease file there every minute even in a finished
    run, which would move a finished run's last update forward for ever; a job leaving
    waiting/ changes the folder it enters too."""
    stamps = []
    for d in run.all_dirs():
        if d == run.state_dir("waiting"):
            continue
        try:
            stamps.append(os.stat(d).st_mtime)
        except FileNotFoundError:
            pass
    return max(stamps, default=0.0)


def pool_status(pool: PoolLayout) -> dict[str, Any]:
    if not os.path.isdir(pool.root):
        raise PoolError("no such pool directory", pool.root)
    from .workers import read_workers

    workers = read_workers(pool)  # once for every run (a stranded run says so)
    runs = []
    for run_id in pool.run_ids():
        try:
            status = run_status(pool.run(run_id), jobs=False, workers=workers)
        except (PoolError, OSError) as e:  # one run we cannot read never hides the others
            why = e.message if isinstance(e, PoolError) else f"{e.filename or run_id}: {e.strerror or e}"
            status = {"run_id": run_id, "name": None, "state": "corrupt", "counts": {s: 0 for s in JOB_STATES},
                      "reason": f"cannot be read: {why}"}
        row = {k: status[k] for k in ("run_id", "name", "state", "counts")}
        for key in ("reason", "warning"):
            if key in status:
                row[key] = status[key]
        runs.append(row)
    return {"runs": runs}


def is_run_dir(path: str) -> bool:
    return os.path.exists(os.path.join(path, "run.json"))


def pool_and_run(directory: str, run_id: str | None) -> tuple[PoolLayout, RunLayout | None]:
    """``exec-status DIR [RUN_ID]`` as a pool and a run of it (None: the pool's view);
    PoolError (exit 2) for a run or a pool that is not there."""
    if run_id or is_run_dir(directory):
        path = os.path.join(directory, run_id) if run_id else directory
        if not is_run_dir(path):
            raise PoolError("no such run (no run.json)", path)
        run = RunLayout(os.path.abspath(path))
        return PoolLayout(os.path.dirname(run.root)), run
    if not os.path.isdir(directory):
        raise PoolError("no such pool directory", directory)
    return PoolLayout(os.path.abspath(directory)), None
