"""Keep a run's state folders clean: broken files to quarantine/, stale temp files removed.

A broken file is one that cannot be a job of this run: a foreign name, a directory, a
symlink, an empty or invalid JSON file, one without the fields of a job record, or one
that names another job. It is moved to ``<run>/quarantine/`` with a ``.reason`` file
beside it, and workers go on. Because a network filesystem can show a file torn or
missing for an instant around a rename, content is judged bad only after a second read.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
import time
from typing import Any

import psutil

from . import fsio, records
from .layout import STATES, RunLayout, job_id_of, split_private_name, split_running_name
from ..liveness.watch import Watch
from ..workflow import JOB_ID_RE

log = logging.getLogger("executioner.scrub")
TEMP_MAX_AGE = 3600.0  # a temp file older than this (storage clock) is an abandoned write
CONTENT_CHECKS_PER_PASS = 200
LEASE_STILL = 90.0  # three sweep-lease durations: a live sweeper refreshes its lease every 10 s


def check_record(record: Any, job_id: str) -> str | None:
    """Why ``record`` is not a valid job record for ``job_id``; None when it is (see
    :mod:`executioner.protocol.records`: the keys and types every reader relies on)."""
    return records.job_problem(record, job_id)


def read_checked(path: str, job_id: str, pause: float = 0.2) -> tuple[dict[str, Any] | None, str | None]:
    """(record, None) for a good file; (None, reason) for one bad on two reads ``pause`` apart
    (of the wrong shape, unreadable, too large, not JSON). Raises FileNotFoundError if the
    file went away (moved on: not broken). A symlink is never followed (refused at once)."""
    reason = None
    for attempt in range(2):
        if attempt:
            time.sleep(pause)
        record, reason = records.read_job(path, job_id)
        if record is not None:
            return record, None
        if reason in ("a directory", fsio.NOT_REGULAR, fsio.SYMLINK):
            return None, reason  # refused for what it is: no second read
    return None, reason


def bad_file_reason(problem: str | None) -> str:
    """The quarantine note for a job file :func:`read_checked` found bad: refused for what it
    is (a symlink, a second link, not a regular file), or unreadable for its content."""
    problem = problem or "unknown problem"
    if problem in (fsio.SYMLINK, fsio.NOT_REGULAR):
        return f"refused job file: {problem}"
    return f"unreadable job file: {problem}"


def folder_problem(run: RunLayout) -> str | None:
    """Why a worker must not touch this run, or None: its directory or one of its folders is
    a symlink (or not a directory), so that a file we create or move there would land
    wherever it points, maybe outside the pool."""
    folders = [run.root, *run.all_dirs(), run.quarantine_dir, run.launch_dir, run.removed_dir,
               run.staging_root, run.slurm_dir]
    for folder in folders:
        try:
            st = os.lstat(folder)
        except FileNotFoundError:
            continue
        if not stat.S_ISDIR(st.st_mode):
            what = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a directory"
            name = "the run directory" if folder == run.root else f"its folder {os.path.basename(folder)}/"
            return f"{name} is {what}; nothing is written through it"
    return None


def quarantine(run: RunLayout, path: str, reason: str) -> bool:
    """Move ``path`` to quarantine/ (under a fresh name) with a note; False if it was gone
    (or if quarantine/ is not a real folder of the run: nothing is moved through a symlink)."""
    if os.path.islink(run.quarantine_dir):
        log.error("run %s: not quarantining %s (%s): quarantine/ is a symlink", run.run_id, path, reason)
        return False
    try:
        fsio.make_dir(run.quarantine_dir, exist_ok=True)  # never its parents: a removed run stays removed
    except FileNotFoundError:
        return False  # the run itself is gone, and what was to be quarantined with it
    state = os.path.basename(os.path.dirname(path))
    target = os.path.join(run.quarantine_dir, f"{state}--{os.path.basename(path)}--{secrets.token_hex(3)}")
    try:
        os.rename(path, target)
    except FileNotFoundError:
        return False
    fsio.atomic_write(target + ".reason", f"{state}/{os.path.basename(path)}: {reason}\n".encode())
    log.warning("run %s: quarantined %s/%s: %s", run.run_id, state, os.path.basename(path), reason)
    return True


def lease_watch_key(run: RunLayout, path: str) -> str:
    """The key under which this host watches a lease marker stand still."""
    return f"lease:{run.run_id}/{os.path.basename(path)}"


def lease_stamp(st: os.stat_result) -> float:
    """What a live lease changes: its holder refreshes its mtime (and writes a new record)."""
    return st.st_mtime + st.st_size * 1e-9


def clear_foreign_lease(run: RunLayout, path: str, watch: Watch, mono: float,
                        patience: float = LEASE_STILL) -> bool:
    """Quarantine what sits at a lease's name (``waiting/.sweep.lock``) when it cannot be a
    live sweeper's lease; True if something was moved. Called when the lease could not be
    taken: filelock never takes over a symlink, a directory, a FIFO, nor a regular file it
    cannot read as a lease (empty: a sweeper killed between creating and writing it), so
    such a thing would stop the run's sweeps (promotions, rebuilds, scrubs) for good. A
    symlink or anything but a regular file goes at once (moved by name, never followed); a
    regular file once this host has watched it stand still for ``patience`` seconds of its
    monotonic clock ``mono`` (a live lease changes every 10 s)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(st.st_mode):
        reason = fsio.SYMLINK
    elif stat.S_ISDIR(st.st_mode):
        reason = "a directory"
    elif not stat.S_ISREG(st.st_mode):
        reason = fsio.NOT_REGULAR
    else:
        still = watch.still_for(lease_watch_key(run, path), lease_stamp(st), mono)
        if still < patience:
            return False  # RACE: a live sweeper's lease, or not yet watched long enough
        reason = f"stood still for {still:.0f} s (no live sweeper refreshes it)"
    # RACE: a sweeper may take over or release the marker meanwhile: then the rename below
    # finds nothing (False), or moves a lease just taken, whose holder sweeps on regardless
    # (two sweeps at once are harmless: a promotion is one rename, done once).
    return quarantine(run, path, f"not a sweep lease: {reason}")


