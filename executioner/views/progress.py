"""``exec-submit --wait``: follow a run until nothing can progress."""

from __future__ import annotations

import os
import shlex
import sys
import time
from typing import Any, Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..protocol.layout import STATES, PoolLayout, RunLayout
from ..protocol import fsio
from ..liveness.reap import Reaper, owner_dead_here
from .status import run_status
from ..protocol.store import list_jobs, read_run_record


def _counts(run: RunLayout) -> dict[str, int]:
    return {s: len(list_jobs(run, s)) for s in STATES}


def serves(record: Any, run_id: str | None) -> bool:
    """Does the worker of this heartbeat record take jobs of ``run_id``? A worker started with
    ``--run`` lists its runs in ``"runs"``; ``null`` (or no list) means every run."""
    if run_id is None or not isinstance(record, dict):
        return True
    runs = record.get("runs")
    return not isinstance(runs, list) or run_id in runs


class LiveWorkers:
    """Counts the pool's live workers without trusting any clock but our own: a worker is
    live while its heartbeat mtime keeps changing (or we have watched it for less than
    ``stale_after``), unless it is a process of this host that is gone. With ``run_id``,
    only workers that may take that run's jobs count (not those pinned to other runs)."""

    def __init__(self, pool: PoolLayout, stale_after: float, run_id: str | None = None):
        self.pool = pool
        self.stale_after = stale_after
        self.run_id = run_id
        self._seen: dict[str, tuple[float, float]] = {}  # file -> (mtime, first seen, monotonic)

    def count(self, mono: float | None = None) -> int:
        mono = time.monotonic() if mono is None else mono
        try:
            names = [n for n in os.listdir(self.pool.workers_dir) if n.endswith(".json") and not n.startswith(".")]
        except FileNotFoundError:
            return 0
        live = 0
        for name in names:
            path = os.path.join(self.pool.workers_dir, name)
            try:
                stamp = os.stat(path).st_mtime
                record = fsio.read_json(path, 1 << 16)  # a heartbeat record is small
            except (OSError, ValueError):
                continue
            seen = self._seen.get(name)
            if seen is None or seen[0] != stamp:
                self._seen[name] = seen = (stamp, mono)
            if mono - seen[1] >= self.stale_after:
                continue  # its heartbeat has stood still for stale_after
            if not serves(record, self.run_id):
                continue  # pinned to other runs: it will never take this run's jobs
            live += not (isinstance(record, dict) and owner_dead_here(record))
        return live


class _Watchman:
    """While waiting: reap the run's stale claims, and say so when no worker is alive."""

    def __init__(self, run: RunLayout, stale_after: float, say: Callable[[str], None], reap: bool = True,
                 advisor: Any = None):
        self.pool = PoolLayout(os.path.dirname(run.root))
        self.reap = reap  # exec-status only reads: it neither reaps nor judges by its own watch
        self.advisor = advisor  # views.advice.Advisor: warnings about placement and workers
        self.run = run
        self.reaper = Reaper(self.pool, stale_after)
        self.live = LiveWorkers(self.pool, stale_after, run.run_id)
        self.stale_after = stale_after
        self.say = say
        self.every = max(1.0, stale_after / 6)
        self.last = -1e9
        self.warned = False
        # Workers just started (--workers, Slurm) need a moment to write their first heartbeat.
        self.quiet_until = time.monotonic() + min(5.0, stale_after)
        self.stranded = False  # every Slurm job of the run has ended, with work left: stop waiting
        self.slurm_checked = -1e9

    def check(self, counts: dict[str, int]) -> None:
        if time.monotonic() - self.last < self.every:
            return
        self.last = time.monotonic()
        if self.advisor is not None:
            for line in self.advisor.check():
                self.say(line)
        if not self.reap:
            return
        for job in self.reaper.reap(self.run):
            self.say(f"{self.run.run_id}: requeued {job}: its worker is gone")
        if counts["running"] == 0 and (counts["queued"] or counts["waiting"]):
            self._check_slurm()
        if counts["queued"] and time.monotonic() >= self.quiet_until and not self.live.count():
            if not self.warned:
                if os.path.exists(self.run.slurm_record):  # its workers or jobs may wait in Slurm's queue
                    self.say(f"no live worker yet: the run's Slurm jobs may still be pending (see squeue; "
                             f"ids in {self.run.slurm_record})")
                else:
                    self.say(f"no live worker: start `exec-worker --pool {shlex.quote(self.pool.root)}`")
                self.warned = True
        else:
            self.warned = False


    def _check_slurm(self) -> None:
        """A run whose jobs only Slurm runs (the DAG backend), with nothing running and none of
        its Slurm jobs left: what remains can never run without a resume. Say so, and stop."""
        if time.monotonic() - self.slurm_checked < 10.0 or not os.path.exists(self.run.slurm_record):
            return
        self.slurm_checked = time.monotonic()
        from ..backends.slurm import SlurmError, all_ids, job_states

        try:
            if read_run_record(self.run).get("backend") != "slurm":
                return
            if job_states(all_ids(self.run)):
                return
        except (SlurmError, OSError, ValueError):
            return  # Slurm not reachable from here: keep waiting on the run directory
        self.say(f"{self.run.run_id}: none of its Slurm jobs is left, and some jobs never ran; "
                 f"`exec-submit --pool {shlex.quote(self.pool.root)} --resume {self.run.run_id}` submits them")
        self.stranded = True


def wait_for_run(run: RunLayout, total: int, interval: float = 0.5, stream: Any = None,
                 stale_after: float = 60.0, reap: bool = True, advisor: Any = None) -> dict[str, Any]:
    """Block until the run is done or failed; show progress; return the final run status.

    Meanwhile (with ``reap``) it reaps the run's stale claims itself, and says when queued
    jobs have no live worker to run them, rather than waiting silently forever; ``advisor``
    (:class:`executioner.views.advice.Advisor`) adds its warnings (a job no live worker
    fits; no live worker for a minute).
    """
    stream = stream or sys.stderr
    console = Console(file=stream)
    watchman = _Watchman(run, stale_after, lambda line: console.print(line, markup=False, highlight=False, soft_wrap=True),
                         reap, advisor)
    if console.is_terminal:
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), console=console,
                      transient=False) as bar:
            task = bar.add_task(run.run_id, total=total, detail="")
            return _follow(run, interval, watchman, lambda c: bar.update(
                task, completed=c["done"] + c["failed"],
                detail=f"running {c['running']}  queued {c['queued']}  failed {c['failed']}"))
    last: list[str] = []

    def plain(c: dict[str, int]) -> None:
        line = " ".join(f"{k} {v}" for k, v in c.items())
        if line != (last[0] if last else None):
            print(f"{time.strftime('%H:%M:%S')} {run.run_id}: {line}", file=stream, flush=True)
            last[:] = [line]
    return _follow(run, interval, watchman, plain)


def _follow(run: RunLayout, interval: float, watchman: _Watchman, show: Any) -> dict[str, Any]:
    delay = interval
    while True:
        counts = _counts(run)
        show(counts)
        watchman.check(counts)
        if watchman.stranded:
            return run_status(run)
        if not counts["queued"] and not counts["running"]:
            status = run_status(run)  # reads waiting jobs to tell blocked from promotable
            if status["state"] != "running":
                show({s: counts[s] for s in STATES})
                return status
        time.sleep(delay)
        delay = min(delay * 1.2, 2.0)
