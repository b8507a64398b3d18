"""What ``exec-status --watch`` shows, read again only where the filesystem says it changed.

A :class:`Looker` answers :meth:`Looker.look` with a :class:`Sample`: a run's state and
per-state counts (tasks for arrays), its running jobs (host, worker, since when, try), its
latest failures (with the last line of their stderr), the pool's workers (last heartbeat,
alive or dead) and warnings. Each part is cached behind a stamp:

- counts: the state folders' mtimes and ctimes (:func:`executioner.protocol.store.folders_stamp`,
  six ``stat`` calls); when one changed, one listing of each folder (names give an array's
  task counts: no chunk file is read), and only when nothing is queued or running anymore,
  the full :func:`executioner.views.status.run_status` without rows, which tells blocked and
  held jobs apart through graph.json (the run's end is decided by it, as ``--wait`` decides);
- running jobs: only the ``SHOWN`` shown are read (job file and claim lock), each once per claim;
- failures: a failed file never changes, so each is read once, and only the newest ``SHOWN``;
- workers: ``workers/`` is listed only when its mtime changes (a worker came or went), each
  heartbeat ``stat``-ed per look and read once.

An idle look (nothing moved) costs those ``stat`` calls: the six folders, ``workers/`` and
one per heartbeat. The caller spaces looks out (see executioner.views.live).
"""

from __future__ import annotations

import os
import shlex
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Final

from ..liveness.clock import StorageClock
from ..liveness.reap import owner_dead_here
from ..protocol import fsio
from ..protocol.layout import JOB_SUFFIX, PoolLayout, RunLayout, run_sort_key
from ..protocol.ready import arrays_of
from ..protocol.records import read_job
from ..protocol.snapshot import snapshot
from ..protocol.store import claim_lock, folders_stamp, read_run_record
from ..protocol.units import parse_unit
from .logs import last_line, log_path
from .progress import serves
from .reading import token_of
from .rows import JOB_STATES
from .status import change_note, run_status
from .workerlist import _patience

SHOWN: Final = 8  # running jobs, failures and workers shown at most
HEARTBEAT_MAX: Final = 1 << 16
RELIST_WORKERS: Final = 30.0  # seconds between two listings of workers/ (its mtime moves all the time)
DURATIONS: Final = 32  # finished jobs sampled for the ETA
NO_WORKER_GRACE: Final = 2.0  # seconds a view waits before it warns that no worker is alive


@dataclass
class Sample:
    """One look at a run (or a pool: ``runs`` instead of counts)."""

    state: str = "running"
    counts: dict[str, int] = field(default_factory=lambda: {s: 0 for s in JOB_STATES})
    total: int = 0
    running: list[dict[str, Any]] = field(default_factory=list)
    more_running: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)
    workers: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)
    gone: str | None = None  # why the run cannot be shown anymore (removed)
    mean_duration: float | None = None  # seconds a finished job (or task) took, from a sample
    at: float = 0.0  # time.monotonic() of the look


def _tasks(unit: str, arrays: dict[str, int]) -> int:
    chunk = parse_unit(unit, arrays) if arrays else None
    return len(chunk) if chunk is not None else 1


def shown_name(unit: str, record: dict[str, Any]) -> str:
    """A chunk of an array by its tasks' names (``sim:7``, ``sim:0..63``), as the run view
    names tasks; a plain job by its id."""
    tasks = record.get("tasks")
    job = record.get("job")
    if not (isinstance(tasks, list) and len(tasks) == 2 and isinstance(job, str)):
        return unit
    from ..execution.tasks import task_set

    try:
        names = task_set(record["spec"], None, tasks[0])
        lo, hi = names.index(tasks[0]), names.index(tasks[1])
    except (KeyError, TypeError, ValueError):
        return unit
    return f"{job}:{lo}" if lo == hi else f"{job}:{lo}..{hi}"


class Clock:
    """The storage's clock for ages of files (a worker's heartbeat, a claim's lock); our own
    on a read-only pool. Measured through our probe at most once a minute, as workers do."""

    def __init__(self, pool: PoolLayout):
        self._clock: StorageClock | None = StorageClock(pool)

    def now(self) -> float:
        if self._clock is not None:
            try:
                return self._clock.now()
            except OSError:
                self._clock = None
        return time.time()


