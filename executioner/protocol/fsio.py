"""Small filesystem primitives that every writer in executioner goes through.

Every write is: a temp file whose name carries host and pid, ``fsync``, then an
atomic ``rename`` into place, so no reader on any machine sees half a file. Every byte
goes through :func:`write_all`, which finishes short writes (a nearly full filesystem may
write less than asked) and raises rather than leave a file short; a write that fails
removes its temp file, so the target is either the old file or the whole new one.

**Who may read what we write.** Job files, run.json and the workflow copies hold the
workflow's ``env`` (tokens, often), and logs hold what commands print; the umask (022
mostly) would make all of it world-readable. So every file and directory is created with
an explicit mode: the owner alone (``0600``/``0700``, the default), or, for a pool or run
made with ``--shared-group``, the group too (``0640`` files, ``2770`` directories: setgid,
so everything keeps the directory's group); never the world. One process serves one pool,
so the choice is per process: :func:`share_with_group` (a worker decides from its pool's
mode, a resume from its run's, a submit from ``--shared-group``).
"""

from __future__ import annotations

import ctypes
import errno
import os
import secrets
import socket
import stat
from typing import Any

import orjson

PRIVATE_FILE, PRIVATE_DIR = 0o600, 0o700
SHARED_FILE, SHARED_DIR = 0o640, 0o2770  # the group reads files; setgid keeps the group
_shared = False


def share_with_group(on: bool) -> None:
    """From now on, create files and directories for the group too (``on``) or for the
    owner alone; see the module docstring."""
    global _shared
    _shared = on


def shares_with_group() -> bool:
    return _shared


def file_mode() -> int:
    return SHARED_FILE if _shared else PRIVATE_FILE


def is_group_shared(path: str) -> bool:
    """Whether ``path`` (a pool or run directory) lets its group write: what --shared-group
    makes, and what a pool other users' workers serve must be."""
    return bool(os.stat(path).st_mode & stat.S_IWGRP)


def make_dir(path: str, exist_ok: bool = False) -> bool:
    """``mkdir`` with our mode whatever the umask; True if we made it. An existing directory
    (with ``exist_ok``) keeps its mode: it may be someone else's."""
    mode = SHARED_DIR if _shared else PRIVATE_DIR
    try:
        os.mkdir(path, mode & 0o777)
    except FileExistsError:
        if exist_ok and os.path.isdir(path):
            return False
        raise
    if _shared:  # the umask took the group's write bit, and mkdir never sets setgid itself
        # RACE: until this chmod the folder is ours alone. Another user's process that
        # reaches it meanwhile (a quarantine/ or .coord/ made lazily) gets EACCES, which its
        # loop logs and retries; nothing of its own is in the folder yet, so nothing is lost.
        # A new private folder in running/ is not yet standing still: no checker looks inside.
        os.chmod(path, mode)
    return True


def make_dirs(path: str, exist_ok: bool = True) -> None:
    """``makedirs`` through :func:`make_dir`: missing parents get our mode too."""
    parent = os.path.dirname(os.path.normpath(path))
    if parent and parent != path and not os.path.isdir(parent):
        make_dirs(parent)
    make_dir(path, exist_ok=exist_ok)


HOST = os.environ.get("EXEC_HOSTNAME") or socket.gethostname()  # override: tests, odd clusters
TEMP_PREFIX = ".tmp-"


def temp_name(directory: str) -> str:
    """A fresh temp file path in ``directory``; the name says who wrote it."""
    return os.path.join(directory, f"{TEMP_PREFIX}{HOST}-{os.getpid()}-{secrets.token_hex(4)}")


def is_temp(name: str) -> bool:
    return name.startswith(TEMP_PREFIX)


def dumps(data: Any) -> bytes:
    return orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def write_all(fd: int, data: bytes, offset: int | None = None) -> None:
    """Write all of ``data`` to ``fd`` (at ``offset`` with pwrite, if given), looping on
    short writes. A write that writes nothing raises OSError(ENOSPC); ENOSPC, EDQUOT and
    EIO from the kernel are raised as they come."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view) if offset is None else os.pwrite(fd, view, offset)
        if n <= 0:
            raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (a write wrote nothing)")
        view = view[n:]
        if offset is not None:
            offset += n


def _write_new(path: str, payload: bytes, sync: bool) -> None:
    """Create ``path`` (which must not exist) holding ``payload``; on any failure, remove it
    and raise. Closing is checked too: NFS reports a full quota at close."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, file_mode())
    try:
        try:
            if _shared:  # a umask like 077 would take the group's read bit
                os.fchmod(fd, SHARED_FILE)
            write_all(fd, payload)
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        unlink_quietly(path)
        raise


def write_temp(directory: str, payload: bytes) -> str:
    """Write ``payload`` to a new fsynced temp file in ``directory``; return its path."""
    tmp = temp_name(directory)
    _write_new(tmp, payload, sync=True)
    return tmp


def atomic_write(path: str, payload: bytes) -> None:
    """Replace ``path`` with ``payload``: temp file, fsync, rename."""
    tmp = write_temp(os.path.dirname(path) or ".", payload)
    try:
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise


def atomic_write_json(path: str, data: Any) -> None:
    atomic_write(path, dumps(data))


MAX_READ = 64 << 20  # no file of ours is this big: a larger one is refused, not read whole


def read_bytes(path: str, limit: int = MAX_READ) -> bytes:
    """The whole file. Opened non-blocking, so a FIFO planted in a state folder cannot hang
    us; anything but a regular file, or a file larger than ``limit``, is refused with
    ValueError."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("not a regular file")
        if st.st_size > limit:
            raise ValueError(f"too large ({st.st_size} bytes)")
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_json(path: str, limit: int = MAX_READ) -> Any:
    return orjson.loads(read_bytes(path, limit))


def unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


_unlink_quietly = unlink_quietly


def write_unsynced(path: str, payload: bytes) -> None:
    """Temp file + rename, with the fsync left to one :func:`sync_filesystem` for many files."""
    tmp = temp_name(os.path.dirname(path))
    _write_new(tmp, payload, sync=False)
    try:
        os.rename(tmp, path)
    except BaseException:
        unlink_quietly(tmp)
        raise


def sync_filesystem(path: str) -> None:
    """Make everything written on ``path``'s filesystem durable: one syncfs (else sync)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if getattr(libc, "syncfs", None) is None or libc.syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)
