"""What ``exec-status`` prints: the pool table, the run view as plain text, the attempts
and one job's tries. Tables go through rich (imported only when one is printed: it takes a
tenth of a second); the run view is plain text (views.text: rich takes minutes for 100,000
rows). Nothing is cut to the terminal's width when the output is no terminal (a pipe, a
file): a log path in ``--job`` must come out whole for the next command."""

from __future__ import annotations

import errno
import os
import sys
import time
from collections import Counter
from typing import Any

import orjson

from ..coordinator.plantext import step_lines
from ..protocol.layout import PoolLayout, RunLayout
from .select import left_out_text
from .status import last_update

WIDE = 1 << 16  # the width of no terminal: wide enough that no cell is cut or wrapped


def console() -> Any:
    """rich's Console (imported only for the tables that use it: it takes a tenth of a
    second), telling a reader gone as BrokenPipeError: rich would exit 1, we say 141."""
    from rich.console import Console

    class _Console(Console):
        def on_broken_pipe(self) -> None:
            self.quiet = True
            raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))

    return _Console(highlight=False, width=None if sys.stdout.isatty() else WIDE)


def emit(data: dict[str, Any], as_json: bool, table: Any) -> None:
    if as_json:
        sys.stdout.buffer.write(orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n")
        sys.stdout.flush()
    else:
        console().print(table(data))


_COLORS = {"corrupt": "red", "done": "green", "failed": "red", "blocked": "magenta", "running": "cyan",
           "queued": "yellow", "cancelled": "magenta", "held": "blue", "skipped": "green", "lost": "yellow", "timeout": "red"}


def _paint(state: str) -> str:
    """A state in its colour (rich markup); escaped, and plain when it has no colour."""
    from rich.markup import escape

    color = _COLORS.get(state)
    return f"[{color}]{escape(state)}[/]" if color else escape(state)


def _plain(text: str | None) -> str:
    """Text shown as it is: a reason or a host with square brackets is not rich markup."""
    from rich.markup import escape

    return escape(text or "")


def _when(stamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp)) if stamp else ""


def attempts_table(data: dict[str, Any]) -> Any:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    t = Table("attempt", "when", "who", "why", "flags", "plan", "tries ended", title=f"{data['run_id']}: attempts")
    for r in data["attempts"]:
        flags = " ".join(f"--{k.replace('_', '-')}" + ("" if v is True else f" {' '.join(v)}")
                         for k, v in r["flags"].items())
        t.add_row(str(r["attempt"]), _when(r["time"]), r["who"] or "", r["why"] or "", flags,
                  counts_text(r["planned"]), "" if r["tries"] is None else counts_text(r["tries"]))
    nxt = data["next"]
    if "error" in nxt:
        return Group(t, Text(f"a plain resume now: cannot plan: {nxt['error']}"))
    if "left_out" in nxt:
        return Group(t, Text(f"… {nxt['left_out']}"))
    lines = [f"a plain resume now would be attempt {nxt['attempt']}: {counts_text(nxt['planned'])}"]
    lines += step_lines([(s["action"], s["job"], s["reason"], s["from"], s["to"]) for s in nxt["steps"]
                         if s["action"] != "skip" or "done in" not in s["reason"]])
    lines += [f"  check {'ok' if c['ok'] else 'FAILS'}: {c['check']}: {c['detail']}" for c in nxt["checks"]]
    return Group(t, Text("\n".join(lines)))


def job_table(data: dict[str, Any]) -> Any:
    from rich.table import Table

    if data.get("array"):  # an array: one row per task
        t = Table("task", "state", "tries", "exit", "duration", "host", "reason",
                  title=f"{data['run_id']} array {data['job']}")
        for r in data["tasks"]:
            dur = "" if r["duration"] is None else f"{r['duration']:.1f}s"
            t.add_row(_plain(r["task"]), _paint(r["state"]), "" if r["tries"] is None else str(r["tries"]),
                      "" if r["exit_code"] is None else str(r["exit_code"]), dur, _plain(r["host"]),
                      _plain(r["reason"]))
        return t
    extra = f", {data['skipped']['reason']}" if data.get("skipped") else ", held" if data.get("held") else \
        f" ({data['reason']})" if data.get("reason") else ""
    t = Table("attempt", "try", "status", "host", "start", "duration", "exit", "reason", "logs",
              title=f"{data['run_id']} job {data['job']}: {data['state']}{extra}")
    for r in data["tries"]:
        dur = "" if r["duration"] is None else f"{r['duration']:.1f}s"
        logs = "\n".join(x for x in (r["stdout"], r["stderr"]) if x)
        t.add_row(str(r["attempt"]), str(r["try"]), _paint(r["status"]), r["host"] or "",
                  _when(r["start"]), dur, "" if r["exit_code"] is None else str(r["exit_code"]),
                  _plain(r["reason"]), _plain(logs))
    if not data["tries"]:
        t.caption = "no tries yet"
    return t


