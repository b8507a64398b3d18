"""The pool's workers as a view sees them in one look: who is live, what each declared it
has (``capacity`` in its heartbeat file), and what each holds now (its claims in the runs'
running/ folders). Read by ``exec-status --why`` and the ``--wait`` warnings.

A view cannot watch a heartbeat stand still for ``--stale-after`` as a reaper does (it
looks once), so it judges as a coordinator does (:func:`executioner.liveness.reap.judge_now`):
a worker of this host is live while its process is (pid and pid start time); another
host's while its heartbeat's mtime is no older than its patience (the longest of our
``stale_after``, the ``stale_after`` its file declares, and two of its beats, as
:meth:`executioner.liveness.reap.Reaper._patience` allows) by our clock. A worker file
written before placement has no ``capacity``: its capacity is unknown (it may fit
anything), never zero.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Final

from ..liveness.reap import fresh_mtime, owner_dead_here
from ..protocol import fsio, placement
from ..protocol.layout import PROBE_PREFIX, JOB_SUFFIX, PoolLayout, RunLayout
from ..protocol.records import read_job
from ..protocol.store import claim_lock, running_jobs

RECORD_LIMIT: Final = 64 << 10  # a heartbeat record is small


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value) and value >= 0 else None


@dataclass
class Held:
    """One claim a worker holds: the run, the unit, what it takes of the worker, since when."""

    run_id: str
    unit: str
    needs: dict[str, float]
    tasks: int = 1  # a chunk runs several of its tasks at once
    since: float | None = None
    try_number: int | None = None


@dataclass
class WorkerView:
    """One heartbeat file, as read now."""

    id: str
    host: str | None
    pid: Any
    runs: list[str] | None  # None: every run
    slots: int | None
    capacity: dict[str, Any] | None  # None: a worker written before placement (unknown)
    age: float  # seconds since its last beat, by our clock
    live: bool
    patience: float = 60.0  # how long its heartbeat may stand still before it is judged dead
    holds: list[Held] = field(default_factory=list)

    def serves(self, run_id: str) -> bool:
        return self.runs is None or run_id in self.runs

    def total(self) -> dict[str, float] | None:
        """What it declared (cpus, gpus as a count, mem_gb, custom), or None when unknown."""
        c = self.capacity
        if c is None:
            return None
        gpus = c.get("gpus")
        out = {"cpus": _number(c.get("cpus")) or 0.0,
               "gpus": float(len(gpus)) if isinstance(gpus, list) else _number(gpus) or 0.0,
               "mem_gb": _number(c.get("mem_gb")) or 0.0}
        custom = c.get("resources")
        if isinstance(custom, dict):
            out.update({str(k): n for k, v in custom.items() if (n := _number(v)) is not None})
        return out

    def tags(self) -> set[str] | None:
        if self.capacity is None:
            return None
        tags = self.capacity.get("tags")
        return {str(t) for t in tags} if isinstance(tags, list) else set()

    def in_use(self) -> tuple[dict[str, float], int]:
        """What its claims take now, and how many jobs (or tasks) they run."""
        used: dict[str, float] = {}
        count = 0
        for h in self.holds:
            count += h.tasks
            for k, v in h.needs.items():
                used[k] = used.get(k, 0.0) + v * h.tasks
        return used, count

    def free(self) -> dict[str, float] | None:
        total = self.total()
        if total is None:
            return None
        used, _ = self.in_use()
        return {k: max(0.0, v - used.get(k, 0.0)) for k, v in total.items()}

    def free_slots(self) -> int | None:
        return None if self.slots is None else max(0, self.slots - self.in_use()[1])

    def where(self) -> str:
        return f"{self.id} on {self.host or '?'}"


def read_workers(pool: PoolLayout, now: float | None = None, stale_after: float = 60.0) -> list[WorkerView]:
    """Every worker file of the pool (live or not), sorted by id."""
    now = time.time() if now is None else now
    try:
        names = sorted(os.listdir(pool.workers_dir))
    except (FileNotFoundError, NotADirectoryError):
        return []
    out = []
    for name in names:
        if name.startswith((".", PROBE_PREFIX)) or not name.endswith(JOB_SUFFIX):
            continue
        path = os.path.join(pool.workers_dir, name)
        try:
            stamp = fresh_mtime(path)
            record = fsio.read_json(path, RECORD_LIMIT)
        except (OSError, ValueError):
            continue  # gone meanwhile, unreadable or torn: no worker we can speak of
        if not isinstance(record, dict):
            continue
        out.append(_worker(name[: -len(JOB_SUFFIX)], record, now - stamp, stale_after))
    return out


def _worker(worker_id: str, record: dict[str, Any], age: float, stale_after: float) -> WorkerView:
    patience = max([stale_after] + [v for v in (_number(record.get("stale_after")),
                                                2 * (_number(record.get("heartbeat")) or 0.0)) if v])
    if owner_dead_here(record):
        live = False
    elif record.get("host") == fsio.HOST:
        live = True  # its process is alive here (a frozen one is a reaper's business)
    else:
        live = age <= patience
    runs = record.get("runs")
    slots = record.get("slots")
    capacity = record.get("capacity")
    if not isinstance(capacity, dict) or _number(capacity.get("cpus")) is None \
            or not isinstance(capacity.get("tags", []), list):
        capacity = None  # none (written before placement) or not of its shape: unknown, never zero
    return WorkerView(worker_id, record.get("host") if isinstance(record.get("host"), str) else None,
                      record.get("pid"), [str(r) for r in runs] if isinstance(runs, list) else None,
                      slots if type(slots) is int and slots > 0 else None,
                      capacity, age, live, patience)


def fill_holdings(pool: PoolLayout, workers: list[WorkerView]) -> None:
    """Give each live worker the claims it holds, from the running/ folder of every run it
    may serve (each running job file and its lock read: as many as run at once)."""
    by_id = {w.id: w for w in workers if w.live}
    if not by_id:
        return
    for run_id in pool.run_ids():
        if not any(w.serves(run_id) for w in by_id.values()):
            continue
        run = pool.run(run_id)
        try:
            jobs = running_jobs(run)
        except OSError:
            continue
        for job in jobs:
            try:
                record, _ = read_job(job.path, job.job_id)
            except OSError:
                continue  # left running/ meanwhile
            if record is None:
                continue
            lock = claim_lock(run, job.job_id, job.token, record)
            w = by_id.get(str((lock or {}).get("worker")))
            if w is None:
                continue
            w.holds.append(held_by(run_id, job.job_id, record, lock or {}, w))


def held_by(run_id: str, unit: str, record: dict[str, Any], lock: dict[str, Any], w: WorkerView) -> Held:
    """What one claim takes of its worker: a job its needs; a chunk as many of its tasks at
    once as the worker's slots and capacity hold (a worker runs as many as fit)."""
    spec = record.get("spec") or {}
    needs = placement.needs(spec)
    tasks = 1
    span = record.get("tasks")
    if isinstance(span, list) and len(span) == 2 and all(type(x) is int for x in span):
        tasks = max(1, span[1] - span[0] + 1)
        total = w.total()
        if w.slots is not None:
            tasks = min(tasks, w.slots)
        if total is not None:
            for k, v in needs.items():
                if v > 0:
                    tasks = min(tasks, int(total.get(k, 0.0) // v))
        tasks = max(tasks, 1)
    since = lock.get("claimed_at")
    return Held(run_id, unit, needs, tasks, since if isinstance(since, (int, float)) else None,
                lock.get("try") if type(lock.get("try")) is int else None)


def serving(workers: list[WorkerView], run: RunLayout) -> list[WorkerView]:
    """The live workers that may take jobs of ``run``."""
    return [w for w in workers if w.live and w.serves(run.run_id)]
