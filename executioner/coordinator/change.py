"""Carry out a plan on a live run: all of it or none of it, even if we crash half-way.

Workers may move queued and waiting jobs at any moment, so a job file is never rewritten
where it lies. Under the coordinator lock, in a staging folder of its own
(``RUN/.coord/<token>/``):

1. **Grab** every job the plan changes, ancestors first, by renaming it into
   ``<token>/<state>~<job>.json``. The rename is the fence: if a worker claimed or
   promoted the job first, we find it elsewhere, put back what we grabbed, and plan again.
   Once grabbed, no worker can see the job.
2. **Stage** the new content of each job (built from what we grabbed, so a try that ended
   meanwhile is kept), plus other files (the attempt record, its workflow copy, run.json)
   under ``<token>/new/``, then make them durable.
3. **Commit**: write ``<token>/COMMIT`` listing the placements. This is the point of no
   return. Then publish run.json and the other files, place each job, descendants first
   (so a job put in queued/ already has its dependents in place), and drop the originals.

A coordinator that dies leaves its folder behind. The next one (a resume, or a worker's
housekeeping through :func:`settle_if_abandoned` once the lock is abandoned) first renames
that folder aside (``.coord/.settle-<token>``), which fences the dead one for good should
it wake up (its paths no longer exist), then finishes the change (COMMIT written) or undoes
it. COMMIT is written temp + fsync + rename and no placement starts before it is whole, so
a COMMIT that cannot be parsed (torn by an older version, or by the storage) means the
change never committed: it is undone. Finishing is idempotent, and a folder that cannot be
settled (an I/O error) is left for the next try without keeping the others from settling.

A plan that moves no job and accepts no change (:attr:`Plan.nothing_to_do`) is not carried
out at all: no lock, no attempt record, no file touched.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import time
from typing import Any, Callable

from ..protocol import attempts, fence, fsio, placement, slots, store
from ..protocol.graph import graph_record
from .coord import abandoned, coordinating, refresh
from ..errors import ChangeIncomplete, Refused, RunBusy
from ..protocol.layout import STAGE_SEP, STATES, RunLayout
from .plan import Plan, Step
from ..liveness.reap import recover_private, requeue_lost
from ..protocol.scrub import quarantine, read_checked
from ..liveness.watch import Watch
from ..workflow import JOB_ID_RE

log = logging.getLogger("executioner.change")
REPLANS = 5
SETTLING = ".settle-"


class _Moved(Exception):
    """A job was not where the plan expected it (a worker moved it): plan again."""


class _Stage:
    """One coordinator's staging folder, and the lock it keeps fresh while it works."""

    def __init__(self, run: RunLayout, name: str | None = None):
        self.run = run
        self.name = name or secrets.token_hex(6)
        self._touched = time.monotonic()

    @property
    def dir(self) -> str:
        return self.run.staging(self.name)

    def alive(self) -> None:
        if time.monotonic() - self._touched > 5.0:
            refresh(self.run)
            self._touched = time.monotonic()


