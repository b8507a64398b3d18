"""Job files and the one function that moves a job between state folders.

Every rename across ``waiting/ queued/ running/ done/ failed/`` happens in
:func:`transition`. Claiming is ``rename(queued/J.json, running/J@T.json)`` with a fresh
token ``T``; finishing starts with a rename *of that claim* into the finisher's private
folder, so a worker whose claim was taken away (a reaper requeued it) fails that rename and
writes nothing: this is the fence.

Leaving ``running/`` with new content (finishing, requeueing a stale claim) goes through a
private folder, fence first (:mod:`executioner.protocol.fence`): nobody writes into a file another
process can still reach by name.

A coordinator (resume, rollback; :mod:`executioner.coordinator.change`) uses the same function with
two more places: ``staged:<state>`` (a job it grabbed out of ``<state>``, unchanged) and
``new:<state>`` (the content it will place into ``<state>``), both under its staging folder
``RUN/.coord/<token>/`` (``token`` then names the folder).
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import psutil

from . import fence, fsio, records
from ..errors import ForeignFile
from .attempts import definition_hash
from .layout import FORMAT_VERSION, STATES, RunLayout, aside, job_id_of, split_running_name
from .ready import Upstream, arrays_of, forget_arrays
from .scrub import bad_file_reason, quarantine, read_checked
from .units import chunk_like, parse_unit, unit_name
from ..workflow import JobSpec

SPEC_KEYS = ("command",)  # the rest default: files written by an older version stay valid
SPEC_DEFAULTS = {k: v for k, v in JobSpec(id="_", command="_").to_spec().items() if k not in SPEC_KEYS}

FinalState = Literal["done", "failed"]
log = logging.getLogger("executioner.store")


def new_job_record(run_id: str, spec: JobSpec, dependents: list[str], attempt: int = 1) -> dict[str, Any]:
    stored = spec.to_spec()
    return {
        "format": FORMAT_VERSION,
        "id": spec.id,
        "run_id": run_id,
        "spec": stored,
        "dependencies": list(spec.dependencies),
        "dependents": dependents,
        "definition_hash": definition_hash(stored, list(spec.dependencies)),
        "attempt": attempt,
        "held": False,
        "skipped": None,
        "tries": [],
        "last_exit_code": None,
        "not_before": None,
    }


def new_chunk_record(run_id: str, spec: JobSpec, lo: int, hi: int, dependents: list[str],
                     attempt: int = 1) -> dict[str, Any]:
    """The file of tasks lo..hi of array ``spec`` (see executioner.protocol.units)."""
    record = new_job_record(run_id, spec, dependents, attempt)
    record.update(id=unit_name(spec.id, lo, hi), job=spec.id, tasks=[lo, hi])
    assert spec.tasks is not None
    if spec.tasks.kind == "each_line":
        record["lines"] = list(spec.tasks.lines[lo:hi + 1])
    return record


def attempt_tries(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The tries of the job's current attempt (retry limits count these only)."""
    attempt = record.get("attempt", 1)
    return [t for t in record["tries"] if t.get("attempt", 1) == attempt]


def try_record(number: int, attempt: int, status: str, *, start: float | None, end: float, worker: str | None,
               host: str | None, worker_pid: int | None, pid: int | None = None,
               exit_code: int | None = None, signal: str | None = None, reason: str | None = None,
               stdout: str | None = None, stderr: str | None = None) -> dict[str, Any]:
    """One entry of a job file's ``tries``: every try is recorded with the same keys."""
    duration = None if start is None else round(end - start, 6)
    return {"try": number, "attempt": attempt, "status": status, "reason": reason, "worker": worker, "host": host,
            "worker_pid": worker_pid, "pid": pid, "start": start, "end": end, "duration": duration,
            "exit_code": exit_code, "signal": signal, "stdout": stdout, "stderr": stderr}


def read_run_record(run: RunLayout) -> dict[str, Any]:
    """The run's run.json; CorruptFileError (a ValueError) if it cannot be used: not JSON,
    the wrong shape, unreadable (see :mod:`executioner.protocol.records`); FileNotFoundError
    if absent."""
    return records.load_run(run.record)


