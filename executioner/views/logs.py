"""A job's (or an array task's) output: ``exec-status POOL RUN --log JOB [--try N]
[--stderr|--both] [--tail N] [--follow]``.

A job's try writes ``logs/<job>.<try>.out|.err``; the try's entry in the job file names
them. A task of an array has no files of its own: a chunk try appends each finished task's
output to the chunk's ``logs/<unit>.<try>.out|.err`` after a header line, and records where
(offset, length) in the chunk record's ``results`` or, while the chunk runs, in the try's
journal ``logs/<unit>.<try>.tasks`` (executioner.protocol.journal). A try lost with its
node may have left its logs or not: what is there is shown, a log that is not there is
said to be missing, in one line. ``--follow`` polls the size of a running try's logs (they
are on the shared filesystem, wherever its worker runs) and stops once its claim has left
running/; a task's output appears whole when the task ends (it is spooled meanwhile).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import IO, Any, Callable, Final

from ..errors import CorruptFileError, PoolError
from ..protocol.journal import read_journal
from ..protocol.layout import RunLayout, split_private_name
from ..protocol.ready import arrays_of
from ..protocol.records import load_job
from ..protocol.snapshot import snapshot
from ..workflow.arrays import TASK_SEP

STREAMS: Final = {"stdout": "out", "stderr": "err"}
LAST_LINE_MAX: Final = 200  # characters of a failed job's last stderr line in the run view
TAIL_BLOCK: Final = 1 << 16


@dataclass
class Log:
    """One stream of one try: the file, and the part of it that is this job's (a task's
    span in its chunk try's log; None: all of it). ``missing``: why there is nothing."""

    stream: str
    path: str
    span: tuple[int, int] | None = None
    missing: str | None = None


@dataclass
class TryLogs:
    run_id: str
    job: str
    try_number: int
    status: str  # the try's status, or "running"
    host: str | None
    logs: list[Log] = field(default_factory=list)
    claim: str | None = None  # running/ path of the claim while the try runs (--follow)
    pending: str | None = None  # a running task not finished yet: why no span is known

    def data(self, text: Callable[[Log], str | None]) -> dict[str, Any]:
        return {"run_id": self.run_id, "job": self.job, "try": self.try_number, "status": self.status,
                "host": self.host, "logs": [{"stream": g.stream, "path": g.path,
                                             "offset": g.span[0] if g.span else 0,
                                             "length": g.span[1] if g.span else None,
                                             "missing": g.missing, "text": text(g)} for g in self.logs]}


def find_logs(run: RunLayout, job: str, try_number: int | None, streams: tuple[str, ...]) -> TryLogs:
    """The logs of ``job``'s (or task ``sim:4``'s) try ``try_number`` (default: its last,
    a running one included); PoolError (exit 2) for a job, task or try there is not."""
    name, sep, index = job.partition(TASK_SEP)
    arrays = arrays_of(run)
    if sep and name in arrays:
        return _task_logs(run, name, index, try_number, streams, arrays)
    found = snapshot(run).get(job)
    if found is None:
        raise PoolError(f"no job {job!r} in this run", run.root)
    state, path = found
    record = _load(path, job)
    tries = record["tries"]
    running = len(tries) + 1 if state == "running" else None
    if running and tries and split_private_name(os.path.basename(os.path.dirname(path))) \
            and not os.path.exists(run.claim_record(job, running)):
        # RACE: caught leaving running/ with its result already swapped into its private
        # folder: the try that ran is the record's last (as store.claim_lock reads it)
        running = len(tries)
    number = try_number or running or len(tries)
    if number == 0:
        raise PoolError(f"job {job!r} has not run yet ({state})", run.root)
    if number == running and (number > len(tries) or try_number is None):
        out = TryLogs(run.run_id, job, number, "running", None, claim=path)
        out.logs = [Log(s, run.log(job, number, STREAMS[s])) for s in streams]  # type: ignore[arg-type]
        return _check(out)
    if not 1 <= number <= len(tries):
        raise PoolError(f"job {job!r} has no try {number} (it has {_tries_text(len(tries), running)})", run.root)
    t = tries[number - 1]
    out = TryLogs(run.run_id, job, number, str(t.get("status")), t.get("host"))
    for s in streams:  # a try lost with its worker names no log: what it left at its name, if anything
        path = log_path(run, t.get(s)) or run.log(job, number, STREAMS[s])  # type: ignore[arg-type]
        out.logs.append(Log(s, path))
    return _check(out, t)


def log_path(run: RunLayout, rel: Any) -> str | None:
    """The absolute path of a log a try's record names (``logs/<name>``), or None for
    anything else: a hand-edited record cannot make a view read a file out of logs/."""
    if not isinstance(rel, str) or not rel.startswith("logs/") or "/" in rel[5:] or rel[5:] in ("", ".", ".."):
        return None
    return os.path.join(run.root, rel)


def _tries_text(n: int, running: int | None) -> str:
    text = f"{n} tr{'y' if n == 1 else 'ies'}"
    return text + (f", and try {running} running" if running else "")


def _load(path: str, job: str) -> dict[str, Any]:
    try:
        return load_job(path, job)
    except CorruptFileError as e:
        raise PoolError(f"the file of {job!r} cannot be used: {e.message}", path) from None
    except FileNotFoundError:
        raise PoolError(f"{job!r} moved while it was read: ask again", path) from None


def _check(out: TryLogs, t: dict[str, Any] | None = None) -> TryLogs:
    """Mark the logs that are not there, saying why as plainly as the try's record allows."""
    for g in out.logs:
        if not os.path.exists(g.path) and g.missing is None:
            why = f"try {out.try_number} of {out.job} ({out.status}"
            why += f": {t['reason']})" if t and t.get("reason") else ")"
            lost = " was lost with its worker and" if out.status == "lost" else ""
            g.missing = f"{g.path}: no such file: {why}{lost} left no {g.stream}"
    return out