def apply(run: RunLayout, make: Callable[[], Plan]) -> Plan:
    """Plan (again) under the run's lock and carry the plan out; Refused if a check fails.
    ChangeIncomplete if an interrupted change cannot be settled first, or if ours committed
    but could not all be placed (the next resume finishes it)."""
    first = make()
    if first.refused:
        raise Refused(_refusal(first), run.run_id)
    if first.nothing_to_do and not _staged(run):
        # RACE: another coordinator may start a change right after this plan; ours moved
        # nothing, so it is as if we had run just before it. A plan made while one is at
        # work sees its grabbed jobs missing, and read_current says the run is busy.
        slots.repair(run, slots.limits_of(store.read_run_record(run)))  # limits/ made if missing (rename: no lock)
        return first  # writes nothing, not even an attempt record; needs no lock
    # What we write keeps the run's mode: the group's too if it was made with --shared-group.
    fsio.share_with_group(fsio.is_group_shared(run.root))
    with coordinating(run, first.why) as lock:
        recover(run)
        for _ in range(REPLANS):
            _still_ours(run, lock)
            plan = make()  # the run may have moved on since the first look
            if plan.refused:
                raise Refused(_refusal(plan), run.run_id)
            if plan.nothing_to_do:
                return plan
            stage = _Stage(run)
            try:
                grabbed = _grab_all(stage, plan.steps)
            except _Moved:
                continue
            try:
                _stage(stage, plan.steps, grabbed, _attempt_files(run, plan))
            except OSError as e:  # a full disk, or our folder renamed aside by a coordinator that broke our lock
                _still_ours(run, lock)
                _put_back(stage, grabbed)
                raise Refused(f"run {run.run_id}: cannot stage the change ({e.strerror or e}); nothing was "
                              "changed", run.run_id) from None
            _commit(run, stage.name)
            store.sweep(run)
            return plan
    raise Refused(f"run {run.run_id} kept changing under the resume ({REPLANS} plans); try again",
                  run.run_id)


def _staged(run: RunLayout) -> bool:
    """Something is in .coord/: a crashed change to settle first (or one in progress)."""
    try:
        return bool(os.listdir(run.staging_root))
    except FileNotFoundError:
        return False


def _still_ours(run: RunLayout, lock: Any) -> None:
    """Stop if another coordinator broke our lock (we were stopped past COORD_STALE): it has
    fenced our staging folder and undone our grabs; nothing of ours is applied."""
    if not lock.is_lock_held_by_us:
        raise Refused(f"run {run.run_id}: this change stalled so long that another coordinator took the "
                      "run over; nothing of it was applied", run.run_id)


def _refusal(plan: Plan) -> str:
    failed = [c for c in plan.checks if not c["ok"]]
    return "\n".join(f"refused: {c['check']}: {c['detail']}" for c in failed) + "\nnothing was changed"


# ---- 1. grab ----------------------------------------------------------------------------
def _grab_all(stage: _Stage, steps: list[Step]) -> dict[str, tuple[str, dict[str, Any] | None]]:
    """job -> (state it was grabbed from, its content then); undone on any surprise.

    Claims are taken back last (stale ones before live ones taken with --force), once every
    other job is grabbed: a grab that fails undoes the change, and a claim taken back cannot
    be given back, so nothing is taken back before the rest of the change is certain. A claim
    whose worker finished meanwhile is grabbed from wherever the job went."""
    run = stage.run
    fsio.make_dirs(os.path.join(stage.dir, "new"), exist_ok=False)
    grabbed: dict[str, tuple[str, dict[str, Any] | None]] = {}
    moving = [s for s in steps if s.dst is not None]
    takes = sorted((s for s in moving if s.src == "running"), key=lambda s: s.take is not None and "--force" in s.take)
    try:
        for step in [s for s in moving if s.src != "running"] + takes:
            src = step.src
            if src is None:  # a new job; one taken out by an earlier resume gets its history back
                if not os.path.exists(run.job(step.job, "removed")):
                    continue
                src = "removed"
            stage.alive()
            if src == "running":
                src = _take_claim(run, step)
            if not store.transition(run, step.job, src, f"staged:{src}", token=stage.name):
                raise _Moved(step.job)
            try:
                found, problem = read_checked(run.staged(stage.name, step.job, src), step.job)
            except FileNotFoundError:
                found, problem = None, "vanished"
            grabbed[step.job] = (src, found)
            if found is None:
                raise _Moved(f"{step.job}: {problem}")
    except _Moved:
        _put_back(stage, grabbed)
        raise
    except OSError as e:  # a take that cannot write (a full disk): the change cannot go on
        _put_back(stage, grabbed)
        raise Refused(f"run {run.run_id}: cannot take a claim back ({e.strerror or e}); nothing was changed "
                      "(a claim it had fenced is placed by a worker once the disk has room)", run.run_id) from None
    return grabbed


