"""The options a job may set, their defaults, and how each value is checked.

Every number is finite and bounded: a value that cannot be meant (a timeout of a billion
years, a backoff of 1e17) is refused at validation rather than overflowing in a worker, in a
retry delay or in ``exec-status`` later. :func:`check_value` returns the normalised value
or a :class:`Problem` with the message.
"""

from __future__ import annotations

import bisect
import difflib
import math
import re
from collections import defaultdict
from typing import Any, Final, Iterable

from .parse import SHOWN_CHARS, show

YEAR: Final = 365 * 24 * 3600  # seconds: no timeout, delay or grace period may be longer
MAX_COUNT: Final = 1_000_000  # retries, losses
MAX_BACKOFF: Final = 100.0
MAX_SLURM_MINUTES: Final = YEAR // 60
MAX_SLURM_COUNT: Final = 1_000_000  # cpus, gpus
MAX_MEM_GB: Final = 1_000_000.0
RETRY_STATUSES: Final = ("failed", "timeout")
SLURM_KEYS: Final = ("partition", "time", "cpus", "mem_gb", "gpus", "additional_parameters")
SBATCH_OPTION: Final = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")

# key -> (kind, default). Kinds are checked by check_value.
JOB_OPTIONS: Final[dict[str, tuple[str, Any]]] = {
    "env": ("env", {}),
    "workdir": ("str", None),
    "timeout": ("seconds_or_null", None),
    "kill_grace": ("seconds", 5.0),
    "max_retries": ("count", 0),
    "max_lost": ("pos_count", 3),
    "retry_delay": ("seconds", 0.0),
    "retry_backoff": ("backoff", 1.0),
    "retry_jitter": ("fraction", 0.0),
    "retry_on_exit_codes": ("exit_codes_or_null", None),
    "retry_on_status": ("status_list", list(RETRY_STATUSES)),
    "max_retry_time": ("seconds_or_null", None),
    "outputs": ("str_list", []),
    "always_rerun": ("bool", False),
    "slurm": ("slurm", {}),
    "resources": ("resources", {}),
    "priority": ("priority", 0),
    "tags": ("tags", ()),
    "limit": ("limit", None),
}
# What a job needs of a worker (see executioner.execution.capacity). cpus, gpus and any custom
# name are whole units; only memory may be fractional. A value past these bounds is more than
# any worker could declare: refused here rather than left queued forever.
RESOURCE_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
TAG_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")  # no comma: --tags a,b
SLURM_RESOURCES: Final = ("cpus", "gpus", "mem_gb")  # also spelled in slurm: (the old spelling)
MAX_PRIORITY: Final = 1_000_000_000
MAX_TAGS: Final = 64


class Problem:
    """What is wrong with a value, as the message says it."""

    def __init__(self, message: str):
        self.message = message


BAD: Final = object()  # a value that was reported as wrong


