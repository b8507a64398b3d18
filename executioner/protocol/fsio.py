"""Small filesystem primitives that every writer in executioner goes through.

Every write is: a temp file whose name carries host and pid, ``fsync``, then an
atomic ``rename`` into place, so no reader on any machine sees half a file. Every byte
goes through :func:`write_all`, which finishes short writes (a nearly full filesystem may
write less than asked) and raises rather than leave a file short; a write that fails
removes its temp file, so the target is either the old file or the whole new one.
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
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        try:
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
        chunks, size = [], 0
        while chunk := os.read(fd, 1 << 16):
            size += len(chunk)
            if size > limit:  # it grew since the fstat: refused all the same, unread
                raise ValueError(f"too large (more than {limit} bytes)")
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
