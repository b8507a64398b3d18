"""The storage's clock: the time the shared filesystem stamps on the files we touch.

Times that other machines read back (a retry's ``not_before``, the age of a temp file or
a coordinator lock) are written in the storage's clock rather than our own, whose offset
from the others' is unknown. To read it, a process touches its *probe*
``POOL/workers/.probe-<host>-<pid>`` (``os.utime`` with no explicit time) and reads the
mtime back. The probe is removed when the process exits normally (``atexit``); the probes
of killed processes are removed by :mod:`executioner.liveness.tidy`.

:class:`StorageClock` spares the probe on hot paths: it measures the offset between the
storage's clock and our wall clock, and measures again at most every ``refresh`` seconds
(of our monotonic clock), so a busy worker touches its probe about once a minute rather
than once per job. Between two measurements a step of our own wall clock (NTP) shows up
in its answers; the next measurement corrects it.
"""

from __future__ import annotations

import atexit
import os
import stat
import threading
import time
from typing import Callable, Final

from ..protocol import fsio
from ..protocol.layout import PoolLayout

REFRESH: Final = 60.0  # seconds between two measurements of a StorageClock's offset

_probes: dict[str, int] = {}  # probe path -> the pid that made it (a forked child inherits this)
_probes_lock = threading.Lock()
_atexit_registered = False


def _remove_probes() -> None:
    """At exit: remove the probes this process made (not those of a parent we forked from)."""
    me = os.getpid()
    with _probes_lock:
        mine = [path for path, pid in _probes.items() if pid == me]
    for path in mine:
        try:
            os.unlink(path)
        except OSError:
            pass


def _make_probe(pool: PoolLayout, probe: str) -> None:
    """Create our probe, a new file of ours. Its name carries our pid, so whatever else is
    there (a leftover of a dead process that had our pid, a planted link) is removed first:
    unlinking a link removes the name only, never what it points to."""
    global _atexit_registered
    fsio.make_dirs(pool.workers_dir)
    for _ in range(3):
        try:
            os.close(os.open(probe, fsio.NEW_FILE, fsio.file_mode()))
            break
        except FileExistsError:
            try:
                st = os.lstat(probe)
            except FileNotFoundError:
                continue
            if stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
                break  # RACE: another thread of ours made it first
            fsio.unlink_quietly(probe)
    with _probes_lock:
        _probes[probe] = os.getpid()
        if not _atexit_registered:
            atexit.register(_remove_probes)
            _atexit_registered = True


def storage_now(pool: PoolLayout) -> float:
    """The filesystem's idea of now: touch our probe file and read its mtime back."""
    probe = pool.probe(fsio.HOST, os.getpid())
    for attempt in range(3):
        try:
            return fsio.touch(probe).st_mtime
        except FileNotFoundError:
            # First use; or a tidy removed the probe (it removes probes an hour old, so only
            # one we had not touched for that long); or a link was planted in its place
            # (ForeignFile). Either way, make it (again) and read once more.
            if attempt == 2:
                raise
            _make_probe(pool, probe)
    raise AssertionError("unreachable")


class StorageClock:
    """``now()``: the storage's time, as our wall clock plus an offset measured with
    :func:`storage_now` and refreshed at most every ``refresh`` seconds.

    ``wall`` and ``mono`` are our clocks (tests pass their own). Safe to share between
    threads: two threads may both measure at a refresh, and either answer is good.
    """

    def __init__(self, pool: PoolLayout, refresh: float = REFRESH,
                 wall: Callable[[], float] = time.time, mono: Callable[[], float] = time.monotonic):
        self.pool = pool
        self.refresh = refresh
        self._wall = wall
        self._mono = mono
        self._measured: tuple[float, float] | None = None  # (monotonic when measured, offset)

    def offset(self) -> float:
        """Storage clock minus our wall clock, measured again when older than ``refresh``."""
        mono = self._mono()
        measured = self._measured
        if measured is None or not 0 <= mono - measured[0] < self.refresh:
            before = self._wall()
            stamp = storage_now(self.pool)
            after = self._wall()
            measured = (mono, stamp - (before + after) / 2)
            self._measured = measured  # one assignment: readers see an old or a new pair
        return measured[1]

    def now(self) -> float:
        return self._wall() + self.offset()
