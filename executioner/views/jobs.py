"""Every job of a run in its shown state, and the details of the ones a view shows.

:func:`job_views` finds each job's state from the folders' listings (and graph.json, or the
waiting job files, for blocked and held); with ``details`` it reads every job file too.
:func:`detail` reads only the files of the rows a view will show: the run view of a big run
shows its failures and running jobs, and reads nothing else (see views.select)."""

from __future__ import annotations

import time
from typing import Any

from ..protocol import fsio
from ..protocol.graph import read_graph
from ..protocol.layout import RunLayout
from ..protocol.ready import arrays_of
from ..protocol.rebuild import known_jobs, quarantine_reason
from ..protocol.records import RUN_RECORD_MAX, cancelled_info
from ..protocol.snapshot import snapshot
from ..protocol.units import Chunk, parse_unit
from .blocking import mark_blocked, mark_blocked_tasks, mark_held
from .logs import last_line, log_path
from .reading import Read, read_jobs
from .rows import ArrayView, JobView, LOST_REASON, REBUILT, one_record



def job_views(run: RunLayout, expected: int = 0, details: bool = True, may_hold: bool = True,
              attempt: Any = None) -> list[JobView]:
    """Every job of the run in its shown state (an array: one view counting its tasks from
    its chunk files' names). Without ``details`` (enough to count them: the pool view; or
    to choose the rows a view shows, then :func:`detail` them) only the files in waiting/
    are read, for the dependencies and the held mark that make a job blocked or held; the
    rest are known from the listing alone (each view keeps its file's ``path``, unread). And
    not even those when nothing can be blocked (no job in failed/) nor held (``may_hold``
    False: no resume has run, and only a resume holds jobs), or when the run's graph.json
    (its dependencies and held jobs, executioner.protocol.graph) is there. A job marked
    skipped is ``done`` until its file is read."""
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
            if graph is not None and state == "waiting":
                known = {"dependencies": graph[0].get(job_id) or [], "held": job_id in graph[1]}
            views[job_id] = JobView(job_id, state, known, path=path)
            continue
        to_read.append((job_id, state, path))
    for job_id, read in read_jobs(run, to_read).items():
        views[job_id] = _read_view(JobView(job_id, jobs[job_id][0], None), read)
    for job, size in arrays.items():
        views[job] = ArrayView(job, size, chunks.get(job, []), one_record(chunks.get(job, [])))
    if len(views) < expected:
        for job_id in known_jobs(run) - set(views):
            note = quarantine_reason(run, job_id)
            reason = LOST_REASON if note is None else f"in no state folder: quarantined ({note}); {REBUILT}"
            views[job_id] = JobView(job_id, "lost", None, reason=reason)
    mark_blocked_tasks(views)  # first: a task blocked this way blocks what needs all its array
    order = graph.order if graph is not None else None
    mark_blocked(views, order)
    mark_held(views, order)
    cancelled = _cancelled_ids(run)
    for v in views.values():
        if v.record is not None and not isinstance(v, ArrayView):  # nothing to say without one
            _explain(run, v, views, cancelled)
    return sorted(views.values(), key=lambda v: v.id) if details else list(views.values())


def detail(run: RunLayout, views: list[JobView], chosen: list[JobView]) -> None:
    """Read the files of the ``chosen`` views of :func:`job_views` (without details) that
    are not read yet, and give them what the view with details says of them: tries, host,
    reason. Nothing else is read: the view of a big run reads the files it shows."""
    todo = [v for v in chosen if v.path is not None and not isinstance(v, ArrayView)]
    if not todo:
        return
    read = read_jobs(run, [(v.id, "running" if v.state == "running" else "", v.path or "") for v in todo])
    by_id = {v.id: v for v in views}
    cancelled = _cancelled_ids(run)
    for v in todo:
        _read_view(v, read[v.id], keep=v.state in ("blocked", "held"))
        _explain(run, v, by_id, cancelled)


def _read_view(v: JobView, read: Read, keep: bool = False) -> JobView:
    """``v`` with what its file holds; an unusable file is its reason (unless ``keep``: a
    blocked or held job says why it waits)."""
    v.record, v.claim, v.count, v.path = read.record, read.claim, read.tries, None
    if read.problem is not None and not keep:
        v.reason = f"its file cannot be used ({read.problem}); a worker quarantines it"
    return v


def _cancelled_ids(run: RunLayout) -> frozenset[str]:
    """The Slurm jobs ``exec-submit --cancel`` cancelled (none when it was not used, or a
    resume submitted the run again)."""
    try:
        info = cancelled_info(fsio.read_json(run.slurm_cancelled, RUN_RECORD_MAX))
    except (OSError, ValueError):
        return frozenset()
    return frozenset(info["ids"]) if info else frozenset()


def _explain(run: RunLayout, v: JobView, views: dict[str, JobView], cancelled: frozenset[str] = frozenset()) -> None:
    """The reason a job's row gives (a failed job's: its record's, and the last line of
    its last try's stderr), and ``skipped`` for a done job marked so."""
    r = v.record or {}
    if v.state == "done" and r.get("skipped"):
        v.state, v.reason = "skipped", str(r["skipped"].get("reason", "skipped"))
    if v.state == "failed" and not v.reason:
        v.reason = r.get("reason")
        last = (r.get("tries") or [{}])[-1]
        path = log_path(run, last.get("stderr"))
        said = last_line(path) if path else None
        if said:
            v.reason = f"{v.reason}; stderr: {said}" if v.reason else f"stderr: {said}"
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
        slurm_id = str(r["slurm"]["job_id"])
        # an array element's id is 123_4: cancelled with its array 123
        gone = slurm_id in cancelled or slurm_id.split("_")[0] in cancelled
        said = f"Slurm job {slurm_id} cancelled (exec-submit --cancel)" if gone else f"Slurm job {slurm_id}"
        v.reason = said + (f"; {v.reason}" if v.reason else "")
