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

import errno
import logging
import os
import stat
import time
from dataclasses import dataclass
from typing import Any

import psutil

from ..errors import ForeignFile
from ..protocol import fence, fsio, records, slots, store
from ..protocol.layout import PoolLayout, RunLayout
from ..protocol.rebuild import rebuilt
from ..protocol.scrub import bad_file_reason, quarantine, read_checked
from ..protocol.pieces import is_chunk, lost_pieces
from ..protocol.retry import losses
from .watch import Watch

log = logging.getLogger("executioner.reap")


@dataclass(frozen=True)
class Verdict:
    stale: bool
    reason: str = ""


def fresh_mtime(path: str) -> float:
    """A file's mtime, read through open(): on NFS, opening revalidates the attribute cache
    (close-to-open consistency), where a plain stat may answer from a cache up to 60 s old.

    A symlink is not followed and, like anything but a regular file, is no worker's heartbeat
    (a worker replaces such a thing at its next beat): ForeignFile, a FileNotFoundError, as if
    there were none. Followed, a link to a file that keeps changing would keep a dead worker's
    claims forever, and a symlink loop would leave them unjudged forever."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)  # a FIFO cannot hang us
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ForeignFile(fsio.SYMLINK, path) from None
        raise
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    if not stat.S_ISREG(st.st_mode):
        raise ForeignFile(fsio.NOT_REGULAR, path)
    return st.st_mtime


def owner_dead_here(claim: dict[str, Any]) -> bool:
    """Same-host fast path: the claim's process is gone (or its pid was reused)."""
    if claim.get("host") != fsio.HOST:
        return False
    try:
        return abs(psutil.Process(int(claim["pid"])).create_time() - float(claim["pid_start"])) > 1.0
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return True
    except (psutil.Error, KeyError, TypeError, ValueError, OverflowError):  # a record of the wrong shape
        return False