def temp_owner_gone(name: str, now: float, mtime: float) -> bool:
    """A temp file ``.tmp-<host>-<pid>-<rand>`` whose writer is dead (this host) or that is old."""
    host_pid = name[len(fsio.TEMP_PREFIX):].rsplit("-", 1)[0]
    host, _, pid = host_pid.rpartition("-")
    if host == fsio.HOST and pid.isdigit() and int(pid) != os.getpid():
        if not psutil.pid_exists(int(pid)):
            return True
    return now - mtime > TEMP_MAX_AGE


def _name_problem(state: str, name: str) -> str | None:
    if state == "running":
        parts = split_running_name(name)
        job_id = parts[0] if parts else None
    else:
        job_id = job_id_of(name)
    if job_id is None or not JOB_ID_RE.fullmatch(job_id):
        return "foreign name (not a job file)"
    return None


class Scrubber:
    """Remembers which done/failed files it has already read, so each is read once."""

    def __init__(self) -> None:
        self._good: set[str] = set()

    def scrub(self, run: RunLayout, now: float, contents: bool = True) -> list[str]:
        """One pass over ``run``; ``now`` is the storage's time. Returns quarantined paths.
        ``contents=False``: names and kinds only, no done/failed file is read (a busy run:
        each worker would read every file the others wrote while they work)."""
        bad: list[str] = []
        budget = CONTENT_CHECKS_PER_PASS if contents else 0
        for state in STATES:
            folder = run.state_dir(state)
            try:
                entries = list(os.scandir(folder))
            except FileNotFoundError:
                continue
            for entry in entries:
                name, path = entry.name, entry.path
                try:
                    if fsio.is_temp(name):
                        if temp_owner_gone(name, now, entry.stat(follow_symlinks=False).st_mtime):
                            fsio.unlink_quietly(path)
                        continue
                    if name.startswith("."):
                        continue  # our own markers (.sweep.lock)
                    if state == "running" and split_private_name(name) and entry.is_dir(follow_symlinks=False):
                        continue  # a private folder: judged (and recovered) by the reaper
                    if entry.is_symlink():
                        reason: str | None = "a symlink"
                    elif entry.is_dir(follow_symlinks=False):
                        reason = "a directory"
                    elif not entry.is_file(follow_symlinks=False):
                        reason = "not a regular file"
                    else:
                        reason = _name_problem(state, name)
                    if reason is None and state in ("done", "failed") and path not in self._good and budget:
                        budget -= 1
                        job_id = job_id_of(name) or ""
                        record, reason = read_checked(path, job_id)
                        if record is not None:
                            self._good.add(path)
                    if reason is not None and quarantine(run, path, reason):
                        bad.append(path)
                except FileNotFoundError:
                    continue  # moved on meanwhile: not broken
                except OSError as e:  # one entry we cannot read or move never stops the pass
                    log.warning("run %s: cannot scrub %s/%s: %s", run.run_id, state, name, e)
        return bad
