"""The report's two figures, drawn with plotly (SVG, not WebGL: it draws in any browser,
headless ones without a GPU included) and laid out with networkx.

- The DAG: networkx's ``topological_generations`` puts each job in a layer (after every
  job it needs), ``multipartite_layout`` places the layers left to right; plotly draws the
  edges as one path and the jobs as markers coloured by state. Up to :data:`NODES_MAX` jobs
  it is one node per job (an array: one node with its tasks counted); above, jobs of the
  same layer whose names differ only in their digits (``sim-001``, ``sim-002``) become one
  node, and if that is still too many, each layer is one node per state. The page says so.
- The timeline: one lane per worker (per host above :data:`LANES_MAX` workers), a bar per
  try coloured by its status, hover details. Above :data:`BARS_MAX` tries, the tries of a
  lane that follow one another closely are merged into one bar (their count and statuses in
  the hover, coloured by the worst of them), and the page says so.
"""

from __future__ import annotations

import re
from html import escape
from collections import Counter, defaultdict
from datetime import datetime, timezone
from typing import Any, Final

from .report_data import Bar, Node

NODES_MAX: Final = 300
BARS_MAX: Final = 4000
LANES_MAX: Final = 60
COLOURS: Final = {"done": "#2ca02c", "skipped": "#98df8a", "failed": "#d62728", "timeout": "#ff7f0e",
                  "lost": "#7f7f7f", "preempted": "#9467bd", "running": "#1f77b4", "queued": "#aec7e8",
                  "waiting": "#c7c7c7", "held": "#c5b0d5", "blocked": "#8c564b", "?": "#000000"}
WORST: Final = ("failed", "timeout", "lost", "preempted", "blocked", "running", "queued", "held", "waiting",
                "skipped", "done")


def worst(counts: Counter[str]) -> str:
    return next((s for s in WORST if counts.get(s)), next(iter(counts), "?"))


def _counts_text(counts: Counter[str]) -> str:
    return ", ".join(f"{n:,} {s}" for s, n in counts.most_common())


def collapse(nodes: dict[str, Node]) -> tuple[dict[str, Node], str | None]:
    """The nodes to draw: every job, or (above NODES_MAX) groups of them; and a note saying how."""
    if len(nodes) <= NODES_MAX:
        return nodes, None
    layers = _layers(nodes)
    for how, key in (("jobs of one layer whose names differ only in digits are one node",
                      lambda n: f"{re.sub(r'[0-9]+', '#', n)} (layer {layers[n]})"),
                     ("each layer is one node per state", None)):
        groups: dict[str, Node] = {}
        member: dict[str, str] = {}
        for name, node in nodes.items():
            g = key(name) if key else f"layer {layers[name]}: {worst(node.counts)}"
            member[name] = g
            grouped = groups.setdefault(g, Node(g, array=True))
            grouped.counts.update(node.counts)
        for name, node in nodes.items():
            groups[member[name]].dependencies.update(member[d] for d in node.dependencies
                                                     if d in member and member[d] != member[name])
        if len(groups) <= NODES_MAX or key is None:
            return groups, f"{len(nodes):,} jobs are more than {NODES_MAX} nodes: {how} ({len(groups):,} nodes)"
    raise AssertionError("unreachable")


def _layers(nodes: dict[str, Node]) -> dict[str, int]:
    import networkx as nx

    g = nx.DiGraph()
    g.add_nodes_from(nodes)
    g.add_edges_from((d, n) for n, node in nodes.items() for d in node.dependencies if d in nodes)
    try:
        return {n: i for i, layer in enumerate(nx.topological_generations(g)) for n in layer}
    except nx.NetworkXUnfeasible:  # a cycle cannot be submitted; drawn flat rather than refused
        return {n: 0 for n in nodes}


def dag_figure(nodes: dict[str, Node]) -> Any:
    import networkx as nx
    import plotly.graph_objects as go

    layers = _layers(nodes)
    g = nx.DiGraph()
    for n in nodes:
        g.add_node(n, layer=layers[n])
    pos = nx.multipartite_layout(g, subset_key="layer") if nodes else {}
    ex: list[float | None] = []
    ey: list[float | None] = []
    for n, node in nodes.items():
        for d in sorted(node.dependencies):
            if d in pos:
                ex += [float(pos[d][0]), float(pos[n][0]), None]
                ey += [float(pos[d][1]), float(pos[n][1]), None]
    names = sorted(nodes)
    states = [worst(nodes[n].counts) for n in names]
    total = [sum(nodes[n].counts.values()) for n in names]
    labels = [f"{n} [{t:,}]" if nodes[n].array else n for n, t in zip(names, total)]
    hover = [f"<b>{escape(n)}</b><br>{'tasks' if nodes[n].array else 'job'}: {_counts_text(nodes[n].counts)}"
             f"<br>needs: {escape(', '.join(sorted(nodes[n].dependencies))) or '-'}" for n in names]
    widest = max(Counter(layers.values()).values(), default=1)
    fig = go.Figure([
        go.Scatter(x=ex, y=ey, mode="lines", line={"color": "#999", "width": 1}, hoverinfo="skip", name="needs"),
        go.Scatter(x=[float(pos[n][0]) for n in names], y=[float(pos[n][1]) for n in names],
                   mode="markers+text" if len(names) <= 80 else "markers", text=labels,
                   textposition="top center", hovertext=hover, hoverinfo="text", name="jobs",
                   marker={"size": [14 if nodes[n].array else 10 for n in names],
                           "symbol": ["square" if nodes[n].array else "circle" for n in names],
                           "color": [COLOURS.get(s, "#000") for s in states], "line": {"width": 1, "color": "#333"}}),
    ])
    fig.update_layout(showlegend=False, height=max(350, min(4000, 24 * widest)), margin={"l": 20, "r": 20, "t": 20,
                      "b": 20}, xaxis={"visible": False}, yaxis={"visible": False}, plot_bgcolor="white")
    return fig