@dataclass(frozen=True)
class Owner:
    """Who holds claims: written into each claim's lock (``logs/<job>.<try>.claim``)."""

    worker_id: str
    host: str
    pid: int
    pid_start: float
    dag: bool = False  # the Slurm job of the Slurm-DAG backend that runs this one job

    @classmethod
    def current(cls, worker_id: str, dag: bool = False) -> "Owner":
        return cls(worker_id, fsio.HOST, os.getpid(), psutil.Process().create_time(), dag)


@dataclass(frozen=True)
class Claim:
    run: RunLayout
    job_id: str
    token: str
    record: dict[str, Any]  # the job file as read right after the claim rename
    owner: Owner
    claimed_at: float
    # fds of the try's log files, created with the lock (write_lock); whoever runs the try
    # takes them (pop) and closes them
    log_fds: list[int] = field(default_factory=list, compare=False, repr=False)

    @property
    def path(self) -> str:
        return self.run.running(self.job_id, self.token)

    @property
    def try_number(self) -> int:
        return len(self.record["tries"]) + 1

    @property
    def lock(self) -> str:
        return self.run.claim_record(self.job_id, self.try_number)

    def still_held(self) -> bool:
        return os.path.exists(self.path)


def transition(run: RunLayout, job_id: str, src: str, dst: str, *, token: str | None = None,
               record: dict[str, Any] | None = None) -> bool:
    """Move one job from state ``src`` to state ``dst``; False if it was not there.

    ``token`` names the claim when ``src`` or ``dst`` is ``running``. ``record``, when
    given, becomes the job file's new content in ``dst`` (only when leaving ``running``).
    Losing a race is a normal result and returns False; nothing is written then.
    ``src``/``dst`` may also be a coordinator's ``staged:<state>``, ``new:<state>`` or
    ``removed``.
    """
    if dst == "running":
        assert token is not None and src == "queued"
        # RACE: two workers rename the same queued file; the kernel (or NFS server) lets
        # exactly one succeed, the other gets ENOENT and returns False here.
        return _rename(run.job(job_id, src), run.running(job_id, token))
    source, target = _where(run, job_id, src, token), _where(run, job_id, dst, token)
    if record is None:
        # RACE: promotion waiting -> queued by two workers at once: one rename wins, the
        # other sees ENOENT. An unchanged file put back from running is ours alone.
        # RACE: a coordinator grabbing queued/J (-> staged) while a worker claims it: one
        # rename wins; the coordinator then finds J in running/ and undoes its change.
        return _rename(source, target)
    assert src == "running" and token is not None
    # Leaving running/ with new content: through a private folder, fence first, so nobody
    # writes into a file another process can reach (see executioner.protocol.fence).
    return fence.leave(run, job_id, token, dst, lambda _content, _private: (dst, record), read=False) is not None


def take(run: RunLayout, job_id: str, token: str, build: fence.Build) -> str | None:
    """Take someone else's claim out of running/ (a stale one, or one a resume takes back):
    ``build(content, private)`` decides where the job goes, from the content as fenced.
    Returns that state; None if the claim was gone (its worker finished, or another taker)."""
    return fence.leave(run, job_id, token, "take", build, give_back=False)


def _where(run: RunLayout, job_id: str, place: str, token: str | None) -> str:
    kind, _, state = place.partition(":")
    if kind == "staged":  # token: the coordinator's staging folder
        return run.staged(token or "", job_id, state)
    if kind == "new":
        return run.staged_new(token or "", job_id, state)
    if place == "running":
        return run.running(job_id, token or "")
    return run.job(job_id, place)


def _rename(src: str, dst: str) -> bool:
    try:
        os.rename(src, dst)
        return True
    except FileNotFoundError:
        return False


