"""A chunk leaves running/ as *pieces*: runs of its tasks that go to the same state.

When a chunk try ends (or a recoverer takes a dead worker's chunk, reading its journal),
each task has an outcome: done, failed for good, to be retried (queued, perhaps with a
``not_before``), not run (queued again, or waiting when an element-wise upstream task
failed). Consecutive tasks with the same destination become one piece, a chunk file of
their own: ``failed/sim.7.json``, ``queued/sim.12-13.json``, ``done/sim.0-6.json``... Each
piece keeps the history of its tasks (every try entry, its per-task results cut to the
piece's range). :func:`executioner.protocol.fence.leave` commits all pieces at once.

A try entry of a chunk carries ``results``: columns, one value per task of the chunk as it
was claimed (``first`` = the position of the first), None where a task did not run in
that try. A try without ``results`` applies to every task (a whole chunk lost with its
worker, an internal error).
"""

from __future__ import annotations

import os
import random
import time
from typing import Any, Callable, Iterable

from .journal import read_journal
from .layout import RunLayout
from .retry import decide, losses
from .store import try_record
from .units import unit_name

COLUMNS = ("status", "exit", "signal", "start", "duration", "reason", "out", "err")
Piece = tuple[str, str, dict[str, Any]]  # state, unit, record


def is_chunk(record: dict[str, Any] | None) -> bool:
    return isinstance(record, dict) and isinstance(record.get("tasks"), list) and isinstance(record.get("job"), str)


