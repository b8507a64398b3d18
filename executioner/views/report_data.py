"""What ``exec-status POOL RUN --report FILE.html`` shows, read from the run directory.

One pass over the state folders (:func:`executioner.protocol.snapshot.snapshot`) reads every
job or chunk file once; from each it keeps only what the report draws: the job's node of the
DAG (an array is one node, its tasks counted per state), one bar per try (a chunk try is one
bar for all its tasks: a 1,000,000-task array is some thousands of bars, not a million), per
host counts of tries and failures (tasks counted one by one, from the chunk try's
``results`` columns, without making a row per task), the slowest jobs and tasks (a bounded
heap), the failures (the first :data:`FAILURES_MAX`, with the last :data:`TAIL_BYTES` of
their stderr; the rest are counted), the retried and lost tries (the first
:data:`RETRIES_MAX`). Nothing here grows with the number of tasks except counters.

A running run is read as it is now (a snapshot): a running try is drawn from its claim's
lock (when it began) to ``now``. A file that cannot be used is counted and named, never
fatal: the report of a damaged run still opens.
"""

from __future__ import annotations

import heapq
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Final

from ..protocol import attempts
from ..protocol.layout import RunLayout
from ..protocol.ready import arrays_of
from ..protocol.records import read_job
from ..protocol.snapshot import snapshot
from ..protocol.store import claim_lock, read_run_record
from ..protocol.units import parse_unit
from .reading import token_of

TAIL_BYTES: Final = 2048  # of a failure's stderr shown in the report
FAILURES_MAX: Final = 100  # failures shown with their stderr tail (the others are counted)
RETRIES_MAX: Final = 200  # retried or lost tries listed
SLOWEST_MAX: Final = 20
FAILED_STATUSES: Final = frozenset({"failed", "timeout"})
REQUEUED_STATUSES: Final = frozenset({"lost", "preempted"})


@dataclass
class Node:
    """One job of the DAG (an array: all its tasks), with its tasks counted per state."""

    name: str
    dependencies: set[str] = field(default_factory=set)
    counts: Counter[str] = field(default_factory=Counter)
    array: bool = False


@dataclass
class Bar:
    """One try on the timeline: a job's try, or a chunk try (``tasks`` > 1)."""

    lane: str
    host: str
    start: float
    end: float
    status: str
    unit: str
    try_number: int
    exit_code: Any
    tasks: int = 1


@dataclass
class HostRow:
    tries: int = 0
    failed: int = 0
    lost: int = 0
    busy: float = 0.0  # seconds of tries that ended (job tries and chunk tries)


