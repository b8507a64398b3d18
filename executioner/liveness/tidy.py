"""Keep ``POOL/workers/`` free of what dead processes leave behind.

One pass (:func:`tidy_workers_dir`) lists the folder once, stats each entry and removes:

- ``.probe-<host>-<pid>`` (see :mod:`executioner.liveness.clock`): its process is gone (this host),
  or it is older than an hour by the storage's clock. A live owner whose probe was removed
  makes it again at its next read of the clock.
- ``<worker>.json`` heartbeats: the worker's process is gone (this host: pid and pid start
  time, as the reaper judges claims), or the heartbeat has stood still for an hour (or
  three of its beats, or twice ``stale_after``, whichever is longest), *as watched* on
  our monotonic clock through a :class:`~executioner.liveness.watch.Watch`: its mtime is in the
  writer's clock or the server's, never compared with ours. A frozen worker that wakes
  up puts its heartbeat back at its next beat; a reaper that finds no heartbeat judges
  the claim by its lock file instead, with a fresh watch, so a removal can only make a
  reaper wait longer, never requeue sooner.
- ``.watch-*`` files (observations of another host, or of an earlier boot) not saved for a
  day by the storage's clock; their observations expire after 3 hours anyway.
- ``.tmp-<host>-<pid>-*`` files whose writer is gone (this host) or that are an hour old.

:class:`Tidy` runs a pass at most every ``every`` seconds and remembers the heartbeat
records it has read (they never change), so a worker can call it from its housekeeping
at every beat for the price of one listing every few minutes.
"""

from __future__ import annotations

import logging
import math
import os
import stat
from typing import Any, Callable, Final

import psutil

from ..protocol import fsio
from ..protocol.layout import JOB_SUFFIX, PROBE_PREFIX, PoolLayout
from .reap import owner_dead_here
from ..protocol.scrub import temp_owner_gone
from .watch import Watch

log = logging.getLogger("executioner.tidy")
TIDY_EVERY: Final = 300.0  # seconds (monotonic) between two passes of one Tidy
PROBE_MAX_AGE: Final = 3600.0  # storage clock
HEARTBEAT_STILL_FOR: Final = 3600.0  # watched, on our monotonic clock
WATCH_FILE_PREFIX: Final = ".watch-"
WATCH_FILE_MAX_AGE: Final = 24 * 3600.0  # storage clock
HEARTBEAT_RECORD_LIMIT: Final = 64 << 10


def _probe_owner(name: str) -> tuple[str, int] | None:
    """``.probe-<host>-<pid>`` -> (host, pid); None for another name."""
    host, sep, pid = name[len(PROBE_PREFIX):].rpartition("-")
    return (host, int(pid)) if name.startswith(PROBE_PREFIX) and sep and pid.isdigit() else None


def _probe_litter(name: str, mtime: float, now: float) -> bool:
    owner = _probe_owner(name)
    if owner is None:
        return False
    host, pid = owner
    if host == fsio.HOST and pid != os.getpid() and not psutil.pid_exists(pid):
        return True
    return now - mtime > PROBE_MAX_AGE and not (host == fsio.HOST and pid == os.getpid())


def _still_limit(record: Any, stale_after: float) -> float:
    """How long a heartbeat must stand still before it is litter."""
    limit = max(HEARTBEAT_STILL_FOR, 2 * stale_after)
    beat = record.get("heartbeat") if isinstance(record, dict) else None
    if isinstance(beat, (int, float)) and math.isfinite(beat):
        limit = max(limit, 3 * float(beat))
    return limit


def tidy_workers_dir(pool: PoolLayout, watch: Watch, mono: float, now: float, stale_after: float = 60.0,
                     records: dict[str, Any] | None = None) -> list[str]:
    """One pass over ``POOL/workers/``; returns the names removed.

    ``mono``: our monotonic clock; ``now``: the storage's clock (``StorageClock.now()``);
    ``watch``: where heartbeats are watched (the host's shared one lets short-lived
    processes add up to the hour); ``records``: a cache of heartbeat records by name.
    """
    records = {} if records is None else records
    try:
        entries = list(os.scandir(pool.workers_dir))
    except FileNotFoundError:
        return []
    own_watch = os.path.basename(watch.path) if watch.path else None
    removed: list[str] = []
    names = set()
    for entry in entries:
        name = entry.name
        names.add(name)
        try:
            st = entry.stat(follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode):
                continue
            if name.startswith(PROBE_PREFIX):
                gone = _probe_litter(name, st.st_mtime, now)
            elif fsio.is_temp(name):
                gone = temp_owner_gone(name, now, st.st_mtime)
            elif name.startswith(WATCH_FILE_PREFIX):
                gone = name != own_watch and now - st.st_mtime > WATCH_FILE_MAX_AGE
            elif name.endswith(JOB_SUFFIX) and not name.startswith("."):
                gone = _heartbeat_litter(entry.path, name, st.st_mtime, watch, mono, stale_after, records)
            else:
                continue
            if gone:
                os.unlink(entry.path)
                removed.append(name)
        except FileNotFoundError:
            continue  # removed meanwhile (its worker exited, another tidy)
        except OSError as e:  # one entry we cannot read or remove must not stop the pass
            log.info("cannot tidy %s: %s", entry.path, e)
    for name in removed:
        records.pop(name, None)
        watch.forget("tidy:" + name)
    for name in [n for n in records if n not in names]:
        del records[name]
    watch.save(mono)
    if removed:
        log.info("removed %d leftover file(s) from %s: %s", len(removed), pool.workers_dir,
                 " ".join(sorted(removed)[:10]) + (" ..." if len(removed) > 10 else ""))
    return removed


def _heartbeat_litter(path: str, name: str, mtime: float, watch: Watch, mono: float, stale_after: float,
                      records: dict[str, Any]) -> bool:
    if name not in records:
        try:
            records[name] = fsio.read_json(path, limit=HEARTBEAT_RECORD_LIMIT)
        except (ValueError, PermissionError):
            records[name] = None  # torn, foreign or unreadable: judged by watching alone
    record = records[name]
    if isinstance(record, dict) and owner_dead_here(record):
        return True
    if watch.still_for("tidy:" + name, mtime, mono) < _still_limit(record, stale_after):
        return False
    # RACE: it may beat between our stat and the unlink; look once more, right before.
    return os.stat(path).st_mtime == mtime


class Tidy:
    """Runs :func:`tidy_workers_dir` at most every ``every`` seconds; one per process."""

    def __init__(self, pool: PoolLayout, stale_after: float = 60.0, every: float = TIDY_EVERY):
        self.pool = pool
        self.stale_after = stale_after
        self.every = every
        self._last: float | None = None
        self._records: dict[str, Any] = {}

    def maybe(self, watch: Watch, mono: float, now: Callable[[], float]) -> list[str]:
        """A pass if the last was ``every`` seconds ago (``now`` is read only then); never raises
        an OSError (a tidy that fails costs litter, nothing else)."""
        if self._last is not None and 0 <= mono - self._last < self.every:
            return []
        self._last = mono
        try:
            return tidy_workers_dir(self.pool, watch, mono, now(), self.stale_after, self._records)
        except OSError as e:
            log.info("cannot tidy %s: %s", self.pool.workers_dir, e)
            return []
