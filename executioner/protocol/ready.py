"""When a waiting job or chunk may run: its dependencies as the folders show them.

A dependency on a plain job is met when ``done/<job>.json`` exists. On a whole array, when
the done pieces of that array cover all its tasks. Element-wise (``sim:{index}``), a chunk
of tasks lo..hi may run when each of the upstream tasks lo..hi is *settled* (done, or
failed for good) and at least one of them is done: the worker then runs the tasks whose
upstream task is done and puts the others back in waiting/ as a piece of their own (shown
blocked). A failed upstream task blocks only its own dependent task.
"""

from __future__ import annotations

import os
from typing import Any

from . import fsio
from .layout import RunLayout, job_id_of
from .units import Coverage

_ARRAYS: dict[str, tuple[tuple[int, int, int], dict[str, int]]] = {}


def arrays_of(run: RunLayout) -> dict[str, int]:
    """The run's arrays and their sizes (run.json ``arrays``), cached until run.json changes."""
    try:
        st = os.stat(run.record)
    except FileNotFoundError:
        return {}
    key = (st.st_ino, st.st_mtime_ns, st.st_size)
    cached = _ARRAYS.get(run.root)
    if cached is not None and cached[0] == key:
        return cached[1]
    try:
        record = fsio.read_json(run.record)
    except (OSError, ValueError):
        return {}
    arrays = record.get("arrays") if isinstance(record, dict) else None
    found = {k: v for k, v in arrays.items() if isinstance(k, str) and isinstance(v, int)} \
        if isinstance(arrays, dict) else {}
    _ARRAYS[run.root] = (key, found)
    return found


def forget_arrays(run: RunLayout) -> None:
    """Drop the cached sizes: the next :func:`arrays_of` reads run.json again."""
    _ARRAYS.pop(run.root, None)


class Upstream:
    """Answers readiness questions for one run from at most one listing of done/ and one of
    failed/, made when first needed (a plain dependency alone costs one stat)."""

    def __init__(self, run: RunLayout, arrays: dict[str, int] | None = None,
                 done: list[str] | None = None):
        self.run = run
        self.arrays = arrays_of(run) if arrays is None else arrays
        self._done = None if done is None else Coverage(done, self.arrays)
        self._failed: Coverage | None = None

    def _listed(self, state: str) -> Coverage:
        try:
            names = os.listdir(self.run.state_dir(state))
        except FileNotFoundError:
            names = []
        return Coverage((j for n in names if (j := job_id_of(n))), self.arrays)

    @property
    def done(self) -> Coverage:
        if self._done is None:
            self._done = self._listed("done")
        return self._done

    @property
    def failed(self) -> Coverage:
        if self._failed is None:
            self._failed = self._listed("failed")
        return self._failed

    def ready(self, record: dict[str, Any]) -> bool:
        """May this waiting job (or chunk) be queued now?"""
        blocked = self.blocked(record)
        if blocked is None:
            return False
        tasks = record.get("tasks")
        return not (isinstance(tasks, list) and len(blocked) >= tasks[1] - tasks[0] + 1)

    def blocked(self, record: dict[str, Any]) -> set[int] | None:
        """None while some dependency is not settled; else the chunk's task positions whose
        element-wise upstream task failed (empty for a plain job)."""
        tasks = record.get("tasks") if isinstance(record.get("tasks"), list) else None
        each = set((record.get("spec") or {}).get("elementwise") or ())
        out: set[int] = set()
        for dep in record["dependencies"]:
            count = self.arrays.get(dep)
            if count is None:
                if self._done is not None:
                    if not self._done.has(dep):
                        return None
                elif not os.path.exists(self.run.job(dep, "done")):
                    return None
            elif tasks is not None and dep in each:
                lo, hi = tasks
                if self.done.covers(dep, lo, hi):
                    continue
                done = set(self.done.positions(dep, lo, hi))
                failed = set(self.failed.positions(dep, lo, hi)) - done
                if len(done) + len(failed) < hi - lo + 1:
                    return None
                out |= failed
            elif not self.done.covers(dep, 0, count - 1):
                return None
        return out
