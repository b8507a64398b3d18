"""What a resume, rollback or from-job does to the tasks of an array, chunk file by chunk file.

An array's decisions are made per task, then each chunk file now in the run becomes one step:
left alone, moved whole (rewritten for the new attempt), or split into pieces when its tasks
go to different places (``--rollback-to sim:4`` on ``done/sim.0-63.json`` leaves
``done/sim.0-3.json``, ``waiting/sim.4.json``, ``done/sim.5-63.json``). Tasks the run lacks
(an array grown, or tasks in no file) are new chunk files; tasks past a shrunk array's end
go to ``removed/`` with their chunk.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable

from ..execution.tasks import render, task_set
from ..protocol.pieces import split
from ..protocol.store import new_chunk_record
from ..protocol.units import Chunk, runs, unit_name
from ..workflow import JobSpec, Workflow
from ..workflow.arrays import chunk_size, chunks

Where = tuple[str, bool, str | None]  # (state, held, skipped reason) of one task after the change


@dataclass
class ArrayPlan:
    """Per-task decisions for one array (positions)."""

    spec: JobSpec
    rerun_all: str | None = None  # why every task runs again
    rerun: dict[int, str] = field(default_factory=dict)  # position -> why it runs again
    skipped: str | None = None  # assumed done (--from-job downstream of it)

    @property
    def size(self) -> int:
        assert self.spec.tasks is not None
        return len(self.spec.tasks)

    def any_rerun(self) -> bool:
        return bool(self.rerun_all or self.rerun)


def missing_outputs(workflow: Workflow, spec: JobSpec, positions: list[int]) -> dict[int, str]:
    """Done tasks whose declared outputs are gone: position -> the outputs missing."""
    if not spec.outputs or spec.tasks is None:
        return {}
    stored = spec.to_spec()
    out = {}
    for p in positions:
        r = render(spec.id, stored, spec.tasks, p)
        cwd = os.path.normpath(os.path.join(workflow.workdir, r.workdir or ""))
        gone = [o for o in r.outputs if not os.path.exists(os.path.join(cwd, o))]
        if gone:
            out[p] = ", ".join(gone)
    return out


def task_targets(ap: ArrayPlan, state: str, position: int, options: Any, upstream_failed: str | None) -> tuple[str, bool, str | None, str]:
    """(state, held, skipped, why) of one task after the change, given the state it is in."""
    deps = bool(ap.spec.dependencies)
    ready = "waiting" if deps else "queued"
    if ap.skipped:
        return "done", False, ap.skipped, ap.skipped
    why = ap.rerun_all or ap.rerun.get(position)
    if why:
        return ready, False, None, why
    if state == "done":
        return "done", False, None, "done"
    if state == "failed":
        if options.no_retry_failed:
            return "failed", False, None, "failed, not retried (--no-retry-failed)"
        if upstream_failed:
            return "waiting", False, None, f"upstream failed: {upstream_failed}"
        return ready, False, None, "failed: requeued"
    if options.failed_only:
        return "waiting", True, None, "held until a plain resume (--failed-only)"
    return ready, False, None, "queued" if state == "queued" else "waiting"


def unit_pieces(ap: ArrayPlan, chunk: Chunk, state: str, options: Any, attempt: int, run_id: str,
                dependents: list[str], upstream_failed: str | None
                ) -> tuple[list[tuple[int, int, str, bool, str | None, str]], Callable[[dict[str, Any] | None], list[tuple[str, str, dict[str, Any]]]]]:
    """The runs of tasks of one chunk file with the same fate, and how to build their files
    from the file as grabbed."""
    fates = [task_targets(ap, state, p, options, upstream_failed) if p < ap.size
             else ("removed", False, None, "past the array's end now") for p in range(chunk.lo, chunk.hi + 1)]
    groups: list[tuple[int, int, str, bool, str | None, str]] = []
    for i, (dst, held, skip, why) in enumerate(fates):
        p = chunk.lo + i
        if groups and groups[-1][2:5] == (dst, held, skip):
            g = groups[-1]
            groups[-1] = (g[0], p, dst, held, skip, g[5])
        else:
            groups.append((p, p, dst, held, skip, why))
    spec = ap.spec

    def build(found: dict[str, Any] | None) -> list[tuple[str, str, dict[str, Any]]]:
        base = new_chunk_record(run_id, spec, chunk.lo, chunk.hi, dependents, attempt)
        if found is not None:
            base["tries"] = found.get("tries", [])
            base["last_exit_code"] = found.get("last_exit_code")
        fate = {p: (dst, held, skip) for (lo, hi, dst, held, skip, _) in groups for p in range(lo, hi + 1)}
        # split by the whole fate (a held and a released task may both go to waiting/)
        keys = {p: f"{i}" for i, (lo, hi, *_) in enumerate(groups) for p in range(lo, hi + 1)}
        pieces = split(base, None, lambda p: (keys[p], None, None))
        out = []
        for _key, unit, record in pieces:
            dst, held, skip = fate[record["tasks"][0]]
            record["held"] = held
            record["skipped"] = {"reason": skip, "attempt": attempt} if skip else None
            record["not_before"] = None
            record.pop("retry_delay_s", None)
            out.append((dst, unit, record))
        return out

    return groups, build


def new_units(spec: JobSpec, have: list[Chunk], run_id: str, attempt: int, dependents: list[str]) -> list[tuple[str, Chunk]]:
    """Chunks for the tasks of ``spec`` no file holds (an array grown, tasks lost): runs of
    missing positions cut at the array's chunk size."""
    assert spec.tasks is not None
    size = chunk_size(len(spec.tasks), spec.tasks.chunk)
    covered = set()
    for c in have:
        covered.update(range(c.lo, min(c.hi, len(spec.tasks) - 1) + 1))
    if len(covered) == len(spec.tasks):
        return []
    out = []
    for lo, hi in runs(p for p in range(len(spec.tasks)) if p not in covered):
        for a, b in chunks(hi - lo + 1, size):
            out.append((unit_name(spec.id, lo + a, lo + b), Chunk(spec.id, lo + a, lo + b)))
    return out


def task_set_of(spec: JobSpec) -> Any:
    return task_set(spec.to_spec())
