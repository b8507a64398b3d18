"""Which state folder every job of a run is in, from directory listings alone.

Jobs move while they are listed, so a listing that saw a job twice (or fewer jobs than
the run has) is taken again. Jobs a coordinator has grabbed into its staging folder
(``.coord/<stage>/<state>~<job>.json``) can be counted in the state they came from."""

from __future__ import annotations

import os

from ..errors import PoolError
from .layout import JOB_SUFFIX, STAGE_SEP, STATES, RunLayout, job_id_of
from .store import running_jobs


def snapshot(run: RunLayout, expected: int = 0, staged: bool = False) -> dict[str, tuple[str, str]]:
    """job id -> (state, file path); listed again if a job was caught moving (seen twice,
    or fewer jobs than the run has). A job in a private folder in running/ (being taken out
    of it) is running; with ``staged``, a job in a coordinator's staging folder counts in
    the state it was grabbed from (a resume at work, or one that was interrupted)."""
    seen: dict[str, tuple[str, str]] = {}
    for _ in range(5):
        seen = {}
        moving = False
        for state in STATES:
            try:
                names = os.listdir(run.state_dir(state))
            except FileNotFoundError:
                raise PoolError("not a run directory (no state folders)", run.root) from None
            if state == "running":
                found = [(r.job_id, r.path) for r in running_jobs(run, names)]
            else:  # one join per folder, not per file: 100,000 joins cost a tenth of a second
                folder = os.path.join(run.state_dir(state), "")
                found = [(j, folder + n) for n in names if (j := job_id_of(n))]
            for job_id, path in found:
                if job_id in seen:
                    moving = True
                seen[job_id] = (state, path)
        if staged:
            for job_id, (state, path) in staged_jobs(run).items():
                seen.setdefault(job_id, (state, path))
        if not moving and len(seen) >= expected:
            return seen
    return seen


def staged_jobs(run: RunLayout, new: bool = False) -> dict[str, tuple[str, str]]:
    """Jobs grabbed into coordinators' staging folders: job -> (state it came from, path);
    with ``new``, also jobs whose new content waits there to be placed."""
    out: dict[str, tuple[str, str]] = {}
    try:
        stages = sorted(os.listdir(run.staging_root))
    except FileNotFoundError:
        return out
    for stage in stages:
        for folder in (run.staging(stage), run.staging_new(stage)) if new else (run.staging(stage),):
            try:
                names = os.listdir(folder)
            except OSError:  # gone (settled meanwhile), or not a folder
                continue
            for name in names:
                state, sep, rest = name.partition(STAGE_SEP)
                if sep and state in STATES and rest.endswith(JOB_SUFFIX):
                    out.setdefault(rest[: -len(JOB_SUFFIX)], (state, os.path.join(folder, name)))
    return out
