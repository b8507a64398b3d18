"""Environment variables of a workflow: how they are stored, and how large they may grow.

A worker builds a job's environment (:func:`executioner.execution.execute.build_env`) in levels: its own
environment, the workflow's ``env``, then the job's ``env`` (or ``defaults: {env}``). Each level
is applied in written order, and ``${NAME}`` in a value expands against what is set so far:
the levels before, and the keys of its own level written before it. A key written later in the
same level is not set yet, so ``${LATER}`` there means the value from the levels before.

**Stored form.** Job files and ``run.json`` are written with sorted keys, which would lose the
written order. A level is therefore stored as a mapping when expanding it in sorted order gives
the same values as in written order (no value refers to a key of its level that sorts on the
other side of it: nearly always, and exactly what older versions wrote, so their runs and
definition hashes are unchanged), and otherwise as ``[[name, value], ...]`` pairs in written
order. :func:`env_items` reads either form.

**Bounds.** Nested references double a value at each step (``B: ${A}${A}``, ``C: ${B}${B}``,
...), so a few hundred bytes can stand for gigabytes. Validation computes the size every value
will expand to (taking the worker's environment as empty) without expanding anything, and
refuses values past :data:`MAX_VALUE` characters and jobs past :data:`MAX_JOB_ENV`;
``expand`` refuses the same at run time, when the worker's own variables are known.
"""

from __future__ import annotations

import re
from typing import Any, Final, Mapping, Union

VAR: Final = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")  # the syntax execute.expand replaces
NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MAX_VALUE: Final = 1_000_000  # characters one value may expand to
MAX_JOB_ENV: Final = 4_000_000  # characters a job's workflow and job values may expand to in all
_HUGE: Final = 10**18  # sizes are counted up to here, to keep the arithmetic small

StoredEnv = Union[dict[str, str], list[list[str]]]


def env_items(stored: Any) -> list[tuple[str, str]]:
    """The (name, value) pairs of a stored level, in the order they apply. ``stored`` is a
    mapping (as older versions and most levels are stored), a list of pairs, or None."""
    if not stored:
        return []
    if isinstance(stored, Mapping):
        return list(stored.items())
    return [(name, value) for name, value in stored]


def stored_env(env: Mapping[str, str]) -> StoredEnv:
    """``env`` (in written order) as a job file stores it: a mapping when sorting its keys
    changes no expanded value, else the pairs in written order."""
    position = {name: i for i, name in enumerate(env)}
    for i, (name, value) in enumerate(env.items()):
        for ref in VAR.findall(value):
            j = position.get(ref)
            if j is not None and ref != name and (j < i) != (ref < name):
                return [[n, v] for n, v in env.items()]
    return dict(env)


def expanded_sizes(env: Mapping[str, str], *outer: Mapping[str, int],
                   limit: int | None = None) -> tuple[dict[str, int], list[tuple[str, int]]]:
    """How many characters each value of ``env`` expands to, in written order, when the names
    set before its level have the sizes in ``outer`` (innermost first; a name set nowhere
    counts as empty). Sizes are computed, not expanded: a value standing for gigabytes costs
    nothing. A value past ``limit`` is returned in the second list, and counted as empty from
    then on, so that what refers to it is not refused again."""
    sizes: dict[str, int] = {}
    over: list[tuple[str, int]] = []
    for name, value in env.items():
        size = expanded_size(value, sizes, *outer)
        if limit is not None and size > limit:
            over.append((name, size))
            size = 0
        sizes[name] = size
    return sizes, over


def expanded_size(value: str, *levels: Mapping[str, int]) -> int:
    """How many characters ``value`` expands to when names have the sizes in ``levels``
    (innermost first), counted up to a bound that keeps the numbers small."""
    if "${" not in value:
        return len(value)
    size = len(value)
    for match in VAR.finditer(value):
        ref = match.group(1)
        size -= len(match.group(0))
        for level in levels:
            if ref in level:
                size += level[ref]
                break
    return min(size, _HUGE)


def human(size: int) -> str:
    """``size`` characters in words: "512 bytes", "3.1 MB", "2.7e+03 GB"."""
    if size >= _HUGE:
        return "more than 1e+09 GB"
    if size < 1000:
        return f"{size} bytes"
    for unit, scale in (("kB", 1e3), ("MB", 1e6)):
        if size < scale * 1000:
            return f"{size / scale:.3g} {unit}"
    return f"{size / 1e9:.3g} GB"
