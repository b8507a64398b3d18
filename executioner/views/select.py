"""Which rows the run view shows, and in what order: ``--state`` filters, failures and
running jobs first, and above :data:`LIMIT` rows a summary instead of every row.

A run of 20,000 jobs printed 20,006 rows with its one failure sorted among them. Now the
text view puts failed jobs first, then running ones, then the rest by id; when more than
LIMIT rows would be printed (and ``--all`` is not given) it prints only what needs a look:
the failures (with their reason), the running jobs, the lost ones, the arrays (one row
each) and the rows of the states ``--state`` names, each at most :data:`PER_STATE` of
them, and says how many rows it left out. The states come from the folders' listings,
so a summary reads only the files of the rows it shows (views.jobs.detail).
"""

from __future__ import annotations

from collections import Counter
from typing import Final, Iterable

from .rows import ArrayView, JobView

# The states a row can show (the --json count keys are the first six)
SHOWN_STATES: Final = ("waiting", "queued", "running", "done", "failed", "blocked", "skipped", "held", "lost")
LIMIT: Final = 200  # rows above which the text view is a summary
PER_STATE: Final = 100  # rows of one state (or arrays) a summary shows at most
SUMMARY_STATES: Final = frozenset({"failed", "running", "lost"})  # always in a summary
_FIRST: Final = {"failed": 0, "running": 1}


def parse_states(text: str) -> frozenset[str]:
    """``--state failed,running``: the states named (comma-separated); ValueError naming
    the first that is not a state."""
    names = [s.strip() for s in text.split(",")]
    for name in names:
        if name not in SHOWN_STATES:
            what = f"unknown state {name!r}" if name else "an empty state name"
            raise ValueError(f"{what} (states: {', '.join(SHOWN_STATES)})")
    return frozenset(names)


def matches(v: JobView, states: frozenset[str]) -> bool:
    """Is this row one of ``states``? ``done`` takes in ``skipped`` (counted as done; a job
    is known to be skipped only once its file is read); an array is when any of its
    tasks is."""
    if isinstance(v, ArrayView):
        return any(v.counts.get(s) for s in states)
    return v.state in states or (v.state == "skipped" and "done" in states)


def first_key(v: JobView) -> tuple[int, str]:
    """Failures first, then running jobs, then the rest, each by id."""
    return _FIRST.get(v.state, 2), v.id


def choose(views: Iterable[JobView], states: frozenset[str] | None, limit: int | None,
           problems_first: bool) -> tuple[list[JobView], Counter[str]]:
    """The rows to show, in order, and how many of each state are left out (nothing is
    left out without a ``limit``, or with at most ``limit`` rows)."""
    rows = [v for v in views if states is None or matches(v, states)]
    key = first_key if problems_first else (lambda v: v.id)
    if limit is None or len(rows) <= limit:
        rows.sort(key=key)
        return rows, Counter()
    # A summary: only the rows it may show are sorted (100,000 sorted cost a fifth of a second)
    wanted = SUMMARY_STATES | (states or frozenset())
    if "done" in wanted:
        wanted |= {"skipped"}
    candidates = sorted((v for v in rows if isinstance(v, ArrayView) or v.state in wanted), key=key)
    taken: Counter[str] = Counter()
    shown: list[JobView] = []
    for v in candidates:
        kind = "arrays" if isinstance(v, ArrayView) else v.state
        if taken[kind] < PER_STATE:
            taken[kind] += 1
            shown.append(v)
    left = Counter(v.state for v in rows)
    left.subtract(Counter(v.state for v in shown))
    return shown, +left


def left_out_text(left: Counter[str]) -> str:
    """The summary's last line."""
    n = sum(left.values())
    parts = ", ".join(f"{s} {left[s]}" for s in SHOWN_STATES if left.get(s))
    return (f"… {n} more row{'' if n == 1 else 's'} not shown ({parts}): --all shows every row, "
            "--state STATE those of a state")
