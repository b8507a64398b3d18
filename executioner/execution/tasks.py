"""The tasks of a chunk: their placeholder values, their progress journal, their output.

A chunk try keeps three files of its own in ``logs/``, created by the claimer (O_EXCL,
never through a link) and only appended to by it:

- ``<unit>.<try>.out`` and ``.err``: each task's output, appended whole when the task ends
  (it runs into a spool file in $TMPDIR meanwhile, one pair per
  task running at once, emptied for each task), after a header line
  ``==> sim:5 try 2 exit 0 <==``; the journal records where it starts and how long it is;
- ``<unit>.<try>.tasks``: the progress journal, one JSON line per finished task
  (``{"task": 5, "status": "done", "exit": 0, ...}``), written and made durable at most a
  second after the task ends, after the output it points into (at the end it is written
  but not synced: the chunk's record, committed and synced next, holds it all). A
  recoverer reads it after fencing the claim (see executioner.protocol.fence): tasks it
  lists are not run again; a line torn by a crash is ignored.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterable


from ..protocol import fsio
from ..protocol.layout import aside
from ..protocol.journal import TaskResult
from ..workflow.arrays import Template, TaskSet

SYNC_EVERY = 1.0  # seconds: the journal is made durable at least this often while tasks end
BUFFER = 1 << 20  # bytes of output or journal kept before writing


def task_set(spec: dict[str, Any], lines: list[str] | None = None, first: int = 0) -> TaskSet:
    """The TaskSet a stored spec describes; an each_line chunk carries its own lines
    (``lines[i]`` is the line of position ``first + i``)."""
    d = spec["tasks"]
    if d["kind"] == "array":
        return TaskSet("array", d["count"], start=d.get("start", 0), step=d.get("step", 1))
    if d["kind"] == "matrix":
        keys = tuple(d["matrix"])
        return TaskSet("matrix", d["count"], keys=keys, values=tuple(tuple(d["matrix"][k]) for k in keys))
    padded = ("",) * first + tuple(lines or ())
    return TaskSet("each_line", d["count"], lines=padded, source=d.get("source"))


def task_name(job: str, tasks: TaskSet, position: int) -> str:
    return f"{job}:{tasks.index(position)}"


@dataclass(frozen=True)
class Rendered:
    command: str | list[str]
    env: list[list[str]]
    workdir: str | None
    outputs: list[str]
    extra: dict[str, str]  # EXEC_TASK_INDEX, EXEC_TASK_ID, EXEC_PARAM_<KEY>


def render(job: str, spec: dict[str, Any], tasks: TaskSet, position: int) -> Rendered:
    """The task's own command, env, workdir and outputs: placeholders replaced."""
    values = tasks.params(position)
    command = spec["command"]
    if isinstance(command, str):
        shown: str | list[str] = Template.parse(command).render(values, shell=True)
    else:
        shown = [Template.parse(a).render(values) for a in command]
    env = spec["env"]
    pairs = env.items() if isinstance(env, dict) else env
    extra = {"EXEC_TASK_INDEX": values["index"], "EXEC_TASK_ID": f"{job}:{values['index']}",
             "EXEC_TASK_POSITION": str(position)}
    for key, value in values.items():
        if key != "index":
            extra[f"EXEC_PARAM_{key.upper()}"] = value
    return Rendered(
        command=shown,
        env=[[k, Template.parse(v).render(values)] for k, v in pairs],
        workdir=None if spec["workdir"] is None else Template.parse(spec["workdir"]).render(values),
        outputs=[Template.parse(o).render(values) for o in spec["outputs"]],
        extra=extra)


