"""The retry policy: given a finished try, retry it (and when), or give up (and why)."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

COUNTED = ("failed", "timeout")
YEAR = 365 * 86400.0  # try statuses that use up max_retries


@dataclass(frozen=True)
class Decision:
    retry: bool
    delay: float = 0.0
    reason: str | None = None


def first_start_of(tries: list[dict[str, Any]]) -> float:
    """When the first try began, in the storage's clock (older records: the worker's)."""
    first = tries[0]
    return float(first.get("start_storage") or first.get("start") or 0.0)


def decide(spec: dict[str, Any], tries: list[dict[str, Any]], now: float,
           rng: random.Random | None = None) -> Decision:
    """``tries`` includes the try that just ended (last). Time is passed in: ``now`` is the
    storage's clock, as ``start_storage`` of each try is."""
    last = tries[-1]
    status = last["status"]
    failures = sum(1 for t in tries if t["status"] in COUNTED)
    if status not in spec["retry_on_status"]:
        return Decision(False, reason=f"{status} is not in retry_on_status")
    codes = spec["retry_on_exit_codes"]
    if status == "failed" and codes is not None and last["exit_code"] not in codes:
        return Decision(False, reason=f"exit code {last['exit_code']} is not in retry_on_exit_codes")
    if failures > spec["max_retries"]:
        return Decision(False, reason=f"no retries left (max_retries {spec['max_retries']})")
    n, base, first = failures - 1, spec["retry_backoff"], spec["retry_delay"]
    # exact for every sane value; capped at a year instead of overflowing after ~1000 retries
    delay = 0.0 if first == 0 else (min(YEAR, first * base ** n) if n * math.log(base) < 700 else YEAR)
    jitter = spec["retry_jitter"]
    if jitter and delay:
        delay *= 1 + (rng or random).uniform(-jitter, jitter)
    limit = spec["max_retry_time"]
    first_start = first_start_of(tries)
    if limit is not None and now + delay - first_start > limit:
        return Decision(False, reason=f"max_retry_time {limit:g} s would be exceeded")
    return Decision(True, delay=delay)


def losses(tries: list[dict[str, Any]]) -> int:
    """Tries that count against ``max_lost``: every ``lost`` one, and every ``preempted`` one
    that follows another ``preempted`` try. A real preemption rarely hits one job twice in a
    row; a job that signals its own worker (or that is longer than every allocation) does it
    every time, and is stopped by max_lost instead of looping forever."""
    count, previous = 0, None
    for t in tries:
        status = t.get("status") if isinstance(t, dict) else None
        count += status == "lost" or (status == "preempted" and previous == "preempted")
        previous = status
    return count
