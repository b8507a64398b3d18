"""``exec-status POOL RUN --report FILE.html``: one self-contained HTML page about a run.

Everything is inlined (plotly.js, the data, the styles): the file opens from a laptop after
``scp``, with no network. It holds a summary (state, counts, wall time, the sum of the
tries' durations, attempts and why, the workflow file, who submitted it and when), the DAG
and a timeline of every try (see :mod:`executioner.views.figures`), and tables: the slowest
jobs and tasks, every failure with the tail of its stderr, tries and failures per host, the
retried and lost tries. A running run is shown as it is now (a snapshot, said in the title).

Drawing needs the optional extra ``executioner[report]`` (plotly and networkx): without it
the command says so in one line (exit code 2) rather than a traceback. The page is written
to a temporary file next to FILE, synced, then renamed over FILE: a reader (or a browser
reloading it) never sees half a page.

A script error in the page (a plotly failure) is written into ``<pre id="script-errors">``
by a ``window.onerror`` handler set before any other script, so that a test (or a user) sees
it in the page itself.
"""

from __future__ import annotations

import html
import importlib
import os
import time
from datetime import datetime, timezone
from typing import AbstractSet, Any, Final

from ..errors import MissingExtra, PoolError
from ..protocol import fsio
from ..protocol.layout import RunLayout
from .report_data import FAILURES_MAX, RETRIES_MAX, TAIL_BYTES, ReportData, read_report

