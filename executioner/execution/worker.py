"""The worker: claims queued jobs from the runs of a pool, runs up to K at once, records them.

``Worker(pool, ...).run()`` is the whole loop and can be driven in-process by tests;
``exec-worker`` is a thin wrapper around it.
"""

from __future__ import annotations

import logging
import os
import random
import secrets
import threading
import time
from typing import Any, Callable

import filelock

from ..protocol import fsio, slots, store
from .claims import Claiming
from .events import Events
from ..errors import PoolError, WorkflowError
from .execute import STOP_SIGNALS, TryResult, TryStatus, build_env, command_argv, missing_outputs, run_command
from ..protocol.layout import PoolLayout, RunLayout
from ..protocol.slots import OrphanFinder
from ..protocol.rebuild import LostFinder, coordinating, place_record
from ..liveness.clock import StorageClock
from ..liveness.reap import Reaper
from ..protocol.pieces import is_chunk, lost_pieces
from ..protocol.retry import losses
from .capacity import THREAD_VARS, Assignment, Capacity, Ledger, detect
from .chunk import ChunkTry
from ..liveness.tidy import Tidy
from ..protocol.scrub import Scrubber, clear_foreign_lease
from ..protocol.retry import decide

log = logging.getLogger("executioner.worker")


def slurm_job_id() -> str | None:
    """Our Slurm job, as squeue and scancel name it (``123`` or, in an array, ``120_3``)."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID")


def pool_is_shared(pool: PoolLayout) -> bool:
    """Whether other users' workers may serve this pool: its ``workers/`` folder (where every
    worker must beat), or the pool itself while that is missing, lets the group write. Then
    what we write must be the group's too (see fsio)."""
    for path in (pool.workers_dir, pool.root):
        try:
            return fsio.is_group_shared(path)
        except FileNotFoundError:
            continue
    return False