def claim(run: RunLayout, job_id: str, owner: Owner,
          refused: Callable[[RunLayout, str], None] | None = None) -> Claim | None:
    """Claim a queued job: rename it into running/ under a new token. None if we lost the race,
    or if its file was refused and quarantined (then ``refused(run, job_id)`` is called: the
    job is now in no folder, and the caller should look for lost jobs soon).

    The caller writes the lock (:func:`write_lock`) once it decides to run the job.
    """
    token = secrets.token_hex(6)
    path = run.running(job_id, token)
    if not transition(run, job_id, "queued", "running", token=token):
        # RACE: on NFS a retransmitted rename can report ENOENT although the first one
        # worked; the destination carries our fresh token, so its existence settles it.
        if not os.path.exists(path):
            return None
    now = time.time()
    try:
        # Read without following a symlink (a symlink is refused). A second hard link (a
        # `cp -al` snapshot of the run, rsnapshot) is harmless: nobody ever writes into a job
        # file's inode (see executioner.protocol.fence), so the other name keeps its content.
        record, problem = read_checked(path, job_id)
    except FileNotFoundError:
        return None
    if record is None:
        quarantine(run, path, bad_file_reason(problem))
        if refused is not None:
            refused(run, job_id)
        return None
    problem = unit_problem(run, job_id, record)
    if problem is not None:
        quarantine(run, path, f"refused job file: {problem}")
        if refused is not None:
            refused(run, job_id)
        return None
    record["spec"] = {**SPEC_DEFAULTS, **record["spec"]}
    return Claim(run, job_id, token, record, owner, now)


def unit_problem(run: RunLayout, job_id: str, record: dict[str, Any]) -> str | None:
    """Why a claimed file, whole and of the right shape, is still no unit of this run: a
    chunk that names no chunk of the run's arrays (another array's tasks, positions past
    its end), or a plain job at a chunk's name (its ``done/`` file would count as those
    tasks done). Its tasks, if any are missing, are rebuilt by coverage."""
    if not isinstance(record.get("tasks"), list) and not chunk_like(job_id):
        return None  # a plain job under a plain name: nothing to check (and no stat of run.json)
    for fresh in (False, True):
        if fresh:
            # RACE: a resume that grew the array published run.json just before placing the
            # new chunks; our cached sizes (or a stale attribute cache) may predate it. Only
            # a fresh read of run.json refuses a chunk; one that cannot be read refuses none.
            forget_arrays(run)
        arrays = arrays_of(run)
        if not arrays:
            return None
        chunk = parse_unit(job_id, arrays)
        if isinstance(record.get("tasks"), list):
            problem = None if chunk is not None and chunk.job == record.get("job") else \
                f"a chunk of array {record.get('job')!r} under a name that is no chunk of this run's arrays"
        else:
            problem = None if chunk is None else \
                f"not a chunk, under the name of tasks {chunk.lo}-{chunk.hi} of array {chunk.job!r}"
        if problem is None:
            return None
    return problem


def claim_lock(run: RunLayout, job_id: str, token: str, record: dict[str, Any]) -> dict[str, Any] | None:
    """The lock of the claim ``running/<job>@<token>``, whose file holds ``record``; None if
    it has none (yet). It is the lock of try len(tries) + 1, or of try len(tries) when the
    owner has already written its result into the claim (just before its fenced rename)."""
    for number in (len(record["tries"]) + 1, len(record["tries"])):
        if number < 1:
            continue
        try:
            lock = fsio.read_json(run.claim_record(job_id, number), records.LOCK_MAX)
        except (OSError, ValueError):
            continue
        # One of the wrong shape is no lock: the claim is judged by its rename time, and
        # requeued once it has stood still for stale_after.
        if records.lock_problem(lock) is None and lock.get("token") == token:
            return lock
    return None


