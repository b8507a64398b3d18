"""The progress journal of a chunk try: ``logs/<unit>.<try>.tasks``, one JSON line per
finished task, appended by the try's worker alone (see executioner.execution.tasks) and
read by whoever takes the chunk over after fencing its claim."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from . import fsio

MAX_JOURNAL = 64 << 20


@dataclass
class TaskResult:
    task: int  # position in the array
    status: str  # done | failed | timeout | preempted | lost | blocked
    exit: int | None = None
    signal: str | None = None
    start: float | None = None
    end: float | None = None
    reason: str | None = None
    out: tuple[int, int] | None = None  # offset, length in the chunk try's .out
    err: tuple[int, int] | None = None

    def line(self) -> bytes:
        return orjson.dumps({k: v for k, v in self.__dict__.items() if v is not None}) + b"\n"

    @classmethod
    def parse(cls, data: Any) -> "TaskResult | None":
        if not isinstance(data, dict) or not isinstance(data.get("task"), int) or not isinstance(data.get("status"), str):
            return None
        try:
            return cls(task=data["task"], status=data["status"], exit=data.get("exit"), signal=data.get("signal"),
                       start=data.get("start"), end=data.get("end"), reason=data.get("reason"),
                       out=tuple(data["out"]) if data.get("out") else None,  # type: ignore[arg-type]
                       err=tuple(data["err"]) if data.get("err") else None)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return None


def read_journal(path: str) -> dict[int, TaskResult]:
    """Finished tasks as a chunk try's journal says; a missing journal says none. Only whole
    lines count (the last may be torn: a crash in the middle of an append)."""
    # RACE: a stalled owner may still append after we fenced its claim: what we did not
    # read is run again (at least once, as a job finished after its claim was taken).
    try:
        raw = fsio.read_bytes(path, MAX_JOURNAL)
    except (FileNotFoundError, ValueError):
        return {}
    out: dict[int, TaskResult] = {}
    for line in raw.split(b"\n")[:-1]:
        try:
            result = TaskResult.parse(orjson.loads(line))
        except orjson.JSONDecodeError:
            continue
        if result is not None:
            out[result.task] = result
    return out