EXTRA: Final = "the report needs the optional extra 'report' (plotly, networkx, numpy): pip install 'executioner[report]'"
STYLE: Final = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
td, th { border: 1px solid #ccc; padding: 2px 8px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; } td.n { text-align: right; }
pre.tail { max-height: 12em; overflow: auto; background: #f8f8f8; margin: 0; font-size: 0.85em; }
p.note { color: #a05000; } .bad { background: #fdd; }
#script-errors:empty { display: none; } #script-errors { color: #fff; background: #c00; padding: 0.5em; }
"""
ONERROR: Final = """<script>window.reportErrors = [];
window.onerror = function (msg, src, line) {
  window.reportErrors.push(msg);
  var e = document.getElementById('script-errors');
  if (e) { e.textContent += 'script error: ' + msg + ' (line ' + line + ')\\n'; }
};</script>"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _when(t: Any) -> str:
    if not isinstance(t, (int, float)):
        return "-"
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _seconds(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 120:
        return f"{s:.3g} s"
    h, rest = divmod(int(s), 3600)
    return f"{h}h {rest // 60:02d}m {rest % 60:02d}s" if h else f"{rest // 60}m {rest % 60:02d}s"


def _table(head: list[str], rows: list[list[Any]], numeric: AbstractSet[int] = frozenset(),
           raw: AbstractSet[int] = frozenset(), row_class: list[str] | None = None) -> str:
    out = ["<table>" + ("<tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>" if head else "")]
    for k, row in enumerate(rows):
        cls = f' class="{row_class[k]}"' if row_class and row_class[k] else ""
        cells = "".join(f'<td{" class=n" if i in numeric else ""}>{c if i in raw else _e(c)}</td>'
                        for i, c in enumerate(row))
        out.append(f"<tr{cls}>{cells}</tr>")
    return "\n".join(out) + "</table>"


def _state(d: ReportData) -> str:
    counts = d.state_counts()
    if counts.get("running") or counts.get("queued") or counts.get("waiting") or counts.get("lost"):
        return "running"
    if counts.get("failed") or counts.get("blocked"):
        return "failed"
    return "held" if counts.get("held") else "done"


def _summary(d: ReportData, state: str) -> str:
    r = d.run_record
    counts = d.state_counts()
    wall = (d.last_end - d.first_start) if d.first_start is not None and d.last_end is not None else None
    rows: list[list[Any]] = [["state", state], ["jobs", f"{len(d.nodes):,} ({sum(1 for n in d.nodes.values() if n.array)} arrays)"],
            ["jobs and tasks by state", ", ".join(f"{n:,} {s}" for s, n in counts.most_common()) or "-"],
            ["tries by status", ", ".join(f"{n:,} {s}" for s, n in d.statuses.most_common()) or "-"],
            ["wall time", f"{_seconds(wall)} (first try began {_when(d.first_start)}, last ended "
                          f"{_when(d.last_end)})"],
            ["sum of try durations", f"{_seconds(d.busy_sum)} (the jobs' and tasks' wall times added up: "
                                     "CPU time itself is not recorded)"],
            ["workflow file", f"{r.get('source')} (copy: {r.get('workflow')})"],
            ["submitted", f"{_when(r.get('created'))} by {r.get('submitted_by')}"],
            ["backend", r.get("backend")], ["report written", _when(d.now)]]
    attempts = [[a.get("attempt"), _when(a.get("time")), a.get("who"), a.get("why"),
                 ", ".join(f"{k}={v}" for k, v in (a.get("flags") or {}).items() if v)] for a in d.attempts]
    out = _table([], rows)
    if attempts:
        out += "<h3>Attempts</h3>" + _table(["attempt", "when", "who", "why", "flags"], attempts)
    if d.unusable:
        out += "<p class=note>files that cannot be used (workers quarantine them): " + \
               _e("; ".join(d.unusable[:20])) + (" ..." if len(d.unusable) > 20 else "") + "</p>"
    return out


def _tables(d: ReportData) -> str:
    out = ["<h2 id=slowest>Slowest jobs and tasks</h2>",
           _table(["job or task", "duration", "host"], [[n, _seconds(s), h] for s, n, h in
                                                         sorted(d.slowest, reverse=True)], {1})]
    out.append(f"<h2 id=failures>Failures ({d.failures_total:,})</h2>")
    if d.failures_total > len(d.failures):
        out.append(f"<p class=note>the first {FAILURES_MAX} are shown; all of them: "
                   f"<code>exec-status POOL {_e(d.run_id)} --state failed --all</code></p>")
    rows = []
    for f in d.failures:
        tail = f["tail"]
        shown = (f'<pre class="tail">{_e(tail)}</pre>' if tail else f"<i>no stderr log ({_e(f['stderr'])})</i>")
        rows.append([f["job"], f["try"], f["host"], f["status"], f["exit_code"], f["reason"], shown])
    out.append(_table(["job or task", "try", "host", "status", "exit code", "reason",
                       f"stderr (last {TAIL_BYTES} bytes)"], rows, {1, 4}, {6}))
    hosts = sorted(d.hosts.items(), key=lambda h: (-h[1].failed - h[1].lost, h[0]))
    mean = sum(h.failed for _, h in hosts) / max(1, sum(h.tries for _, h in hosts))
    out.append("<h2 id=hosts>Tries per host</h2><p>A chunk try counts once in <i>tries</i>; its failed "
               "tasks each count in <i>failed</i>. Hosts failing far more than the others are shaded.</p>")
    out.append(_table(["host", "tries", "failed", "lost or preempted", "busy"],
                      [[n, f"{h.tries:,}", f"{h.failed:,}", f"{h.lost:,}", _seconds(h.busy)] for n, h in hosts],
                      {1, 2, 3, 4}, row_class=["bad" if h.failed + h.lost > max(2, 3 * mean * h.tries) else ""
                                               for _, h in hosts]))
    out.append(f"<h2 id=retries>Retried and lost tries ({d.retries_total:,})</h2>")
    if d.retries_total > len(d.retries):
        out.append(f"<p class=note>the first {RETRIES_MAX} are shown</p>")
    out.append(_table(["job or task", "try", "status", "host", "worker", "exit code", "reason"],
                      [[r["job"], r["try"], r["status"], r["host"], r["worker"], r["exit_code"], r["reason"]]
                       for r in d.retries], {1, 5}))
    return "\n".join(out)


def render(d: ReportData) -> str:
    """The page, as text."""
    try:
        import plotly.io as pio
        from plotly.offline import get_plotlyjs

        from .figures import collapse, dag_figure, timeline_figure
    except ImportError:
        raise MissingExtra(EXTRA, "report") from None
    state = _state(d)
    nodes, dag_note = collapse(d.nodes)
    timeline, notes = timeline_figure(d.bars)
    if any(b.tasks > 1 for b in d.bars):
        notes.insert(0, "a chunk try of an array is one bar for all its tasks")
    config = {"displaylogo": False, "responsive": True}
    dag_html = pio.to_html(dag_figure(nodes), full_html=False, include_plotlyjs=False, div_id="dag", config=config)
    tl_html = pio.to_html(timeline, full_html=False, include_plotlyjs=False, div_id="timeline", config=config)
    title = f"{d.run_record.get('name') or ''} {d.run_id}: {state}"
    snap = f" (a snapshot of a running run, {_when(d.now)})" if state == "running" else ""
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>", f"<title>{_e(title)}</title>",
        f"<style>{STYLE}</style>", ONERROR, f"<script>{get_plotlyjs()}</script></head><body>",
        "<pre id='script-errors'></pre>",
        f"<h1>{_e(title)}{_e(snap)}</h1>", "<h2 id=summary>Summary</h2>", _summary(d, state),
        f"<h2 id=dag-title>Jobs and their dependencies ({len(d.nodes):,} jobs)</h2>",
        "<p>Left to right: each job after those it needs. Squares are arrays (or groups), with their "
        "task counts; the colour is the worst state among them. Hover for details.</p>",
        f"<p class=note>{_e(dag_note)}</p>" if dag_note else "", dag_html,
        f"<h2 id=timeline-title>Timeline ({len(d.bars):,} tries)</h2>",
        "<p>One lane per worker; hover a bar for the job, try, exit code and duration.</p>",
        "".join(f"<p class=note>{_e(n)}</p>" for n in notes), tl_html, _tables(d),
        "</body></html>"]
    return "\n".join(parts)


def write_report(run: RunLayout, path: str, now: float | None = None) -> dict[str, Any]:
    """Write the report of ``run`` to ``path`` (atomically); what it took, for the CLI's line."""
    start = time.perf_counter()
    try:  # checked before reading a big run, not after
        for name in ("plotly", "networkx", "numpy"):
            importlib.import_module(name)
    except ImportError:
        raise MissingExtra(EXTRA, "report") from None
    d = read_report(run, now)
    page = render(d).encode("utf-8")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise PoolError("no such folder for the report", folder)
    fsio.atomic_write(os.path.abspath(path), page)
    return {"path": path, "bytes": len(page), "seconds": time.perf_counter() - start, "jobs": len(d.nodes),
            "tries": len(d.bars)}