def _task_logs(run: RunLayout, job: str, index: str, try_number: int | None, streams: tuple[str, ...],
               arrays: dict[str, int]) -> TryLogs:
    from ..execution.tasks import task_rows
    from .history import _names, _units_of

    units = _units_of(run, job, arrays)
    tasks = _names(units)
    position = tasks.position(int(index)) if tasks is not None and index.lstrip("-").isdigit() else None
    if position is None:
        raise PoolError(f"no task {job}:{index} in this run", run.root)
    unit = next((u for u in units if u[1].lo <= position <= u[1].hi), None)
    if unit is None or unit[2] is None:
        raise PoolError(f"task {job}:{index} is in no usable chunk file now (see --job {job}:{index})", run.root)
    state, chunk, record, _ = unit
    name = f"{job}:{index}"
    rows = list(task_rows(record, position))
    running = len(record["tries"]) + 1 if state == "running" else None
    number = try_number or running or (rows[-1]["try"] if rows else 0)
    if number == running:
        out = TryLogs(run.run_id, name, number, "running", None,
                      claim=_claim_path(run, chunk.unit))
        done = read_journal(run.task_journal(chunk.unit, number)).get(position)
        for s in streams:
            span = getattr(done, STREAMS[s]) if done is not None else None
            out.logs.append(Log(s, run.log(chunk.unit, number, STREAMS[s]), span))  # type: ignore[arg-type]
        if done is None:
            out.pending = f"task {name} has not finished in try {number} of {chunk.unit} yet: its output is " \
                          "written to the chunk's log when it ends"
        return _check(out)
    row = next((r for r in rows if r.get("try") == number), None)
    if row is None:
        tried = ", ".join(str(r.get("try")) for r in rows) or "none"
        raise PoolError(f"task {name} has no try {number} (its tries: {tried}"
                        f"{f'; try {running} running' if running else ''})", run.root)
    t = next(x for x in record["tries"] if x.get("try") == number)
    results = t.get("results") if isinstance(t.get("results"), dict) else None
    out = TryLogs(run.run_id, name, number, str(row.get("status")), row.get("host"))
    for s in streams:
        path = log_path(run, t.get(s)) or run.log(chunk.unit, number, STREAMS[s])  # type: ignore[arg-type]
        span = None
        if results is not None:
            column = results.get(STREAMS[s])
            i = position - results.get("first", 0)
            value = column[i] if isinstance(column, list) and 0 <= i < len(column) else None
            span = (int(value[0]), int(value[1])) if isinstance(value, list) and len(value) == 2 else None
        log = Log(s, path, span)
        if results is not None and span is None:
            log.missing = f"task {name} try {number} ({row.get('status')}) recorded no {s}"
        out.logs.append(log)
    return _check(out, row)


def _claim_path(run: RunLayout, unit: str) -> str | None:
    found = snapshot(run).get(unit)
    return found[1] if found and found[0] == "running" else None


def read_part(log: Log, tail: int | None = None, start: int = 0) -> tuple[bytes, int]:
    """The bytes of ``log`` (its own part of the file) from ``start``, or its last ``tail``
    lines; and where in its part they end."""
    if log.missing is not None:
        return b"", start
    lo, length = log.span if log.span else (0, None)
    with open(log.path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        hi = size if length is None else min(size, lo + length)
        begin = lo + start
        if tail is not None:
            begin = max(begin, _tail_start(f, lo, hi, tail))
        f.seek(begin)
        return f.read(max(0, hi - begin)), max(start, hi - lo)


def _tail_start(f: IO[bytes], lo: int, hi: int, lines: int) -> int:
    """Where the last ``lines`` lines of ``f[lo:hi]`` begin, reading back a block at a time."""
    if lines <= 0:
        return hi
    at, seen = hi, 0
    end = hi
    if hi > lo:  # a last line without its newline is a line too; a final newline ends one
        f.seek(hi - 1)
        if f.read(1) == b"\n":
            end = hi - 1
    at = end
    while at > lo:
        step = min(TAIL_BLOCK, at - lo)
        f.seek(at - step)
        block = f.read(step)
        i = len(block)
        while True:
            i = block.rfind(b"\n", 0, i)
            if i < 0:
                break
            seen += 1
            if seen == lines:
                return at - step + i + 1
        at -= step
    return lo


def last_line(path: str, limit: int = LAST_LINE_MAX) -> str | None:
    """The last non-empty line of a log (a failed job's stderr, for the run view's reason),
    cut to ``limit`` characters; None when there is none or it cannot be read."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            f.seek(max(0, size - 4096))
            block = f.read(4096)
    except OSError:
        return None
    for line in reversed(block.splitlines()):
        text = line.decode("utf-8", "replace").strip()
        if text:
            return text if len(text) <= limit else text[: limit - 1] + "…"
    return None


def follow(found: TryLogs, write: Callable[[Log, bytes], None], tail: int | None = None,
           interval: float = 0.25) -> None:
    """Print the running try's logs as they grow (polling their size: they may be written
    on another node), until its claim has left running/, then what was written last."""
    sent = {id(g): 0 for g in found.logs}
    first = True
    while True:
        # RACE: the claim leaves running/ after its worker closed the logs: looking before
        # reading, a last read after it is gone sees everything the try wrote.
        ended = found.claim is None or not os.path.lexists(found.claim)
        for g in found.logs:
            if not os.path.exists(g.path):  # not created yet, or the try left none
                continue
            g.missing = None
            data, sent[id(g)] = read_part(g, tail if first else None, sent[id(g)])
            if data:
                write(g, data)
        first = False
        if ended:
            return
        time.sleep(interval)
