"""The coordinator lock: one person at a time changes a run (resume, rollback, from-job).

A soft lock from filelock: a marker created with O_CREAT|O_EXCL (no flock, which network
filesystems fake or drop), recording the holder's pid and host; a contender breaks it when
that pid is gone on the same host (filelock does this), or when it has not been touched for
``MAX_AGE`` by the storage's own clock (we do this: filelock would compare the file's
mtime with our clock). The holder touches it while it works (:func:`refresh`); a change
takes seconds, so an hour-old marker is abandoned. Should a live holder be broken anyway,
its staging folder is renamed aside by the next coordinator, which fences it (see
:mod:`executioner.change`). Beside it, ``coordinator.json`` says who holds it, doing
what, since when, for the message the loser sees.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import time
from typing import Any, Iterator

import filelock

from . import fsio
from .errors import RunBusy
from .layout import PoolLayout, RunLayout
from .reap import storage_now

MAX_AGE = 3600.0


@contextlib.contextmanager
def coordinating(run: RunLayout, action: str) -> Iterator[filelock.SoftFileLock]:
    """Hold the run's coordinator lock for ``action``, or raise RunBusy at once."""
    _break_if_abandoned(run)
    lock = filelock.SoftFileLock(run.coordinator_lock, timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise RunBusy(_busy_message(run, lock), run.run_id) from None
    except PermissionError:  # over sshfs an O_EXCL loser may see EPERM
        raise RunBusy(_busy_message(run, lock), run.run_id) from None
    try:
        fsio.atomic_write_json(run.coordinator_info, {
            "user": getpass.getuser(), "host": fsio.HOST, "pid": os.getpid(), "action": action,
            "since": time.time()})
        yield lock
    finally:
        fsio.unlink_quietly(run.coordinator_info)
        lock.release()


def refresh(run: RunLayout) -> None:
    """The holder is still at work: touch the lock (its mtime is the sign of life)."""
    try:
        os.utime(run.coordinator_lock)
    except FileNotFoundError:
        pass


def _break_if_abandoned(run: RunLayout) -> None:
    try:
        age = storage_now(PoolLayout(os.path.dirname(run.root))) - os.stat(run.coordinator_lock).st_mtime
    except FileNotFoundError:
        return
    if age > MAX_AGE:
        aside = f"{run.coordinator_lock}.broken-{fsio.HOST}-{os.getpid()}"
        try:
            # RACE: two contenders breaking it at once: one rename wins; the other finds
            # nothing to rename and goes on to try the lock like everyone else.
            os.rename(run.coordinator_lock, aside)
        except FileNotFoundError:
            return
        fsio.unlink_quietly(aside)


def busy_message(run: RunLayout) -> str | None:
    """Who is changing the run right now, or None if nobody holds its lock."""
    if not os.path.exists(run.coordinator_lock):
        return None
    try:
        info = fsio.read_json(run.coordinator_info)
        if info.get("host") == fsio.HOST and info.get("pid") == os.getpid():
            return None  # our own lock: we are the one changing it
    except (OSError, ValueError, AttributeError):
        pass
    return _busy_message(run, filelock.SoftFileLock(run.coordinator_lock, timeout=0))


def _busy_message(run: RunLayout, lock: filelock.SoftFileLock, wait: float = 1.0) -> str:
    info: dict[str, Any] = {}
    deadline = time.monotonic() + wait
    while True:
        # RACE: the holder writes coordinator.json just after taking the lock; a loser
        # arriving in between waits for it (briefly) so it can name the holder.
        try:
            info = fsio.read_json(run.coordinator_info)
            break
        except (OSError, ValueError):
            if time.monotonic() >= deadline or not os.path.exists(run.coordinator_lock):
                break
            time.sleep(0.02)
    who = f"{info.get('user', '?')}@{info.get('host', '?')} pid {info.get('pid', lock.pid)}"
    since = info.get("since")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if since else "just now"
    doing = f" ({info['action']})" if info.get("action") else ""
    return f"run {run.run_id} is being changed by {who} since {when}{doing}; try again when it is done"