def results_columns(first: int, last: int, results: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Columns for tasks first..last from per-task dicts (missing tasks: None)."""
    cols: dict[str, Any] = {"first": first}
    for c in COLUMNS:
        cols[c] = [results.get(p, {}).get(c) for p in range(first, last + 1)]
    return cols


def task_status(entry: dict[str, Any], position: int) -> dict[str, Any] | None:
    """What try ``entry`` says of one task: its status and exit code (None: it did not run)."""
    results = entry.get("results")
    if not isinstance(results, dict):
        return {"status": entry.get("status"), "exit_code": entry.get("exit_code"),
                "start_storage": entry.get("start_storage"), "start": entry.get("start")}
    i = position - results.get("first", 0)
    statuses = results.get("status") or []
    if not 0 <= i < len(statuses) or statuses[i] is None:
        return None
    exits = results.get("exit") or []
    return {"status": statuses[i], "exit_code": exits[i] if i < len(exits) else None,
            "start_storage": entry.get("start_storage"), "start": entry.get("start")}


def task_tries(record: dict[str, Any], position: int, attempt: int | None = None) -> list[dict[str, Any]]:
    """The tries of one task (of the current attempt unless ``attempt`` is given)."""
    attempt = record.get("attempt", 1) if attempt is None else attempt
    out = []
    for entry in record.get("tries", []):
        if entry.get("attempt", 1) != attempt:
            continue
        row = task_status(entry, position)
        if row is not None:
            out.append(row)
    return out


def destination(spec: dict[str, Any], record: dict[str, Any], entry: dict[str, Any], position: int,
                now: float, rng: random.Random | None = None, slurm_dag: bool = False
                ) -> tuple[str, float | None, str | None]:
    """Where a task goes after try ``entry``: (state, not_before, reason for a failure)."""
    row = task_status(entry, position)
    if row is None:
        return "queued", None, None  # not started in this try
    status = row["status"]
    if status == "done":
        return "done", None, None
    if status == "blocked":
        return "waiting", None, None
    tries = [*task_tries(record, position), row]
    if status in ("lost", "preempted"):
        lost, max_lost = losses(tries), spec.get("max_lost", 3)
        if lost >= max_lost:
            return "failed", None, f"lost or preempted {lost} times (max_lost {max_lost})"
        return ("failed" if slurm_dag else "queued"), None, None
    decision = decide(spec, tries, now, rng)
    if decision.retry:
        return "queued", now + decision.delay, None
    return "failed", None, decision.reason


def split(record: dict[str, Any], entry: dict[str, Any] | None,
          where: Callable[[int], tuple[str, float | None, str | None]]) -> list[Piece]:
    """The pieces of chunk ``record`` after try ``entry`` (appended to each piece's tries;
    None: no new try), ``where(position)`` giving each task's destination."""
    lo, hi = record["tasks"]
    tries = [*record.get("tries", []), *([entry] if entry is not None else [])]
    groups: list[list[Any]] = []  # [first, last, state, not_before, reason]
    for p in range(lo, hi + 1):
        state, not_before, reason = where(p)
        if groups and groups[-1][2] == state:
            g = groups[-1]
            g[1] = p
            g[3] = max(g[3], not_before) if g[3] is not None and not_before is not None else (g[3] or not_before)
            g[4] = g[4] or reason
        else:
            groups.append([p, p, state, not_before, reason])
    pieces: list[Piece] = []
    for first, last, state, not_before, reason in groups:
        new = dict(record, id=unit_name(record["job"], first, last), tasks=[first, last],
                   tries=[cut(t, first, last) for t in tries], not_before=not_before)
        new.pop("retry_delay_s", None)
        if not_before is not None:  # a claimer waits at most this long (see claims._take)
            new["retry_delay_s"] = round(max(0.0, not_before - time.time()), 6)
        if isinstance(record.get("lines"), list):
            new["lines"] = record["lines"][first - lo:last - lo + 1]
        new.pop("reason", None)
        if state == "failed" and reason:
            new["reason"] = reason
        pieces.append((state, new["id"], new))
    return pieces


def cut(entry: dict[str, Any], first: int, last: int) -> dict[str, Any]:
    """A try entry with its per-task results cut to tasks first..last."""
    results = entry.get("results")
    if not isinstance(results, dict):
        return entry
    start = first - results.get("first", 0)
    length = last - first + 1
    cols: dict[str, Any] = {"first": first}
    for c in COLUMNS:
        values = results.get(c)
        cols[c] = values[start:start + length] if isinstance(values, list) else None
    return dict(entry, results=cols)


def lost_pieces(run: RunLayout, record: dict[str, Any], reason: str, claim: dict[str, Any] | None,
                into: str | None = None, slurm_dag: bool = False) -> list[Piece]:
    """A chunk whose claim was lost (its worker died or stalled, or a resume takes it back):
    the tasks its journal lists as finished keep their result; every other task has a
    ``lost`` try (max_lost counts it, task by task) and goes back to queued/ (or ``into``)."""
    claim = claim or {}
    number = claim.get("try") if isinstance(claim.get("try"), int) else len(record["tries"]) + 1
    lo, hi = record["tasks"]
    finished = read_journal(run.task_journal(record["id"], number)) if claim else {}
    results: dict[int, dict[str, Any]] = {}
    for p in range(lo, hi + 1):
        r = finished.get(p)
        if r is None:
            results[p] = {"status": "lost", "reason": reason}
        else:
            duration = None if r.start is None or r.end is None else round(r.end - r.start, 6)
            results[p] = {"status": r.status, "exit": r.exit, "signal": r.signal, "start": r.start,
                          "duration": duration, "reason": r.reason, "out": list(r.out or ()), "err": list(r.err or ())}
    now = time.time()
    entry = try_record(number, record.get("attempt", 1), "lost", reason=reason, start=claim.get("claimed_at"),
                       end=now, worker=claim.get("worker"), host=claim.get("host"), worker_pid=claim.get("pid"),
                       stdout=os.path.relpath(run.log(record["id"], number, "out"), run.root),
                       stderr=os.path.relpath(run.log(record["id"], number, "err"), run.root))
    entry["results"] = results_columns(lo, hi, results)
    spec = record["spec"]
    if into is not None:
        return split(record, entry, lambda p: ("done", None, None) if results[p]["status"] == "done"
                     else (into, None, None))
    rng = random.Random()
    return split(record, entry, lambda p: destination(spec, record, entry, p, now, rng, slurm_dag))


def task_count(records: Iterable[dict[str, Any]]) -> int:
    return sum(r["tasks"][1] - r["tasks"][0] + 1 for r in records if is_chunk(r))
