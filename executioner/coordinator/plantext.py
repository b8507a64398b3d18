"""A plan's steps as text a person reads: a few lines per kind of move, not one per job.

``exec-submit --dry-run``, a resume and ``exec-status --attempts`` print what a plan does.
A rollback of 100,000 jobs printed 100,000 lines (and rich took half a minute to lay them
out); now each kind of move (action, from, to) is one line with its count and its first
few jobs, unless it has only a few jobs or the user asks for every line (``--verbose``).
"""

from __future__ import annotations

from typing import Final, Sequence

FEW: Final = 5  # jobs a plan names per kind of move, unless verbose


def step_lines(rows: Sequence[tuple[str, str, str, str | None, str | None]], verbose: bool = False,
               few: int = FEW) -> list[str]:
    """A plan's steps ``(action, job, reason, from, to)`` as lines: one a job with ``verbose``
    or while a kind of move (action, from, to) has at most ``few`` jobs; else one line for
    the kind: how many jobs, the first ``few`` of them, and their reason if they share one
    (a rollback of 100,000 jobs is a few lines, not 100,000)."""
    groups: dict[tuple[str, str | None, str | None], list[tuple[str, str, str, str | None, str | None]]] = {}
    for r in rows:
        groups.setdefault((r[0], r[3], r[4]), []).append(r)
    each = [r for g in groups.values() if verbose or len(g) <= few for r in g]
    width = max([len(r[1]) for r in each] + [3])
    lines = []
    for (action, src, dst), group in groups.items():
        if verbose or len(group) <= few:
            lines += [f"  {a:<7} {j:<{width}}  {why}" for a, j, why, _, _ in group]
            continue
        where = f"{src or 'new'} -> {dst}" if dst else f"{src or 'new'}, left as they are"
        names = ", ".join(r[1] for r in group[:few])
        why = group[0][2]
        shared = f": {why}" if all(r[2] == why for r in group) else ""
        lines.append(f"  {action:<7} {len(group)} jobs ({where}): {names}, …{shared}")
    return lines