def _merge(bars: list[Bar], gap: float) -> list[tuple[Bar, Counter[str]]]:
    """Bars of one lane, sorted by start; those starting within ``gap`` of the previous end merged."""
    out: list[tuple[Bar, Counter[str]]] = []
    for b in sorted(bars, key=lambda b: b.start):
        if out and b.start <= out[-1][0].end + gap:
            last, counts = out[-1]
            last.end = max(last.end, b.end)
            last.tasks += b.tasks
            counts[b.status] += 1
            continue
        out.append((Bar(b.lane, b.host, b.start, b.end, b.status, b.unit, b.try_number, b.exit_code, b.tasks),
                    Counter({b.status: 1})))
    return out


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")


def timeline_figure(bars: list[Bar]) -> tuple[Any, list[str]]:
    """The Gantt figure, and notes on what was grouped (per host lanes, merged bars)."""
    import plotly.graph_objects as go

    notes = []
    workers = {b.lane for b in bars}
    if len(workers) > LANES_MAX:
        notes.append(f"{len(workers):,} workers: one lane per host")
        bars = [Bar(b.host, b.host, b.start, b.end, b.status, b.unit, b.try_number, b.exit_code, b.tasks)
                for b in bars]
    lanes: dict[str, list[Bar]] = defaultdict(list)
    for b in bars:
        lanes[b.lane].append(b)
    merged: list[tuple[Bar, Counter[str]]]
    if len(bars) > BARS_MAX:
        span = max(b.end for b in bars) - min(b.start for b in bars)
        gap = span * len(lanes) / BARS_MAX
        merged = [m for lane in lanes.values() for m in _merge(lane, gap)]
        notes.append(f"{len(bars):,} tries are more than {BARS_MAX:,} bars: the tries of a lane less than "
                     f"{gap:.3g} s apart are one bar, coloured by the worst of them (the hover counts them)")
    else:
        merged = [(b, Counter({b.status: 1})) for b in bars]
    by_status: dict[str, list[tuple[Bar, Counter[str]]]] = defaultdict(list)
    for b, counts in merged:
        by_status[worst(counts) if sum(counts.values()) > 1 else b.status].append((b, counts))
    traces = []
    for status in sorted(by_status, key=lambda s: WORST.index(s) if s in WORST else 99):
        items = by_status[status]
        hover = []
        for b, counts in items:
            n = sum(counts.values())
            # Plotly reads a few tags in hover text (<b>, <a href>): what came from files is escaped
            what = (f"<b>{escape(b.unit)}</b> try {b.try_number}<br>status: {escape(b.status)}, exit code: "
                    f"{escape(str(b.exit_code))}" if n == 1 else
                    f"<b>{n:,} tries</b> ({escape(_counts_text(counts))}), from {escape(b.unit)}")
            tasks = f"<br>tasks: {b.tasks:,}" if b.tasks > 1 else ""
            hover.append(f"{what}{tasks}<br>lane: {escape(b.lane)}<br>{_iso(b.start)[:-3]} UTC, "
                         f"duration {b.end - b.start:.3f} s")
        traces.append(go.Bar(orientation="h", name=status, y=[b.lane for b, _ in items],
                             base=[_iso(b.start) for b, _ in items],
                             x=[max(1.0, (b.end - b.start) * 1000) for b, _ in items],
                             marker={"color": COLOURS.get(status, "#000")}, hovertext=hover, hoverinfo="text"))
    fig = go.Figure(traces)
    fig.update_layout(barmode="overlay", height=max(300, min(3000, 60 + 22 * len(lanes))),
                      xaxis={"type": "date", "title": "UTC"}, yaxis={"autorange": "reversed", "type": "category"},
                      margin={"l": 20, "r": 20, "t": 20, "b": 40}, legend={"title": "try status"},
                      plot_bgcolor="white")
    return fig, notes
