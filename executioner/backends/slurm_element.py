"""Inside one element of an array's Slurm array (see :mod:`executioner.backends.slurm_arrays`).

``python -m executioner.backends.slurm_element POOL RUN JOB OFFSET COUNT SIZE HEARTBEAT
STALE_AFTER [--settled-ok]``: element ``k = OFFSET + SLURM_ARRAY_TASK_ID`` of
array ``JOB`` runs the tasks at positions ``k*SIZE .. (k+1)*SIZE-1`` (and whole chunk files
that start there, should a grown array have cut them differently) to their end:

1. it checks that the chunk files of its range that may still run name it (submitted held,
   released once the ids were written: a Slurm job from an older submission runs nothing);
2. it promotes its waiting chunks (its Slurm dependencies have ended, so their upstream is
   settled), then runs a worker limited to its chunks (claim, tasks on ``--slurm-cpus``
   slots, pieces, retries with their delays) until none is queued or running;
3. a waiting chunk that cannot be promoted is *blocked* when nothing could still change
   that: no unmet dependency has a file in ``queued/`` or ``running/`` (its Slurm job
   ended). Otherwise it waits a minute for a promotion a network filesystem shows late;
4. exit code 0 when every task of its range is done, else 1 (``afterok``/``aftercorr`` hold),
   except with ``--settled-ok`` (its array has ``aftercorr`` dependents): 0 once every task
   has settled, done, failed for good or blocked, so that the matching downstream element
   still runs the tasks whose upstream task is done. Stopped by Slurm (scancel, the time
   limit), its running tasks end in ``failed/`` (no other Slurm job would take them from
   ``queued/``; a resume runs them again) and it exits 1.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from ..errors import ExecutionerError
from ..execution.worker import Worker, slurm_job_id
from ..protocol import records, store
from ..protocol.layout import PoolLayout, RunLayout
from ..protocol.ready import Upstream, arrays_of
from ..protocol.units import Chunk, parse_unit
from .slurm import ID_WAIT_S, JobNotDone, SlurmError, _Stopper
from .slurm_arrays import Cut, units_of

log = logging.getLogger("executioner.slurm")
IDLE_S = 0.2  # the element's worker leaves this soon once idle: the element's own loop looks again


def upstream_gone(run: RunLayout, record: dict[str, object], arrays: dict[str, int]) -> str | None:
    """Why a waiting job or chunk that cannot be promoted never will be in this submission,
    or None if it still may. Only for the Slurm-DAG backend: our Slurm dependencies have
    ended, so an unmet dependency with no file in queued/ or running/ (failed, or blocked
    in waiting/) is settled for good."""
    # RACE: queued/ and running/ are listed before done/ (Upstream lists it lazily, later):
    # a unit moving running -> done in between is seen live (we wait and look again, never
    # wrongly blocked). Nothing enters queued/ after our listing: the Slurm jobs of our
    # dependencies have ended, and a resume cancels us before it requeues anything.
    live: set[str] = set()
    for state in ("queued", "running"):
        live.update(n.partition("@")[0] for n in store.list_jobs(run, state))
    spec = record.get("spec") if isinstance(record.get("spec"), dict) else {}
    each = set(spec.get("elementwise") or ())  # type: ignore[union-attr]
    tasks = record.get("tasks") if isinstance(record.get("tasks"), list) else None
    upstream = Upstream(run, arrays)
    unmet = []
    for dep in record.get("dependencies") or []:  # type: ignore[union-attr]
        count = arrays.get(dep)
        if count is None:
            if upstream.done.has(dep):
                continue
            if dep in live:
                return None
            unmet.append(dep)
            continue
        lo, hi = (tasks[0], tasks[1]) if tasks is not None and dep in each else (0, count - 1)
        if upstream.done.covers(dep, lo, hi):
            continue
        for name in live:
            c = parse_unit(name, arrays)
            if c is not None and c.job == dep and c.lo <= hi and c.hi >= lo:
                return None
        unmet.append(dep if (lo, hi) == (0, count - 1) else f"{dep}:{lo}..{hi}")
    return f"upstream failed or blocked: {', '.join(unmet)}" if unmet else None


class Element:
    """One element's range of tasks, and the loop that runs them."""

    def __init__(self, pool: str, run_id: str, job: str, cut: Cut, k: int, heartbeat: float,
                 stale_after: float, slots: int = 1) -> None:
        self.pool = pool
        self.slots = slots
        self.run = PoolLayout(pool).run(run_id)
        self.job = job
        self.cut = cut
        self.k = k
        self.lo, self.hi = cut.range(k)
        self.heartbeat = heartbeat
        self.stale_after = stale_after
        self.arrays = arrays_of(self.run)

    def mine(self, chunk: Chunk) -> bool:
        """Ours: a chunk of our array whose first task is in our range."""
        return chunk.job == self.job and self.lo <= chunk.lo <= self.hi

    def wanted(self, unit: str) -> bool:
        chunk = parse_unit(unit, self.arrays)
        return chunk is not None and self.mine(chunk)

    def listing(self) -> list[tuple[str, Chunk]]:
        """(state, chunk) of our chunks, and of every chunk holding a task of our range."""
        return [(s, c) for s, c in units_of(self.run, self.job, self.arrays,
                                            ("waiting", "queued", "running", "done", "failed"))
                if self.mine(c) or (c.lo <= self.hi and c.hi >= self.lo)]

    def check_owner(self, me: str, limit: float) -> None:
        """Every chunk of ours that may still run names us (waits ``limit`` s to see it)."""
        deadline = time.monotonic() + limit
        while True:
            others = []
            for state, chunk in self.listing():
                if state not in ("waiting", "queued") or not self.mine(chunk):
                    continue
                try:
                    record, _ = records.read_job(self.run.job(chunk.unit, state), chunk.unit)
                except OSError:
                    continue  # moved meanwhile: looked at again below if it matters
                recorded = ((record or {}).get("slurm") or {}).get("job_id")
                if recorded != me:
                    others.append(f"{chunk.unit} ({recorded or 'no Slurm job'})")
            if not others:
                return
            if time.monotonic() >= deadline:
                raise JobNotDone(f"array {self.job} of run {self.run.run_id}: chunks of element {self.k} belong to "
                                 f"other Slurm jobs, not to us ({me}): {', '.join(others[:5])}")
            time.sleep(0.5)

    def work(self, stopper: _Stopper) -> dict[str, int]:
        """Run our chunks until none can progress; the tasks of our range by state."""
        stuck_since = None
        while not stopper.signal:
            # RACE: the listing may be stale by the time the worker looks: it claims by
            # rename (one winner) and promotes through store.promote, so a stale view only
            # costs another turn of this loop.
            listing = self.listing()
            ours = [(s, c) for s, c in listing if self.mine(c)]
            if any(s in ("queued", "running") for s, _ in ours):
                stopper.run(Worker(self.pool, run_ids=[self.run.run_id], slots=self.slots, exit_when_idle=IDLE_S,
                                   heartbeat=self.heartbeat, stale_after=self.stale_after,
                                   only_jobs=self.wanted, slurm_dag=True))
                continue
            waiting = [c.unit for s, c in ours if s == "waiting"]
            if waiting and store.promote(self.run, waiting):
                continue
            pending = [c for c in (self._blocked(u) for u in waiting) if c is not None]
            if not pending and not any(s in ("queued", "running") for s, _ in listing):
                break
            stuck_since = stuck_since or time.monotonic()
            if time.monotonic() - stuck_since > ID_WAIT_S:
                raise JobNotDone(f"array {self.job} of run {self.run.run_id}: element {self.k} waits for "
                                 f"upstream tasks that are not done: {', '.join(pending[:5])}")
            time.sleep(1.0)
        counts = {"done": 0, "failed": 0, "waiting": 0, "queued": 0, "running": 0}
        for state, chunk in self.listing():
            counts[state] += len(chunk)
        return counts

    def _blocked(self, unit: str) -> str | None:
        """None when waiting chunk ``unit`` is blocked for good; else the unit (it may still run)."""
        try:
            record, _ = records.read_job(self.run.job(unit, "waiting"), unit)
        except FileNotFoundError:
            return unit  # moved meanwhile: look again
        if record is None:
            return None  # unusable: the worker quarantines it; nothing of ours to run
        if record.get("held"):
            return None  # kept waiting by --failed-only: not ours to run in this attempt
        return None if upstream_gone(self.run, record, self.arrays) else unit


