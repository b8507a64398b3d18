"""Placement in the claim walk: which queued job fits this worker now, the order of
priorities, and the reservation that keeps a big job from starving behind small ones.
A mixin of :class:`executioner.execution.claims.Claiming` (see README "Placement:
resources, priorities, tags"); what the worker has and holds is
:class:`executioner.execution.capacity.Ledger`.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from typing import Any

from ..protocol import placement, slots, store
from ..protocol.layout import PoolLayout, RunLayout
from .capacity import Assignment, Ledger

log = logging.getLogger("executioner.worker")
MAX_DEFERRED = 64  # jobs of a run remembered as passed by for lack of room (tried first when room frees)


def priority_of(value: Any) -> int:
    """A priority from run.json or its index; anything but a whole number counts as 0."""
    return value if type(value) is int else 0


def entry_of(run_record: dict[str, Any], unit: str) -> dict[str, Any]:
    """The placement index entry of a unit: its own, or its array's for a chunk (``sim.0-63``)."""
    found = placement.lookup(run_record, unit)
    job, dot, tail = unit.rpartition(".")
    if not found and dot and tail[:1].isdigit():
        found = placement.lookup(run_record, job)
    return found


class Placing:
    """State and methods of placement; the attributes are set by Worker.__init__."""

    ledger: Ledger
    reserve_after: float
    slurm_dag: bool
    _lock: threading.Lock
    _wake: threading.Event
    _records: dict[str, dict[str, Any]]
    _candidates: dict[str, list[str]]
    _wont_fit: set[tuple[str, str]]
    _assigned: dict[str, Assignment]
    _short_since: dict[tuple[str, str], float]
    _reserved: tuple[str, str] | None
    _deferred: dict[str, list[str]]
    _full: dict[tuple[str, str], float]
    _slots: dict[str, list[tuple[RunLayout, str, int]]]
    pool: PoolLayout
    poll_min: float
    _rng: random.Random

    def _place(self, run_id: str, job_id: str) -> Assignment | None:
        """Take what the job needs of our free capacity, as the run's placement index says
        (no read of its file: a claim would read it anyway), or None to pass it by: it asks
        for a tag or more of something than we have (never ours), or more than is free now
        (later), or another job holds the reservation."""
        record = self._records.get(run_id) or {}
        entry = entry_of(record, job_id) if "placement" in record else {}
        needs = self._fitted(entry.get("needs") or placement.DEFAULT_NEEDS)
        key = (run_id, job_id)
        with self._lock:
            if self._reserved is not None and self._reserved != key:
                return None
        if entry.get("limit") and not self._limit_open(run_id, entry["limit"]):
            return None  # its limit was full at the last look: not claimed (see _limit_open)
        why = self._never(needs, entry.get("tags"))
        if why is not None:
            log.info("job %s of run %s: needs %s: left for another worker", job_id, run_id, why)
            with self._lock:
                self._wont_fit.add(key)
            return None
        held = self.ledger.take(needs)
        if held is None:
            with self._lock:
                waiting = self._deferred.setdefault(run_id, [])
                if job_id not in waiting and len(waiting) < MAX_DEFERRED:
                    waiting.append(job_id)
            if self.ledger.fits(placement.DEFAULT_NEEDS):
                self._short(key)  # a one-CPU job could start now and overtake it (a full worker overtakes no one)
        return held

    def _limit_open(self, run_id: str, name: Any) -> bool:
        """May a job of limit ``name`` be claimed? Yes, unless a claim of ours found every
        slot held; then one listing of its free/ at most every ``poll_min`` seconds says
        when one is free again (our own release says so at once). A run whose jobs name no
        limit never gets here: the plain path lists and stats nothing under limits/."""
        key = (run_id, str(name))
        now = time.monotonic()
        with self._lock:
            full_at = self._full.get(key)
            if full_at is None:
                return True
            if now - full_at < self.poll_min:
                return False
            self._full[key] = now  # looked at now, whatever we find
        if slots.has_free(self.pool.run(run_id), str(name), slots.limits_of(self._records.get(run_id) or {}).get(
                str(name))):
            with self._lock:
                self._full.pop(key, None)
            return True
        return False

    def _take_slot(self, run_id: str, claim: store.Claim) -> bool:
        """Take a slot of the claimed job's limit with the claim's token (after the claim's
        rename, before its lock: nothing has started), or False when none is free (the
        caller puts the claim back: ours alone, not locked yet). A job of no limit: True."""
        name = slots.limit_of(claim.record["spec"])
        if name is None:
            return True
        n = slots.limits_of(self._records.get(run_id) or {}).get(name)
        i = slots.take(claim.run, name, claim.token, n, self._rng)
        if i is None and not os.path.isdir(claim.run.slots_free(name)) and (run_id, name) not in self._full:
            log.warning("run %s: limit %s has no slots (%s is missing: a run submitted before limits were "
                        "enforced?); its jobs wait: `exec-submit --resume %s` makes them", run_id, name,
                        claim.run.slots_free(name), run_id)
        with self._lock:
            if i is None:
                self._full[(run_id, name)] = time.monotonic()
                return False
            self._slots.setdefault(claim.token, []).append((claim.run, name, i))
        return True

    def _release_slots(self, token: str, only: int | None = None) -> None:
        """Give back the slots the claim ``token`` holds (``only``: that one slot, a chunk
        runner's), as soon as their command ended; never raises. RACE: a reaper that took
        the claim meanwhile may have given them back already: our rename then finds its
        held name gone and frees nothing (it never frees the slot another claim holds now)."""
        with self._lock:
            held = self._slots.get(token)
            if not held:
                return
            mine = [h for h in held if only is None or h[2] == only]
            rest = [h for h in held if h not in mine]
            if rest:
                self._slots[token] = rest
            else:
                self._slots.pop(token, None)
        for run, name, i in mine:
            n = slots.limits_of(self._records.get(run.run_id) or {}).get(name)
            try:
                slots.release(run, name, i, token, n)
            except OSError as e:  # EIO, EACCES: the sweep frees it once its claim is gone
                log.warning("run %s: cannot give back slot %d of limit %s (%s); freed by a sweep later",
                            run.run_id, i, name, e)
            with self._lock:
                was_full = self._full.pop((run.run_id, name), None) is not None
            if was_full:
                self._wake.set()  # a job of that limit may start now

    def _note_short(self, run_id: str, names: list[str]) -> None:
        """At a listing, the jobs that need more than is free now start waiting (and are
        tried first when room frees), wherever the listing's order puts them: a big job's
        wait is counted from when we first saw it, not from when a slot came to it."""
        record = self._records.get(run_id) or {}
        for name in names:
            needs = entry_of(record, name).get("needs")
            if needs and (run_id, name) not in self._wont_fit and not self.ledger.fits(needs) \
                    and self.ledger.missing(needs) is None:
                with self._lock:
                    waiting = self._deferred.setdefault(run_id, [])
                    if name not in waiting and len(waiting) < MAX_DEFERRED:
                        waiting.append(name)
                    self._short_since.setdefault((run_id, name), time.monotonic())

    def _undefer(self, run_id: str, job_id: str) -> None:
        with self._lock:
            waiting = self._deferred.get(run_id)
            if waiting and job_id in waiting:
                waiting.remove(job_id)

    def _fitted(self, needs: dict[str, Any]) -> dict[str, Any]:
        """``needs`` as this worker counts them. A worker of the Slurm-DAG backend runs in an
        allocation Slurm sized for its jobs: it takes what there is of CPUs, GPUs and memory
        (one job alone has it all; an array's tasks share it) and ignores the rest."""
        if not self.slurm_dag:
            return needs
        total = self.ledger.capacity.total()
        return {k: min(v, total[k]) for k, v in needs.items() if k in ("cpus", "gpus", "mem_gb")}

    def _never(self, needs: dict[str, Any], tags: Any) -> str | None:
        """Why a job with these needs and tags can never run here, or None."""
        if self.slurm_dag:
            return None
        if tags and not set(tags) <= self.ledger.capacity.tags:
            return f"tag {', '.join(sorted(set(tags) - self.ledger.capacity.tags))}, which this worker has not"
        return self.ledger.missing(needs)

    def _short(self, key: tuple[str, str]) -> None:
        """The job fits our capacity but not what is free of it now. Passed by for longer
        than ``reserve_after`` seconds, it is reserved: no new job or task starts here until
        it can (running ones end and free their share), so a stream of small jobs cannot
        keep a big one waiting forever."""
        now = time.monotonic()
        with self._lock:
            since = self._short_since.setdefault(key, now)
            if self._reserved is None and now - since >= self.reserve_after:
                self._reserved = key
                log.info("job %s of run %s: waited %.0f s for room here; reserved: no other job starts "
                         "until it does", key[1], key[0], now - since)

    def _unreserve(self, key: tuple[str, str] | None) -> None:
        """Drop the reservation (of ``key`` only, when given): the job started or is gone."""
        with self._lock:
            if self._reserved is not None and (key is None or self._reserved == key):
                self._reserved = None
                self._short_since.pop(key or ("", ""), None)
        self._wake.set()

    def _check_needs(self, run_id: str, job_id: str, claim: store.Claim, held: Assignment) -> Assignment | None:
        """The job file is what counts: a spec whose needs or tags differ from the index (a
        resume changed them since we read run.json) is placed again, or put back."""
        spec = claim.record["spec"]
        needs = self._fitted(placement.needs(spec))
        if needs == dict(held.needs) and (not spec.get("tags") or self._never(needs, spec["tags"]) is None):
            return held
        self.ledger.give(held)
        again = None if self._never(needs, spec.get("tags")) else self.ledger.take(needs)
        if again is None:
            store.release(claim)  # RACE: not locked yet, ours alone to put back
            with self._lock:
                self._records.pop(run_id, None)  # its index is out of date: read run.json again
                self._candidates.pop(run_id, None)
        return again