def write_lock(claim: Claim, logs: list[str] | tuple[str, ...] = ()) -> None:
    """Write the claim's lock into logs/ and create the try's log files ``logs`` beside it
    (their fds go to ``claim.log_fds``), all through one handle of the folder opened without
    following a symlink (ForeignFile if logs/ was swapped for one: nothing is written through
    it). Each file is created new: whatever was at its name (an earlier claim of the same try
    number that never recorded a result, a planted link) is moved aside and kept. A logs/
    that is gone (``rm -r RUN/logs``) is made again: else no job of the run could run.

    The lock is written in place, not renamed in: a reader that finds it empty or
    torn meanwhile takes it for no lock yet (store.claim_lock returns None; the claim is then
    judged by its rename time, and the lock read again on the next pass), as it does in the
    instant between the claim's rename and the lock's creation."""
    o = claim.owner
    payload = fsio.dumps({
        "job": claim.job_id, "try": claim.try_number, "token": claim.token, "worker": o.worker_id, "host": o.host,
        "pid": o.pid, "pid_start": o.pid_start, "claimed_at": claim.claimed_at, "dag": o.dag,
    })
    try:
        dir_fd = fsio.open_folder(claim.lock)
    except ForeignFile:
        raise
    except FileNotFoundError:
        if os.path.lexists(claim.run.logs_dir):
            raise
        try:
            # RACE: another worker may make it first; mkdir never follows a symlink planted at
            # that name meanwhile (FileExistsError), and open_folder below refuses one.
            os.mkdir(claim.run.logs_dir)
        except FileExistsError:
            pass
        dir_fd = fsio.open_folder(claim.lock)
    try:
        fd = fsio.create_in(dir_fd, claim.lock, aside)
        try:
            # Not synced: a lock lost or torn by a storage crash reads as no lock, and the
            # claim is judged by its rename time (a sync here cost 3 ms a job on ext4).
            fsio.write_all(fd, payload)
        except BaseException:
            fsio.unlink_quietly(claim.lock)  # ours, just created: nothing half-written stays
            raise
        finally:
            os.close(fd)
        for path in logs:
            try:
                claim.log_fds.append(fsio.create_in(dir_fd, path, aside))
            except OSError:  # the runner creates them itself, and records why it cannot
                close_logs(claim)
                break
    finally:
        os.close(dir_fd)


def close_logs(claim: Claim) -> None:
    """Close the try's log files the runner did not take (it stopped before running it)."""
    while claim.log_fds:
        try:
            os.close(claim.log_fds.pop())
        except OSError:
            pass


def release(claim: Claim) -> bool:
    """Give back a claim unchanged (it was not due yet). Done before the lock is written."""
    return transition(claim.run, claim.job_id, "running", "queued", token=claim.token)


def finish(claim: Claim, record: dict[str, Any], state: str) -> bool:
    """Leave running/ for ``state`` with the new ``record``; False if the claim was lost."""
    return transition(claim.run, claim.job_id, "running", state, token=claim.token, record=record)


def finish_pieces(claim: Claim, pieces: list[tuple[str, str, dict[str, Any]]]) -> bool:
    """Leave running/ as several pieces of a chunk (see executioner.protocol.pieces); False
    if the claim was lost. Every piece is placed, or none."""
    if len(pieces) == 1 and pieces[0][1] == claim.job_id:
        # The whole chunk goes to one state (the common case: every task done): it leaves as a
        # job does, its new record swapped in whole over the fenced one, one unlink fewer. A
        # recoverer that finds it there completes it as the folder's intent says (fence.completed).
        state, _, record = pieces[0]
        return transition(claim.run, claim.job_id, "running", state, token=claim.token, record=record)
    intent = pieces[0][0] if len({p[0] for p in pieces}) == 1 else "pieces"
    return fence.leave(claim.run, claim.job_id, claim.token, intent, lambda _c, _p: pieces, read=False) is not None


def list_jobs(run: RunLayout, state: str) -> list[str]:
    """Job ids in a state folder (for running/: ``job@token`` stems)."""
    try:
        names = os.listdir(run.state_dir(state))
    except FileNotFoundError:
        return []
    return [j for j in (job_id_of(n) for n in names) if j is not None]


@dataclass(frozen=True)
class Running:
    """A job in running/: a claim, or a claim inside a private folder (being taken out)."""

    job_id: str
    token: str
    path: str  # the job's file
    private: fence.Private | None = None

    @property
    def name(self) -> str:
        return os.path.basename(self.path) if self.private is None else self.private.name


def running_jobs(run: RunLayout, names: list[str] | None = None) -> list[Running]:
    """Every job in running/: claims, and private folders that hold their job's file (an empty
    one is a process about to fence, or one that just finished: not a job)."""
    if names is None:
        try:
            names = os.listdir(run.state_dir("running"))
        except FileNotFoundError:
            return []
    out = []
    for name in names:
        parts = split_running_name(name)
        if parts is not None:
            out.append(Running(parts[0], parts[1], os.path.join(run.state_dir("running"), name)))
            continue
        private = fence.Private.parse(run, name)
        if private is None or not private.is_folder():
            continue
        if os.path.exists(private.job_file):
            out.append(Running(private.job_id, private.token, private.job_file, private))
            continue
        # RACE: a chunk between its commit and the last rename of its pieces out (see
        # executioner.protocol.fence): its tasks are still running until placed.
        pieces = fence.pieces_in(private)
        if pieces:
            out.append(Running(private.job_id, private.token, pieces[0][0], private))
    return out