def _take_claim(run: RunLayout, step: Step) -> str:
    """Requeue a running job (stale, or live with --force); its worker's fence then fails.
    Returns the state to grab the job from: queued/, or wherever its worker just put it."""
    token = step.token or ""
    if step.private is not None:
        private = fence.Private.parse(run, step.private)
        assert private is not None
        # RACE: its owner may finish this instant: one rename of the folder wins.
        if recover_private(run, private, step.take or "taken back", into="queued") is None:
            return _went(run, step)
        return "queued"
    path = run.running(step.job, token)
    try:
        record, _ = read_checked(path, step.job)
    except FileNotFoundError:
        return _went(run, step)
    if record is None:
        raise _Moved(step.job)
    claim = store.claim_lock(run, step.job, token, record)
    # RACE: its worker may finish this instant; exactly one of the two renames of the
    # claim wins. If the worker's did, we grab the job from where it put it.
    if not requeue_lost(run, step.job, token, record, step.take or "taken back", claim, into="queued"):
        return _went(run, step)
    return "queued"


def _went(run: RunLayout, step: Step) -> str:
    """Where a job whose claim we meant to take back went: its worker finished it (done,
    failed, a retry) or another taker requeued it. The step builds the job anew from what it
    finds, so the plan holds; a job running again under a new claim means planning again."""
    for _ in range(3):
        state = store.state_of(run, step.job)
        if state not in (None, "running"):
            return state
        time.sleep(0.05)  # RACE: a private folder on its way out of running/
    raise _Moved(step.job)


def _put_back(stage: _Stage, grabbed: dict[str, tuple[str, Any]]) -> None:
    for job, (src, _) in reversed(list(grabbed.items())):
        # RACE: nothing can have re-created src/<job>.json meanwhile: its only sources
        # (promotion from waiting/, requeue from running/) need the file we hold.
        store.transition(stage.run, job, f"staged:{src}", src, token=stage.name)
    shutil.rmtree(stage.dir, ignore_errors=True)
    _remove_if_empty(stage.run.staging_root)


