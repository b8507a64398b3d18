"""Watching a stamp stand still, on this host's monotonic clock, shared by its processes.

A claim, a worker's heartbeat, a private commit folder or a coordinator lock is judged
stale when its *stamp* (an mtime or ctime, in whatever clock the storage or the writer
uses) has stayed the same for long enough, measured on the checker's own monotonic clock.
No clock of another machine is compared with ours.

Every process of one host (one boot: ``CLOCK_MONOTONIC`` counts from boot, the same for
all of them) shares its observations through one small file per host and boot::

    POOL/workers/.watch-<host>-<boot id>.json   {key: [stamp, first seen, last seen]}

(first/last seen on the monotonic clock), so a watch begun by one process is continued by
the next: a pool served only by short-lived processes (``--max-jobs 1`` workers, Slurm
jobs of a few minutes, ``exec-submit --wait``) still finds a dead worker on another host.
The file is rewritten with temp file + rename; two processes saving at once lose one of
the two updates, which only makes a watch start later (never end sooner).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Final

import psutil

from ..protocol import fsio

log = logging.getLogger("executioner.watch")
SAVE_EVERY: Final = 2.0  # seconds between two saves of one process's observations
FORGET_AFTER: Final = 3 * 3600.0  # an observation nobody renewed for this long is dropped
MAX_ENTRIES: Final = 20_000


def boot_id() -> str:
    """This boot of this machine: monotonic clocks compare only within one boot."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip().replace("-", "")[:16]
    except OSError:
        return f"{int(psutil.boot_time())}"


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in text)[:64]


class Watch:
    """``still_for(key, stamp, mono)``: for how long (our monotonic clock) ``key`` has carried
    ``stamp``, as seen by us or, with ``path``, by any process of this host."""

    def __init__(self, path: str | None = None):
        self.path = path
        self._seen: dict[str, list[float]] = {}  # key -> [stamp, first seen, last seen]
        self._forgotten: set[str] = set()  # dropped from the shared file at the next save
        self._dirty = False
        self._saved = -1e18
        if path is not None:
            self._seen = self._load()

    @classmethod
    def shared(cls, workers_dir: str) -> "Watch":
        return cls(os.path.join(workers_dir, f".watch-{_safe(fsio.HOST)}-{boot_id()}.json"))

    def _load(self) -> dict[str, list[float]]:
        assert self.path is not None
        try:
            data = fsio.read_json(self.path, limit=8 << 20)
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict):
            return {}
        out = {}
        for key, value in data.items():
            if (isinstance(value, list) and len(value) == 3
                    and all(isinstance(x, (int, float)) and x == x for x in value)):
                out[str(key)] = [float(x) for x in value]
        return out

    def still_for(self, key: str, stamp: float, mono: float) -> float:
        seen = self._seen.get(key)
        if seen is None or seen[0] != stamp or seen[1] > mono:
            self._seen[key] = [stamp, mono, mono]
            self._dirty = True
            return 0.0
        seen[2] = mono
        self._dirty = True
        return mono - seen[1]

    def forget(self, key: str) -> None:
        """Start any later watch of ``key`` afresh (here, and in the shared file)."""
        if self._seen.pop(key, None) is not None or self.path is not None and key not in self._forgotten:
            self._forgotten.add(key)
            self._dirty = True

    def save(self, mono: float | None = None, force: bool = False) -> None:
        """Merge our observations into the host's file (at most every SAVE_EVERY s)."""
        mono = time.monotonic() if mono is None else mono
        if self.path is None or not self._dirty or (not force and mono - self._saved < SAVE_EVERY):
            return
        self._saved = mono
        merged = {k: v for k, v in self._load().items() if k not in self._forgotten}
        for key, mine in self._seen.items():
            theirs = merged.get(key)
            if theirs is None or theirs[0] != mine[0]:
                if theirs is None or mine[2] >= theirs[2]:  # the stamp seen last is the current one
                    merged[key] = mine
            else:  # same stamp: the earliest sighting counts, the latest renews it
                merged[key] = [mine[0], min(mine[1], theirs[1]), max(mine[2], theirs[2])]
        merged = {k: v for k, v in merged.items() if mono - v[2] < FORGET_AFTER and v[1] <= mono}
        if len(merged) > MAX_ENTRIES:
            merged = dict(sorted(merged.items(), key=lambda kv: kv[1][2])[-MAX_ENTRIES:])
        self._seen = {**merged, **{k: v for k, v in self._seen.items() if k not in merged}}
        try:
            fsio.atomic_write_json(self.path, merged)
            self._dirty = False
            self._forgotten.clear()
        except OSError as e:  # a full disk costs us the sharing only
            log.info("cannot save observations to %s: %s", self.path, e)
