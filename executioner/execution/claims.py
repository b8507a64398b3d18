"""The claim walk of a worker: which runs to look at, which queued job to try next, and
whether to keep a claim once made. A mixin of :class:`executioner.execution.worker.Worker`, kept apart
because it is the worker's one hot path (see README "Speed" for what it costs per job).
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from typing import Any, Callable

from ..errors import ForeignFile
from ..protocol import store
from ..protocol.pieces import is_chunk
from ..protocol.scrub import folder_problem
from .events import Events
from ..protocol.layout import PoolLayout, RunLayout, run_sort_key
from ..liveness.clock import StorageClock
from ..liveness.reap import Reaper
from ..protocol.retry import first_start_of
from .placing import Placing, entry_of as _entry, priority_of as _priority

log = logging.getLogger("executioner.worker")
FIT_MARGIN = 90.0  # Slurm's warning signal comes 30 s before the end, or up to a minute earlier


class Claiming(Placing):
    """State and methods of the claim walk; the attributes are set by Worker.__init__."""

    pool: PoolLayout
    run_ids: list[str] | None
    owner: store.Owner
    reaper: Reaper
    poll_max: float
    dormant_every: float
    only_jobs: set[str] | Callable[[str], bool] | None
    ends_at: float | None
    slurm_dag: bool
    _lock: threading.Lock
    _events: Events | None
    _runs: list[str]
    _candidates: dict[str, list[str]]
    _cursor: dict[str, int]
    _lost_in_row: int
    _not_before: dict[tuple[str, str], float]
    _wont_fit: set[tuple[str, str]]
    _records: dict[str, dict[str, Any]]
    _known: set[str]
    _refreshed: float
    _listed: dict[str, float]
    _queued_empty: set[str]
    _event: bool
    _skipped: set[str]
    _rng: random.Random
    clock: StorageClock

    def _scope(self) -> list[str]:
        """Our runs, oldest first. A pool entry is examined once: new runs are new entries."""
        if self.run_ids is not None:
            return list(self.run_ids)
        try:
            names = os.listdir(self.pool.root)
        except FileNotFoundError:
            return []
        present = set(names)
        gone = [n for n in self._known if n not in present]
        for name in gone:  # removed: forgotten, so that a new run of that name is examined afresh
            self.forget(name)
        for name in names:
            if name not in self._known and not name.startswith(".") and name != "workers":
                if os.path.exists(self.pool.run(name).record):
                    self._known.add(name)  # else: not published yet, look again next time
        return sorted((n for n in self._known if n in present), key=run_sort_key)

    def _wanted(self, unit: str) -> bool:
        """Is this job (or chunk) one we may claim? Every one, unless ``only_jobs`` limits us."""
        only = self.only_jobs
        return only is None or (only(unit) if callable(only) else unit in only)

    def _dormant(self, run_id: str) -> bool:
        """Nothing queued and nothing running: only a resume or a missed promotion can
        change that, so such a run is looked at once every ``dormant_every`` seconds."""
        return run_id in self._queued_empty and self.reaper.running_seen.get(run_id, 1) == 0

    def _due(self, run_id: str, now: float) -> bool:
        if not self._dormant(run_id):
            return True
        return now - self._listed.get(run_id, -1e9) >= self.dormant_every

    # ---- claiming -----------------------------------------------------------------
    # The shared lists and dicts are touched under self._lock; every filesystem call
    # (listing, claim rename, lock write) happens outside it, so slots never queue
    # behind each other's I/O.
    def _claim_next(self) -> store.Claim | None:
        now = time.monotonic()
        with self._lock:
            refresh = now - self._refreshed >= self.poll_max or not self._runs or self._event
            self._refreshed = now if refresh else self._refreshed
            everything = self._event
            self._event = False
        if refresh:
            runs = [r for r in self._scope() if self._ours(r)]
            with self._lock:
                self._runs = runs
            for run_id in runs:
                if self._events is not None:
                    self._events.watch(self.pool.run(run_id).state_dir("queued"))
        with self._lock:
            runs = list(self._runs)
            reserved = self._reserved
        if reserved is not None:  # the starvation guard: only the reserved job may start
            runs = [reserved[0]] if reserved[0] in runs else []
            if not runs:
                self._unreserve(None)
        elif len(runs) > 1:  # higher run priority first (exec-submit --priority), then age
            runs.sort(key=lambda r: -_priority((self._records.get(r) or {}).get("priority")))
        for run_id in runs:
            if not everything and not self._due(run_id, now) and reserved is None:
                continue
            claim = self._claim_in(run_id)
            if claim is not None:
                return claim
        return None

    def _claim_in(self, run_id: str) -> store.Claim | None:
        run = self.pool.run(run_id)
        listings = 0
        with self._lock:  # jobs passed by for lack of room: tried first, once each, when room frees
            deferred = list(self._deferred.get(run_id, ()))
        while True:
            with self._lock:
                need_listing = run_id not in self._candidates
            if need_listing:
                if listings >= 3:
                    return None  # others keep beating us to every job: let them, for now
                names = sorted(store.list_jobs(run, "queued"))
                if self.only_jobs is not None:
                    names = [n for n in names if self._wanted(n)]
                listings += 1
                index = (self._records.get(run_id) or {}).get("placement")
                ordered = bool(index) and any(_priority(e.get("priority")) for e in index.values()
                                              if type(e) is dict)
                if ordered:  # higher priority first; shuffled within one, so workers rarely collide
                    keys = {n: (-_priority(_entry(self._records[run_id], n).get("priority")), self._rng.random())
                            for n in names}
                    names.sort(key=keys.__getitem__)
                if index:
                    self._note_short(run_id, names)
                with self._lock:
                    # RACE: another worker may take our reserved job: once a listing no
                    # longer shows it, the reservation ends (else we would wait for ever)
                    if self._reserved is not None and self._reserved[0] == run_id and (
                            self._reserved[1] not in names or self._reserved in self._wont_fit):
                        self._reserved = None  # taken by another worker (or gone): reserve no more
                    self._listed[run_id] = time.monotonic()
                    if run_id in self._deferred:  # gone from queued/: no longer waiting here
                        present = set(names)
                        gone = [d for d in self._deferred[run_id] if d not in present]
                        self._deferred[run_id] = [d for d in self._deferred[run_id] if d in present]
                        deferred = [d for d in deferred if d in present]
                        for d in gone:
                            self._short_since.pop((run_id, d), None)
                    if names:
                        self._queued_empty.discard(run_id)
                    else:
                        self._queued_empty.add(run_id)
                    self._candidates[run_id] = names
                    self._cursor[run_id] = 0 if ordered else self._rng.randrange(len(names)) if names else 0
                if not names:
                    return None
            job_id = deferred.pop(0) if deferred else self._pick(run_id)
            if job_id is None:
                with self._lock:
                    self._candidates.pop(run_id, None)
                if listings:
                    return None  # what a fresh listing held is taken or not due yet
                continue
            # RACE: our slots share one ledger: what a job needs is taken before the claim's
            # rename, so two slots never both count the same free CPU or GPU; a lost rename
            # gives it back. A limit's slot, pool-wide, is taken after the rename, with the
            # claim's token, just before its lock (Placing._take_slot, called by _take).
            held = self._place(run_id, job_id)
            if held is None:
                continue  # does not fit now (or here): the next candidate
            self._undefer(run_id, job_id)
            claim = store.claim(run, job_id, self.owner, refused=self.refused)
            if claim is None:
                self.ledger.give(held)
                self._unreserve((run_id, job_id))
                self._lost_race(run_id)
                continue
            try:
                held = self._check_needs(run_id, job_id, claim, held)
                if held is not None and self._take(run_id, job_id, claim):
                    with self._lock:
                        self._assigned[claim.token] = held
                        self._short_since.pop((run_id, job_id), None)
                    self._unreserve((run_id, job_id))
                    return claim
            except BaseException:
                self._release_slots(claim.token)
                store.release(claim)  # anything went wrong before it ran: give it back
                if held is not None:
                    self.ledger.give(held)
                raise
            if held is not None:
                self.ledger.give(held)

    def _take(self, run_id: str, job_id: str, claim: store.Claim) -> bool:
        """Keep a fresh claim (write its lock) or put it back if its retry is not due yet."""
        not_before = claim.record.get("not_before")
        # Clamped to the job's own delay: a writer whose clock is ahead can make a retry
        # early, never make it wait longer than its delay.
        now = self.clock.now() if not_before else 0.0
        wait = min(not_before - now, claim.record.get("retry_delay_s", 0.0)) if not_before else 0.0
        if wait > 0:
            # RACE: no lock written yet, and only we hold this claim name: put it back.
            store.release(claim)
            with self._lock:
                self._not_before[(run_id, job_id)] = time.monotonic() + wait
            return False
        record = claim.record
        limit = record["spec"].get("max_retry_time")
        tries = store.attempt_tries(record)
        if not_before and limit is not None and tries and now - first_start_of(tries) > limit:
            # RACE: not locked yet, the claim is ours alone. The retry was due within the
            # limit when decided, but no worker took it in time: no try starts past it.
            new = dict(record, not_before=None, reason=f"{tries[-1].get('reason') or 'failed'}; max_retry_time "
                       f"{limit:g} s passed before its retry could start")
            store.finish(claim, new, "failed")
            return False
        cached = self._records.get(run_id) or {}
        if record.get("attempt", 1) > cached.get("attempt", 1):
            self._records.pop(run_id, None)  # a resume since we read run.json: read it again
        if not self._ours(run_id):  # the resume moved the run to the Slurm backend (or back)
            store.release(claim)  # RACE: not locked yet, ours alone to put back
            with self._lock:
                self._runs = [r for r in self._runs if r != run_id]
                self._candidates.pop(run_id, None)
            return False
        if record.get("attempt", 1) > 1 and (record.get("held") or not store.deps_done(claim.run, record)):
            # RACE: a promotion decided before a resume (a sweep that read done/ earlier)
            # renamed the job the resume had just placed in waiting/: a held job, or one
            # whose upstream was rolled back. Not locked yet, so the claim is ours alone to
            # put back where it belongs. (Only a resume makes attempts > 1, so a run never
            # resumed pays nothing for this check.)
            store.transition(claim.run, job_id, "running", "waiting", token=claim.token)
            return False
        if not self._fits(claim.record["spec"]):
            store.release(claim)  # RACE: as above, not locked yet: ours alone to put back
            log.info("job %s of run %s: its timeout does not fit in the %.0f s left of our allocation; "
                     "left for another worker", job_id, run_id, (self.ends_at or 0) - time.time())
            with self._lock:
                self._wont_fit.add((run_id, job_id))
            return False
        with self._lock:
            self._lost_in_row = 0
            self._not_before.pop((run_id, job_id), None)
        run = claim.run
        logs = [run.log(job_id, claim.try_number, "out"), run.log(job_id, claim.try_number, "err")]
        if is_chunk(claim.record):
            logs.append(run.task_journal(job_id, claim.try_number))
        if not self._take_slot(run_id, claim):  # its limit is full (see Placing._take_slot)
            store.release(claim)  # RACE: not locked yet, ours alone to put back
            return False
        try:
            store.write_lock(claim, logs)
        except ForeignFile as e:  # logs/ swapped for a symlink since we took the run up
            self._release_slots(claim.token)
            store.release(claim)  # RACE: not locked: ours alone to put back
            self._leave_run(run_id, str(e))
            return False
        except OSError as e:  # a full disk, a quota, EIO: no lock, so no run; the job goes back as it was
            self._release_slots(claim.token)
            store.release(claim)  # RACE: not locked: ours alone to put back
            log.warning("job %s of run %s: cannot write its claim's lock (%s: %s); put back in queued/",
                        job_id, run_id, e.filename or claim.lock, e.strerror or e)
            return False
        return True

    def _leave_run(self, run_id: str, problem: str) -> None:
        """Stop working on a run whose folders are no longer safe to write into (say so once)."""
        log.warning("leaving run %s: %s", run_id, problem)
        with self._lock:
            self._skipped.add(run_id)
            self._records.pop(run_id, None)
            self._runs = [r for r in self._runs if r != run_id]
            self._candidates.pop(run_id, None)

    def _fits(self, spec: dict[str, Any]) -> bool:
        """Can this job's timeout (plus its kill grace and a margin) end before our allocation?"""
        if self.ends_at is None or spec.get("timeout") is None:
            return True
        return time.time() + spec["timeout"] + spec.get("kill_grace", 5.0) + FIT_MARGIN <= self.ends_at

    def _pick(self, run_id: str) -> str | None:
        """The next candidate: each worker walks the sorted listing from its own random
        cursor, so workers work in different regions of the queue and rarely collide."""
        now = time.monotonic()
        with self._lock:
            candidates = self._candidates.get(run_id) or []
            while candidates:
                i = self._cursor[run_id] % len(candidates)
                job_id = candidates.pop(i)
                self._cursor[run_id] = i
                if self._not_before.get((run_id, job_id), 0) <= now and (run_id, job_id) not in self._wont_fit:
                    return job_id
            return None

    def refused(self, run: RunLayout, job_id: str) -> None:
        """A claim quarantined the job's file (unreadable, refused): the job is in no folder
        now. Look for lost jobs at once rather than at the next periodic check, and count it
        as work pending, so that an idle exit waits for the job to be rebuilt and run."""
        with self._lock:
            self._refused.add(run.run_id)
        self._wake.set()

    def _lost_race(self, run_id: str) -> None:
        """Jump elsewhere in the listing; after two losses in a row, list again."""
        with self._lock:
            self._lost_in_row += 1
            candidates = self._candidates.get(run_id)
            if self._lost_in_row >= 2 or not candidates:
                self._lost_in_row = 0
                self._candidates.pop(run_id, None)
            elif self._cursor.get(run_id):  # 0: in priority order, kept
                self._cursor[run_id] = self._rng.randrange(len(candidates))

    def _ours(self, run_id: str) -> bool:
        record = self._record(run_id)
        return record is not None and (record.get("backend") == "slurm") == self.slurm_dag

    def _record(self, run_id: str) -> dict[str, Any] | None:
        if run_id not in self._records:
            run = self.pool.run(run_id)
            problem = folder_problem(run)
            if problem is not None:
                if run_id not in self._skipped:
                    self._skipped.add(run_id)
                    log.warning("skipping run %s: %s", run_id, problem)
                return None
            try:
                self._records[run_id] = store.read_run_record(run)
            except (OSError, ValueError) as e:
                if run_id not in self._skipped:  # say it once, not on every poll
                    self._skipped.add(run_id)
                    log.warning("skipping run %s: its run record is corrupt: %s", run_id, e)
                return None
        return self._records[run_id]
