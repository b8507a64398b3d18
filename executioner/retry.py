"""The retry policy: given a finished try, retry it (and when), or give up (and why)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

COUNTED = ("failed", "timeout")  # try statuses that use up max_retries


@dataclass(frozen=True)
class Decision:
    retry: bool
    delay: float = 0.0
    reason: str | None = None


def decide(spec: dict[str, Any], tries: list[dict[str, Any]], now: float,
           rng: random.Random | None = None) -> Decision:
    """``tries`` includes the try that just ended (last). Time is passed in."""
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
    delay = spec["retry_delay"] * spec["retry_backoff"] ** (failures - 1)
    jitter = spec["retry_jitter"]
    if jitter and delay:
        delay *= 1 + (rng or random).uniform(-jitter, jitter)
    limit = spec["max_retry_time"]
    first_start = tries[0]["start"]
    if limit is not None and now + delay - first_start > limit:
        return Decision(False, reason=f"max_retry_time {limit:g} s would be exceeded")
    return Decision(True, delay=delay)
