"""Find claims whose worker is gone and put their jobs back in queued/ (or failed/).

No wall clock of one machine is ever compared with another's, and no timestamp is
trusted to be in any particular clock: a claim is stale when this checker has itself seen
its sign of life (the worker's heartbeat mtime; for a claim never locked, the claim
file's ctime) stay unchanged for ``stale_after`` seconds of its own monotonic clock.
Heartbeats are touched with ``os.utime(path)`` and no explicit time; whatever clock stamps
them (the NFS server's, or the client's on sshfs and under libfaketime), only their
*changing* counts, so a node whose clock is an hour off neither gets its live claims
requeued nor keeps dead ones. A new checker needs ``stale_after`` of watching before it
can call anything stale. Same-host claims whose process is gone are requeued at once.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import psutil

from . import fsio, store
from .clock import storage_now  # noqa: F401  (moved; re-exported for the modules that import it here)
from .layout import PoolLayout, RunLayout, split_running_name
from .scrub import quarantine, read_checked

log = logging.getLogger("executioner.reap")


@dataclass(frozen=True)
class Verdict:
    stale: bool
    reason: str = ""


def fresh_mtime(path: str) -> float:
    """A file's mtime, read through open(): on NFS, opening revalidates the attribute cache
    (close-to-open consistency), where a plain stat may answer from a cache up to 60 s old."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.fstat(fd).st_mtime
    finally:
        os.close(fd)


def owner_dead_here(claim: dict[str, Any]) -> bool:
    """Same-host fast path: the claim's process is gone (or its pid was reused)."""
    if claim.get("host") != fsio.HOST:
        return False
    try:
        return abs(psutil.Process(int(claim["pid"])).create_time() - float(claim["pid_start"])) > 1.0
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return True
    except (psutil.Error, KeyError, TypeError, ValueError):
        return False


class Reaper:
    """Judges the claims of a pool; one per worker (or per ``exec-submit --wait``)."""

    def __init__(self, pool: PoolLayout, stale_after: float = 60.0):
        self.pool = pool
        self.stale_after = stale_after
        self._claims: dict[str, dict[str, Any] | None] = {}  # running path -> claim record
        self.running_seen: dict[str, int] = {}  # run id -> claims in running/ at the last pass
        self._seen: dict[str, tuple[float, float]] = {}  # sign of life -> (stamp, first seen, monotonic)

    def _unchanged_for(self, key: str, stamp: float, mono: float) -> float:
        """For how long (our monotonic clock) we have seen ``key`` carry this same ``stamp``."""
        seen = self._seen.get(key)
        if seen is None or seen[0] != stamp:
            self._seen[key] = (stamp, mono)
            return 0.0
        return mono - seen[1]

    def _verdict(self, key: str, stamp: float, mono: float, what: str) -> Verdict:
        still = self._unchanged_for(key, stamp, mono)
        return Verdict(still >= self.stale_after, what.format(age=still))

    def judge(self, run: RunLayout, name: str, record: dict[str, Any], mono: float,
              beats: dict[str, float | None]) -> Verdict:
        """Is the claim ``running/<name>`` stale? ``mono``: our monotonic clock;
        ``beats``: worker id -> heartbeat mtime (filled as we go)."""
        job_id, token = split_running_name(name) or ("", "")
        path = os.path.join(run.state_dir("running"), name)
        claim = self._claim_record(run, path, job_id, token, record)
        if claim is None:
            # Claimed but never locked (the worker died in between): the rename set the
            # file's ctime, in the storage's clock.
            return self._verdict(path, os.stat(path).st_ctime, mono,
                                 "claimed and never locked; unchanged for {age:.0f} s")
        who = f"host {claim.get('host')}, worker {claim.get('worker')}"
        if owner_dead_here(claim):
            return Verdict(True, f"worker process gone ({who}, pid {claim.get('pid')})")
        worker = str(claim.get("worker"))
        if worker not in beats:
            try:
                beats[worker] = fresh_mtime(self.pool.heartbeat(worker))
            except FileNotFoundError:
                beats[worker] = None
        beat = beats[worker]
        if beat is None:
            stamp = os.stat(run.claim_record(job_id, int(claim.get("try", len(record["tries"]) + 1)))).st_mtime
            return self._verdict(path, stamp, mono, f"no heartbeat file ({who}); claim unchanged for {{age:.0f}} s")
        return self._verdict("worker:" + worker, beat, mono, f"no heartbeat for {{age:.0f}} s ({who})")

    def _claim_record(self, run: RunLayout, path: str, job_id: str, token: str,
                      record: dict[str, Any]) -> dict[str, Any] | None:
        if self._claims.get(path) is None:
            try:
                self._claims[path] = store.claim_lock(run, job_id, token, record)
            except (KeyError, TypeError):
                self._claims[path] = None
        return self._claims[path]

    def reap(self, run: RunLayout, mono: float | None = None) -> list[str]:
        """Requeue (or fail, past max_lost) every stale claim of ``run``; return the job ids.
        ``mono`` is our monotonic clock (default: time.monotonic(); tests pass their own)."""
        mono = time.monotonic() if mono is None else mono
        try:
            names = os.listdir(run.state_dir("running"))
        except FileNotFoundError:
            return []
        names = [n for n in names if split_running_name(n)]
        self.running_seen[run.run_id] = len(names)
        if not names:
            return []
        beats: dict[str, float | None] = {}
        moved = []
        for name in names:
            job_id, token = split_running_name(name)  # type: ignore[misc]
            path = os.path.join(run.state_dir("running"), name)
            try:
                record, problem = read_checked(path, job_id)
                if record is None:
                    # Its owner may be writing its result into it this very instant (and be
                    # paused there): broken only if it stays so, unchanged, for stale_after.
                    st = os.stat(path)
                    if self._verdict("torn:" + path, st.st_mtime + st.st_size * 1e-9, mono, "").stale:
                        quarantine(run, path, f"unreadable job file: {problem}")
                    continue
                verdict = self.judge(run, name, record, mono, beats)
            except FileNotFoundError:
                continue  # finished or requeued meanwhile
            except OSError as e:  # one unreadable claim (EACCES, ESTALE) must not stop the pass
                log.warning("run %s: cannot judge claim %s: %s", run.run_id, name, e)
                continue
            if verdict.stale and requeue_lost(run, job_id, token, record, verdict.reason,
                                              self._claims.get(os.path.join(run.state_dir("running"), name))):
                moved.append(job_id)
        self._claims = {p: c for p, c in self._claims.items() if os.path.basename(p) in names}
        if len(self._seen) > 4 * len(names) + 1000:  # forget what no longer exists
            self._seen = dict(list(self._seen.items())[-(2 * len(names) + 500):])
        return moved


