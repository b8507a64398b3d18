"""Small filesystem primitives that every writer in executioner goes through.

Every write is: a temp file whose name carries host and pid, ``fsync``, then an
atomic ``rename`` into place, so no reader on any machine sees half a file. Every byte
goes through :func:`write_all`, which finishes short writes (a nearly full filesystem may
write less than asked) and raises rather than leave a file short; a write that fails
removes its temp file, so the target is either the old file or the whole new one.

Nothing is ever written through a path we did not create: every file is opened for writing
with ``O_CREAT|O_EXCL|O_NOFOLLOW`` (a temp file, a log, a launch log, a probe) and put in
place by ``rename``, which replaces a planted symlink or hard link by name and never writes
into what it points to. A file we keep touching (a heartbeat, a probe, a lock) is touched
through :func:`touch`, which refuses a symlink or a file with a second link. Reads do not
follow a symlink either (:func:`read_bytes`).

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
import itertools
import logging
import os
import secrets
import socket
import stat
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, Callable, Final, Iterable

import orjson

from ..errors import ForeignFile

log = logging.getLogger("executioner.fsio")

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
NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC  # ours alone, or an error
SYMLINK = "a symlink (not followed)"
NOT_REGULAR = "not a regular file"


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


def _write_new(path: str, payload: bytes, sync: bool, dir_fd: int | None = None) -> None:
    """Create ``path`` (which must not exist; relative to ``dir_fd`` if given) holding
    ``payload``; on any failure, remove it and raise. Closing is checked too: NFS reports a
    full quota at close."""
    fd = os.open(path, NEW_FILE, file_mode(), dir_fd=dir_fd)
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
        try:
            os.unlink(path, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        raise


def write_temp(directory: str, payload: bytes) -> str:
    """Write ``payload`` to a new fsynced temp file in ``directory``; return its path."""
    tmp = temp_name(directory)
    _write_new(tmp, payload, sync=True)
    return tmp


def atomic_write(path: str, payload: bytes, anchored: bool = False) -> None:
    """Replace ``path`` with ``payload``: temp file, fsync, rename. ``anchored``: the folder
    is opened without following a symlink and both steps go through that handle, so a folder
    swapped for a symlink meanwhile raises ForeignFile instead of redirecting the write (one
    more open; used for the claim lock in logs/, which a job can reach)."""
    if not anchored:
        tmp = write_temp(os.path.dirname(path) or ".", payload)
        try:
            os.replace(tmp, path)
        except BaseException:
            _unlink_quietly(tmp)
            raise
        return
    dir_fd = open_folder(path)
    try:
        name = os.path.basename(temp_name("."))
        _write_new(name, payload, sync=True, dir_fd=dir_fd)
        try:
            os.replace(name, os.path.basename(path), src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            try:
                os.unlink(name, dir_fd=dir_fd)
            except FileNotFoundError:
                pass
            raise
    finally:
        os.close(dir_fd)


def open_folder(path: str) -> int:
    """An fd of the folder holding ``path``, opened without following a symlink (ForeignFile
    if it is one, or not a directory): files made through it land in that very folder."""
    folder = os.path.dirname(path) or "."
    try:
        return os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise ForeignFile("its folder is a symlink or not a directory; not written through", path) from None
        raise


def atomic_write_json(path: str, data: Any) -> None:
    atomic_write(path, dumps(data))


MAX_READ = 64 << 20  # no file of ours is this big: a larger one is refused, not read whole


def read_bytes(path: str, limit: int = MAX_READ) -> bytes:
    """The whole file. Opened non-blocking, so a FIFO planted in a state folder cannot hang
    us, and without following a symlink; anything but a regular file, or a file larger than
    ``limit``, is refused with ValueError (SYMLINK, NOT_REGULAR or "too large")."""
    return read_with_stat(path, limit)[0]


def read_with_stat(path: str, limit: int = MAX_READ) -> tuple[bytes, os.stat_result]:
    """:func:`read_bytes`, and the file's stat taken on the same open file (so the two are
    about one and the same file, whatever is renamed meanwhile)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ValueError(SYMLINK) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(NOT_REGULAR)
        if st.st_size > limit:
            raise ValueError(f"too large ({st.st_size} bytes)")
        chunks, size = [], 0
        while chunk := os.read(fd, 1 << 16):
            size += len(chunk)
            if size > limit:  # it grew since the fstat: refused all the same, unread
                raise ValueError(f"too large (more than {limit} bytes)")
            chunks.append(chunk)
        return b"".join(chunks), st
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


