"""Carry out a plan on a live run: all of it or none of it, even if we crash half-way.

Workers may move queued and waiting jobs at any moment, so a job file is never rewritten
where it lies. Under the coordinator lock:

1. **Grab** every job the plan changes, ancestors first, by renaming it into
   ``.coord/<state>~<job>.json``. The rename is the fence: if a worker claimed or
   promoted the job first, we find it elsewhere, put back what we grabbed, and plan again.
   Once grabbed, no worker can see the job.
2. **Stage** the new content of each job (built from what we grabbed, so a try that ended
   meanwhile is kept), the attempt record, its workflow copy and the new run.json under
   ``.coord/new/``, then make them durable.
3. **Commit**: write ``.coord/COMMIT`` listing the placements. This is the point of no
   return. Then place each job, descendants first (so a job put in queued/ already has its
   dependents in place), drop the grabbed originals, and publish the attempt record.

A coordinator that dies before COMMIT leaves grabbed files: the next one puts them back
(:func:`recover`). One that dies after COMMIT leaves a list: the next one finishes it.
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import Any, Callable

from . import attempts, fsio, store
from .coord import coordinating
from .errors import Refused
from .layout import STAGE_SEP, STATES, RunLayout
from .plan import Plan, Step
from .reap import requeue_lost
from .scrub import read_checked

log = logging.getLogger("executioner.change")
REPLANS = 5


class _Moved(Exception):
    """A job was not where the plan expected it (a worker moved it): plan again."""


def apply(run: RunLayout, make: Callable[[], Plan]) -> Plan:
    """Plan (again) under the run's lock and carry the plan out; Refused if a check fails."""
    first = make()
    if first.refused:
        raise Refused(_refusal(first), run.run_id)
    with coordinating(run, first.why):
        recover(run)
        for _ in range(REPLANS):
            plan = make()  # the run may have moved on since the first look
            if plan.refused:
                raise Refused(_refusal(plan), run.run_id)
            try:
                grabbed = _grab_all(run, plan.steps)
            except _Moved:
                continue
            _stage(run, plan.steps, grabbed, _attempt_files(run, plan))
            _commit(run)
            store.sweep(run)
            return plan
    raise Refused(f"run {run.run_id} kept changing under the resume ({REPLANS} plans); try again",
                  run.run_id)


def _refusal(plan: Plan) -> str:
    failed = [c for c in plan.checks if not c["ok"]]
    return "\n".join(f"refused: {c['check']}: {c['detail']}" for c in failed) + "\nnothing was changed"


# ---- 1. grab ----------------------------------------------------------------------------
def _grab_all(run: RunLayout, steps: list[Step]) -> dict[str, tuple[str, dict[str, Any] | None]]:
    """job -> (state it was grabbed from, its content then); undone on any surprise."""
    os.makedirs(os.path.join(run.staging_dir, "new"), exist_ok=True)
    grabbed: dict[str, tuple[str, dict[str, Any] | None]] = {}
    try:
        for step in steps:
            if step.dst is None or step.src is None:
                continue
            src = step.src
            if src == "running":
                src = _take_claim(run, step)
            if not store.transition(run, step.job, src, f"staged:{src}"):
                raise _Moved(step.job)
            try:
                found, problem = read_checked(run.staged(step.job, src), step.job)
            except FileNotFoundError:
                found, problem = None, "vanished"
            grabbed[step.job] = (src, found)
            if found is None:
                raise _Moved(f"{step.job}: {problem}")
    except _Moved:
        _put_back(run, grabbed)
        raise
    return grabbed


def _take_claim(run: RunLayout, step: Step) -> str:
    """Requeue a running job (stale, or live with --force); its worker's fence then fails."""
    token = step.token or ""
    path = run.running(step.job, token)
    try:
        record, _ = read_checked(path, step.job)
    except FileNotFoundError:
        raise _Moved(step.job) from None
    if record is None:
        raise _Moved(step.job)
    claim: dict[str, Any] | None
    try:
        claim = fsio.read_json(run.claim_record(step.job, len(record["tries"]) + 1))
    except (OSError, ValueError):
        claim = None
    # RACE: its worker may finish this instant; exactly one of the two renames from the
    # claim's name wins. If the worker won, the job is not in queued/ and we plan again.
    if not requeue_lost(run, step.job, token, record, step.take or "taken back", claim):
        raise _Moved(step.job)
    return "queued"


def _put_back(run: RunLayout, grabbed: dict[str, tuple[str, Any]]) -> None:
    for job, (src, _) in reversed(list(grabbed.items())):
        # RACE: nothing can have re-created src/<job>.json meanwhile: its only sources
        # (promotion from waiting/, requeue from running/) need the file we hold.
        store.transition(run, job, f"staged:{src}", src)
    shutil.rmtree(run.staging_dir, ignore_errors=True)


