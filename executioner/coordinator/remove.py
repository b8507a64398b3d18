"""Removing a run from its pool: ``exec-submit --delete RUN`` and ``--archive RUN FILE``.

The run leaves the pool in one ``rename`` (to ``POOL/.removing-<run>-<rand>``, a name no
listing of runs shows), holding the run's coordinator lock so that no resume is at work. From
that moment a worker's claim on it is gone (its next check stops its command, and it records
nothing), its sweeps find no run.json and forget the run (see Worker.forget), and nothing of it
can be made again. Only then are the files removed (or archived, then removed): a failure
half-way leaves everything under the hidden name, said in the error, never half a run in the
pool. An archive that cannot be written (a full disk) puts the run back where it was.

A run with live claims (a worker is running one of its jobs) or live Slurm jobs is refused
unless ``force``: then its Slurm jobs are cancelled, and its workers lose their claims.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tarfile
import time
from dataclasses import dataclass

from ..errors import PoolError, Refused
from ..liveness.reap import judge_now, judge_private_now
from ..protocol import fence, fsio
from ..protocol.layout import PoolLayout, RunLayout, split_running_name
from ..protocol.scrub import read_checked
from .coord import coordinating


@dataclass
class Removed:
    run_id: str
    archive: str | None = None  # the archive written
    cancelled: tuple[str, ...] = ()  # Slurm jobs cancelled (with force)
    stopped: tuple[str, ...] = ()  # live claims taken away (with force)
    left: str | None = None  # where files that could not be removed are left


def live_claims(pool: PoolLayout, run: RunLayout, stale_after: float, now: float) -> list[str]:
    """``job (why it is live)`` for each claim in running/ judged live (see judge_now); only
    running/ is read, so a big run costs no more than its running jobs."""
    out = []
    try:
        names = sorted(os.listdir(run.state_dir("running")))
    except FileNotFoundError:
        return []
    for name in names:
        parts = split_running_name(name)
        try:
            if parts is not None:
                job_id, token = parts
                record, _ = read_checked(run.running(job_id, token), job_id)
                if record is None:
                    continue  # unusable: no worker runs it
                verdict, _ = judge_now(pool, run, job_id, token, record, stale_after, now)
            else:
                private = fence.Private.parse(run, name)
                if private is None:
                    continue
                job_id, verdict = private.job_id, judge_private_now(private, stale_after, now)
        except FileNotFoundError:
            continue  # it just left running/
        if not verdict.stale:
            out.append(f"{job_id} ({verdict.reason})")
    return out


def _live_slurm(run: RunLayout) -> list[str]:
    if not os.path.exists(run.slurm_record):
        return []
    from ..backends.slurm import SlurmError, all_ids, job_states

    ids = all_ids(run)
    try:
        known = job_states(ids)
    except SlurmError as e:
        raise Refused(f"run {run.run_id} has Slurm jobs, and Slurm cannot be asked about them ({e}); "
                      "nothing was removed", run.run_id) from None
    return [i for i in ids if i in known or any(k.startswith(i + "_") for k in known)]


def remove_run(pool: PoolLayout, run_id: str, force: bool = False, archive: str | None = None,
               stale_after: float = 60.0, dry_run: bool = False) -> Removed:
    """Delete the run (or archive it into ``archive``, a .tar.gz, then delete it)."""
    run = pool.run(run_id)
    if not os.path.exists(run.record):
        raise PoolError(f"no run {run_id!r}", pool.root)
    if archive is not None:
        archive = os.path.abspath(archive)
        if os.path.lexists(archive):
            raise PoolError("the archive exists already; give a new name (nothing is overwritten)", archive)
        if os.path.commonpath([archive, run.root]) == run.root:
            raise PoolError("the archive cannot be inside the run it archives", archive)
    out = Removed(run_id, archive)
    with coordinating(run, "delete" if archive is None else "archive"):
        live = live_claims(pool, run, stale_after, time.time())
        slurm = _live_slurm(run)
        if (live or slurm) and not force:
            what = [f"{len(live)} running job(s): {', '.join(live[:5])}{' ...' if len(live) > 5 else ''}"] if live else []
            what += [f"{len(slurm)} live Slurm job(s): {' '.join(slurm[:5])}{' ...' if len(slurm) > 5 else ''}"] \
                if slurm else []
            raise Refused(f"run {run_id} has {' and '.join(what)}; --force stops them and removes the run "
                          "(or wait for them, or exec-submit --cancel it first); nothing was removed", run_id)
        out.stopped, out.cancelled = tuple(live), tuple(slurm)
        if dry_run:
            return out
        if slurm:
            from ..backends.slurm import cancel

            cancel(slurm)
        aside = os.path.join(pool.root, f".removing-{run_id}-{secrets.token_hex(3)}")
        # RACE: workers claim, sweep and commit right up to this rename; after it none of
        # their renames into the run can succeed (every path names the run's folder), and
        # each forgets the run at its next look. Our coordinator lock moves with it.
        os.rename(run.root, aside)
        # Still holding the lock (inside the moved folder): a run put back after a failed
        # archive comes back with it, and leaving this block releases it where it is then.
        if archive is not None:
            try:
                _write_archive(aside, run_id, archive)
            except BaseException as e:
                try:
                    os.rename(aside, run.root)  # RACE: a new run took the name meanwhile: it stays aside
                except OSError:
                    raise PoolError(f"cannot write the archive ({_why(e)}); the run could not be put back "
                                    f"either, and is kept whole in {aside}", archive) from None
                if isinstance(e, OSError):
                    raise PoolError(f"cannot write the archive ({_why(e)}); the run is back in place, "
                                    "unchanged", archive) from None
                raise
        try:
            shutil.rmtree(aside)
        except OSError as e:
            out.left = aside
            raise PoolError(f"run {run_id} is out of the pool, but its files cannot all be removed "
                            f"({_why(e)}); they are left in {aside}", aside) from None
    return out


def _why(e: BaseException) -> str:
    if isinstance(e, OSError):
        return f"{e.filename + ': ' if e.filename else ''}{e.strerror or e}"
    return str(e) or type(e).__name__


def _write_archive(src: str, run_id: str, dest: str) -> None:
    """``src`` as ``run_id/...`` in a gzipped tar at ``dest``: written to a temporary name
    beside it, fsynced, read back whole (every member), then renamed into place."""
    tmp = os.path.join(os.path.dirname(dest), f".{os.path.basename(dest)}.{secrets.token_hex(3)}.tmp")
    skip = {f"{run_id}/coordinator.lock", f"{run_id}/coordinator.json"}
    try:
        with open(tmp, "xb") as raw:
            with tarfile.open(fileobj=raw, mode="w:gz") as tar:
                # not our own coordinator lock and note: an unpacked archive is a run at rest
                tar.add(src, arcname=run_id, filter=lambda m: None if m.name in skip else m)
            raw.flush()
            os.fsync(raw.fileno())
        with tarfile.open(tmp, "r:gz") as tar:  # a torn archive must not be what we delete the run for
            count = sum(1 for _ in tar)
        expected = 1 + sum(len(dirs) + len(files) for _, dirs, files in os.walk(src)) - sum(
            os.path.lexists(os.path.join(src, os.path.basename(n))) for n in skip)
        if count < expected:
            raise OSError(f"the archive holds {count} entries of {expected}")
        os.rename(tmp, dest)
    except BaseException:
        fsio.unlink_quietly(tmp)
        raise