BATCH: Final = 256  # files a thread creates at a time
THREADS: Final = 8


def create_files(files: Iterable[tuple[str, bytes]]) -> None:
    """Create each ``(path, payload)`` (none may exist: ``O_EXCL``), unsynced, for a
    directory no other process reads yet (a run before its run.json): no temp file, no
    rename. A create waits on the filesystem (a round trip on NFS; the directory's lock and
    the journal on a local disk), not on the interpreter, so past the first BATCH the files
    are created by THREADS threads while the calling thread makes the next payloads from
    ``files`` (consumed as it goes, a bounded number of batches ahead): 100,000 job files
    took 12 s in one thread and 3.8 s in 8 on ext4 here. The first error raises and no
    further batch starts (files already made stay: the caller removes the directory)."""
    todo = iter(files)
    first = list(itertools.islice(todo, BATCH))
    if len(first) < BATCH:
        for path, payload in first:
            _write_new(path, payload, sync=False)
        return

    def write(batch: list[tuple[str, bytes]]) -> None:
        for path, payload in batch:
            _write_new(path, payload, sync=False)

    with ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="exec-create") as pool:
        pending: set[Future[None]] = {pool.submit(write, first)}
        try:
            while batch := list(itertools.islice(todo, BATCH)):
                pending.add(pool.submit(write, batch))
                if len(pending) >= 2 * THREADS:  # a bounded number of payloads in memory
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for f in done:
                        f.result()
            for f in pending:
                f.result()
        except BaseException:  # a full disk, Ctrl-C: start no more batches
            for f in pending:
                f.cancel()
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


def touch(path: str) -> os.stat_result:
    """Set ``path``'s mtime to now (in whatever clock the storage stamps it) and return its
    stat, for a file we made and keep touching (a heartbeat, a probe, a lock). Only through
    the file itself: a symlink, a file with a second link (planted over ours: touching it
    would touch someone else's file) or anything but a regular file raises ForeignFile, a
    FileNotFoundError, so that the caller makes its own file again as if ours were gone."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ForeignFile(SYMLINK, path) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ForeignFile(NOT_REGULAR, path)
        if st.st_nlink != 1:
            raise ForeignFile(f"has {st.st_nlink} links", path)
        os.utime(fd)
        return os.fstat(fd)
    finally:
        os.close(fd)


def create_fresh(paths: list[str], aside: Callable[[str], str], tries: int = 3) -> list[int]:
    """Create each of ``paths`` (all in one folder) for writing and return their fds; never
    open what is already there.

    Whatever is at such a name (a leftover of an earlier run of the same try, a planted
    symlink or hard link) is renamed to ``aside(path)`` first: kept, not followed, not
    truncated. The folder is opened once, without following a symlink, and the files are
    created through that handle, so a folder swapped for a symlink cannot redirect them
    either (ForeignFile). FileExistsError if a name is taken again every time it is cleared."""
    dir_fd = open_folder(paths[0])
    fds: list[int] = []
    try:
        for path in paths:
            fds.append(create_in(dir_fd, path, aside, tries))
        return fds
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    finally:
        os.close(dir_fd)


def create_in(dir_fd: int, path: str, aside: Callable[[str], str], tries: int = 3) -> int:
    """Create ``path`` new through ``dir_fd`` (the folder holding it, see :func:`open_folder`),
    moving whatever is at its name aside first; see :func:`create_fresh`."""
    name = os.path.basename(path)
    for _ in range(tries):
        try:
            return os.open(name, NEW_FILE, file_mode(), dir_fd=dir_fd)
        except FileExistsError:
            pass
        # RACE: whoever put it there may move it on meanwhile: then there is nothing to move
        # aside, and the next O_EXCL create decides.
        target = aside(path)
        try:
            os.rename(name, os.path.basename(target), src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except FileNotFoundError:
            continue
        log.warning("%s was already there (a leftover, or a planted link): kept as %s", path, target)
    raise FileExistsError(errno.EEXIST, f"something exists at that name again each time it is moved "
                                        f"aside ({tries} times); not written through", path)
