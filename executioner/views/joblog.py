"""``exec-status POOL RUN --joblog``: every ended try in GNU parallel's ``--joblog`` format.

GNU parallel writes one tab-separated line per job it ran, under the header ``Seq Host
Starttime JobRuntime Send Receive Exitval Signal Command``; scripts that read joblogs (a
``column -t``, an awk sum of JobRuntime, a check for non-zero Exitval or Signal) work on
ours. Checked against ``parallel --joblog`` 20221122:

- ``Starttime`` is epoch seconds with 3 decimals, ``JobRuntime`` seconds with 3 decimals
  right-aligned in 10 characters (``%10.3f``, as parallel pads it); ``Send`` and ``Receive``
  are 0 (parallel's bytes transferred to and from remote hosts: nothing is transferred here).
- ``Exitval`` and ``Signal`` follow parallel: a command that exits with N is ``N 0``; one
  killed by signal S (not by us) is ``0 S`` (what a shell's ``$?`` gives as exit value and
  signal); one killed by parallel for ``--timeout`` is ``-1 15``, so a try of ours that
  timed out, was preempted or lost is ``-1`` with the signal that ended it (15 when
  unrecorded; 0 for a lost try, whose end nobody saw). A try that failed with no exit code,
  or with exit code 0 (its declared outputs were missing), is ``-1 0``: never a success.

Where we differ, because a run is not one parallel invocation: ``Seq`` numbers the run's jobs
in id order (an array's tasks take consecutive numbers by position), and every try of a job
is a line of its own with the job's number (parallel with ``--retries`` logs the last try
only: the last line of a Seq is the job's outcome); ``Host`` is the worker's host (``-``
when a try was lost before any host recorded it; parallel's ``:`` means "this machine");
lines come unit by unit in id order, not in order of completion; a running try has no line
yet. Tabs and line breaks of a command are written ``\\t`` and ``\\n`` so a try stays one line.

It is streamed: one unit file (a job, or a chunk of an array's tasks) is read at a time and
its lines written before the next, so a 1,000,000-task array never sits in memory at once.
"""

from __future__ import annotations

import shlex
import signal
from typing import IO, Any, Final, Iterator

from ..errors import CorruptFileError, PoolError
from ..protocol.graph import read_graph
from ..protocol.layout import RunLayout
from ..protocol.ready import arrays_of
from ..protocol.records import read_job
from ..protocol.snapshot import snapshot
from ..protocol.store import read_run_record
from ..protocol.units import parse_unit

HEADER: Final = "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand"
KILLED_BY_US: Final = ("timeout", "preempted", "lost")


