"""A run's counts for the pool view (``exec-status POOL``), from listings and graph.json.

The pool view shows per run how many jobs are in each state. The folders give all but
two: *blocked* (waiting behind a failed job) and *held* (waiting behind a job kept back
by ``--failed-only``), which the run's graph.json (executioner.protocol.graph) tells
apart without reading a job file. Here they are counted with sets and one walk down
from the failed (then the held) jobs, through waiting jobs only, never building a view
per job: 100,000 jobs cost their listing and one graph.json. Whatever this does not
cover (arrays, a missing or stale graph.json, a job in no folder) is left to
:func:`executioner.views.status.job_views`, which says the same of such a run.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from ..protocol.graph import read_graph
from ..protocol.layout import RunLayout
from ..protocol.ready import arrays_of
from ..protocol.snapshot import snapshot


def plain_counts(run: RunLayout, expected: int, attempt: Any) -> Counter[str] | None:
    """How many jobs of the run are in each shown state (``held``, ``blocked`` and the
    folders' states), or None when job_views must decide."""
    if arrays_of(run):
        return None
    graph = read_graph(run, attempt)
    if graph is None:
        return None
    jobs = snapshot(run, expected, staged=True)
    if len(jobs) < expected:  # a job in no folder: job_views names it lost
        return None
    needs, marked, order = graph
    shown = Counter(state for state, _ in jobs.values())
    failed = [j for j, (state, _) in jobs.items() if state == "failed"]
    if not shown["waiting"] or not (failed or marked):
        return shown
    waiting = {j for j, (state, _) in jobs.items() if state == "waiting"}
    blocked = _downstream(needs, order, set(failed), waiting)
    left = waiting - blocked
    sources = {j for j in marked if j in left}
    held = _downstream(needs, order, sources, left) | sources
    shown["waiting"] -= len(blocked) + len(held)
    shown["blocked"] += len(blocked)
    shown["held"] += len(held)
    return shown


def _downstream(needs: dict[str, list[Any]], order: list[str] | None, sources: set[str],
                allowed: set[str]) -> set[str]:
    """The jobs of ``allowed`` that depend on a source through jobs of ``allowed`` alone:
    one pass in graph.json's ``order`` (each job after those it needs), or, when there is
    none or it is not such an order (a hand-edited file), a walk down from the sources."""
    if not sources:
        return set()
    if order is None or len(order) != len(needs):
        return _reach(needs, sources, allowed)
    bad: set[str] = set(sources)
    passed: set[str] = set()
    out: set[str] = set()
    for j in order:
        if j in allowed:
            for d in needs.get(j) or ():
                if type(d) is not str:  # junk in a hand-edited graph.json
                    continue
                if d in bad:
                    out.add(j)
                    bad.add(j)
                    break
                if d in allowed and d not in passed:  # needed before it is listed: walk instead
                    return _reach(needs, sources, allowed)
        passed.add(j)
    return out


def _reach(needs: dict[str, list[Any]], sources: set[str], allowed: set[str]) -> set[str]:
    dependents: dict[str, list[str]] = {}
    for j in allowed:  # a walk enters only allowed jobs: only the edges into them matter
        for d in needs.get(j) or ():
            if type(d) is str:
                dependents.setdefault(d, []).append(j)
    seen: set[str] = set()
    todo = list(sources)
    while todo:
        for k in dependents.get(todo.pop(), ()):
            if k in allowed and k not in seen:
                seen.add(k)
                todo.append(k)
    return seen