def _remove_if_empty(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass  # not empty (another stage), or gone


# ---- 2. stage ---------------------------------------------------------------------------
def _attempt_files(run: RunLayout, plan: Plan) -> dict[str, tuple[bytes, str]]:
    """run.json, the attempt's workflow copy and its record: name -> (content, target), in
    the order they are published (run.json first: a job placed in queued/ may be claimed at
    once, and its worker must find the run's new env and workdir)."""
    wf = plan.workflow
    record = attempts.new_record(run, plan.attempt, plan.why, plan.options.flags(), wf.raw, wf.suffix,
                                 plan.changes, [s.row() for s in plan.steps], plan.checks)
    run_record = store.read_run_record(run)
    arrays = {j.id: len(j.tasks) for j in wf.jobs if j.tasks is not None}
    # "jobs": files a listing finds at least (each array has one chunk file or more)
    run_record.update(attempt=plan.attempt, jobs=len(wf.jobs), env=wf.env, workdir=wf.workdir, arrays=arrays,
                      tasks=len(wf.jobs) - len(arrays) + sum(arrays.values()))
    if plan.options.backend:
        run_record["backend"] = plan.options.backend
    if plan.options.priority is not None:
        run_record["priority"] = plan.options.priority
    for key in ("placement", "limits"):  # this attempt's, or none
        run_record.pop(key, None)
    run_record.update(placement.run_fields(((j.id, j.to_spec()) for j in wf.jobs), wf.limits))
    graph = graph_record(wf.needs(), plan.attempt, [s.job for s in plan.steps if s.held], plan.order)
    return {"run.json": (fsio.dumps(run_record), run.record),
            "workflow" + wf.suffix: (wf.raw, run.attempt_workflow(plan.attempt, wf.suffix)),
            "attempt.json": (fsio.dumps(record), run.attempt_record(plan.attempt)),
            "graph.json": (fsio.dumps(graph), run.graph)}


def _stage(stage: _Stage, steps: list[Step], grabbed: dict[str, tuple[str, dict[str, Any] | None]],
           files: dict[str, tuple[bytes, str]]) -> None:
    run = stage.run
    placements = []
    for step in steps:
        if step.dst is None:
            continue
        stage.alive()
        src, found = grabbed.get(step.job, (None, None))
        if step.pieces is not None:  # a chunk split: its pieces are placed, the chunk dropped
            for dst, unit, piece in step.pieces(found):
                fsio.write_unsynced(run.staged_new(stage.name, unit, dst), fsio.dumps(piece))
                placements.append({"job": unit, "src": None, "dst": dst})
            placements.append({"job": step.job, "src": src, "dst": "split"})
            continue
        assert step.build is not None
        record = found if step.action == "remove" else step.build(found)
        fsio.write_unsynced(run.staged_new(stage.name, step.job, step.dst), fsio.dumps(record))
        placements.append({"job": step.job, "src": src, "dst": step.dst})
    for name, (payload, _) in files.items():
        fsio.write_unsynced(run.staged_file(stage.name, name), payload)
    fsio.sync_filesystem(run.root)
    placements.reverse()  # descendants first
    fsio.atomic_write_json(run.staging_commit(stage.name), {
        "placements": placements,
        "files": [[name, os.path.relpath(target, run.root)] for name, (_, target) in files.items()]})


# ---- 3. commit --------------------------------------------------------------------------
def _read_commit(run: RunLayout, stage: str) -> dict[str, Any] | None:
    """COMMIT's placements and files; None if there is no COMMIT. ValueError if it is torn
    or not a COMMIT record (it is written temp + fsync + rename, so a torn one predates
    that; either way no placement can have started: they start once it is whole)."""
    try:
        commit = fsio.read_json(run.staging_commit(stage))
    except FileNotFoundError:
        return None
    ok = (isinstance(commit, dict) and isinstance(commit.get("placements"), list)
          and isinstance(commit.get("files"), list)
          and all(isinstance(p, dict) and isinstance(p.get("job"), str) and JOB_ID_RE.fullmatch(p["job"])
                  and p.get("dst") in _PLACES and (p.get("src") is None or p.get("src") in _PLACES)
                  for p in commit["placements"])
          # A job id or a staged name with '/' or '..' would make the settler rename files along
          # that path, out of the run: .coord/ is writable by whatever can write the run.
          and all(isinstance(f, list) and len(f) == 2 and all(isinstance(x, str) for x in f)
                  and "/" not in f[0] and f[0] not in ("", ".", "..")
                  and not os.path.isabs(f[1]) and not os.path.normpath(f[1]).startswith("..")
                  for f in commit["files"]))
    if not ok:
        raise ValueError("not a COMMIT record")
    return commit


_PLACES = (*STATES, "removed", "split")  # split: a chunk whose pieces are placed instead


def _commit(run: RunLayout, stage: str) -> None:
    """Publish the files and place the jobs listed in COMMIT. Idempotent (a file or a job
    already placed is skipped), and a no-op for a coordinator fenced off meanwhile (its folder
    was renamed aside: nothing is found). A placement that fails does not stop the others;
    then the folder stays, and ChangeIncomplete names what is left for the next try."""
    commit = _read_commit(run, stage)
    if commit is None:
        return
    problems = []
    new_record = any(name == "run.json" for name, _ in commit["files"])
    before = _limits_before(run, stage) if new_record else None
    for name, target in commit["files"]:
        try:
            if os.path.exists(run.staged_file(stage, name)):
                fsio.make_dirs(os.path.dirname(os.path.join(run.root, target)))
                os.rename(run.staged_file(stage, name), os.path.join(run.root, target))
        except OSError as e:
            problems.append(f"{target}: {e.strerror or e}")
    if new_record:
        try:
            # Before the jobs are placed: a job placed in queued/ finds its limit's slots.
            limits = slots.limits_of(store.read_run_record(run))
            if limits:
                slots.reconcile(run, limits, before)
        except (OSError, ValueError) as e:
            problems.append(f"{run.limits_dir}: {getattr(e, 'strerror', None) or e}")
    for p in commit["placements"]:
        try:
            _place(run, stage, p["job"], p["src"], p["dst"])
        except OSError as e:
            problems.append(f"job {p['job']}: {e.strerror or e}")
    if problems:
        raise ChangeIncomplete(f"run {run.run_id}: the change in {run.staging(stage)} is committed but not all "
                               f"of it is in place ({'; '.join(problems)}); the next `exec-submit --resume "
                               f"{run.run_id}` finishes it", run.run_id)
    fsio.unlink_quietly(run.staging_commit(stage))
    shutil.rmtree(run.staging(stage), ignore_errors=True)
    _remove_if_empty(run.staging_root)


def _limits_before(run: RunLayout, stage: str) -> dict[str, int] | None:
    """The limits of run.json before this change publishes its own; None when unknown (it
    was published already, by a coordinator interrupted after that): then every missing
    slot of a limit is made, not only those a raised N adds."""
    if not os.path.exists(run.staged_file(stage, "run.json")):
        return None
    try:
        return slots.limits_of(store.read_run_record(run))
    except (OSError, ValueError):
        return None


def _place(run: RunLayout, stage: str, job: str, src: str | None, dst: str) -> None:
    if dst == "split":  # its pieces are placements of their own; the grabbed original goes
        if src is not None:
            fsio.unlink_quietly(run.staged(stage, job, src))
        return
    if dst == "removed":
        fsio.make_dirs(run.removed_dir)
    if os.path.exists(run.staged_new(stage, job, dst)):
        # RACE: dst/<job>.json cannot exist: we hold the only copy of the job (grabbed),
        # or it is new to the run (the plan saw it nowhere, twice); workers have no way
        # to create it meanwhile.
        store.transition(run, job, f"new:{dst}", dst, token=stage)
    elif src is not None and os.path.exists(run.staged(stage, job, src)) and store.state_of(run, job) is None:
        # Its new content is gone (deleted by hand?) and the job is nowhere: rather than
        # drop its last copy, put it back as it was.
        log.warning("run %s: job %s: its staged content is missing; put back in %s/ as it was",
                    run.run_id, job, src)
        store.transition(run, job, f"staged:{src}", src, token=stage)
    if src is not None:
        fsio.unlink_quietly(run.staged(stage, job, src))


def recover(run: RunLayout) -> str | None:
    """Settle what crashed coordinators left: finish a committed change, undo any other.
    Returns "finished" or "undone" (of the last one settled), None if there was nothing.
    One folder that cannot be settled (an I/O error) does not stop the others; it stays,
    and ChangeIncomplete names it once the others are settled."""
    try:
        names = sorted(os.listdir(run.staging_root))
    except FileNotFoundError:
        return None
    outcome, problems = None, []
    for name in names:
        if name.startswith(SETTLING):
            settle = name  # a settler crashed: settle its folder ourselves
        else:
            settle = SETTLING + name
            try:
                # RACE: renaming the folder aside fences its owner, should it be alive after
                # all (a lock broken as abandoned): every path it uses is gone from now on.
                os.rename(run.staging(name), run.staging(settle))
            except FileNotFoundError:
                continue
            except OSError as e:
                problems.append(f"{name}: {e.strerror or e}")
                continue
        try:
            outcome = _settle(run, settle) or outcome
        except (OSError, ValueError) as e:  # ChangeIncomplete is an OSError
            log.warning("run %s: cannot settle %s: %s", run.run_id, run.staging(settle), e)
            problems.append(f"{settle}: {e}")
    _remove_if_empty(run.staging_root)
    if problems:
        raise ChangeIncomplete(f"run {run.run_id}: cannot settle {len(problems)} interrupted change(s) in "
                               f"{run.staging_root}: {'; '.join(problems)}", run.run_id)
    return outcome


def settle_if_abandoned(run: RunLayout, watch: Watch, mono: float) -> str | None:
    """For a worker's housekeeping, once per run and pass: if ``.coord/`` holds a change whose
    coordinator is gone (no lock, or a lock judged abandoned by ``watch`` at ``mono``, our
    monotonic clock), take the lock (breaking it), settle the change (:func:`recover`) and
    release. Returns "finished" or "undone"; None when there was nothing to settle, a live
    coordinator holds the run, or settling failed (logged; tried again next time)."""
    try:
        if not os.listdir(run.staging_root):
            return None
    except FileNotFoundError:
        return None
    # RACE: a coordinator that finishes now removes its folder, then its lock: we then find
    # the lock free and nothing to settle. Staging folders are only made under the lock.
    if os.path.exists(run.coordinator_lock) and abandoned(run, watch, mono) is None:
        return None
    try:
        with coordinating(run, "settle an interrupted change", watch=watch, mono=mono):
            return recover(run)
    except RunBusy:  # RACE: someone took the lock first; they settle it
        return None
    except ChangeIncomplete as e:
        log.warning("%s", e)
        return None


def _settle(run: RunLayout, stage: str) -> str | None:
    """Finish the change in ``.coord/<stage>`` if it committed, else undo it; None if it
    was no staging folder at all."""
    folder = run.staging(stage)
    if not os.path.isdir(folder):  # not a coordinator's folder: out of the way, kept for a look
        quarantine(run, folder, "not a coordinator's staging folder")
        return None
    try:
        committed = _read_commit(run, stage) is not None
    except ValueError as e:
        log.warning("run %s: %s: COMMIT is torn (%s): the change never committed; undoing it",
                    run.run_id, folder, e)
        fsio.unlink_quietly(run.staging_commit(stage))
        committed = False
    if committed:
        _commit(run, stage)
        log.warning("run %s: finished a change an interrupted coordinator had committed", run.run_id)
        return "finished"
    for name in sorted(os.listdir(folder)):
        state, sep, rest = name.partition(STAGE_SEP)
        if not (sep and state in _PLACES and rest.endswith(".json")):
            continue
        job = rest[: -len(".json")]
        if store.state_of(run, job) is not None:
            # Only a placement can have put it there (no worker can re-create a job we
            # hold): this original is a leftover, and putting it back would make two.
            fsio.unlink_quietly(os.path.join(folder, name))
            continue
        store.transition(run, job, f"staged:{state}", state, token=stage)
    shutil.rmtree(folder, ignore_errors=True)
    log.warning("run %s: undid a change an interrupted coordinator had not committed", run.run_id)
    return "undone"


def _adding(extra: dict[str, Any]) -> Callable[[dict[str, Any] | None], dict[str, Any]]:
    return lambda found: {**(found or {}), **extra}


def annotate(run: RunLayout, updates: dict[str, dict[str, Any]], why: str) -> None:
    """Add keys to the files of jobs of a live run (say, their Slurm job ids), wherever they
    are (not running/), with the same grab, stage and commit as a resume; no attempt record."""
    with coordinating(run, why) as lock:
        recover(run)
        for _ in range(REPLANS):
            _still_ours(run, lock)
            steps = []
            for job_id, extra in updates.items():
                state = store.state_of(run, job_id)
                if state in (None, "running"):  # claimed meanwhile: nothing to record it on now
                    log.warning("run %s: job %s is running; not recording %s on it", run.run_id, job_id, why)
                    continue
                steps.append(Step(job_id, "note", why, state, state, build=_adding(extra)))
            stage = _Stage(run)
            try:
                grabbed = _grab_all(stage, steps)
            except _Moved:
                continue
            _stage(stage, steps, grabbed, {})
            _commit(run, stage.name)
            return
    raise Refused(f"run {run.run_id} kept changing while recording {why}", run.run_id)
