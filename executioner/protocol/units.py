"""Units: what the protocol moves. A plain job is one unit; an array is stored as chunks.

A chunk of array ``sim`` holding the tasks at positions ``lo``..``hi`` (both included) is
the unit ``sim.<lo>-<hi>`` (``sim.<i>`` for one task), a file like any job's:
``queued/sim.0-63.json``. Positions count 0..N-1 whatever the array's own numbering (an
``array: {start, stop, step}`` names its tasks by value; its files by position), so names
are short, never negative, and sort. Validation refuses a job id that looks like a chunk
of an array of the same workflow, so a name says what it is once the run's arrays are
known (run.json lists them: ``"arrays": {"sim": 9, ...}``).

:class:`Coverage` answers "are these tasks all in this folder" from one listing, for
promotion (a dependency on a whole array, or task by task) and for counting tasks.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

_TAIL = re.compile(r"([0-9]+)(?:-([0-9]+))?")


@dataclass(frozen=True)
class Chunk:
    job: str
    lo: int
    hi: int

    @property
    def unit(self) -> str:
        return unit_name(self.job, self.lo, self.hi)

    def __len__(self) -> int:
        return self.hi - self.lo + 1


def unit_name(job: str, lo: int, hi: int) -> str:
    return f"{job}.{lo}" if lo == hi else f"{job}.{lo}-{hi}"


def chunk_like(unit: str) -> bool:
    """Is ``unit`` shaped like a chunk's name (``<job>.<lo>[-<hi>]``)? A plain job's id can
    be (``data.2``) unless its stem names an array (validation refuses that); a name that is
    not shaped so is never a chunk's."""
    job, dot, tail = unit.rpartition(".")
    return bool(dot and job and _TAIL.fullmatch(tail))


def parse_unit(unit: str, arrays: Mapping[str, int]) -> Chunk | None:
    """The chunk ``unit`` names, if it is one of ``arrays`` (job -> task count) and in range."""
    job, dot, tail = unit.rpartition(".")
    if not dot or job not in arrays:
        return None
    m = _TAIL.fullmatch(tail)
    if not m:
        return None
    first, last = m.group(1), m.group(2)
    if any(t is not None and len(t) > 1 and t[0] == "0" for t in (first, last)):
        return None  # not a name we write (007, 1-05): a foreign file
    lo = int(first)
    hi = lo if last is None else int(last)
    if (last is not None and hi <= lo) or not 0 <= lo <= hi < arrays[job]:
        return None
    return Chunk(job, lo, hi)


def runs(positions: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted positions as maximal runs of consecutive ones: [1, 2, 3, 7] -> [(1, 3), (7, 7)]."""
    out: list[tuple[int, int]] = []
    for p in sorted(positions):
        if out and p == out[-1][1] + 1:
            out[-1] = (out[-1][0], p)
        else:
            out.append((p, p))
    return out


class Coverage:
    """The task ranges of each array present in one folder listing (plus plain job ids)."""

    def __init__(self, units: Iterable[str], arrays: Mapping[str, int]):
        self.jobs: set[str] = set()
        spans: dict[str, list[tuple[int, int]]] = {}
        for unit in units:
            chunk = parse_unit(unit, arrays) if arrays else None
            if chunk is None:
                self.jobs.add(unit)
            else:
                spans.setdefault(chunk.job, []).append((chunk.lo, chunk.hi))
        self._merged: dict[str, tuple[list[int], list[int]]] = {}
        self.tasks: dict[str, int] = {}
        for job, ranges in spans.items():
            merged: list[tuple[int, int]] = []
            for lo, hi in sorted(ranges):
                if merged and lo <= merged[-1][1] + 1:
                    merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
                else:
                    merged.append((lo, hi))
            self._merged[job] = ([a for a, _ in merged], [b for _, b in merged])
            self.tasks[job] = sum(b - a + 1 for a, b in merged)

    def covers(self, job: str, lo: int, hi: int) -> bool:
        """Are tasks lo..hi of array ``job`` all here?"""
        starts, ends = self._merged.get(job, ((), ()))
        i = bisect.bisect_right(starts, lo) - 1
        return i >= 0 and ends[i] >= hi

    def has(self, job: str) -> bool:
        return job in self.jobs

    def positions(self, job: str, lo: int, hi: int) -> list[int]:
        """Which of tasks lo..hi of array ``job`` are here."""
        starts, ends = self._merged.get(job, ((), ()))
        out: list[int] = []
        i = max(0, bisect.bisect_right(starts, lo) - 1)
        while i < len(starts) and starts[i] <= hi:
            out.extend(range(max(lo, starts[i]), min(hi, ends[i]) + 1))
            i += 1
        return out


def overlapping(chunks: Sequence[Chunk]) -> list[tuple[int, int]]:
    """Pairs (as indexes into ``chunks``) of chunks of one array that share tasks. The
    protocol never places two such files at once (a chunk leaves running/ as pieces of its
    own range, a resume splits what it grabbed), so a pair is a hand's or a tool's copy:
    some tasks would run, and count, twice."""
    out: list[tuple[int, int]] = []
    widest: dict[str, int] = {}
    for i in sorted(range(len(chunks)), key=lambda k: (chunks[k].job, chunks[k].lo, chunks[k].hi)):
        chunk = chunks[i]
        before = widest.get(chunk.job)
        if before is not None and chunk.lo <= chunks[before].hi:
            out.append((before, i))
        if before is None or chunk.hi > chunks[before].hi:
            widest[chunk.job] = i
    return out