# ---- 2. stage ---------------------------------------------------------------------------
def _attempt_files(run: RunLayout, plan: Plan) -> dict[str, tuple[bytes, str]]:
    """The attempt record, its workflow copy and the new run.json: name -> (content, target)."""
    wf = plan.workflow
    record = attempts.new_record(run, plan.attempt, plan.why, plan.options.flags(), wf.raw, wf.suffix,
                                 plan.changes, [s.row() for s in plan.steps], plan.checks)
    run_record = store.read_run_record(run)
    run_record.update(attempt=plan.attempt, jobs=len(wf.jobs), env=wf.env, workdir=wf.workdir)
    return {"workflow" + wf.suffix: (wf.raw, run.attempt_workflow(plan.attempt, wf.suffix)),
            "attempt.json": (fsio.dumps(record), run.attempt_record(plan.attempt)),
            "run.json": (fsio.dumps(run_record), run.record)}


def _stage(run: RunLayout, steps: list[Step], grabbed: dict[str, tuple[str, dict[str, Any] | None]],
           files: dict[str, tuple[bytes, str]]) -> None:
    placements = []
    for step in steps:
        if step.dst is None:
            continue
        assert step.build is not None
        src, found = grabbed.get(step.job, (None, None))
        record = found if step.action == "remove" else step.build(found)
        fsio.write_unsynced(run.staged_new(step.job, step.dst), fsio.dumps(record))
        placements.append({"job": step.job, "src": src, "dst": step.dst})
    new_dir = os.path.join(run.staging_dir, "new")
    for name, (payload, _) in files.items():
        fsio.write_unsynced(os.path.join(new_dir, name), payload)
    fsio.sync_filesystem(run.root)
    placements.reverse()  # descendants first
    fsio.atomic_write_json(run.staging_commit, {
        "placements": placements,
        "files": [[name, os.path.relpath(target, run.root)] for name, (_, target) in files.items()]})


# ---- 3. commit --------------------------------------------------------------------------
def _commit(run: RunLayout) -> None:
    """Place everything listed in COMMIT. Idempotent: a crash here is finished by recover()."""
    commit = fsio.read_json(run.staging_commit)
    if any(p["dst"] == "removed" for p in commit["placements"]):
        os.makedirs(run.removed_dir, exist_ok=True)
    for p in commit["placements"]:
        job, src, dst = p["job"], p["src"], p["dst"]
        if os.path.exists(run.staged_new(job, dst)):
            # RACE: dst/<job>.json cannot exist: we hold the only copy of the job (grabbed),
            # or it is new to the run; workers have no way to create it meanwhile.
            store.transition(run, job, f"new:{dst}", dst)
        if src is not None:
            fsio.unlink_quietly(run.staged(job, src))
    new_dir = os.path.join(run.staging_dir, "new")
    for name, target in commit["files"]:  # the attempt record last but one, run.json last
        if os.path.exists(os.path.join(new_dir, name)):
            os.makedirs(os.path.dirname(os.path.join(run.root, target)), exist_ok=True)
            os.rename(os.path.join(new_dir, name), os.path.join(run.root, target))
    fsio.unlink_quietly(run.staging_commit)
    shutil.rmtree(run.staging_dir, ignore_errors=True)


def recover(run: RunLayout) -> str | None:
    """Finish (after COMMIT) or undo (before it) a change a crashed coordinator left; say which."""
    if not os.path.isdir(run.staging_dir):
        return None
    if os.path.exists(run.staging_commit):
        _commit(run)
        log.warning("run %s: finished a change an interrupted coordinator had committed", run.run_id)
        return "finished"
    for name in sorted(os.listdir(run.staging_dir)):
        state, sep, rest = name.partition(STAGE_SEP)
        if sep and state in STATES and rest.endswith(".json"):
            store.transition(run, rest[: -len(".json")], f"staged:{state}", state)
    shutil.rmtree(run.staging_dir, ignore_errors=True)
    log.warning("run %s: undid a change an interrupted coordinator had not committed", run.run_id)
    return "undone"


def _adding(extra: dict[str, Any]) -> Callable[[dict[str, Any] | None], dict[str, Any]]:
    return lambda found: {**(found or {}), **extra}


def annotate(run: RunLayout, updates: dict[str, dict[str, Any]], why: str) -> None:
    """Add keys to the files of jobs of a live run (say, their Slurm job ids), wherever they
    are (not running/), with the same grab, stage and commit as a resume; no attempt record."""
    with coordinating(run, why):
        recover(run)
        for _ in range(REPLANS):
            steps = []
            for job_id, extra in updates.items():
                state = next((s for s in ("waiting", "queued", "done", "failed")
                              if os.path.exists(run.job(job_id, s))), None)
                if state is None:
                    raise Refused(f"job {job_id} of run {run.run_id} is not in waiting/, queued/, done/ "
                                  "or failed/; cannot record on it", run.run_id)
                steps.append(Step(job_id, "note", why, state, state, build=_adding(extra)))
            try:
                grabbed = _grab_all(run, steps)
            except _Moved:
                continue
            _stage(run, steps, grabbed, {})
            _commit(run)
            return
    raise Refused(f"run {run.run_id} kept changing while recording {why}", run.run_id)