def folders_stamp(run: RunLayout) -> tuple[tuple[int, int], ...]:
    """The state folders' mtimes and ctimes: any rename into or out of one changes it."""
    out = []
    for state in STATES:
        try:
            st = os.stat(run.state_dir(state))
            out.append((st.st_mtime_ns, st.st_ctime_ns))
        except FileNotFoundError:
            out.append((0, 0))
    return tuple(out)


def still_look(run: RunLayout, look: Callable[[], Any], tries: int = 10, pause: float = 0.02) -> tuple[Any, bool]:
    """``look()`` made while no state folder changed (no job moved), and True; or the last
    look and False when the run kept moving under every try. A job in the middle of a move
    can be missed by a look that lists the folders one after another; a still look cannot
    miss it (on filesystems whose folder times change with every rename)."""
    result = None
    for i in range(tries):
        before = folders_stamp(run)
        result = look()
        if folders_stamp(run) == before:
            return result, True
        time.sleep(pause * (i + 1))
    return result, False


def state_of(run: RunLayout, job_id: str) -> str | None:
    """The state folder holding the job now (running/ under any token, or in a private
    folder there); None if none does."""
    for state in ("done", "failed", "queued", "waiting"):
        if os.path.exists(run.job(job_id, state)):
            return state
    if any(r.job_id == job_id for r in running_jobs(run)):
        return "running"
    return None


def deps_done(run: RunLayout, record: dict[str, Any], done: set[str] | None = None) -> bool:
    """Are the job's (or chunk's) dependencies met? See executioner.protocol.ready."""
    return Upstream(run, done=None if done is None else list(done)).ready(record)


def promote(run: RunLayout, job_ids: list[str]) -> list[str]:
    """Move those of ``job_ids`` (jobs, or arrays: each of their chunks) still waiting whose
    dependencies are met to queued/."""
    if not job_ids:
        return []
    upstream = Upstream(run)
    units: list[str] = []
    waiting: list[str] | None = None
    for job_id in job_ids:
        if job_id in upstream.arrays:
            if waiting is None:
                waiting = list_jobs(run, "waiting")
            units += [u for u in waiting if (c := parse_unit(u, upstream.arrays)) and c.job == job_id]
        else:
            units.append(job_id)
    moved = []
    for unit in units:
        try:
            record, _ = records.read_job(run.job(unit, "waiting"), unit)
        except FileNotFoundError:
            continue  # promoted by someone else already
        except OSError as e:  # an I/O error on one job: the others are still promoted
            log.warning("run %s: cannot read waiting/%s.json: %s", run.run_id, unit, e)
            continue
        if record is None:
            continue  # unusable: the sweep quarantines it (after a second read)
        # RACE: two workers finishing two dependencies of one job: each checks after its
        # own rename into done/, so the later one sees both done; both may try, one wins.
        if isinstance(record, dict) and not record.get("held") and upstream.ready(record) \
                and transition(run, unit, "waiting", "queued"):
            moved.append(unit)
    return moved


def sweep(run: RunLayout) -> list[str]:
    """Promote every waiting job whose dependencies are done (a missed promotion, a crash)."""
    waiting = list_jobs(run, "waiting")
    if not waiting:
        return []
    upstream = Upstream(run, done=list_jobs(run, "done"))
    ready = []
    for job_id in waiting:
        try:
            record, problem = read_checked(run.job(job_id, "waiting"), job_id)
            if record is None:
                quarantine(run, run.job(job_id, "waiting"), bad_file_reason(problem))
                continue
        except FileNotFoundError:
            continue
        except OSError as e:  # one job we cannot read or move never stops the pass over the others
            log.warning("run %s: cannot sweep waiting/%s.json: %s", run.run_id, job_id, e)
            continue
        if not record.get("held") and upstream.ready(record):
            ready.append(job_id)
    return [j for j in ready if transition(run, j, "waiting", "queued")]