@dataclass
class ReportData:
    run_id: str
    run_record: dict[str, Any]
    now: float
    nodes: dict[str, Node] = field(default_factory=dict)
    bars: list[Bar] = field(default_factory=list)
    hosts: dict[str, HostRow] = field(default_factory=dict)
    slowest: list[tuple[float, str, str]] = field(default_factory=list)  # (duration, job or task, host) heap
    failures: list[dict[str, Any]] = field(default_factory=list)
    failures_total: int = 0
    retries: list[dict[str, Any]] = field(default_factory=list)
    retries_total: int = 0
    statuses: Counter[str] = field(default_factory=Counter)  # every try of a job or task, by status
    busy_sum: float = 0.0  # seconds: the sum of the durations of every job try and task
    first_start: float | None = None
    last_end: float | None = None
    unusable: list[str] = field(default_factory=list)
    attempts: list[dict[str, Any]] = field(default_factory=list)

    def state_counts(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for n in self.nodes.values():
            total.update(n.counts)
        return total


def _shown_state(state: str, record: dict[str, Any]) -> str:
    if state == "waiting" and record.get("held"):
        return "held"
    if state == "done" and record.get("skipped"):
        return "skipped"
    return state


def _tail(run: RunLayout, rel: Any, span: Any = None) -> str | None:
    """The last TAIL_BYTES of a log (of its part ``span`` = [offset, length]); None if missing."""
    if not isinstance(rel, str):
        return None
    path = rel if os.path.isabs(rel) else os.path.join(run.root, rel)
    try:
        with open(path, "rb") as f:
            if isinstance(span, list) and len(span) == 2 and all(isinstance(x, int) for x in span):
                lo, length = span
                start = max(lo, lo + length - TAIL_BYTES)
                f.seek(start)
                data = f.read(lo + length - start)
            else:
                size = os.fstat(f.fileno()).st_size
                f.seek(max(0, size - TAIL_BYTES))
                data = f.read(TAIL_BYTES)
    except OSError:
        return None
    return data.decode("utf-8", "replace")


class _Reader:
    def __init__(self, run: RunLayout, now: float):
        self.run = run
        record = read_run_record(run)
        self.data = ReportData(record.get("run_id", run.run_id), record, now)
        self.arrays = arrays_of(run)

    def _span(self, start: Any, end: Any) -> None:
        d = self.data
        if isinstance(start, (int, float)):
            d.first_start = start if d.first_start is None else min(d.first_start, start)
        if isinstance(end, (int, float)):
            d.last_end = end if d.last_end is None else max(d.last_end, end)

    def _host(self, t: dict[str, Any]) -> HostRow:
        return self.data.hosts.setdefault(str(t.get("host") or "?"), HostRow())

    def _slow(self, duration: Any, name: str, host: Any) -> None:
        if not isinstance(duration, (int, float)):
            return
        item = (float(duration), name, str(host or "?"))
        if len(self.data.slowest) < SLOWEST_MAX:
            heapq.heappush(self.data.slowest, item)
        elif item > self.data.slowest[0]:
            heapq.heapreplace(self.data.slowest, item)

    def _failure(self, name: str, t: dict[str, Any], stderr: Any, span: Any = None, **row: Any) -> None:
        d = self.data
        d.failures_total += 1
        if len(d.failures) < FAILURES_MAX:
            d.failures.append({"job": name, "try": t.get("try"), "host": t.get("host"), "status": row.get("status"),
                               "exit_code": row.get("exit_code"), "reason": row.get("reason"),
                               "stderr": stderr if isinstance(stderr, str) else None,
                               "tail": _tail(self.run, stderr, span)})

    def _retry(self, name: str, t: dict[str, Any], status: str) -> None:
        d = self.data
        d.retries_total += 1
        if len(d.retries) < RETRIES_MAX:
            d.retries.append({"job": name, "try": t.get("try"), "status": status, "host": t.get("host"),
                              "worker": t.get("worker"), "exit_code": t.get("exit_code"), "reason": t.get("reason")})

    def _bar(self, unit: str, t: dict[str, Any], status: str, start: Any, end: Any, tasks: int) -> None:
        if not isinstance(start, (int, float)):
            return
        if not isinstance(end, (int, float)):
            duration = t.get("duration")
            end = start + duration if isinstance(duration, (int, float)) else start
        self.data.bars.append(Bar(str(t.get("worker") or t.get("host") or "?"), str(t.get("host") or "?"),
                                  float(start), float(end), status, unit, int(t.get("try") or 0),
                                  t.get("exit_code"), tasks))
        self._span(start, end)

    def job(self, unit: str, state: str, record: dict[str, Any]) -> None:
        """A plain job: its node, and each of its tries."""
        d = self.data
        node = d.nodes.setdefault(unit, Node(unit))
        node.dependencies.update(x for x in record.get("dependencies", []) if isinstance(x, str))
        node.counts[_shown_state(state, record)] += 1
        tries = record.get("tries", [])
        for t in tries:
            status = str(t.get("status") or "?")
            d.statuses[status] += 1
            host = self._host(t)
            host.tries += 1
            duration = t.get("duration")
            if isinstance(duration, (int, float)):
                d.busy_sum += duration
                host.busy += duration
            if status in FAILED_STATUSES:
                host.failed += 1
            if status in REQUEUED_STATUSES:
                host.lost += 1
            if t is not tries[-1] or status in REQUEUED_STATUSES:
                self._retry(unit, t, status)  # retried (or requeued: lost with its worker, preempted)
            self._bar(unit, t, status, t.get("start"), t.get("end"), 1)
        if state == "done" and tries:
            self._slow(tries[-1].get("duration"), unit, tries[-1].get("host"))
        if state == "failed" and tries:
            last = tries[-1]
            self._failure(unit, last, last.get("stderr"), status=last.get("status"),
                          exit_code=last.get("exit_code"), reason=record.get("reason") or last.get("reason"))

    def _running(self, unit: str, state: str, record: dict[str, Any], tasks: int, path: str = "") -> None:
        if state != "running":
            return
        token = token_of(path) if path else None
        claim = claim_lock(self.run, unit, token, record) if token else None
        if claim and isinstance(claim.get("claimed_at"), (int, float)):
            t = {"host": claim.get("host"), "worker": claim.get("worker"), "try": len(record.get("tries", [])) + 1}
            self._bar(unit, t, "running", claim["claimed_at"], self.data.now, tasks)

    def chunk(self, unit: str, job: str, lo: int, hi: int, state: str, record: dict[str, Any]) -> None:
        """A chunk of an array: its tasks counted in the array's node, one bar per chunk try."""
        d = self.data
        node = d.nodes.setdefault(job, Node(job, array=True))
        node.array = True
        node.dependencies.update(x for x in record.get("dependencies", []) if isinstance(x, str))
        node.counts[_shown_state(state, record)] += hi - lo + 1
        tries = record.get("tries", [])
        for t in tries:
            results = t.get("results")
            host = self._host(t)
            host.tries += 1  # counted as one try of the host (its tasks are in `statuses`)
            ended = Counter[str]()
            if isinstance(results, dict) and isinstance(results.get("status"), list):
                # Column at a time (read_job checked their kinds): a million tasks, no loop per task
                ended.update(results["status"])
                ended.pop(None, None)  # type: ignore[call-overload]
                durations = results.get("duration")
                if isinstance(durations, list):
                    d.busy_sum += sum(filter(None, durations))
                    self._slow_tasks(job, results, t)
                self._task_failures(job, results, t, state == "failed" and t is tries[-1])
            else:
                ended[str(t.get("status") or "?")] += hi - lo + 1
            d.statuses.update(ended)
            host.failed += sum(n for s, n in ended.items() if s in FAILED_STATUSES)
            host.lost += sum(n for s, n in ended.items() if s in REQUEUED_STATUSES)
            status = str(t.get("status") or "?")
            if status in REQUEUED_STATUSES:
                self._retry(unit, t, status)
            worst = next((s for s in ("failed", "timeout", "lost", "preempted") if ended.get(s)), status)
            if isinstance(t.get("duration"), (int, float)):
                host.busy += t["duration"]
            self._bar(unit, t, worst, t.get("start"), t.get("end"), sum(ended.values()) or hi - lo + 1)

    def _slow_tasks(self, job: str, results: dict[str, Any], t: dict[str, Any]) -> None:
        durations, statuses, first = results["duration"], results["status"], results.get("first")
        if not isinstance(first, int):
            return
        numbers = list(filter(None, durations))
        if len(self.data.slowest) >= SLOWEST_MAX and max(numbers, default=0) <= self.data.slowest[0][0]:
            return  # none of this try's tasks is among the slowest so far
        best = heapq.nlargest(SLOWEST_MAX, ((x, i) for i, x in enumerate(durations)
                                            if isinstance(x, (int, float)) and i < len(statuses)
                                            and statuses[i] == "done"))
        for duration, i in best:
            self._slow(duration, f"{job}:{first + i}", t.get("host"))

    def _task_failures(self, job: str, results: dict[str, Any], t: dict[str, Any], final: bool) -> None:
        """The failed tasks of one chunk try: failures for good (``final``: the last try of a
        chunk in failed/), else retried tasks."""
        statuses, first = results["status"], results.get("first")
        if not isinstance(first, int) or not any(s in statuses for s in FAILED_STATUSES):
            return
        for i, s in enumerate(statuses):
            if s in FAILED_STATUSES:
                def col(name: str) -> Any:
                    values = results.get(name)
                    return values[i] if isinstance(values, list) and i < len(values) else None
                if final:
                    self._failure(f"{job}:{first + i}", t, t.get("stderr"), col("err"), status=s,
                                  exit_code=col("exit"), reason=col("reason"))
                else:
                    self.data.retries_total += 1
                    if len(self.data.retries) < RETRIES_MAX:
                        self.data.retries.append({"job": f"{job}:{first + i}", "try": t.get("try"), "status": s,
                                                  "host": t.get("host"), "worker": t.get("worker"),
                                                  "exit_code": col("exit"), "reason": col("reason")})

    def _one(self, unit: str, state: str, path: str) -> bool:
        """Take in one job or chunk file; False if it is gone (moved since the listing)."""
        try:
            record, problem = read_job(path, unit)
        except FileNotFoundError:
            return False
        except OSError as e:
            record, problem = None, e.strerror or str(e)
        chunk = parse_unit(unit, self.arrays)
        if record is None:
            self.data.unusable.append(f"{state}/{os.path.basename(path)}: {problem}")
            name = chunk.job if chunk else unit
            self.data.nodes.setdefault(name, Node(name, array=chunk is not None)).counts["lost"] += \
                (chunk.hi - chunk.lo + 1) if chunk else 1
        elif chunk is not None:
            self.chunk(unit, chunk.job, chunk.lo, chunk.hi, state, record)
            self._running(unit, state, record, chunk.hi - chunk.lo + 1, path)
        else:
            self.job(unit, state, record)
            self._running(unit, state, record, 1, path)
        return True

    def read(self) -> ReportData:
        listed = snapshot(self.run)
        moved = [unit for unit, (state, path) in sorted(listed.items()) if not self._one(unit, state, path)]
        # RACE: a unit moved between the listing and its read (a worker claimed or finished it;
        # a chunk may have left as pieces, under new names). A second listing finds it: the
        # same job, or the units that now hold a moved chunk's tasks (and no task read already:
        # a new unit overlapping no moved chunk was made from one read in the first pass, and
        # taking it would count its tasks twice). What moved again is counted as moving.
        if moved:
            spans = [c for c in (parse_unit(u, self.arrays) for u in moved) if c is not None]
            again = snapshot(self.run)
            for unit, (state, path) in sorted(again.items()):
                chunk = parse_unit(unit, self.arrays)
                if unit in moved or chunk is not None and unit not in listed and any(
                        c.job == chunk.job and c.lo <= chunk.hi and chunk.lo <= c.hi for c in spans):
                    if not self._one(unit, state, path):
                        self.data.unusable.append(f"{unit}: moving while the report was read")
        self.data.attempts = attempts.all_records(self.run)
        return self.data


def read_report(run: RunLayout, now: float | None = None) -> ReportData:
    """Everything the report shows, from one read of every job and chunk file (see the module)."""
    return _Reader(run, time.time() if now is None else now).read()