class Worker(Claiming):
    def __init__(self, pool: str, run_ids: list[str] | None = None, slots: int = 1,
                 exit_when_idle: float | None = None, max_jobs: int | None = None,
                 heartbeat: float = 10.0, stale_after: float = 60.0, poll_min: float = 0.2,
                 poll_max: float = 5.0, sweep_every: float = 10.0, dormant_every: float = 60.0,
                 only_jobs: set[str] | Callable[[str], bool] | None = None, ends_at: float | None = None,
                 slurm_dag: bool = False, capacity: Capacity | None = None, bind: bool = False,
                 reserve_after: float = 60.0):
        self.pool = PoolLayout(os.path.abspath(pool))
        fsio.share_with_group(pool_is_shared(self.pool))
        self.run_ids = run_ids
        self.slots = max(1, slots)
        if capacity is None:  # where we run; -j K alone keeps running K plain jobs at once
            found = detect()
            capacity = Capacity(max(found.cpus, self.slots), found.gpus, found.mem_gb, cores=found.cores)
        self.capacity = capacity
        self.ledger = Ledger(capacity, bind)
        self.reserve_after = reserve_after  # seconds a job that fits may be passed by (see Claiming._short)
        self._assigned: dict[str, Assignment] = {}  # claim token -> what its try holds
        self._short_since: dict[tuple[str, str], float] = {}
        self._reserved: tuple[str, str] | None = None
        self._deferred: dict[str, list[str]] = {}  # run -> jobs passed by for lack of room
        self._full: dict[tuple[str, str], float] = {}  # (run, limit) -> when a claim found no free slot
        self._slots: dict[str, list[tuple[RunLayout, str, int]]] = {}  # claim token -> the limit slots it holds
        self.orphans = OrphanFinder()  # held slots whose claim is gone (see executioner.protocol.slots)
        self.exit_when_idle = exit_when_idle
        self.max_jobs = max_jobs
        self.heartbeat = heartbeat
        self.stale_after = stale_after
        self.reaper = Reaper(self.pool, stale_after, persist=True)
        self.clock = StorageClock(self.pool)  # the storage's time (retry delays, max_retry_time, temp ages)
        self.tidy = Tidy(self.pool, stale_after=stale_after)
        self.commit_patience = 60.0  # seconds of failing writes before a result is handed back
        self.poll_min, self.poll_max = poll_min, poll_max
        self.sweep_every = sweep_every
        self.dormant_every = dormant_every
        # run only these jobs (a Slurm-DAG job runs exactly one), or the units a predicate
        # accepts (an element of a Slurm array runs the chunks of its range of tasks)
        self.only_jobs = only_jobs
        self.ends_at = ends_at  # wall clock: our allocation ends then; claim nothing that cannot fit
        self.slurm_dag = slurm_dag  # pool workers leave runs of the Slurm-DAG backend alone
        self._wont_fit: set[tuple[str, str]] = set()
        self.stop_reason = "worker stopped"
        slurm_job = slurm_job_id()
        self.in_slurm = slurm_job is not None  # a failed command waits a moment for our signal handler
        prefix = f"slurm{slurm_job}-" if slurm_job else ""  # a worker inside a Slurm job says so
        self.worker_id = f"{prefix}{fsio.HOST}-{os.getpid()}-{secrets.token_hex(2)}"
        self.owner = store.Owner.current(self.worker_id, dag=slurm_dag)
        self.claimed = 0
        self.finished = 0
        self._stop = threading.Event()  # claim no more
        self._slots_done = threading.Event()  # every slot has returned: stop beating
        self._abort = threading.Event()  # and stop the running commands too
        self._wake = threading.Event()
        self._lock = threading.Lock()
        # One permit per slot: a slot holds one while it claims and runs; a chunk borrows the
        # free ones to run several of its tasks at once (see executioner.execution.chunk).
        self._permits = threading.BoundedSemaphore(self.slots)
        self._busy = 0
        self._events: Events | None = None
        self._idle_since: float | None = None
        self._last_look_at = 0.0  # when the last look before an idle exit began
        self._swept_at = -1.0  # when a sweep last ended
        self._runs: list[str] = []
        self._candidates: dict[str, list[str]] = {}
        self._cursor: dict[str, int] = {}
        self._lost_in_row = 0
        self._sweeping = threading.Lock()
        self._not_before: dict[tuple[str, str], float] = {}  # (run, job) -> monotonic deadline
        self._records: dict[str, dict[str, Any]] = {}
        self._record_seen: dict[str, tuple[int, int, int]] = {}  # run -> run.json's (inode, mtime, size) when read
        self._last_sweep: dict[str, float] = {}
        self._last_scrub: dict[str, float] = {}
        self._last_reap: dict[str, float] = {}
        self.scrub_every = 120.0
        self.lost_every = 30.0  # how often a run is checked for jobs in no folder
        self._last_lost: dict[str, float] = {}
        self._refused: set[str] = set()  # runs where a claim quarantined a job file: look for lost jobs now
        self._known: set[str] = set()  # pool entries already looked at (runs or not)
        self._refreshed = -1e9
        self._listed: dict[str, float] = {}  # run id -> when its queued/ was last listed
        self._queued_empty: set[str] = set()
        self._event = False  # a local filesystem event arrived: look at every run now
        self._last_look = False
        self.scrubber = Scrubber()
        self.lost = LostFinder()
        self._skipped: set[str] = set()
        self._rng = random.Random()

    # ---- public -------------------------------------------------------------------
    def stop(self, reason: str | None = None) -> None:
        """Stop claiming; running commands are stopped and their jobs put back in queued/."""
        self.stop_reason = reason or self.stop_reason
        self._abort.set()
        self._stop.set()
        self._wake.set()

    def run(self) -> int:
        """Work until stopped, idle for ``exit_when_idle`` s, or ``max_jobs`` claimed; return jobs finished.
        PoolError if the pool's workers/ is a symlink: our heartbeat, probe and watch files
        would be made wherever it points."""
        if os.path.islink(self.pool.workers_dir):
            raise PoolError("is a symlink; no heartbeat, probe or watch file is written through it",
                            self.pool.workers_dir)
        fsio.make_dirs(self.pool.workers_dir)
        beat_path = self.pool.heartbeat(self.worker_id)
        self._beat_record = {
            "worker": self.worker_id, "host": self.owner.host, "pid": self.owner.pid,
            "pid_start": self.owner.pid_start, "started": time.time(), "heartbeat": self.heartbeat,
            "stale_after": self.stale_after, "runs": self.run_ids, "slots": self.slots,
            "capacity": self.capacity.describe()}
        fsio.atomic_write_json(beat_path, self._beat_record)
        # A first pass before claiming anything: a short-lived worker (--max-jobs 1, a Slurm
        # job of minutes) still continues the host's watch on other workers' claims.
        self._runs = [r for r in self._scope() if self._ours(r)]
        self.reap()
        beater = threading.Thread(target=self._housekeep, args=(beat_path,), daemon=True)
        beater.start()
        self._events = events = Events(self._on_event)
        events.watch(self.pool.root)  # new runs
        slots = [threading.Thread(target=self._slot, daemon=True, name=f"slot-{i}") for i in range(self.slots)]
        try:
            for t in slots:
                t.start()
            for t in slots:
                while t.is_alive():
                    t.join(0.1)  # short joins: signal handlers run in this thread, between joins
        finally:
            self._stop.set()
            self._wake.set()
            for t in slots:
                t.join()  # the heartbeat goes on until every command has stopped
            self._slots_done.set()
            beater.join(timeout=5)
            events.stop()
            self.reaper.watch.save(force=True)
            fsio.unlink_quietly(beat_path)
        return self.finished

    # ---- the slots ----------------------------------------------------------------
    def _slot(self) -> None:
        """One of K identical loops: claim a job, run it, record it; when idle, sweep and wait.

        Nothing that goes wrong here (a broken file, a full disk for a moment) ends the
        slot: it is logged and the loop goes on after a pause.
        """
        delay = self.poll_min
        while not self._stop.is_set():
            try:
                if self._run_one():
                    delay = self.poll_min
                    continue
                if self._max_jobs_reached():
                    return
                if self._sweep():
                    continue
                if self._idle_long_enough():
                    self.stop_claiming()
                    return
            except Exception:
                log.exception("worker %s: unexpected error; going on", self.worker_id)
            self._wake.wait(self._idle_wait(delay))
            self._wake.clear()
            delay = min(self.poll_max, delay * 2)

    def forget(self, run_id: str) -> None:
        """The run was removed: nothing of it is kept, and its name, if a new run takes it,
        is examined afresh (published only once it has a run.json)."""
        with self._lock:
            self._runs = [r for r in self._runs if r != run_id]
            self._known.discard(run_id)
            for cache in (self._candidates, self._cursor, self._records, self._last_sweep, self._last_scrub,
                          self._last_reap, self._last_lost, self._listed, self._deferred):
                cache.pop(run_id, None)  # type: ignore[attr-defined]
            for keyed in (self._not_before, self._short_since, self._full):
                for key in [k for k in keyed if k[0] == run_id]:
                    keyed.pop(key, None)  # type: ignore[attr-defined]
            self._wont_fit = {k for k in self._wont_fit if k[0] != run_id}
            self._refused.discard(run_id)
            self._queued_empty.discard(run_id)
        log.info("run %s: removed from the pool; forgotten", run_id)

    def _unghost(self, run: RunLayout) -> None:
        """Remove what our sweep's lease made of a run removed under it: RUN/waiting/ and RUN
        itself, each only if empty (rmdir never removes anything else)."""
        for path in (run.state_dir("waiting"), run.root):
            try:
                os.rmdir(path)
            except OSError:
                return  # not empty (a new run of that name is being made) or gone: leave it
        self.forget(run.run_id)

    def stop_claiming(self) -> None:
        """Idle exit: the other slots finish what they run, then stop too."""
        self._stop.set()
        self._wake.set()

    def _max_jobs_reached(self) -> bool:
        with self._lock:
            return self.max_jobs is not None and self.claimed >= self.max_jobs

    def _run_one(self) -> bool:
        """Claim one job and run it to the end; False when there was nothing to claim (or
        every slot's permit is lent to a chunk's tasks)."""
        if not self._permits.acquire(blocking=False):
            with self._lock:
                self._idle_since = None  # our slots are busy with a chunk: not idle
            return False
        try:
            return self._claim_and_run()
        finally:
            self._permits.release()

    def _claim_and_run(self) -> bool:
        with self._lock:
            if self.max_jobs is not None and self.claimed >= self.max_jobs:
                return False
            self.claimed += 1  # reserved, so K slots never claim more than max_jobs together
        try:
            claim = self._claim_next()
        except BaseException:
            with self._lock:
                self.claimed -= 1
            raise
        with self._lock:
            if claim is None:
                self.claimed -= 1
                return False
            self._busy += 1
            self._idle_since = None
        try:
            if is_chunk(claim.record):
                self._execute_chunk(claim)
            else:
                self._execute(claim)
        except OSError as e:  # the storage's fault (a full disk, EIO), not ours: one line, no traceback
            log.error("job %s of run %s: %s", claim.job_id, claim.run.run_id, e)
            self._fail_internal(claim, e)
        except Exception as e:
            log.exception("job %s of run %s: unexpected error", claim.job_id, claim.run.run_id)
            self._fail_internal(claim, e)
        finally:
            self._release_slots(claim.token)  # every path that ends a try (those below did it already)
            store.close_logs(claim)
            with self._lock:
                self._busy -= 1
                held = self._assigned.pop(claim.token, None)
            if held is not None:
                self.give_back(held)
        return True

    def _idle_long_enough(self) -> bool:
        with self._lock:
            busy = self._busy
        if self.exit_when_idle is None:
            return False
        pending = busy or self._work_pending()
        with self._lock:
            if pending:
                self._idle_since = None
                self._last_look = False
                return False
            self._idle_since = self._idle_since or time.monotonic()
            if time.monotonic() - self._idle_since < self.exit_when_idle:
                return False
            if not self._last_look:
                # Before leaving, one look at everything that the rate limits skip (dormant
                # runs, a sweep): another host may have made work ready meanwhile.
                self._last_look = True
                self._last_look_at = time.monotonic()
                self._event = True
                self._last_sweep.clear()
                return False
            # RACE: another slot may be in the middle of that last sweep (we found the sweep
            # taken): leave only once a sweep has ended since the last look began.
            return self._swept_at > self._last_look_at

    def _idle_wait(self, delay: float) -> float:
        now = time.monotonic()
        with self._lock:
            due = [nb - now for nb in self._not_before.values() if nb > now]
        return max(0.01, min([delay, *due]))

    def _work_pending(self) -> bool:
        """Jobs running in our runs (they may release dependents), retries not yet due, or
        jobs seen missing (a refused or broken job file quarantined): about to be rebuilt."""
        now = time.monotonic()
        with self._lock:
            if any(nb > now for nb in self._not_before.values()):
                return True
            runs = list(self._runs)
        if any(self.lost.pending(r) or self.orphans.pending(r) for r in runs) or self._refused:
            return True
        # A worker limited to some jobs waits only for those: an element of a Slurm array
        # must not outlive its own chunks while other elements' chunks run.
        return any(self._wanted(name.partition("@")[0])
                   for r in runs for name in store.list_jobs(self.pool.run(r), "running"))

    def _sweep(self) -> bool:
        """Promote waiting jobs whose dependencies are done; at most every sweep_every s per run."""
        if not self._sweeping.acquire(blocking=False):
            return False  # another slot of ours is sweeping
        try:
            with self._lock:
                runs = list(self._runs)
            promoted = False
            for run_id in runs:
                now = time.monotonic()
                with self._lock:
                    refused = run_id in self._refused
                dormant = self._dormant(run_id) and not self.lost.pending(run_id) and not self.orphans.pending(run_id)
                every = 0.0 if refused else self.dormant_every if dormant else self.sweep_every
                if now - self._last_sweep.get(run_id, -1e9) < every:
                    continue
                self._last_sweep[run_id] = now
                run = self.pool.run(run_id)
                if not os.path.exists(run.record):  # removed (rm -r, --delete) under us
                    self.forget(run_id)
                    continue
                # One sweeper per run at a time; a lease, so a dead sweeper's marker expires.
                # Overlap after expiry is harmless: promotion is idempotent.
                lease_path = os.path.join(run.state_dir("waiting"), ".sweep.lock")
                lease = filelock.SoftFileLease(lease_path, lease_duration=30.0, timeout=0, mode=fsio.file_mode())
                try:
                    # RACE: filelock makes the lease's missing parents: a run removed between
                    # the check above and here comes back as a ghost RUN/waiting/; it is
                    # removed again below (see _unghost).
                    lease.acquire()
                except (filelock.Timeout, OSError) as e:
                    # Another sweeper holds it (over sshfs an O_EXCL loser may see EPERM); or
                    # something that is no lease sits at its name, which filelock never takes
                    # over: moved to quarantine/ (a symlink at once), then we sweep next pass.
                    if not isinstance(e, (filelock.Timeout, PermissionError)):
                        log.info("run %s: no sweep now: %s", run_id, e)
                    if clear_foreign_lease(run, lease_path, self.reaper.watch, time.monotonic()):
                        self._last_sweep.pop(run_id, None)
                    continue
                try:
                    moved = store.sweep(run)
                    if refused or self.lost.pending(run_id) or \
                            now - self._last_lost.get(run_id, -1e9) >= self.lost_every:
                        self._last_lost[run_id] = now
                        with self._lock:
                            self._refused.discard(run_id)  # from now on the finder's pending says it
                        expected = int((self._records.get(run_id) or {}).get("jobs") or 0)
                        if self.lost.check(run, expected, now):
                            moved += store.sweep(run)  # a rebuilt job whose dependencies are done
                    if "limits" in (self._records.get(run_id) or {}):
                        self._free_orphans(run, now)
                    if now - self._last_scrub.get(run_id, -1e9) >= self.scrub_every * (
                            5 if self._dormant(run_id) else 1):
                        self._last_scrub[run_id] = now
                        # done/failed files are read (shape checked) only once the run is
                        # quiet: while it runs they are names in a listing, nothing more
                        self.scrubber.scrub(run, self.clock.now(), contents=self._dormant(run_id))
                finally:
                    lease.release()
                    if not os.path.exists(run.record):
                        self._unghost(run)
                if moved:
                    with self._lock:
                        self._candidates.pop(run_id, None)
                        self._queued_empty.discard(run_id)
                    promoted = True
            with self._lock:
                self._swept_at = time.monotonic()
            return promoted
        finally:
            self._sweeping.release()

    def _free_orphans(self, run: RunLayout, now: float) -> None:
        """Free the slots held by claims no longer in running/ (seen so twice), and remove
        the free ones a lowered limit retired; run.json is read again for the limits' N."""
        try:
            limits = slots.limits_of(store.read_run_record(run))
            if self.orphans.check(run, limits, now):
                with self._lock:
                    self._full = {k: v for k, v in self._full.items() if k[0] != run.run_id}
        except (OSError, ValueError) as e:
            log.warning("run %s: cannot look at its limits' slots: %s", run.run_id, e)

    # ---- running ------------------------------------------------------------------
    def give_back(self, held: Assignment) -> None:
        """Return what a try held; wake the slots if a job waits for room (only then: a
        wake-up costs an idle slot a poll)."""
        self.ledger.give(held)
        with self._lock:
            waiting = self._reserved is not None or any(self._deferred.values())
        if waiting:
            self._wake.set()

    def placed_env(self, held: Assignment | None, base: dict[str, str] | None = None,
                   spec: dict[str, Any] | None = None) -> tuple[dict[str, str], dict[str, str]]:
        """The environment a command starts from, and the variables of its placement that
        nothing may override: thread counts (OMP_NUM_THREADS, ...) go in the first, which the
        workflow's env may change; its GPUs and EXEC_RESOURCES in the second. Thread counts
        only for a job that declares its ``cpus`` (or one pinned to its cores by --bind): a
        job asking nothing keeps the threads it always had, rather than one."""
        base = dict(os.environ if base is None else base)
        if held is None:
            return base, {}
        placed = held.env(bool(self.capacity.gpus))
        declared = "cpus" in ((spec or {}).get("resources") or {}) or bool(held.cores)
        for name in THREAD_VARS:
            if name in placed:
                value = placed.pop(name)
                if declared:
                    base[name] = value
        return base, placed

    def _execute(self, claim: store.Claim) -> None:
        run, record = claim.run, claim.record
        spec = record["spec"]
        run_record = self._records[run.run_id]  # read again by _take if a resume came since
        try_number = claim.try_number
        cwd = os.path.normpath(os.path.join(run_record["workdir"], spec["workdir"] or ""))
        out, err = run.log(claim.job_id, try_number, "out"), run.log(claim.job_id, try_number, "err")
        held = self._assigned.get(claim.token)
        base, placed = self.placed_env(held, spec=spec)
        try:
            env = build_env(base, [run_record["env"], spec["env"]], {
                "EXEC_RUN_ID": run.run_id, "EXEC_JOB_ID": claim.job_id, "EXEC_TRY": str(try_number),
                "EXEC_ATTEMPT": str(record.get("attempt", 1)),
                "EXEC_RUN_DIR": run.root, "EXEC_CLAIM": claim.token, **placed})
            argv = command_argv(spec["command"], env)
        except WorkflowError as e:  # a value this worker's environment makes too large: the job's failure
            now = time.time()
            result = TryResult("failed", None, None, now, now, str(e))
        else:
            out_fd, err_fd = claim.log_fds[:2] if len(claim.log_fds) == 2 else (out, err)
            result = run_command(argv, cwd, env, out_fd, err_fd, spec["timeout"], spec["kill_grace"], claim.token,
                                 keep_going=lambda: not self._abort.is_set() and claim.still_held(),
                                 tick=min(self.heartbeat, 1.0), cores=held.cores if held else ())
        self._release_slots(claim.token)  # the command has ended: its limit's slot is free now
        status: TryStatus = result.status
        reason = result.reason
        if status == "failed" and not self._abort.is_set() and (result.signal in STOP_SIGNALS or self.in_slurm):
            # Slurm signals every process of a job at once (scancel, preemption, the time
            # limit): the command may die of it, or catch it and exit, before our own
            # handler, which runs in the main thread, has marked us as stopping. Give it a
            # moment to say so.
            self._abort.wait(0.5)
        if status in ("failed", "timeout") and self._abort.is_set():
            status = "lost"  # stopped together with us: handed back below, not a failure
        if status == "done":
            missing = missing_outputs(cwd, spec["outputs"])
            if missing:
                status, reason = "failed", f"missing outputs: {', '.join(missing)}"
        if status == "lost":
            if not claim.still_held():
                if self._removed(claim):  # exec-submit --delete --force, rm -r
                    return
                log.warning("lost %s of run %s (try %d): claim lost; wrote nothing", claim.job_id, run.run_id,
                            try_number)
                self._vanished(claim, "its job file disappeared from running/ while it ran")
                return
            status, reason = "preempted", f"{self.stop_reason}; job put back in queued/"
            if self.slurm_dag:  # no other Slurm job would take it from queued/: see slurm.dag_entry
                reason = f"{self.stop_reason}; `exec-submit --resume` runs it again"
        entry = store.try_record(
            try_number, record.get("attempt", 1), status, start=result.start, end=result.end, worker=self.worker_id,
            host=self.owner.host, worker_pid=self.owner.pid, pid=result.pid, exit_code=result.exit_code,
            signal=result.signal, reason=reason, stdout=os.path.relpath(out, run.root),
            stderr=os.path.relpath(err, run.root))
        if held is not None and (held.gpus or held.cores or dict(held.needs) != {"cpus": 1}):
            entry["resources"] = held.record()  # which GPUs and cores it had (a plain job: nothing new)
        # max_retry_time is measured on one clock, the storage's, whichever worker decides
        entry["start_storage"] = round(result.start + self.clock.offset(), 6)
        new = dict(record, tries=[*record["tries"], entry], last_exit_code=result.exit_code,
                   not_before=None)
        if status == "done":
            if self._finish(claim, new, "done"):
                log.info("completed %s of run %s (try %d, claim %s)", claim.job_id, run.run_id,
                         try_number, claim.token)
                self._count_finished()
                if store.promote(run, record["dependents"]):
                    with self._lock:  # we made work: the run is not dormant, whatever we last saw
                        self._queued_empty.discard(run.run_id)
            return
        ended = f"{claim.job_id} of run {run.run_id} (try {try_number}, {reason or status})"
        if status == "preempted":
            lost, max_lost = losses(store.attempt_tries(new)), spec.get("max_lost", 3)
            if lost >= max_lost:
                new["reason"] = (f"preempted {lost + 1} times in a row (max_lost {max_lost}): a job that signals "
                                 "its own worker, or one longer than any worker's allocation")
                if self._finish(claim, new, "failed"):
                    self._count_finished()
                    log.info("preempted %s: failed, %s", ended, new["reason"])
            elif self.slurm_dag:
                new["reason"] = reason
                if self._finish(claim, new, "failed"):
                    log.info("preempted %s: failed", ended)
            elif self._finish(claim, new, "queued"):
                log.info("preempted %s: put back in queued/", ended)
            return
        decision = decide(spec, store.attempt_tries(new), self.clock.now(), self._rng)
        if decision.retry:
            # not_before is in the storage's clock, so any worker, whatever its own clock,
            # waits out the same delay; we remember it on our monotonic clock.
            new["not_before"] = self.clock.now() + decision.delay
            new["retry_delay_s"] = decision.delay
            if self._finish(claim, new, "queued"):
                with self._lock:
                    self._not_before[(run.run_id, claim.job_id)] = time.monotonic() + decision.delay
                log.info("%s %s: queued for a retry in %.1f s", status, ended, decision.delay)
            return
        new["reason"] = f"{reason}; {decision.reason}"
        if self._finish(claim, new, "failed"):
            self._count_finished()
            log.info("%s %s: failed/, %s", status, ended, decision.reason)

    def _execute_chunk(self, claim: store.Claim) -> None:
        """Run a chunk's tasks and commit its pieces (see executioner.execution.chunk)."""
        run = claim.run
        pieces = ChunkTry(self, claim).run()
        if pieces is None:
            log.warning("chunk %s of run %s: claim lost; its finished tasks are in its journal", claim.job_id,
                        run.run_id)
            return
        if not self._finish(claim, None, "pieces", pieces):
            return
        settled = sum(r["tasks"][1] - r["tasks"][0] + 1 for state, _, r in pieces if state in ("done", "failed"))
        with self._lock:
            self.finished += settled
        log.info("chunk %s of run %s (try %d): %s", claim.job_id, run.run_id, claim.try_number,
                 ", ".join(f"{unit} -> {state}" for state, unit, _ in pieces))
        for state, unit, record in pieces:
            if state == "queued" and record.get("not_before"):
                with self._lock:
                    self._not_before[(run.run_id, unit)] = time.monotonic() + max(
                        0.0, record["not_before"] - self.clock.now())
        # A failed task settles its element-wise dependents' readiness as a done one does.
        if any(state in ("done", "failed") for state, _, _ in pieces) and store.promote(run, claim.record["dependents"]):
            with self._lock:
                self._queued_empty.discard(run.run_id)

    def _finish(self, claim: store.Claim, record: dict[str, Any] | None, state: str,
                pieces: list[tuple[str, str, dict[str, Any]]] | None = None) -> bool:
        """Move our claim on; if it was taken away meanwhile, say so and write nothing.

        A write that fails (a full disk, a quota, EIO for a moment) is tried again with
        backoff for ``commit_patience`` seconds; then the claim is handed back to queued/
        untouched (a rename needs no space), so the job runs again instead of sitting in
        running/ under a live worker forever. That costs the job nothing: no try recorded.
        """
        delay, deadline = 0.5, time.monotonic() + self.commit_patience
        while True:
            try:
                if store.finish_pieces(claim, pieces) if pieces else store.finish(claim, record or {}, state):
                    return True
                log.warning("job %s of run %s: claim %s was taken away (requeued as stale?); its result "
                            "is not recorded", claim.job_id, claim.run.run_id, claim.token)
                self._vanished(claim, "its job file disappeared from running/ before its result was recorded")
                return False
            except OSError as e:
                if self._removed(claim):
                    return False
                if time.monotonic() >= deadline:
                    return self._hand_back(claim, e)
                log.warning("job %s of run %s: cannot record its result (%s); trying again in %.1f s",
                            claim.job_id, claim.run.run_id, e, delay)
            if self._abort.wait(delay):
                deadline = 0.0  # stopping: hand it back now
            delay = min(delay * 2, 10.0)

    def _removed(self, claim: store.Claim) -> bool:
        """The claim's run was removed (exec-submit --delete --force, rm -r): say so once and
        forget the run, rather than retrying writes into a folder that is gone."""
        if os.path.exists(claim.run.record):
            return False
        log.warning("job %s of run %s: the run was removed; nothing recorded", claim.job_id, claim.run.run_id)
        self.forget(claim.run.run_id)
        return True

    def _hand_back(self, claim: store.Claim, error: OSError) -> bool:
        """Give the claim back untouched after its result could not be written: one rename."""
        back = "failed" if self.slurm_dag else "queued"  # no Slurm job would take it from queued/
        while True:
            try:
                if store.transition(claim.run, claim.job_id, "running", back, token=claim.token):
                    log.error("job %s of run %s: its result could not be written (%s); handed back to %s/ "
                              "without a record of this try", claim.job_id, claim.run.run_id, error, back)
                return False
            except OSError as e:
                if self._removed(claim):
                    return False
                log.error("job %s of run %s: cannot hand it back either (%s); trying again", claim.job_id,
                          claim.run.run_id, e)
            if self._abort.wait(10.0):
                return False  # stopping: the reaper requeues it once our heartbeat stops

    def _vanished(self, claim: store.Claim, why: str) -> None:
        """Our claim is gone. Usually a reaper or a resume took it (the job is then in another
        folder, or in a private or staging folder on its way); if the job is nowhere, twice,
        it was deleted (say, by the job itself): put it back with our record and a lost try,
        so that max_lost ends a job that keeps deleting itself.

        Not for a chunk of an array: whoever took it placed it as pieces under other names
        (its unit name is then nowhere, rightly), and tasks truly missing are found by
        coverage and rebuilt (executioner.protocol.rebuild.array_gaps)."""
        if is_chunk(claim.record) or not os.path.exists(claim.run.record):
            # RACE: a reaper split our chunk while we committed; recreating it by its old
            # name would run (and complete) its tasks twice. (A removed run: nothing to put back.)
            return
        for pause in (0.0, 0.5):
            time.sleep(pause)
            state, still = store.still_look(claim.run, lambda: store.state_of(claim.run, claim.job_id))
            if state is not None or not still or coordinating(claim.run):
                return
        record = claim.record
        entry = store.try_record(claim.try_number, record.get("attempt", 1), "lost", start=claim.claimed_at,
                                 end=time.time(), worker=self.worker_id, host=self.owner.host,
                                 worker_pid=self.owner.pid, reason=why)
        new = dict(record, tries=[*record["tries"], entry], not_before=None)
        lost, max_lost = losses(store.attempt_tries(new)), record["spec"].get("max_lost", 3)
        dst = "failed" if lost >= max_lost or self.slurm_dag else "queued"
        if dst == "failed":
            new["reason"] = f"lost {lost} times (max_lost {max_lost}); last: {why}"
        if place_record(claim.run, claim.job_id, new, dst):
            log.warning("job %s of run %s: %s; put back in %s/", claim.job_id, claim.run.run_id, why, dst)

    def _count_finished(self) -> None:
        with self._lock:
            self.finished += 1

    def _fail_internal(self, claim: store.Claim, error: Exception) -> None:
        """An error of ours while handling a job (not the job's failure): recorded as a
        ``lost`` try, which uses up no retry; max_lost ends a job that causes it every time."""
        record = claim.record
        why = f"internal error in the worker: {error!r}"[:2000]
        if is_chunk(record):
            # Task by task, from this try's journal, as a recoverer would: finished tasks keep
            # their result, the others get the lost try (max_lost counts it for each).
            lock = {"try": claim.try_number, "claimed_at": claim.claimed_at, "worker": self.worker_id,
                    "host": self.owner.host, "pid": self.owner.pid}
            try:
                pieces = lost_pieces(claim.run, record, why, lock, slurm_dag=self.slurm_dag)
                self._finish(claim, None, "pieces", pieces)
            except Exception:
                log.exception("chunk %s of run %s: could not record the error", claim.job_id, claim.run.run_id)
            return
        entry = store.try_record(claim.try_number, record.get("attempt", 1), "lost", start=claim.claimed_at,
                                 end=time.time(), worker=self.worker_id, host=self.owner.host,
                                 worker_pid=self.owner.pid, reason=why)
        new = dict(record, tries=[*record["tries"], entry], not_before=None)
        lost, max_lost = losses(store.attempt_tries(new)), record["spec"].get("max_lost", 3)
        state = "queued"
        if lost >= max_lost or self.slurm_dag:
            state, new["reason"] = "failed", f"lost {lost} times (max_lost {max_lost}); last: {why}"
        try:
            if self._finish(claim, new, state) and state == "failed":
                self._count_finished()
        except Exception:
            log.exception("job %s of run %s: could not record the error", claim.job_id, claim.run.run_id)

    # ---- liveness -----------------------------------------------------------------
    def _housekeep(self, path: str) -> None:
        """Every heartbeat: show we are alive, and requeue the claims of workers that are not.

        It beats until every slot has finished (a stopping worker still holds claims while
        its commands shut down), and nothing that goes wrong ends it.
        """
        while not self._slots_done.wait(self.heartbeat):
            try:
                # No explicit time: whatever clock stamps it, only its changing counts. Only
                # through our own file: a link planted in its place is never touched through.
                fsio.touch(path)
            except FileNotFoundError:  # or ForeignFile: a link planted in its place
                try:  # someone cleaned workers/ (or planted a link): put our heartbeat back
                    fsio.make_dirs(self.pool.workers_dir)
                    fsio.atomic_write_json(path, self._beat_record)
                except OSError as e:
                    log.warning("heartbeat %s: %s", path, e)
            except OSError as e:
                log.warning("heartbeat %s: %s", path, e)
            if not self._stop.is_set():
                self.reap()
                self.tidy.maybe(self.reaper.watch, time.monotonic(), self.clock.now)

    def reap(self) -> int:
        """One reaping pass over our runs; never raises. Returns the number of jobs moved."""
        moved = 0
        with self._lock:
            runs = list(self._runs)
        now = time.monotonic()
        for run_id in runs:
            if self._dormant(run_id) and now - self._last_reap.get(run_id, -1e9) < self.dormant_every:
                continue
            self._last_reap[run_id] = now
            try:
                from ..coordinator.change import settle_if_abandoned

                # A resume that crashed (or froze past the lock's limit) is settled here, by
                # whichever worker finds its lock abandoned, not only by the next resume.
                settle_if_abandoned(self.pool.run(run_id), self.reaper.watch, now)
                found = self.reaper.reap(self.pool.run(run_id))
            except Exception:
                log.exception("reaping run %s", run_id)
                continue
            if found:
                moved += len(found)
                with self._lock:
                    self._candidates.pop(run_id, None)
                    self._queued_empty.discard(run_id)
                self._wake.set()
        return moved

    def _on_event(self) -> None:
        with self._lock:
            self._event = True
        self._wake.set()