class Looker:
    """Reads what the live view shows (see the module docstring); ``why`` is the hook that
    says which queued jobs fit no live worker (views.why, when present)."""

    def __init__(self, pool: PoolLayout, run: RunLayout | None,
                 why: Callable[[RunLayout], list[str]] | None = None):
        self.pool = pool
        self.run = run
        self.clock = Clock(pool)
        self.why = why
        self._stamp: Any = None
        self._units: dict[str, tuple[str, str]] = {}
        self._status: dict[str, Any] | None = None
        self._claims: dict[str, dict[str, Any]] = {}  # running path -> shown row
        self._failed: dict[str, dict[str, Any]] = {}  # failed path -> shown row (never changes)
        self._failed_seen: list[str] = []  # failed units, in the order they were first seen
        self._workers_stamp: Any = None
        self._listed = 0.0
        self._moved = False  # the last look saw a run change
        self._slurm = False  # the run has Slurm jobs (RUN/slurm.json), as of the last change
        self._beats: dict[str, dict[str, Any]] = {}  # heartbeat name -> record
        self._started = time.monotonic()
        self._pool_rows: dict[str, tuple[Any, dict[str, Any]]] = {}
        self._root_stamp: Any = None
        self._run_dirs: list[str] = []
        self._took: list[float] = []
        self._note: str | None = None
        self._counts: dict[str, int] = {}
        self._by_state: dict[str, list[tuple[str, str]]] = {"running": [], "failed": []}
        self._failed_count = -1
        self._failed_stamp: Any = None
        self._took_read: set[str] = set()

    # ---- a run ------------------------------------------------------------------------
    def look(self) -> Sample:
        sample = Sample(at=time.monotonic())
        if self.run is None:
            sample.runs = self._pool_runs()
        else:
            try:
                self._run_part(sample, self.run)
            except (OSError, ValueError) as e:  # removed, or run.json broken under us
                if not os.path.exists(self.run.record):
                    sample.gone = f"{self.run.root}: the run was removed"
                    return sample
                sample.gone = f"{self.run.root}: {getattr(e, 'message', None) or e}"
                return sample
        sample.workers = self._workers()
        self._warn(sample)
        return sample

    def _run_part(self, sample: Sample, run: RunLayout) -> None:
        stamp = folders_stamp(run)  # a folder gone (the run removed) changes it too
        self._moved = stamp != self._stamp
        if stamp != self._stamp:
            read_run_record(run)  # a run removed or broken under us ends the view, said in one line
            arrays = arrays_of(run)
            self._units = snapshot(run, staged=True)
            counts = {s: 0 for s in JOB_STATES}
            by_state: dict[str, list[tuple[str, str]]] = {"running": [], "failed": []}
            for unit, (state, path) in self._units.items():
                counts[state] += _tasks(unit, arrays)
                if state in by_state:
                    by_state[state].append((unit, path))
            self._counts, self._by_state = counts, by_state
            self._status = None
            self._note = change_note(run)  # a resume grabs jobs out of the folders: their stamp changes
            self._slurm = os.path.exists(run.slurm_record)
            self._stamp = stamp
            self._durations(run)
        elif self._note:
            # A change staged in .coord/ goes from "in progress" to "interrupted" (or ends) with no
            # state folder changing: looked at again while there is one (a listing of .coord/)
            self._note = change_note(run)
        counts = self._counts
        if not counts["queued"] and not counts["running"]:
            if self._status is None:  # blocked and held told apart, and the run's end (graph.json)
                self._status = run_status(run, jobs=False)
            counts, sample.state = dict(self._status["counts"]), self._status["state"]
        else:
            sample.state = "running"
        sample.counts = dict(counts)
        sample.total = sum(counts.values())
        self._running(sample, run)
        self._failures(sample, run)
        sample.mean_duration = sum(self._took) / len(self._took) if self._took else None
        if self._note:
            sample.warnings.append(self._note)

    def _running(self, sample: Sample, run: RunLayout) -> None:
        running = sorted(self._by_state["running"])
        sample.more_running = max(0, len(running) - SHOWN)
        now = self.clock.now()
        keep: dict[str, dict[str, Any]] = {}
        for unit, path in running[:SHOWN]:
            row = self._claims.get(path)
            if row is None or row.get("since") is None:
                row = self._claim_row(run, unit, path)
            keep[path] = row
            since = row.get("since")
            sample.running.append(dict(row, seconds=None if since is None else max(0.0, now - since)))
        self._claims = keep

    def _claim_row(self, run: RunLayout, unit: str, path: str) -> dict[str, Any]:
        row: dict[str, Any] = {"job": unit, "host": None, "worker": None, "try": None, "since": None}
        try:
            record, _ = read_job(path, unit)
        except OSError:
            return row
        if record is None:
            return row
        row["try"] = len(record["tries"]) + 1
        row["job"] = shown_name(unit, record)
        token = token_of(path)
        lock = claim_lock(run, unit, token, record) if token else None
        if lock is not None:
            row.update(host=lock.get("host"), worker=lock.get("worker"))
            try:  # the lock's mtime: the storage's clock, as our Clock is
                row["since"] = os.stat(run.claim_record(unit, row["try"])).st_mtime
            except OSError:
                pass
        return row

    def _failures(self, sample: Sample, run: RunLayout) -> None:
        failed = self._by_state["failed"]
        if len(failed) != self._failed_count or self._failed_stamp != self._stamp:
            known = set(self._failed_seen)
            self._failed_seen += sorted(u for u, _ in failed if u not in known)
            present = {u for u, _ in failed}
            self._failed_seen = [u for u in self._failed_seen if u in present]
            self._failed_count, self._failed_stamp = len(failed), self._stamp
        for unit in reversed(self._failed_seen[-SHOWN:]):  # the newest first
            path = self._units[unit][1]
            row = self._failed.get(path)
            if row is None:
                row = self._failed[path] = self._failure_row(run, unit, path)
            sample.failures.append(row)

    def _failure_row(self, run: RunLayout, unit: str, path: str) -> dict[str, Any]:
        row: dict[str, Any] = {"job": unit, "exit_code": None, "reason": None, "stderr": None}
        try:
            record, problem = read_job(path, unit)
        except OSError:
            return row
        if record is None:
            row["reason"] = problem
            return row
        row["job"] = shown_name(unit, record)
        last = record["tries"][-1] if record["tries"] else {}
        row.update(exit_code=last.get("exit_code"), reason=record.get("reason") or last.get("reason"))
        err = log_path(run, last.get("stderr"))
        row["stderr"] = last_line(err) if err else None
        return row

    def _durations(self, run: RunLayout) -> None:
        """The mean duration of up to DURATIONS finished jobs (a chunk: its tasks' mean), each
        file read once, a few per look: enough for an ETA before any job ends under our eyes."""
        if len(self._took) < DURATIONS:
            done = [p for u, (s, p) in self._units.items() if s == "done" and p not in self._took_read]
            for path in sorted(done)[:4]:
                self._took_read.add(path)
                try:
                    record, _ = read_job(path, os.path.basename(path)[:-len(JOB_SUFFIX)])
                except OSError:
                    continue
                last = record["tries"][-1] if record and record["tries"] else {}
                results = last.get("results") if isinstance(last.get("results"), dict) else None
                column = results.get("duration") if results else None
                if isinstance(column, list):
                    values = [v for v in column if isinstance(v, (int, float))]
                    if values:
                        self._took.append(sum(values) / len(values))
                elif isinstance(last.get("duration"), (int, float)):
                    self._took.append(float(last["duration"]))

    # ---- a pool -----------------------------------------------------------------------
    def _pool_runs(self) -> list[dict[str, Any]]:
        """Every run's row; the pool is listed again only when its mtime changes (a run dir
        came or went), a run still being built is looked for by its run.json, a finished run
        (nothing queued or running) is looked at through its run.json alone (a resume
        rewrites it), a running one through its state folders."""
        try:
            root = os.stat(self.pool.root).st_mtime_ns
        except FileNotFoundError:
            return []
        if root != self._root_stamp:
            self._root_stamp = root
            try:
                names = os.listdir(self.pool.root)
            except FileNotFoundError:
                names = []
            self._run_dirs = sorted((n for n in names if not n.startswith(".") and n != "workers"), key=run_sort_key)
        rows = []
        self._moved = False
        for run_id in self._run_dirs:
            run = self.pool.run(run_id)
            try:
                st = os.stat(run.record)
            except OSError:
                self._pool_rows.pop(run_id, None)
                continue  # not published yet, or removed meanwhile
            cached = self._pool_rows.get(run_id)
            finished = cached is not None and cached[1].get("state") not in ("running", None)
            stamp: Any = (st.st_ino, st.st_mtime_ns) if finished else (folders_stamp(run), st.st_ino, st.st_mtime_ns)
            if cached is None or cached[0] != stamp:
                try:
                    status = run_status(run, jobs=False)
                except (OSError, ValueError) as e:
                    status = {"run_id": run_id, "state": "corrupt", "counts": {}, "reason": str(e)}
                self._moved = True
                done = status.get("state") not in ("running", None)
                stamp = (st.st_ino, st.st_mtime_ns) if done else (folders_stamp(run), st.st_ino, st.st_mtime_ns)
                cached = self._pool_rows[run_id] = (stamp, status)
            rows.append(cached[1])
        return rows

    # ---- workers ----------------------------------------------------------------------
    def _workers(self) -> list[dict[str, Any]]:
        try:
            stamp = os.stat(self.pool.workers_dir).st_mtime_ns
        except FileNotFoundError:
            self._beats = {}
            return []
        mono = time.monotonic()
        # Every worker rewrites its host's .watch file (and touches its probe) in workers/ every
        # few seconds, so its mtime moves all the time: listed again when the run (or a run of
        # the pool) changed too (a new worker claims), else at most every RELIST_WORKERS seconds;
        # a worker that went is seen at its heartbeat's next stat.
        if stamp != self._workers_stamp and (self._workers_stamp is None or self._moved
                                             or mono - self._listed >= RELIST_WORKERS):
            self._workers_stamp, self._listed = stamp, mono
            try:
                names = {n for n in os.listdir(self.pool.workers_dir) if n.endswith(JOB_SUFFIX) and not n.startswith(".")}
            except FileNotFoundError:
                names = set()
            self._beats = {n: r for n, r in self._beats.items() if n in names}
            for n in names - set(self._beats):
                try:
                    record = fsio.read_json(os.path.join(self.pool.workers_dir, n), HEARTBEAT_MAX)
                except (OSError, ValueError):
                    record = None
                self._beats[n] = record if isinstance(record, dict) else {}
        now = self.clock.now()
        rows = []
        for name, record in sorted(self._beats.items()):
            if self.run is not None and not serves(record, self.run.run_id):
                continue
            try:
                age = max(0.0, now - os.stat(os.path.join(self.pool.workers_dir, name)).st_mtime)
            except FileNotFoundError:
                self._workers_stamp = None  # it went: list again at the next look
                continue
            alive = not owner_dead_here(record) and (record.get("host") == fsio.HOST and "pid" in record
                                                     or age <= _patience(record))
            rows.append({"worker": name[:-len(JOB_SUFFIX)], "host": record.get("host"), "alive": alive,
                         "last_beat": age, "slots": record.get("slots")})
        return rows

    def _warn(self, sample: Sample) -> None:
        if self.run is None or sample.gone or sample.state != "running":
            return
        live = [w for w in sample.workers if w["alive"]]
        waiting, running = sample.counts.get("queued", 0), sample.counts.get("running", 0)
        if (waiting or running) and not live and time.monotonic() - self._started >= NO_WORKER_GRACE:
            held = f"{running} running belong to workers that look dead (a reaper requeues them); " if running else ""
            if self._slurm:  # its workers or jobs may wait in Slurm's queue
                sample.warnings.append(f"no live worker yet: {held}the run's Slurm jobs may still be pending "
                                       f"(see squeue; ids in {self.run.slurm_record})")
            else:
                sample.warnings.append(f"no live worker: {held}{waiting} queued wait; start "
                                       f"`exec-worker --pool {shlex.quote(self.pool.root)}`")
        if self.why is not None and waiting and live:
            # HOOK: which queued jobs fit no live worker (views.why, written apart): its lines as they are
            try:
                sample.warnings += self.why(self.run)[:SHOWN]
            except Exception as e:  # a hook must never end the view
                sample.warnings.append(f"cannot tell which jobs fit no worker: {e}")
