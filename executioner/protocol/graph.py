"""``RUN/graph.json``: the run's dependency graph, a small summary for views.

Each job file holds its own dependencies, but a view that only counts (``exec-status
POOL``) would have to read every waiting job file of a big run to tell *blocked* and
*held* from *waiting*. The graph is written once per attempt, by the submit and by each
resume (in the same commit as run.json), as ``{"attempt": N, "needs": {job: [deps]},
"held": [jobs], "order": [jobs]}``; ``order`` lists every job after the jobs it needs (the
plan's order), so that a view walks the graph in one pass (the file's keys are sorted:
``needs`` alone has lost that order). A graph without ``order`` (written before it
existed) is walked all the same, only slower. A reader trusts it only when its ``attempt`` is run.json's (a resume
between the two writes makes them differ: the reader then reads the job files, as before).
Nothing else writes it, so it never disagrees with the job files of its attempt: a job's
dependencies and its held mark change only through a resume.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from . import fsio
from .layout import RunLayout

GRAPH_MAX = 256 << 20  # a million jobs with a few dependencies each


class Graph(NamedTuple):
    needs: dict[str, list[Any]]
    held: set[str]
    order: list[str] | None  # None: not given (an older graph.json), or not a list of ids


def graph_record(needs: dict[str, list[str]], attempt: int, held: list[str],
                 order: list[str] | None = None) -> dict[str, Any]:
    record = {"attempt": attempt, "needs": needs, "held": sorted(held)}
    if order is not None:
        record["order"] = order
    return record


def read_graph(run: RunLayout, attempt: Any) -> Graph | None:
    """(needs, held, order) of the run's current attempt; None if there is no usable graph."""
    try:
        data = fsio.read_json(run.graph, GRAPH_MAX)
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("attempt") != attempt:
        return None
    needs, held = data.get("needs"), data.get("held")
    if not isinstance(needs, dict) or not isinstance(held, list):
        return None
    if not all(isinstance(v, list) for v in needs.values()):
        return None
    order = data.get("order")
    if not isinstance(order, list) or not all(type(j) is str for j in order):
        order = None
    return Graph(needs, {h for h in held if isinstance(h, str)}, order)
