"""Which waiting jobs of a run are *blocked* (behind a failed job) or *held* (behind a job
kept back by ``--failed-only``): walks up the dependencies of the run view's rows."""

from __future__ import annotations

import graphlib
from typing import Any

from ..protocol.units import Coverage, unit_name
from .rows import ArrayView, JobView


def mark_blocked_tasks(views: dict[str, JobView]) -> None:
    """Tasks waiting for an element-wise upstream task that failed, or that is itself
    blocked (in dependency order, so a chain of arrays blocks task by task)."""
    arrays = {k: v for k, v in views.items() if isinstance(v, ArrayView)}
    if not arrays:
        return
    order = graphlib.TopologicalSorter({k: [d for d in (v.record or {}).get("dependencies") or []
                                            if d in arrays] for k, v in arrays.items()})
    bad: dict[str, Coverage] = {}
    try:
        ordered = list(order.static_order())
    except graphlib.CycleError:
        return
    for job in ordered:
        v = arrays[job]
        each = [d for d in ((v.record or {}).get("spec") or {}).get("elementwise") or [] if d in arrays]
        blocked: list[str] = []
        if each and v.counts["waiting"]:
            for state, chunk, _ in v.units:
                if state != "waiting":
                    continue
                for p in range(chunk.lo, chunk.hi + 1):
                    for d in each:
                        if arrays[d].positions("failed").covers(d, p, p) or bad[d].covers(d, p, p):
                            blocked.append(unit_name(job, p, p))
                            break
            if blocked:
                names = ", ".join(f"{job}:{b.rpartition('.')[2]}" for b in blocked[:3])
                v.block(len(blocked), f"{names}{' …' if len(blocked) > 3 else ''}: upstream task failed")
        bad[job] = Coverage(blocked, {job: v.size})


def _first_upstream(views: dict[str, JobView], source: Any, passes: Any,
                    order: list[str] | None = None) -> dict[str, str | None]:
    """:func:`_walk_upstream`, in one pass when ``order`` (graph.json's: each job after
    those it needs) is given and is such an order for these views; the same answer for
    every job that passes (a job's dependencies are judged before it, in their order)."""
    found: dict[str, str | None] = {j: j for j, v in views.items() if source(v)}
    if not found:
        return found
    if order is None:
        return _walk_upstream(views, source, passes, found)
    unknown = object()
    for j in order:
        v = views.get(j)
        if v is None or j in found or not passes(v):
            continue
        result = None
        for d in v.needs():
            if type(d) is not str:
                continue
            r = found.get(d, unknown)
            if r is unknown:
                upstream = views.get(d)
                if upstream is not None and passes(upstream):  # not judged yet: not such an order
                    return _walk_upstream(views, source, passes, {k: k for k, x in views.items() if source(x)})
                continue  # neither a source nor passing (or not a job at all)
            if r is not None:
                result = r
                break
        found[j] = result
    if any(j not in found for j, v in views.items() if passes(v)):  # a job the order leaves out
        return _walk_upstream(views, source, passes, {k: k for k, x in views.items() if source(x)})
    return found


def _walk_upstream(views: dict[str, JobView], source: Any, passes: Any,
                   found: dict[str, str | None]) -> dict[str, str | None]:
    """For every job that is a source or passes: itself if ``source(view)``, else (when
    ``passes(view)``) the first source found upstream through its dependencies, in order,
    or None.

    Iterative and memoised: linear in jobs + edges on any DAG shape (a 100,000-job chain,
    a ladder whose paths number 2^30), and safe on a cycle in hand-edited files. The
    predicates are asked once per job, the walk touches only dicts and lists (one stack
    for all of it). ``found``: the sources, each found as itself."""
    deps_of: dict[str, list[Any]] = {}
    for j, v in views.items():
        if j not in found and passes(v):
            deps_of[j] = v.needs()
    unknown = object()
    stack: list[str] = []
    at: list[int] = []  # where each job on the stack is in its dependencies
    on_path: set[str] = set()
    for root in deps_of:
        if root in found:
            continue
        stack.append(root)
        at.append(0)
        on_path.add(root)
        while stack:
            job_id = stack[-1]
            deps = deps_of[job_id]
            i = at[-1]
            result, descend = None, None
            while i < len(deps):
                d = deps[i]
                i += 1
                if type(d) is not str or d in on_path:  # junk in a hand-edited file, or a cycle
                    continue
                r = found.get(d, unknown)
                if r is unknown:
                    if d in deps_of:
                        descend = d
                        break
                    found[d] = None  # neither a source nor passing (or not a job at all)
                elif r is not None:
                    result = r
                    break
            if descend is not None:
                at[-1] = i - 1  # look at this dependency again once it is known
                stack.append(descend)
                at.append(0)
                on_path.add(descend)
                continue
            found[job_id] = result
            stack.pop()
            at.pop()
            on_path.discard(job_id)
    return found


def mark_blocked(views: dict[str, JobView], order: list[str] | None = None) -> None:
    """A waiting job is blocked when a job it needs (directly or not) has failed. An array
    with a failed task has failed for what needs all of it; an array's waiting tasks are
    blocked when what it needs as a whole has failed."""
    def failed(v: JobView) -> bool:
        return v.state == "failed" or (isinstance(v, ArrayView) and (v.counts["failed"] > 0 or v.counts["blocked"] > 0))

    def waits(v: JobView) -> bool:
        return v.state == "waiting"

    upstream = _first_upstream(views, failed, waits, order)
    for v in views.values():
        if v.state != "waiting":
            continue
        found = upstream.get(v.id)
        if found and found != v.id:
            if isinstance(v, ArrayView):
                v.block(v.counts["waiting"], f"upstream failed: {found}")
            else:
                v.state = "blocked"
                v.reason = f"upstream failed: {found}"


def mark_held(views: dict[str, JobView], order: list[str] | None = None) -> None:
    """Held (by --failed-only): a waiting job so marked, or one downstream of it."""
    held = _first_upstream(views, lambda v: v.state == "waiting" and bool((v.record or {}).get("held")),
                           lambda v: v.state == "waiting", order)
    for v in views.values():
        if v.state == "waiting" and held.get(v.id):
            h = held[v.id]
            v.state = "held"
            v.reason = "held until a plain resume (--failed-only)" if h == v.id else f"upstream held: {h}"