def suggest(key: str, choices: tuple[str, ...]) -> str:
    """The words " (did you mean 'x'?)" when one of ``choices`` is close to ``key``."""
    if len(key) > 2 * SHOWN_CHARS:
        return ""
    close = difflib.get_close_matches(key, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class NearNames:
    """Names indexed for "did you mean": difflib compares a name with every candidate, which
    for thousands of similar ids takes most of a second per name. The candidates here are a
    few hundred at most: the names that sort next to it, those whose reversal sorts next to
    its reversal (a typo late, or early, in the name), and those with the same letters
    (a transposition)."""

    def __init__(self, names: Iterable[str], reach: int = 50):
        self.reach = reach
        self.forward = sorted(names)
        self.backward = sorted(n[::-1] for n in self.forward)
        self.letters: dict[str, list[str]] = defaultdict(list)
        for n in self.forward:
            self.letters["".join(sorted(n))].append(n)

    def suggest(self, name: str) -> str:
        """The words " (did you mean 'x'?)" when a name is close to ``name``."""
        k = self.reach
        near = set(_around(self.forward, name, k))
        near.update(n[::-1] for n in _around(self.backward, name[::-1], k))
        near.update(self.letters.get("".join(sorted(name)), ())[:k])
        return suggest(name, tuple(sorted(near)))


def _around(ordered: list[str], name: str, k: int) -> list[str]:
    i = bisect.bisect_left(ordered, name)
    return ordered[max(0, i - k):i + k]


def type_name(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(value), type(value).__name__)


def text_problem(text: str) -> str | None:
    """What makes ``text`` unusable in a command, an environment or a path, if anything:
    a NUL ends a C string (exec and every system call would cut it there), and a lone
    surrogate cannot be written as UTF-8 (nor stored in a job file)."""
    if "\0" in text:
        return "contains a NUL character (\\0)"
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return "contains a character that is not valid UTF-8 (a lone surrogate)"
    return None


def is_number(v: Any) -> bool:
    """A finite int or float (not a bool, not inf or nan: they cannot be stored in JSON)."""
    if isinstance(v, bool):
        return False
    return isinstance(v, int) or (isinstance(v, float) and math.isfinite(v))


def is_whole(v: Any, low: int, high: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and low <= v <= high


def _number(v: Any, low: float, high: float, low_open: bool, what: str) -> Any:
    """``v`` as a float if it is a number in [low, high] (or (low, high]), else a Problem."""
    if is_number(v) and (v > low if low_open else v >= low) and v <= high:
        return float(v)
    return Problem(f"must be {what}, not {show(v)}")


def check_value(kind: str, v: Any) -> Any:
    """The normalised value, or a Problem saying what is wrong with it."""
    if kind == "env":
        return v  # checked name by name by the validator
    if kind in ("seconds_or_null", "exit_codes_or_null") and v is None:
        return None
    if kind == "seconds_or_null":
        return _number(v, 0, YEAR, True, f"a number > 0 and at most {YEAR} (seconds: a year)")
    if kind == "seconds":
        return _number(v, 0, YEAR, False, f"a number of seconds from 0 to {YEAR} (a year)")
    if kind == "backoff":
        return _number(v, 0, MAX_BACKOFF, True, f"a number > 0, at most {MAX_BACKOFF:g}")
    if kind == "fraction":
        return _number(v, 0, 1, False, "a number from 0 to 1")
    if kind in ("count", "pos_count"):
        low = 0 if kind == "count" else 1
        return v if is_whole(v, low, MAX_COUNT) else Problem(
            f"must be a whole number from {low} to {MAX_COUNT}, not {show(v)}")
    if kind == "exit_codes_or_null":
        ok = isinstance(v, list) and all(is_whole(c, 0, 255) for c in v)
        return tuple(v) if ok else Problem("must be a list of exit codes (whole numbers 0 to 255)")
    if kind == "status_list":
        if isinstance(v, list) and all(s in RETRY_STATUSES for s in v):
            return tuple(v)
        return Problem(f"must be a list of {', '.join(RETRY_STATUSES)}")
    if kind == "slurm":
        return check_slurm(v)
    if kind == "resources":
        return check_resources(v)
    if kind == "priority":
        return v if is_whole(v, -MAX_PRIORITY, MAX_PRIORITY) else Problem(
            f"must be a whole number from {-MAX_PRIORITY} to {MAX_PRIORITY} (higher runs first), not {show(v)}")
    if kind == "tags":
        return check_tags(v)
    if kind == "limit":
        if v is None or (isinstance(v, str) and RESOURCE_NAME.fullmatch(v)):
            return v  # that it names an entry of limits: checked by the validator
        return Problem(f"must name an entry of the workflow's limits, not {show(v)}")
    if kind == "bool":
        return v if isinstance(v, bool) else Problem(f"must be true or false, not {show(v)}")
    if kind == "str":
        if not isinstance(v, str):
            return Problem(f"must be a string, not {type_name(v)}")
        problem = text_problem(v)
        return Problem(problem) if problem else v
    if kind == "str_list":
        if not (isinstance(v, list) and all(isinstance(s, str) and s for s in v)):
            return Problem("must be a list of file paths")
        problem = next((f"{show(s)}: {p}" for s in v if (p := text_problem(s))), None)
        return Problem(problem) if problem else tuple(v)
    raise AssertionError(kind)


def check_slurm(v: Any) -> Any:
    """A ``slurm:`` mapping: resources of a job's own Slurm job (Slurm-DAG backend)."""
    if not isinstance(v, dict):
        return Problem(f"must be a mapping of {', '.join(SLURM_KEYS)}, not {type_name(v)}")
    for k, x in v.items():
        if k not in SLURM_KEYS:
            return Problem(f"unknown key {show(k)}{suggest(str(k), SLURM_KEYS)}")
        if k == "partition" and not isinstance(x, str):
            return Problem("partition must be a string")
        if k == "partition" and (problem := _sbatch_problem(x)):
            return Problem(f"partition: {problem}")
        if k == "time" and not is_whole(x, 1, MAX_SLURM_MINUTES):
            return Problem(f"time must be a whole number of minutes from 1 to {MAX_SLURM_MINUTES}")
        if k in ("cpus", "gpus") and not is_whole(x, 1, MAX_SLURM_COUNT):
            return Problem(f"{k} must be a whole number from 1 to {MAX_SLURM_COUNT}")
        if k == "mem_gb" and not (is_number(x) and 0 < x <= MAX_MEM_GB):
            return Problem(f"mem_gb must be a number > 0, at most {MAX_MEM_GB:g}")
        if k == "additional_parameters" and (bad := _check_sbatch_options(x)):
            return bad
    return dict(v)


def _builtin_meant(name: str) -> str | None:
    """The built-in resource a custom name is a typo of (``Cpus``, ``gpu``, ``memory_gb``):
    any name is a custom resource, which a job would wait for in queued/ for ever."""
    if name in SLURM_RESOURCES:
        return None
    low = name.lower()
    if low in ("mem", "memory", "ram"):
        return "mem_gb"
    close = difflib.get_close_matches(low, SLURM_RESOURCES, n=1, cutoff=0.8)
    return close[0] if close else None


def check_resources(v: Any) -> Any:
    """A ``resources:`` mapping: what one job (or one task of an array) needs of a worker."""
    if not isinstance(v, dict):
        return Problem(f"must be a mapping such as {{cpus: 4, gpus: 1, mem_gb: 16}}, not {type_name(v)}")
    out: dict[str, int | float] = {}
    for k, x in v.items():
        if not isinstance(k, str) or not RESOURCE_NAME.fullmatch(k):
            return Problem(f"{show(k)} is not a resource name ({RESOURCE_NAME.pattern})")
        if (meant := _builtin_meant(k)) is not None:
            return Problem(f"{show(k)}: no worker declares such a resource (did you mean {meant!r}?)")
        if k == "mem_gb":
            if not (is_number(x) and 0 <= x <= MAX_MEM_GB):
                return Problem(f"mem_gb must be a number of GB from 0 to {MAX_MEM_GB:g}, not {show(x)}")
            out[k] = int(x) if float(x).is_integer() else float(x)
        elif not is_whole(x, 0, MAX_SLURM_COUNT):
            fraction = " (only mem_gb may be fractional)" if is_number(x) and 0 <= x <= MAX_SLURM_COUNT else ""
            return Problem(f"{k} must be a whole number from 0 to {MAX_SLURM_COUNT}{fraction}, not {show(x)}")
        else:
            out[k] = x
    return out


def check_tags(v: Any) -> Any:
    """``tags:``: names a worker must all have (``exec-worker --tags``) to take the job."""
    if not isinstance(v, list):
        return Problem(f"must be a list of tag names, not {type_name(v)}")
    if len(v) > MAX_TAGS:
        return Problem(f"has {len(v)} tags; at most {MAX_TAGS}")
    for t in v:
        if not isinstance(t, str) or not TAG_NAME.fullmatch(t):
            return Problem(f"{show(t)} is not a tag name ({TAG_NAME.pattern})")
    return tuple(dict.fromkeys(v))


def _check_sbatch_options(x: Any) -> Problem | None:
    if not isinstance(x, dict):
        return Problem(f"additional_parameters must be a mapping of sbatch options to values, "
                       f"not {type_name(x)}")
    for p, y in x.items():
        if not isinstance(p, str) or not SBATCH_OPTION.fullmatch(p):
            return Problem(f"additional_parameters: {show(p)} is not an sbatch option name "
                           f"({SBATCH_OPTION.pattern})")
        if not (isinstance(y, (str, bool)) or is_number(y)):
            return Problem(f"additional_parameters: {show(p)} must have a string, a finite number or true")
        if problem := _sbatch_problem(str(y)):
            return Problem(f"additional_parameters: {show(p)}: {problem}")
        if p == ARRAY_LIMIT and (problem := array_limit_problem(y)):
            return Problem(f"additional_parameters: {problem}")
    return None


ARRAY_LIMIT: Final = "array_limit"  # an array's %K on the Slurm-DAG backend (see backends.slurm_arrays)


def array_limit_problem(value: Any) -> str | None:
    """``array_limit`` is a whole number of Slurm array elements at once, more than 0."""
    text = str(value)
    if isinstance(value, bool) or not text.isdigit() or int(text) < 1:
        return f"array_limit (elements of a Slurm array at once: its %K) must be a whole number > 0, not {show(value)}"
    return None


def _sbatch_problem(text: str) -> str | None:
    """Each setting becomes one ``#SBATCH`` line of a script: a line break would start a
    line of its own (another option, or a command), so no control character is accepted."""
    if problem := text_problem(text):
        return problem
    if any(c < " " or c == "\x7f" for c in text):
        return "contains a control character (a line break would start a line of its own in the sbatch " \
            "script)"
    return None