def signal_number(value: Any) -> int:
    """A try's recorded signal (``"SIGTERM"``, or a number) as its number; 0 for none or unknown."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value if 0 < value < 128 else 0
    if isinstance(value, str):
        try:
            return int(signal.Signals[value if value.startswith("SIG") else "SIG" + value])
        except KeyError:
            return int(value) if value.isdigit() and 0 < int(value) < 128 else 0
    return 0


def exit_columns(t: dict[str, Any]) -> tuple[int, int]:
    """(Exitval, Signal) of a try, as parallel would write them (see the module docstring)."""
    status, code, sig = t.get("status"), t.get("exit_code"), signal_number(t.get("signal"))
    if status in KILLED_BY_US:
        return -1, sig or (0 if status == "lost" else int(signal.SIGTERM))
    if sig:
        return 0, sig
    if not isinstance(code, int) or isinstance(code, bool):
        return (0, 0) if status == "done" else (-1, 0)
    if status != "done" and code == 0:
        return -1, 0
    return code, 0


def _one_line(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _command_text(command: Any) -> str:
    if isinstance(command, list):
        return shlex.join(str(c) for c in command)
    return str(command)


def line(seq: int, t: dict[str, Any], command: str) -> str:
    start = t.get("start")
    start = start if isinstance(start, (int, float)) else t.get("end")
    start = float(start) if isinstance(start, (int, float)) else 0.0
    took = t.get("duration")
    if not isinstance(took, (int, float)):
        end = t.get("end")
        took = end - start if isinstance(end, (int, float)) and start else 0.0
    exitval, sig = exit_columns(t)
    host = t.get("host") if isinstance(t.get("host"), str) and t.get("host") else "-"
    return f"{seq}\t{_one_line(host)}\t{start:.3f}\t{max(float(took), 0.0):10.3f}\t0\t0\t{exitval}\t{sig}\t{command}"


def _ended(tries: Any) -> list[dict[str, Any]]:
    """The tries that ran and ended (a task put back as blocked never ran)."""
    return [t for t in tries if isinstance(t, dict) and t.get("status") not in (None, "running", "blocked")] \
        if isinstance(tries, list) else []


_COLUMNS: Final = (("exit_code", "exit"), ("signal", "signal"), ("start", "start"), ("duration", "duration"))


def _task_tries(tries: list[dict[str, Any]], position: int) -> list[dict[str, Any]]:
    """Task ``position``'s tries in a chunk's tries, with only what a joblog line needs: what
    :func:`executioner.execution.tasks.task_rows` gives, without copying each whole try (a
    million tasks: a third of the time)."""
    out = []
    for t in tries:
        results = t.get("results")
        if not (isinstance(results, dict) and isinstance(results.get("first"), int)):
            out.append(t)  # a try of the whole chunk (lost with its worker, an internal error)
            continue
        i = position - results["first"]
        statuses = results.get("status")
        if not isinstance(statuses, list) or not 0 <= i < len(statuses) or statuses[i] is None:
            continue
        row = {"status": statuses[i], "host": t.get("host"), "end": t.get("end"), "start": t.get("start"),
               "duration": t.get("duration"), "exit_code": t.get("exit_code"), "signal": t.get("signal")}
        for key, column in _COLUMNS:
            values = results.get(column)
            if isinstance(values, list) and i < len(values):
                row[key] = values[i]
        out.append(row)
    return out


def _job_order(run: RunLayout, units: dict[str, tuple[str, str]], arrays: dict[str, int]) -> dict[str, int]:
    """job id -> its first Seq: the run's jobs in id order, an array taking one number per task.
    The jobs are graph.json's (so a lost job keeps the others' numbers), else the units found."""
    try:
        attempt = read_run_record(run).get("attempt", 1)
    except (OSError, CorruptFileError):
        attempt = None
    graph = read_graph(run, attempt) if attempt is not None else None
    jobs = set(graph.needs) if graph is not None else set()
    for unit in units:
        chunk = parse_unit(unit, arrays)
        jobs.add(chunk.job if chunk is not None else unit)
    jobs |= set(arrays)
    first, seq = {}, 1
    for job in sorted(jobs):
        first[job] = seq
        seq += arrays.get(job, 1)
    return first


def joblog(run: RunLayout) -> Iterator[str]:
    """The header, then every ended try of the run, one line each (see the module docstring)."""
    from ..execution.tasks import task_set
    from ..workflow.arrays import Template

    try:
        read_run_record(run)
    except FileNotFoundError:
        raise PoolError("not a run directory (no run.json)", run.root) from None
    except CorruptFileError as e:
        raise PoolError(f"run.json is corrupt ({e.message}): no joblog can be made", run.root) from None
    arrays = arrays_of(run)
    units = snapshot(run, staged=True)
    first = _job_order(run, units, arrays)
    yield HEADER
    keyed = []
    for unit, (_, path) in units.items():
        chunk = parse_unit(unit, arrays)
        keyed.append(((chunk.job, chunk.lo) if chunk is not None else (unit, 0), unit, chunk, path))
    for (job, _), unit, chunk, path in sorted(keyed, key=lambda k: k[0]):
        try:
            record, _problem = read_job(path, unit)
        except OSError:
            record = None  # moved since the listing (its tries are in its next file), or unreadable
        if record is None:
            continue
        spec = record.get("spec") or {}
        if chunk is None:
            command = _one_line(_command_text(spec.get("command")))
            for t in _ended(record.get("tries")):
                yield line(first[job], t, command)
            continue
        tasks = task_set(spec, record.get("lines"), chunk.lo)
        raw = spec.get("command")
        templates = Template.parse(raw) if isinstance(raw, str) else [Template.parse(str(a)) for a in raw or ()]
        tries = [t for t in record.get("tries") or () if isinstance(t, dict)]
        for p in range(chunk.lo, chunk.hi + 1):
            rows = _ended(_task_tries(tries, p))
            if not rows:
                continue
            values = tasks.params(p)
            if isinstance(templates, list):
                command = shlex.join(t.render(values) for t in templates)
            else:
                command = templates.render(values, shell=True)
            command = _one_line(command)
            for t in rows:
                yield line(first[job] + p, t, command)


def write_joblog(run: RunLayout, out: IO[str], batch: int = 2000) -> None:
    """:func:`joblog` written ``batch`` lines at a time."""
    lines: list[str] = []
    for text in joblog(run):
        lines.append(text)
        if len(lines) >= batch:
            out.write("\n".join(lines) + "\n")
            lines = []
    if lines:
        out.write("\n".join(lines) + "\n")