def requeue_lost(run: RunLayout, job_id: str, token: str, record: dict[str, Any], reason: str,
                 claim: dict[str, Any] | None, into: str | None = None) -> str | None:
    """Record a ``lost`` try and move the job back to queued/, or to failed/ past max_lost
    (or for the Slurm-DAG backend); ``into`` forces the state (a coordinator taking a claim
    back places the job itself right after). Returns the state, None if the claim was gone.

    The move is a rename from the stale claim's own name: if its worker finishes at the
    same moment, exactly one of the two renames wins.
    """
    claim = claim or {}
    claimed_try = claim.get("try")
    if isinstance(claimed_try, int) and 1 <= claimed_try <= len(record["tries"]):
        # RACE: its worker wrote its result into the claim (the write that precedes its
        # fenced rename) and stopped before the rename. That result was never committed:
        # the try is lost like any other, and is recorded once, not twice.
        unfinished = record["tries"][claimed_try - 1]
        entry = dict(unfinished, status="lost", reason=f"{reason}; its result ({unfinished.get('status')}) "
                     "was written but never committed")
        tries = [*record["tries"][:claimed_try - 1], entry]
    else:
        entry = store.try_record(len(record["tries"]) + 1, record.get("attempt", 1), "lost", reason=reason,
                                 start=claim.get("claimed_at"), end=time.time(),
                                 worker=claim.get("worker"), host=claim.get("host"), worker_pid=claim.get("pid"))
        tries = [*record["tries"], entry]
    lost = sum(1 for t in store.attempt_tries(dict(record, tries=tries)) if t.get("status") == "lost")
    max_lost = record["spec"].get("max_lost", 3)
    new = dict(record, tries=tries, not_before=None)
    state = into or "queued"
    if into is None and lost >= max_lost:
        state = "failed"
        new["reason"] = f"lost {lost} times (max_lost {max_lost}); last: {reason}"
    elif into is None and _slurm_backend(run):
        # Only its own Slurm job runs a job of the Slurm-DAG backend, and that one is gone:
        # in queued/ nobody would take it. In failed/ its dependents show as blocked, and a
        # resume submits it again.
        state = "failed"
        new["reason"] = f"its Slurm job was lost ({reason}); `exec-submit --resume` runs it again"
    if not store.transition(run, job_id, "running", state, token=token, record=new):
        return None
    log.warning("run %s: job %s %s: %s", run.run_id, job_id, "failed" if state == "failed" else "requeued", reason)
    return state


def judge_now(pool: PoolLayout, run: RunLayout, job_id: str, token: str, record: dict[str, Any],
              stale_after: float, now: float) -> tuple[Verdict, dict[str, Any] | None]:
    """A one-look verdict on a claim, for a coordinator that cannot watch for stale_after.

    Same host: the claim's process is alive or not. Other hosts: the worker's heartbeat
    mtime against ``now``; this compares the worker's clock (or the server's) with ours,
    which is why workers never use it. A wrong "stale" costs a re-run (the fence keeps the
    job single); a wrong "live" refuses the resume, and ``--force`` or waiting settles it.
    """
    claim = store.claim_lock(run, job_id, token, record)
    if claim is None:
        stamp = os.stat(run.running(job_id, token)).st_ctime
        if now - stamp > stale_after:
            return Verdict(True, f"claimed {now - stamp:.0f} s ago and never locked"), None
        return Verdict(False, "claimed a moment ago"), None
    who = f"host {claim.get('host')}, worker {claim.get('worker')}"
    if owner_dead_here(claim):
        return Verdict(True, f"worker process gone ({who}, pid {claim.get('pid')})"), claim
    if claim.get("host") == fsio.HOST:
        return Verdict(False, f"running on {who}"), claim
    try:
        age = now - fresh_mtime(pool.heartbeat(str(claim.get("worker"))))
    except FileNotFoundError:
        return Verdict(True, f"no heartbeat file ({who})"), claim
    if age > stale_after:
        return Verdict(True, f"no heartbeat for {age:.0f} s ({who})"), claim
    return Verdict(False, f"running on {who}"), claim


def _slurm_backend(run: RunLayout) -> bool:
    try:
        return store.read_run_record(run).get("backend") == "slurm"
    except (OSError, ValueError):
        return False
