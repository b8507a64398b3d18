"""The rows of the run view: a job (:class:`JobView`) and an array (:class:`ArrayView`, one
row counting its tasks per state from its chunk files' names)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from ..protocol import fsio
from ..protocol.layout import split_private_name
from ..protocol.units import Chunk, Coverage, overlapping

JOB_STATES = ("waiting", "queued", "running", "done", "failed", "blocked")
# Shown as job states, counted as the folder they are in (the --json count keys are fixed).
COUNTED_AS = {"held": "waiting", "skipped": "done", "lost": "waiting"}
REBUILT = "a worker's sweep or the next resume rebuilds it from the workflow"
LOST_REASON = f"in no state folder (quarantined, or deleted): {REBUILT}"


@dataclass
class JobView:
    id: str
    state: str
    record: dict[str, Any] | None
    claim: dict[str, Any] | None = None
    reason: str | None = None
    count: int | None = None  # its tries, when ``record`` keeps only the last (see views.reading)
    path: str | None = None  # its file, not read yet (see views.jobs.detail)

    def needs(self) -> list[Any]:
        deps = (self.record or {}).get("dependencies")
        return deps if isinstance(deps, list) else []

    def row(self) -> dict[str, Any]:
        r = self.record or {}
        tries = r.get("tries", [])
        last = tries[-1] if tries else {}
        host = (self.claim or {}).get("host") if self.state == "running" else last.get("host")
        count = len(tries) if self.count is None else self.count
        if self.state == "running":
            # the try under way counts (a first try showed 0): its lock says which it is (its
            # owner may have written its result into the record already); a claim with no
            # lock yet (a moment old, or its owner died before writing it) counts as before
            number = (self.claim or {}).get("try")
            count = max(count, number) if type(number) is int else count
        return {"id": self.id, "state": self.state, "tries": count,
                "exit_code": r.get("last_exit_code"), "duration": last.get("duration"),
                "host": host, "reason": self.reason}


class ArrayView(JobView):
    """An array, one row: its tasks counted per state from its chunk files' names alone
    (see executioner.protocol.units); ``record`` is one of its chunk files, for its
    dependencies."""

    def __init__(self, job: str, size: int, units: list[tuple[str, Chunk, str]], record: dict[str, Any] | None):
        self.size = size
        self.units = units  # (state, chunk, path)
        self.counts = {s: 0 for s in (*JOB_STATES, "held", "lost")}
        # A chunk in a private folder (leaving running/ as pieces) counts only the tasks
        # of its pieces not placed yet: the others are in their folders already.
        placed = [u for u in units if not in_private(u[2])]
        out = Coverage([chunk.unit for _, chunk, _ in placed], {job: size})
        for state, chunk, path in units:
            if state == "waiting" and held_chunk(path):  # kept waiting by --failed-only
                state = "held"
            self.counts[state] += len(chunk) - (len(out.positions(job, chunk.lo, chunk.hi))
                                                if in_private(path) else 0)
        every = Coverage([chunk.unit for _, chunk, _ in units], {job: size})
        self.counts["lost"] = size - every.tasks.get(job, 0)
        super().__init__(job, self.derived(), record)
        pairs = overlapping([chunk for _, chunk, _ in placed])
        if pairs:  # never a count that is wrong without saying so
            twice = sum(len(chunk) for _, chunk, _ in placed) - out.tasks.get(job, 0)
            a, b = placed[pairs[0][0]], placed[pairs[0][1]]
            self.note = (f"{twice} tasks counted twice: chunk files overlap ({a[0]}/{a[1].unit}.json and "
                         f"{b[0]}/{b[1].unit}.json{' and more' if len(pairs) > 1 else ''}); a worker quarantines one")

    def derived(self) -> str:
        c = self.counts
        for state in ("running", "queued"):
            if c[state]:
                return state
        if c["waiting"] or c["lost"]:
            return "waiting"
        if c["failed"] or c["blocked"]:
            return "failed"
        return "held" if c["held"] else "done"

    def needs(self) -> list[Any]:
        """What it needs as a whole (task by task dependencies are judged per task)."""
        each = set(((self.record or {}).get("spec") or {}).get("elementwise") or ())
        return [d for d in super().needs() if d not in each]

    def positions(self, state: str) -> Coverage:
        return Coverage([chunk.unit for s, chunk, _ in self.units if s == state], {self.id: self.size})

    def block(self, count: int, reason: str) -> None:
        """``count`` of its waiting tasks can never run."""
        self.counts["waiting"] -= count
        self.counts["blocked"] += count
        self.reason = reason
        self.state = self.derived()

    note: str | None = None

    def row(self) -> dict[str, Any]:
        counts = {k: v for k, v in self.counts.items() if v}
        shown = ", ".join(f"{v} {k}" for k, v in counts.items())
        slurm = ((self.record or {}).get("slurm") or {}).get("job_id")
        if slurm and any(self.counts[s] for s in ("waiting", "queued", "running")):
            shown += f"; Slurm array {str(slurm).split('_')[0]}"  # the Slurm-DAG backend's (see slurm_arrays)
        return {"id": self.id, "state": self.state, "tasks": self.size, "counts": counts, "tries": None,
                "exit_code": None, "duration": None, "host": None,
                "reason": "; ".join(x for x in (shown, self.reason, self.note) if x)}



def in_private(path: str) -> bool:
    """Is this file in a private folder of running/ (a unit on its way out)?"""
    return split_private_name(os.path.basename(os.path.dirname(path))) is not None


def held_chunk(path: str) -> bool:
    """Is this waiting chunk held (by --failed-only)? Only waiting chunks are read for it."""
    try:
        record = fsio.read_json(path)
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and bool(record.get("held"))


def one_record(units: list[tuple[str, Chunk, str]]) -> dict[str, Any] | None:
    """Any readable chunk file of an array (they all hold its dependencies)."""
    for _, _, path in sorted(units, key=lambda u: u[0] != "waiting"):
        try:
            record = fsio.read_json(path)
        except (OSError, ValueError):
            continue
        if isinstance(record, dict):
            return record
    return None

