"""The coordinator lock: one person at a time changes a run (resume, rollback, from-job).

A soft lock from filelock: a marker created with O_CREAT|O_EXCL (no flock, which network
filesystems fake or drop), recording the holder's pid and host; a contender breaks it when
that pid is gone on the same host, or when it is older than ``MAX_AGE`` (a coordinator
run takes seconds, so an hour-old marker is abandoned). Beside it, ``coordinator.json``
says who holds it, doing what, since when, for the message the loser sees.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import time
import warnings
from typing import Any, Iterator

import filelock

from . import fsio
from .errors import RunBusy
from .layout import RunLayout

MAX_AGE = 3600.0


@contextlib.contextmanager
def coordinating(run: RunLayout, action: str) -> Iterator[None]:
    """Hold the run's coordinator lock for ``action``, or raise RunBusy at once."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", filelock.SoftFileLockLifetimeWarning)
        lock = filelock.SoftFileLock(run.coordinator_lock, timeout=0, lifetime=MAX_AGE)
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
        yield
    finally:
        fsio.unlink_quietly(run.coordinator_info)
        lock.release()


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