def counts_text(counts: dict[str, int]) -> str:
    return "  ".join(f"{k} {v}" for k, v in counts.items() if v)


def pool_table(data: dict[str, Any], pool: PoolLayout) -> Any:
    from rich.table import Table

    t = Table("run", "name", "state", "jobs", "last update")
    for r in data["runs"]:
        updated = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(last_update(pool.run(r["run_id"]))))
        jobs = r.get("reason") or counts_text(r["counts"])
        if r.get("warning"):
            jobs += f"; {r['warning']}"
        t.add_row(r["run_id"], r["name"] or "", _paint(r["state"]), jobs, updated)
    if not data["runs"]:
        t.caption = "no runs yet"
    return t


def run_text(data: dict[str, Any], color: bool) -> str:
    from .text import render

    summary = data.get("reason") or counts_text(data["counts"])
    if data.get("warning"):
        summary += f"  -  {data['warning']}"
    slurm = data.get("slurm") or {}
    if slurm.get("workers"):
        summary += f"  -  Slurm workers {' '.join(slurm['workers'])}"
    rows = [(j["id"] if j.get("tasks") is None else f"{j['id']} [{j['tasks']} tasks]", j["state"],
             "" if j["tries"] is None else str(j["tries"]), "" if j["exit_code"] is None else str(j["exit_code"]),
             "" if j["duration"] is None else f"{j['duration']:.1f}s", j["host"] or "", j["reason"] or "")
            for j in data["jobs"]]
    text = render(f"{data['run_id']} ({data['name']}): {data['state']}  -  {summary}",
                  ("job", "state", "tries", "exit", "duration", "host", "reason"), rows, color_column=1, color=color)
    if data.get("left_out"):
        text += left_out_text(Counter(data["left_out"])) + "\n"
    return text


def print_logs(run: RunLayout, job: str, try_number: int | None, streams: tuple[str, ...], tail: int | None,
               follow: bool, as_json: bool) -> int:
    """``--log JOB``: the try's output on stdout as it is (bytes), each stream under a
    ``==> path <==`` line when there are two (as ``tail`` does); what is missing one line
    on stderr. Exit code 1 when nothing could be shown."""
    from .logs import find_logs, follow as follow_logs, read_part

    found = find_logs(run, job, try_number, streams)
    if follow and found.pending and found.claim:  # a task's output comes whole when it ends
        while found.pending and os.path.lexists(found.claim):
            time.sleep(0.25)
            found = find_logs(run, job, found.try_number, streams)
    if as_json:
        def text(g: Any) -> str | None:
            return None if g.missing else read_part(g, tail)[0].decode("utf-8", "replace")
        sys.stdout.buffer.write(orjson.dumps(found.data(text), option=orjson.OPT_INDENT_2) + b"\n")
        sys.stdout.flush()
        return 0 if any(not g.missing for g in found.logs) else 1
    if found.pending:
        sys.stdout.flush()
        print(f"exec-status: {found.pending}", file=sys.stderr, flush=True)
        return 1
    out = sys.stdout.buffer
    last: list[Any] = [None]

    def write(g: Any, data: bytes) -> None:
        if len(streams) > 1 and last[0] is not g:
            out.write(f"{'' if last[0] is None else chr(10)}==> {g.path} <==\n".encode("utf-8", "surrogateescape"))
            last[0] = g
        out.write(data)
        out.flush()

    if follow and found.claim:
        follow_logs(found, write, tail)
    else:
        for g in found.logs:
            if not g.missing:
                data, _ = read_part(g, tail)
                if data or len(streams) > 1:
                    write(g, data)
    missing = [g for g in found.logs if g.missing]
    for g in missing:
        print(f"exec-status: {g.missing}", file=sys.stderr, flush=True)
    return 1 if len(missing) == len(found.logs) else 0
