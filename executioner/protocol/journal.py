"""The progress journal of a chunk try: ``logs/<unit>.<try>.tasks``, one JSON line per
finished task, appended by the try's worker alone (see executioner.execution.tasks) and
read by whoever takes the chunk over after fencing its claim."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Final

import orjson

from . import fsio
from .records import MAX_INT, MAX_NUM

MAX_JOURNAL = 64 << 20
log = logging.getLogger("executioner.journal")


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
        """A journal line's result; None for one of the wrong shape (a hand, a broken tool or
        a storage fault that kept the syntax): its task counts as not finished, and runs
        again, rather than a recoverer failing on it over and over with the chunk stuck in
        running/."""
        if not isinstance(data, dict) or not _whole(data.get("task")) or data["task"] < 0 \
                or data.get("status") not in STATUSES:
            return None
        if not (_opt(data.get("exit"), _whole) and _opt(data.get("signal"), _text) and _opt(data.get("reason"), _text)
                and _opt(data.get("start"), _time) and _opt(data.get("end"), _time)
                and _opt(data.get("out"), _span) and _opt(data.get("err"), _span)):
            return None
        return cls(task=data["task"], status=data["status"], exit=data.get("exit"), signal=data.get("signal"),
                   start=data.get("start"), end=data.get("end"), reason=data.get("reason"),
                   out=tuple(data["out"]) if data.get("out") else None,  # type: ignore[arg-type]
                   err=tuple(data["err"]) if data.get("err") else None)  # type: ignore[arg-type]


STATUSES: Final = ("done", "failed", "timeout", "preempted", "lost", "blocked")


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and -MAX_INT <= value <= MAX_INT


def _text(value: Any) -> bool:
    return isinstance(value, str)


def _time(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and -MAX_NUM <= value <= MAX_NUM


def _span(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(_whole(v) and v >= 0 for v in value)


def _opt(value: Any, kind: Callable[[Any], bool]) -> bool:
    return value is None or kind(value)


def read_journal(path: str) -> dict[int, TaskResult]:
    """Finished tasks as a chunk try's journal says; a missing journal says none. Only whole
    lines count (the last may be torn: a crash in the middle of an append)."""
    # RACE: a stalled owner may still append after we fenced its claim: what we did not
    # read is run again (at least once, as a job finished after its claim was taken).
    try:
        raw = fsio.read_bytes(path, MAX_JOURNAL)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:  # unreadable (EACCES, EIO), a symlink, too large
        # Read as no journal: its tasks run again (at least once), and the chunk still
        # leaves running/ instead of failing every recoverer that tries to take it.
        log.warning("journal %s cannot be read (%s); its tasks count as not finished", path, e)
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