class TryLog:
    """The three files of one chunk try (see the module docstring), written by its claimer
    alone and only appended to. Buffered: a task's output and its journal line reach the
    storage at most SYNC_EVERY seconds after it ends (or 1 MB later), output first, so a
    journal line never points past what was written; a fast task costs no file operation
    of its own."""

    def __init__(self, out: str, err: str, journal: str, fds: list[int] | None = None):
        """``fds``: the three files already created (with the claim's lock, see
        executioner.protocol.store.write_lock), taken over from that list; else created here."""
        self.paths = (out, err, journal)
        if fds is not None and len(fds) == 3:
            self.fds, fds[:] = list(fds), []
        else:
            # Each a new file of ours, with the run's file mode, made through logs/ opened
            # without following a link: whatever is at a name (the logs of an earlier run of
            # this try whose result could not be recorded, say after a full disk at its commit,
            # or a planted link) is moved aside and kept, as a job's logs are (execute.open_logs).
            self.fds = fsio.create_fresh(list(self.paths), aside)
        self.sizes = [0, 0]
        self.buffers = [bytearray(), bytearray(), bytearray()]
        self.lock = threading.Lock()
        self.flushed = time.monotonic()
        # A line added less than SYNC_EVERY after the last flush waits in the buffer; this
        # thread writes it soon after, even when no other task ends for an hour (a quick
        # task next to long ones), so a crash loses at most about a second of results.
        self._stop = threading.Event()
        self._flusher = threading.Thread(target=self._flush_now_and_then, name="journal-flush", daemon=True)
        self._flusher.start()

    def _flush_now_and_then(self) -> None:
        while not self._stop.wait(SYNC_EVERY / 4):
            with self.lock:
                if not self.fds or not self.buffers[2] or time.monotonic() - self.flushed < SYNC_EVERY:
                    continue
                try:
                    self._flush()
                except OSError:
                    pass  # a full disk, EIO: the next add() or close() meets it and says so

    def add(self, result: TaskResult, header: str, spools: tuple[int, int]) -> None:
        """Record a finished task: its output (read from its spool files, open for reading
        from the start), then its journal line."""
        with self.lock:
            for i, spool in enumerate(spools):
                head = header.encode()
                self.buffers[i] += head
                self.sizes[i] += len(head)
                start = self.sizes[i]
                offset = 0
                while piece := os.pread(spool, 1 << 20, offset):
                    offset += len(piece)
                    self.buffers[i] += piece
                    self.sizes[i] += len(piece)
                    if len(self.buffers[i]) >= BUFFER:
                        self._write(i)
                span = (start, self.sizes[i] - start)
                if i == 0:
                    result.out = span
                else:
                    result.err = span
            self.buffers[2] += result.line()
            if time.monotonic() - self.flushed >= SYNC_EVERY or sum(map(len, self.buffers)) >= BUFFER:
                self._flush()

    def _write(self, i: int) -> None:
        """Write out buffer ``i``, dropping each part as it is written: after a failed write
        (a full disk) the next one goes on from where it stopped, never writing a part twice
        (the journal's offsets count every byte once)."""
        buffer = self.buffers[i]
        while buffer:
            n = os.write(self.fds[i], buffer)
            if n <= 0:
                raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (a write wrote nothing)")
            del buffer[:n]

    def _flush(self, sync: bool = True) -> None:
        """Output first, then the journal, made durable (the journal's lines point into it)."""
        for i in (0, 1):
            self._write(i)
        if self.buffers[2]:
            if sync:
                for fd in self.fds[:2]:
                    os.fsync(fd)
            self._write(2)
            if sync:
                os.fsync(self.fds[2])
        self.flushed = time.monotonic()

    def close(self) -> None:
        """Write what is left, unsynced: the chunk's record, committed (and synced) next,
        holds every task's result and output offsets; a node lost in between re-runs the
        tasks finished since the last sync, at most SYNC_EVERY seconds of them, as a crash
        during the chunk does. (Three syncs a chunk cost 10 ms on ext4.)"""
        self._stop.set()
        self._flusher.join()
        with self.lock:
            try:
                if self.fds:
                    self._flush(sync=False)
            finally:
                self._close_fds()

    def _close_fds(self) -> None:
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds = []


def task_rows(record: dict[str, Any], position: int) -> Iterable[dict[str, Any]]:
    """Every try of task ``position`` recorded in a chunk record, oldest first: the chunk
    try's entry with this task's own status, exit code and times."""
    for t in record.get("tries", []):
        results = t.get("results")
        if isinstance(results, dict) and isinstance(results.get("first"), int):
            i = position - results["first"]
            statuses = results.get("status", [])
            if not 0 <= i < len(statuses) or statuses[i] is None:
                continue
            row = dict(t, status=statuses[i])
            for key, column in (("exit_code", "exit"), ("signal", "signal"), ("start", "start"),
                                ("duration", "duration"), ("reason", "reason")):
                values = results.get(column)
                if isinstance(values, list) and i < len(values):
                    row[key] = values[i]
            row.pop("results", None)
            yield row
        else:
            yield t  # a try of the whole chunk (lost with its worker, an internal error)