class Reaper:
    """Judges the claims of a pool; one per worker (or per ``exec-submit --wait``).

    With ``persist``, its observations are shared with (and continued from) every other
    process of this host (see :mod:`executioner.liveness.watch`)."""

    def __init__(self, pool: PoolLayout, stale_after: float = 60.0, persist: bool = False):
        self.pool = pool
        self.stale_after = stale_after
        self.watch = Watch.shared(pool.workers_dir) if persist else Watch()
        self._claims: dict[str, dict[str, Any] | None] = {}  # running path -> claim record
        self.running_seen: dict[str, int] = {}  # run id -> claims in running/ at the last pass
        self._declared: dict[str, float] = {}  # worker id -> the staleness its heartbeat file declares

    def _verdict(self, key: str, stamp: float, mono: float, what: str, after: float | None = None) -> Verdict:
        still = self.watch.still_for(key, stamp, mono)
        return Verdict(still >= (after or self.stale_after), what.format(age=still))

    def _patience(self, worker: str) -> float:
        """No claim is stale sooner than its own worker's settings allow: a checker with a short
        --stale-after next to workers with a long heartbeat waits as long as they need."""
        if worker not in self._declared:
            declared = 0.0
            try:
                record = fsio.read_json(self.pool.heartbeat(worker), limit=1 << 16)
                if isinstance(record, dict):
                    values = [record.get("stale_after"), 2 * (record.get("heartbeat") or 0)]
                    declared = max([float(v) for v in values if isinstance(v, (int, float)) and v == v
                                    and 0 < v < 1e7] or [0.0])
            except (OSError, ValueError):
                pass
            self._declared[worker] = declared
        return max(self.stale_after, self._declared[worker])

    def judge(self, run: RunLayout, job: store.Running | str, record: dict[str, Any], mono: float,
              beats: dict[str, float | None]) -> Verdict:
        """Is this claim (or ``running/<name>``) stale? ``mono``: our monotonic clock;
        ``beats``: worker id -> heartbeat mtime (filled as we go)."""
        if isinstance(job, str):
            [job] = store.running_jobs(run, [job])
        claim = self._claim_record(run, job, record)
        if claim is None:
            # Claimed but never locked (the worker died in between): the rename set the
            # file's ctime, in the storage's clock.
            return self._verdict(f"claim:{run.run_id}/{job.name}", os.stat(job.path).st_ctime, mono,
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
        if beat is not None:
            # A watch begun while the heartbeat was missing for an instant must not count
            # later: it would make a live claim stale at once the next time it is missing.
            self.watch.forget(f"claim:{run.run_id}/{job.name}")
        if beat is None:
            stamp = os.stat(run.claim_record(job.job_id, int(claim.get("try", len(record["tries"]) + 1)))).st_mtime
            return self._verdict(f"claim:{run.run_id}/{job.name}", stamp, mono,
                                 f"no heartbeat file ({who}); claim unchanged for {{age:.0f}} s")
        return self._verdict("worker:" + worker, beat, mono, f"no heartbeat for {{age:.0f}} s ({who})",
                             self._patience(worker))

    def judge_private(self, run: RunLayout, private: fence.Private, mono: float) -> Verdict:
        """A private folder in running/ (someone taking a job out): stale when its process is
        gone here, or when it has stood still for stale_after (a commit takes milliseconds)."""
        who = f"pid {private.pid} on {private.host}"
        if private.owner_dead_here():
            return Verdict(True, f"its {private.intent} by {who} was interrupted: process gone")
        return self._verdict(f"private:{run.run_id}/{private.name}", private.stamp(), mono,
                             f"its {private.intent} by {who} stood still for {{age:.0f}} s",
                             self._private_patience(run, private))

    def _private_patience(self, run: RunLayout, private: fence.Private) -> float:
        """A worker finishing its own claim gets the patience its settings ask for, as its
        claim would; takers and recoverers (no heartbeat of their own) get ours."""
        if private.intent not in ("done", "failed", "queued", "waiting", "pieces"):
            return self.stale_after
        try:
            record, _ = records.read_job(private.job_file, private.job_id)
        except OSError:
            return self.stale_after
        claim = store.claim_lock(run, private.job_id, private.token, record) if record else None
        return self._patience(str(claim.get("worker"))) if claim else self.stale_after

    def _claim_record(self, run: RunLayout, job: store.Running, record: dict[str, Any]) -> dict[str, Any] | None:
        if self._claims.get(job.path) is None:
            self._claims[job.path] = store.claim_lock(run, job.job_id, job.token, record)
        return self._claims[job.path]

    def reap(self, run: RunLayout, mono: float | None = None) -> list[str]:
        """Requeue (or fail, past max_lost) every stale claim of ``run``, and recover every
        stalled private folder; return the job ids moved. ``mono`` is our monotonic clock
        (default: time.monotonic(); tests pass their own). One bad entry never stops the pass."""
        mono = time.monotonic() if mono is None else mono
        try:
            names = os.listdir(run.state_dir("running"))
        except FileNotFoundError:
            return []
        jobs = store.running_jobs(run, names)
        self.running_seen[run.run_id] = len(jobs)
        self._clear_empty(run, names, {j.private.name for j in jobs if j.private is not None}, mono)
        moved = []
        for job in jobs:
            try:
                state = self._reap_one(run, job, mono)
            except FileNotFoundError:
                continue  # finished or requeued meanwhile
            except Exception as e:  # noqa: BLE001 - EACCES, ESTALE, a full disk, a strange record
                log.warning("run %s: cannot judge %s: %s", run.run_id, job.name, e)
                continue
            if state is not None:
                moved.append(job.job_id)
        self._claims = {p: c for p, c in self._claims.items() if os.path.basename(p) in names}
        self.watch.save(mono)
        return moved

    def _clear_empty(self, run: RunLayout, names: list[str], holding: set[str], mono: float) -> None:
        """Remove private folders that hold no job and stand still: their process died after
        making one and before its fence, or after its final rename. An owner alive after all
        finds its folder gone at its fence and fences again with a new one."""
        for name in names:
            private = fence.Private.parse(run, name) if name not in holding and "+" in name else None
            if private is None or not private.is_folder():
                continue
            try:
                # RACE: its owner fencing into it right now either wins (we see a job next
                # time, rmdir fails: not empty) or finds it gone and makes another.
                if self.judge_private(run, private, mono).stale:
                    os.rmdir(private.path)
            except OSError:
                continue

    def _reap_one(self, run: RunLayout, job: store.Running, mono: float) -> str | None:
        if job.private is not None:
            verdict = self.judge_private(run, job.private, mono)
            return recover_private(run, job.private, verdict.reason) if verdict.stale else None
        record, problem = read_checked(job.path, job.job_id)
        if record is None:
            # Broken only if it stays so, unchanged, for stale_after (a format-1 worker may be
            # writing its result into it this very instant).
            st = os.stat(job.path, follow_symlinks=False)
            if self._verdict(f"torn:{run.run_id}/{job.name}", st.st_mtime + st.st_size * 1e-9, mono, "").stale:
                quarantine(run, job.path, bad_file_reason(problem))
            return None
        verdict = self.judge(run, job, record, mono, {})
        if not verdict.stale:
            return None
        return requeue_lost(run, job.job_id, job.token, record, verdict.reason, self._claims.get(job.path))


def lost_record(run: RunLayout, record: dict[str, Any], reason: str, claim: dict[str, Any] | None,
                into: str | None = None) -> tuple[str, dict[str, Any]]:
    """Where a job whose claim was lost goes, and its record with the ``lost`` try: queued/, or
    failed/ past max_lost or for the Slurm-DAG backend; ``into`` forces the state. A chunk
    of an array goes as pieces instead (its finished tasks keep their results)."""
    if is_chunk(record):
        return lost_pieces(run, record, reason, claim, into, _slurm_backend(run))  # type: ignore[return-value]
    claim = claim or {}
    claimed_try = claim.get("try")
    if isinstance(claimed_try, int) and 1 <= claimed_try <= len(record["tries"]):
        # RACE: its owner had swapped its result into its private folder and stopped before
        # the final rename. That result was never committed: the try is lost like any other,
        # and is recorded once, not twice.
        unfinished = record["tries"][claimed_try - 1]
        entry = dict(unfinished, status="lost", reason=f"{reason}; its result ({unfinished.get('status')}) "
                     "was written but never committed")
        tries = [*record["tries"][:claimed_try - 1], entry]
    else:
        entry = store.try_record(len(record["tries"]) + 1, record.get("attempt", 1), "lost", reason=reason,
                                 start=claim.get("claimed_at"), end=time.time(),
                                 worker=claim.get("worker"), host=claim.get("host"), worker_pid=claim.get("pid"))
        tries = [*record["tries"], entry]
    lost = losses(store.attempt_tries(dict(record, tries=tries)))
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
    return state, new


def requeue_lost(run: RunLayout, job_id: str, token: str, record: dict[str, Any], reason: str,
                 claim: dict[str, Any] | None, into: str | None = None) -> str | None:
    """Take a stale claim: record a ``lost`` try and move the job back to queued/ (or failed/,
    see :func:`lost_record`). Returns the state, None if the claim was gone.

    The claim is fenced into our private folder first: if its worker finishes at the same
    moment, exactly one of the two renames of the claim wins.
    """
    def build(content: dict[str, Any] | None, _private: fence.Private) -> tuple[str, dict[str, Any]]:
        found = content if fence.valid(content, job_id) else record
        assert found is not None
        return lost_record(run, found, reason, claim, into)

    state = store.take(run, job_id, token, build)
    if state is not None:
        free_slots(run, record, token)
        log.warning("run %s: job %s %s: %s", run.run_id, job_id, "failed" if state == "failed" else "requeued",
                    reason)
    return state


def free_slots(run: RunLayout, record: dict[str, Any] | None, token: str) -> None:
    """Give back the limit's slots the claim ``token`` held (see executioner.protocol.slots);
    never raises. RACE: its worker, slow but alive, may give them back this instant: one
    rename of each held name wins, the other finds it gone. ``record`` None: the job's
    limit is not known here (a recovered private folder), so every limit of the run is
    looked at; a run without limits has no limits/ folder, and costs one failed listing."""
    try:
        name = slots.limit_of(record["spec"]) if record is not None else None
        if record is not None and name is None:
            return
        names = [name] if name else os.listdir(run.limits_dir)
        for limit in names:
            if slots.release_token(run, limit, token):
                log.info("run %s: gave back the slots of limit %s held by claim %s", run.run_id, limit, token)
    except FileNotFoundError:
        return
    except (OSError, KeyError, TypeError) as e:
        log.warning("run %s: cannot give back the slots of claim %s: %s", run.run_id, token, e)


def recover_private(run: RunLayout, private: fence.Private, reason: str, into: str | None = None) -> str | None:
    """Take over a stalled private folder and place its job: its owner's finished result as
    the owner meant it, else the job with a ``lost`` try; a torn job file is rebuilt."""
    def build(content: dict[str, Any] | None, mine: fence.Private) -> tuple[str, dict[str, Any]] | None:
        if not fence.valid(content, private.job_id):
            record = rebuilt(run, private.job_id, f"{reason}; its job file was torn: rebuilt from the workflow "
                                                  "(earlier tries are not kept)")
            if record is None:
                quarantine(run, mine.job_file, f"torn while being committed ({reason}), and not in the workflow")
                return None
            return into or "waiting", record
        assert content is not None
        seen.append(content)
        claim = store.claim_lock(run, private.job_id, private.token, content)
        if into is None and fence.completed(content, private, (claim or {}).get("try")):
            return private.intent, content
        return lost_record(run, content, reason, claim, into)

    seen: list[dict[str, Any]] = []  # the job's record, as the recovery found it
    state = fence.recover(private, build)
    if state is not None:
        free_slots(run, seen[0] if seen else None, private.token)
        log.warning("run %s: job %s placed in %s/: %s", run.run_id, private.job_id, state, reason)
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


def judge_private_now(private: fence.Private, stale_after: float, now: float) -> Verdict:
    """A one-look verdict on a private folder (see :func:`judge_now`): a commit takes
    milliseconds, so one that has stood for stale_after by ``now`` is taken as stalled."""
    who = f"pid {private.pid} on {private.host}"
    if private.owner_dead_here():
        return Verdict(True, f"its {private.intent} by {who} was interrupted: process gone")
    age = now - os.stat(private.path).st_mtime
    if age > stale_after:
        return Verdict(True, f"its {private.intent} by {who} has stood still for {age:.0f} s")
    return Verdict(False, f"being taken out of running/ by {who}")


def _slurm_backend(run: RunLayout) -> bool:
    try:
        return store.read_run_record(run).get("backend") == "slurm"
    except (OSError, ValueError):
        return False
