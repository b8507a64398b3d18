"""The coordinator lock: one person at a time changes a run (resume, rollback, from-job).

A soft lock from filelock: a marker ``coordinator.lock`` created with O_CREAT|O_EXCL (no
flock, which network filesystems fake or drop). Beside it, ``coordinator.json`` says who
holds it (user, host, pid and its start time), doing what, since when: for the message a
loser sees, for ``exec-status``, and for judging the holder.

The holder keeps the marker's mtime moving: a thread touches it every ``TOUCH_EVERY``
seconds for as long as the lock is held. A contender calls the lock *abandoned* when

- its holder is a dead process on the contender's own host (pid gone, or reused), or
- its mtime has stood still for ``COORD_STALE`` seconds of the contender's own monotonic
  clock, as watched by the processes of its host (:mod:`executioner.liveness.watch`, key
  ``coord:<run id>``; a watch begun by one resume is continued by the next, or by a worker).

No clock is compared with another: a coordinator whose clock is hours ahead sees a live
lock's mtime change like anyone else. An abandoned lock is broken in steps (rename it
aside, check that it is the file judged, only then unlink). Should a live holder be broken
anyway (stopped for longer than ``COORD_STALE``), its staging folder is renamed aside by
the next coordinator, which fences it (see :mod:`executioner.coordinator.change`).
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import os
import secrets
import threading
import time
from typing import Any, Final, Iterator

import filelock
import psutil

from ..protocol import fsio, records
from ..errors import RunBusy
from ..protocol.layout import RunLayout
from ..liveness.watch import Watch

log = logging.getLogger("executioner.coord")
COORD_STALE: Final = 300.0  # seconds a lock's mtime may stand still before it is abandoned
TOUCH_EVERY: Final = 5.0  # seconds between two touches of a held lock


def watch_key(run: RunLayout) -> str:
    return f"coord:{run.run_id}"


def shared_watch(run: RunLayout) -> Watch:
    """The observations this host's processes share, kept in the run's pool; our own alone
    if the pool's workers/ is a symlink (workers refuse such a pool: nothing is saved
    through it, which only makes a watch start afresh)."""
    workers = os.path.join(os.path.dirname(os.path.normpath(run.root)), "workers")
    if os.path.islink(workers):
        return Watch()
    return Watch.shared(workers)


@contextlib.contextmanager
def coordinating(run: RunLayout, action: str, watch: Watch | None = None,
                 mono: float | None = None) -> Iterator[filelock.SoftFileLock]:
    """Hold the run's coordinator lock for ``action``, or raise RunBusy at once. An abandoned
    lock is broken first; ``watch`` and ``mono`` (our monotonic clock) judge it (default: this
    host's shared watch, saved afterwards, and now)."""
    own_watch = watch is None
    watch = shared_watch(run) if watch is None else watch
    mono = time.monotonic() if mono is None else mono
    _break_if_abandoned(run, watch, mono)
    if own_watch:
        watch.save(mono, force=True)
    lock = filelock.SoftFileLock(run.coordinator_lock, timeout=0, mode=fsio.file_mode())
    try:
        lock.acquire()
    except filelock.Timeout:
        raise RunBusy(_busy_message(run, lock), run.run_id) from None
    except PermissionError:  # over sshfs an O_EXCL loser may see EPERM
        raise RunBusy(_busy_message(run, lock), run.run_id) from None
    token = secrets.token_hex(8)
    keeper = None
    try:
        fsio.atomic_write_json(run.coordinator_info, {
            "user": getpass.getuser(), "host": fsio.HOST, "pid": os.getpid(), "pid_start": _pid_start(),
            "action": action, "since": time.time(), "token": token})
        keeper = _Keeper(run, lock)
        yield lock
    finally:
        if keeper is not None:
            keeper.stop()
        _drop_info(run, token)
        lock.release()


class _Keeper:
    """Touches the lock every TOUCH_EVERY s while we hold it: the sign of life contenders
    watch. It stops by itself once the lock is no longer ours."""

    def __init__(self, run: RunLayout, lock: filelock.SoftFileLock):
        self._path = run.coordinator_lock
        self._lock = lock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"coord-keeper {run.run_id}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        missed = 0
        while not self._stop.wait(TOUCH_EVERY):
            # RACE: a contender putting our live lock back (see below) hides it for a moment:
            # the lock is taken as no longer ours only when two looks, TOUCH_EVERY apart, say so.
            missed = 0 if self._lock.is_lock_held_by_us else missed + 1
            if missed >= 2:
                return
            if missed:
                continue
            try:
                # RACE: were we stopped past COORD_STALE, a contender may break our lock and
                # take it between our check and this touch: we touch its (live) lock once,
                # which only keeps a live lock fresh; our next check stops us.
                fsio.touch(self._path)
            except FileNotFoundError:  # or ForeignFile: missing, or not a file we may touch
                # RACE: a contender that judged our lock abandoned renamed it aside, found it
                # alive after all and puts it back with os.link, then unlinks its aside name:
                # for a moment the lock is missing, then has two links. Skip this touch only:
                # stopping for good would let our live lock stand still and be broken.
                continue
            except OSError as e:
                log.warning("cannot touch %s: %s", self._path, e)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def refresh(run: RunLayout) -> None:
    """The holder is still at work: touch the lock (its mtime is the sign of life)."""
    try:
        fsio.touch(run.coordinator_lock)
    except FileNotFoundError:  # or ForeignFile: never touched through a link
        pass


def holder(run: RunLayout) -> dict[str, Any] | None:
    """coordinator.json (who holds the lock, doing what, since when); None if absent or unreadable."""
    try:
        info = fsio.read_json(run.coordinator_info, limit=1 << 16)
    except (OSError, ValueError):
        return None
    return records.holder_info(info)


def abandoned(run: RunLayout, watch: Watch, mono: float) -> str | None:
    """Why the run's coordinator lock is abandoned, or None (no lock, or a live one so far)."""
    verdict, _ = _judge(run, watch, mono)
    return verdict


def _judge(run: RunLayout, watch: Watch, mono: float) -> tuple[str | None, os.stat_result | None]:
    try:
        st = _fresh_stat(run.coordinator_lock)
    except FileNotFoundError:
        watch.forget(watch_key(run))
        return None, None
    info = holder(run) or {}
    if _dead_here(info):
        return f"its holder, pid {info.get('pid')} on this host, is gone", st
    still = watch.still_for(watch_key(run), st.st_mtime, mono)
    if still >= COORD_STALE:
        who = f"pid {info.get('pid', '?')} on {info.get('host', '?')}"
        return f"its holder ({who}) has not touched it for {still:.0f} s", st
    return None, st


def _break_if_abandoned(run: RunLayout, watch: Watch, mono: float) -> str | None:
    """Break the lock if it is abandoned; return why, or None if it was left alone."""
    reason, judged = _judge(run, watch, mono)
    if reason is None or judged is None:
        return None
    aside = f"{run.coordinator_lock}.broken-{fsio.HOST}-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        # RACE: two contenders breaking it at once: one rename wins; the other finds
        # nothing to rename and goes on to try the lock like everyone else.
        os.rename(run.coordinator_lock, aside)
    except FileNotFoundError:
        return None
    moved = os.stat(aside)
    if (moved.st_ino, moved.st_mtime_ns) != (judged.st_ino, judged.st_mtime_ns):
        # RACE: its holder touched it (or a new holder took the lock) between our look and
        # our rename: it is alive. Put it back, unless yet another contender has taken the
        # lock in that instant; then that one holds it, and the holder we displaced finds
        # its lock is not its own any more and stops with nothing applied (change._still_ours).
        # RACE: until our unlink below the lock has a second link (our aside name), and before
        # the link it is missing: its holder's keeper skips a touch then, and goes on (_Keeper).
        try:
            os.link(aside, run.coordinator_lock)
        except FileExistsError:
            pass
        fsio.unlink_quietly(aside)
        return None
    fsio.unlink_quietly(aside)
    watch.forget(watch_key(run))
    log.warning("run %s: broke the coordinator lock: %s", run.run_id, reason)
    return reason


def _fresh_stat(path: str) -> os.stat_result:
    """stat through open(): on NFS, opening revalidates the attribute cache."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        return os.fstat(fd)
    finally:
        os.close(fd)


def _pid_start(pid: int | None = None) -> float | None:
    try:
        return psutil.Process(pid or os.getpid()).create_time()
    except psutil.Error:
        return None


def _dead_here(info: dict[str, Any]) -> bool:
    """The holder named by coordinator.json is a process of this host that is gone (or
    whose pid now belongs to another process)."""
    if info.get("host") != fsio.HOST:
        return False
    try:
        pid = int(info["pid"])
    except (KeyError, TypeError, ValueError):
        return False
    if not psutil.pid_exists(pid):
        return True
    start = info.get("pid_start")
    now_start = _pid_start(pid)
    return isinstance(start, (int, float)) and now_start is not None and abs(now_start - start) > 1.0


def is_stopped(info: dict[str, Any]) -> bool:
    """The holder is a process of this host that is stopped (SIGSTOP, a debugger)."""
    if info.get("host") != fsio.HOST:
        return False
    try:
        return psutil.Process(int(info["pid"])).status() in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP)
    except (psutil.Error, KeyError, TypeError, ValueError):
        return False


def _drop_info(run: RunLayout, token: str) -> None:
    """Remove coordinator.json if it is still ours (our lock may have been broken and taken)."""
    # RACE: a successor may write its own between our read and our unlink: its loser
    # messages and exec-status then name "?" instead of it until it finishes; nothing else.
    if (holder(run) or {}).get("token") == token:
        fsio.unlink_quietly(run.coordinator_info)


def busy_message(run: RunLayout) -> str | None:
    """Who is changing the run right now, or None if nobody holds its lock."""
    if not os.path.exists(run.coordinator_lock):
        return None
    info = holder(run) or {}
    if info.get("host") == fsio.HOST and info.get("pid") == os.getpid():
        return None  # our own lock: we are the one changing it
    return _busy_message(run, filelock.SoftFileLock(run.coordinator_lock, timeout=0))


def describe(info: dict[str, Any]) -> str:
    """``user@host pid N`` of a holder."""
    return f"{info.get('user', '?')}@{info.get('host', '?')} pid {info.get('pid', '?')}"


def since_text(info: dict[str, Any]) -> str:
    since = info.get("since")
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if isinstance(since, (int, float)) else "just now"


def _busy_message(run: RunLayout, lock: filelock.SoftFileLock, wait: float = 1.0) -> str:
    info: dict[str, Any] = {}
    deadline = time.monotonic() + wait
    while True:
        # RACE: the holder writes coordinator.json just after taking the lock; a loser
        # arriving in between waits for it (briefly) so it can name the holder.
        found = holder(run)
        if found is not None:
            info = found
            break
        if time.monotonic() >= deadline or not os.path.exists(run.coordinator_lock):
            break
        time.sleep(0.02)
    who = describe({"pid": lock.pid, **info})
    doing = f" ({info['action']})" if info.get("action") else ""
    return f"run {run.run_id} is being changed by {who} since {since_text(info)}{doing}; try again when it is done"


def interrupted_change(run: RunLayout, watch: Watch | None = None, mono: float | None = None) -> bool:
    """A coordinator's staging area left behind: no lock, or a lock judged abandoned (its
    holder dead on this host, or its mtime still for COORD_STALE as this host has watched
    it; ``watch`` defaults to the host's shared observations, read and not saved)."""
    try:
        if not os.listdir(run.staging_root):
            return False
    except FileNotFoundError:
        return False
    if not os.path.exists(run.coordinator_lock):
        return True
    watch = shared_watch(run) if watch is None else watch
    return abandoned(run, watch, time.monotonic() if mono is None else mono) is not None