def run_element(pool: str, run_id: str, job: str, offset: int, count: int, size: int, heartbeat: float,
                stale_after: float, settled_ok: bool) -> int:
    """The element's whole life; its exit code (see the module docstring)."""
    stopper = _Stopper()
    task = os.environ.get("SLURM_ARRAY_TASK_ID")
    if not task or not task.isdigit():
        raise SlurmError("not inside an element of a Slurm array (no SLURM_ARRAY_TASK_ID)")
    cut = Cut(count, size)
    k = offset + int(task)
    cpus = os.environ.get("SLURM_CPUS_PER_TASK") or "1"
    element = Element(pool, run_id, job, cut, k, heartbeat, stale_after, int(cpus) if cpus.isdigit() else 1)
    element.check_owner(slurm_job_id() or "", ID_WAIT_S)
    counts = element.work(stopper)
    lo, hi = element.lo, element.hi
    summary = ", ".join(f"{n} {s if s != 'waiting' else 'blocked'}" for s, n in counts.items() if n)
    if stopper.signal:
        raise JobNotDone(f"tasks {job}:{lo}..{hi} of run {run_id}: {stopper.reason}; {summary}")
    if counts["done"] and counts["done"] == sum(counts.values()):
        log.info("tasks %s:%d..%d of run %s: all done", job, lo, hi, run_id)
        return 0
    if settled_ok and not counts["queued"] and not counts["running"]:
        log.info("tasks %s:%d..%d of run %s settled (%s): exit 0, so that the matching elements downstream "
                 "run the tasks whose upstream task is done", job, lo, hi, run_id, summary)
        return 0
    raise JobNotDone(f"tasks {job}:{lo}..{hi} of run {run_id} did not all end done: {summary}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="exec-slurm-element", description=__doc__.splitlines()[0])
    p.add_argument("pool")
    p.add_argument("run_id")
    p.add_argument("job")
    p.add_argument("offset", type=int)
    p.add_argument("count", type=int)
    p.add_argument("size", type=int)
    p.add_argument("heartbeat", type=float)
    p.add_argument("stale_after", type=float)
    p.add_argument("--settled-ok", action="store_true")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return run_element(a.pool, a.run_id, a.job, a.offset, a.count, a.size, a.heartbeat, a.stale_after,
                           a.settled_ok)
    except (ExecutionerError, OSError) as e:  # one line in the element's .err, never a traceback
        print(f"exec-slurm-element: {e}".replace("\n", " "), file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
