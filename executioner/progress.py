"""``exec-submit --wait``: follow a run until nothing can progress."""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .layout import STATES, RunLayout
from .status import run_status
from .store import list_jobs


def _counts(run: RunLayout) -> dict[str, int]:
    return {s: len(list_jobs(run, s)) for s in STATES}


def wait_for_run(run: RunLayout, total: int, interval: float = 0.5, stream: Any = None) -> dict[str, Any]:
    """Block until the run is done or failed; show progress; return the final run status."""
    stream = stream or sys.stderr
    console = Console(file=stream)
    if console.is_terminal:
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), console=console,
                      transient=False) as bar:
            task = bar.add_task(run.run_id, total=total, detail="")
            return _follow(run, interval, lambda c: bar.update(
                task, completed=c["done"] + c["failed"],
                detail=f"running {c['running']}  queued {c['queued']}  failed {c['failed']}"))
    last: list[str] = []

    def plain(c: dict[str, int]) -> None:
        line = " ".join(f"{k} {v}" for k, v in c.items())
        if line != (last[0] if last else None):
            print(f"{time.strftime('%H:%M:%S')} {run.run_id}: {line}", file=stream, flush=True)
            last[:] = [line]
    return _follow(run, interval, plain)


def _follow(run: RunLayout, interval: float, show: Any) -> dict[str, Any]:
    delay = interval
    while True:
        counts = _counts(run)
        show(counts)
        if not counts["queued"] and not counts["running"]:
            status = run_status(run)  # reads waiting jobs to tell blocked from promotable
            if status["state"] != "running":
                show({s: counts[s] for s in STATES})
                return status
        time.sleep(delay)
        delay = min(delay * 1.2, 2.0)
