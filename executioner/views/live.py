"""``exec-status POOL [RUN] --watch [--interval S]``: a live view of a run (or a pool).

On a terminal it is a full-screen view drawn with rich's ``Live``: the run's state and
per-state counts, a progress bar with the rate and an ETA, the running jobs (host, worker,
for how long, try), the latest failures with the last line of their stderr, the workers
and their last heartbeat, and warnings (no live worker, a crashed resume, jobs that fit no
live worker). Without a terminal it prints one line per change, as ``--wait`` does.

**When it looks.** What it shows is read by a :class:`~executioner.views.looking.Looker`,
which reads again only what changed. It looks ``interval`` seconds after a look that saw
something change; each look that sees nothing new doubles the wait, up to ``IDLE_EVERY``
seconds, so an idle view costs about as much of the filesystem as an idle worker. Local
filesystem events (watchdog, on the run's state folders and ``workers/``) wake it at once;
another machine's writes on a network filesystem raise none, which is why it also polls.
The screen is redrawn every second from what was read (ages grow without a look).

**When it ends.** When the run ends: exit code 0 if it is done, 1 if it failed (or is held:
nothing can progress); ``q`` exits 0, Ctrl-C 130; a run removed under it is one line on
stderr and exit code 1. A pool's view ends on ``q`` or Ctrl-C only.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time
from typing import IO, Any, Callable, Final

from ..protocol import fsio
from ..protocol.layout import PoolLayout, RunLayout
from ..protocol.layout import STATES
from .looking import Looker, Sample
from .rows import JOB_STATES
from .text import clean
from .workerlist import age_text

IDLE_EVERY: Final = 10.0  # seconds between two looks while nothing changes
DRAW_EVERY: Final = 1.0  # seconds between two redraws of the screen (no filesystem access)
RATE_WINDOW: Final = 60.0  # seconds of finished counts the rate is measured over
EXIT_DONE, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130


def leaving_on_interrupt() -> None:
    """After a Ctrl-C, a second one (or `timeout -s INT`, which signals the child and then its
    group) while we leave must not show a traceback nor kill us with SIGINT: a handler of ours
    that does nothing takes one already caught (not SIG_IGN: Python then raises "OSError:
    Signal 2 ignored due to race condition"), and SIGINT is blocked from then on (Python puts
    the default handler back while it shuts down)."""
    signal.signal(signal.SIGINT, lambda signum, frame: None)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})


ADVICE_EVERY: Final = 30.0  # seconds between two checks of which queued jobs fit no live worker
ADVICE_KEEP: Final = 600.0  # seconds a warning of that check stays on the screen


def why_hook() -> Callable[[RunLayout], list[str]] | None:
    """HOOK for "a job fits no live worker": views.advice's Advisor (written apart, for
    ``exec-status --wait``), asked at most every ADVICE_EVERY seconds (it lists queued/ and
    reads every heartbeat) with its own no-worker line off (the view has its own); it says
    each line once, so a line stays shown for ADVICE_KEEP seconds. None without it."""
    try:
        from .advice import Advisor
    except ImportError:
        return None
    advisors: dict[str, Any] = {}
    said: list[tuple[float, str]] = []
    last = [-ADVICE_EVERY]

    def hook(run: RunLayout) -> list[str]:
        mono = time.monotonic()
        if mono - last[0] >= ADVICE_EVERY:
            last[0] = mono
            advisor = advisors.setdefault(run.root, Advisor(run, alone_after=None))
            said.extend((mono, line) for line in advisor.check())
        said[:] = [(t, line) for t, line in said if mono - t < ADVICE_KEEP]
        return [line for _, line in said]
    return hook


class Wakeup:
    """A pipe the view waits on (with stdin), written to by filesystem events."""

    def __init__(self, folders: list[str]):
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.write_fd, False)
        os.set_blocking(self.read_fd, False)
        self._observer: Any = None
        try:
            from watchdog.events import FileSystemEventHandler
            from watchdog.observers import Observer

            from ..execution.events import _quiet_watchdog_deaths

            wake = self

            class Handler(FileSystemEventHandler):
                """Moves only: a heartbeat's utime, a write in place or an open (our own reads
                of job files among them) would wake us for nothing, or again and again."""

                def on_created(self, event: Any) -> None:
                    self._maybe(str(event.src_path))

                def on_deleted(self, event: Any) -> None:
                    self._maybe(str(event.src_path))

                def on_moved(self, event: Any) -> None:
                    self._maybe(str(event.dest_path))

                def _maybe(self, path: str) -> None:
                    name = os.path.basename(path)
                    # not a temp file, nor workers/' probes and .watch-* files (rewritten by
                    # rename every few seconds by every worker)
                    if not (fsio.is_temp(name) or name.startswith(".")):
                        wake.wake()

            _quiet_watchdog_deaths()
            # Its threads are made with SIGINT blocked (they inherit our mask): a Ctrl-C goes to
            # the main thread alone, even while Python shuts down (see leaving_on_interrupt).
            before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
            try:
                observer = Observer()
                observer.daemon = True
                for folder in folders:
                    if os.path.isdir(folder):
                        observer.schedule(Handler(), folder)
                observer.start()
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, before)
            self._observer = observer
        except Exception:  # no inotify here, or out of watches: polling alone
            self._observer = None

    def wake(self) -> None:
        try:
            os.write(self.write_fd, b"x")
        except (BlockingIOError, OSError):
            pass  # a wake is already pending, or we are closing

    def drain(self) -> bool:
        woke = False
        try:
            while os.read(self.read_fd, 4096):
                woke = True
        except (BlockingIOError, OSError):
            pass
        return woke

    def close(self) -> None:
        if self._observer is not None:
            try:
                self._observer.stop()
            except Exception:
                pass
        for fd in (self.read_fd, self.write_fd):
            try:
                os.close(fd)
            except OSError:
                pass


class Rate:
    """Finished jobs (or tasks) per second over the last RATE_WINDOW seconds of looks."""

    def __init__(self) -> None:
        self.points: list[tuple[float, int]] = []

    def add(self, mono: float, finished: int) -> None:
        if not self.points or self.points[-1][1] != finished:
            self.points.append((mono, finished))
        self.points = [p for p in self.points if mono - p[0] <= RATE_WINDOW] or self.points[-1:]

    def per_second(self, mono: float) -> float | None:
        if len(self.points) < 2:
            return None
        (t0, n0), (_, n1) = self.points[0], self.points[-1]
        return (n1 - n0) / (mono - t0) if mono - t0 >= 1.0 and n1 > n0 else None


def eta_text(sample: Sample, rate: float | None) -> str:
    c = sample.counts
    left = sum(c.get(s, 0) for s in ("waiting", "queued", "running"))
    if not left:
        return ""
    if rate:
        seconds = left / rate
    elif sample.mean_duration is not None:
        seconds = left * sample.mean_duration / max(1, c.get("running", 0))
    else:
        return "ETA unknown"
    return f"ETA {_duration(seconds)}"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def counts_line(counts: dict[str, int]) -> str:
    return "  ".join(f"{s} {counts.get(s, 0)}" for s in JOB_STATES)


def _done_of(counts: dict[str, int]) -> str:
    return f"{counts.get('done', 0)}/{sum(counts.values())} done, {counts.get('failed', 0)} failed"


def plain_line(title: str, sample: Sample) -> str:
    if sample.runs:
        return " | ".join(f"{r.get('run_id')} {r.get('state')} ({_done_of(r.get('counts') or {})})" for r in sample.runs)
    return f"{title}: {sample.state}  {counts_line(sample.counts)}"


def screen(title: str, sample: Sample, rate: float | None, looked: float, now: float) -> Any:
    """The live view as a rich renderable."""
    from rich.console import Group
    from rich.markup import escape
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    parts: list[Any] = []
    head = Text.assemble((f"{title}  ", "bold"), (sample.state, "bold " + _color(sample.state)),
                         f"   {time.strftime('%H:%M:%S')}   q: quit")
    parts.append(head)
    if sample.runs:
        table = Table(box=None, pad_edge=False, show_edge=False)
        for h in ("run", "state", *JOB_STATES):
            table.add_column(h)
        for r in sample.runs:
            table.add_row(escape(str(r.get("run_id"))), Text(str(r.get("state")), _color(str(r.get("state")))),
                          *[str((r.get("counts") or {}).get(s, 0)) for s in JOB_STATES])
        parts.append(table)
    else:
        c = sample.counts
        finished = c.get("done", 0) + c.get("failed", 0)
        total = max(sample.total, 1)
        bar = Table.grid(padding=(0, 2))
        bar.add_row(ProgressBar(total=total, completed=finished, width=40),
                    f"{finished}/{sample.total}  {100 * finished / total:.0f}%",
                    f"{rate:.2f}/s" if rate else "", eta_text(sample, rate))
        parts.append(bar)
        parts.append(Text(counts_line(c)))
        parts.append(_table(f"running ({c.get('running', 0)})", ("job", "try", "host", "worker", "for"),
                            [(r["job"], str(r["try"] or "-"), str(r["host"] or "-"), str(r["worker"] or "-"),
                              _duration(r["seconds"] + now - looked) if r["seconds"] is not None else "-")
                             for r in sample.running], sample.more_running))
        if sample.failures:
            parts.append(_table(f"latest failures ({c.get('failed', 0)})", ("job", "exit", "last stderr line"),
                                [(f["job"], str(f["exit_code"] if f["exit_code"] is not None else "-"),
                                  f["stderr"] or f["reason"] or "") for f in sample.failures], 0))
    alive = sum(w["alive"] for w in sample.workers)
    parts.append(_table(f"workers ({alive} alive, {len(sample.workers) - alive} dead)",
                        ("worker", "host", "state", "last beat"),
                        [(w["worker"], str(w["host"]), "alive" if w["alive"] else "dead",
                          age_text(w["last_beat"] + now - looked)) for w in sample.workers[:8]],
                        max(0, len(sample.workers) - 8)))
    for warning in sample.warnings:
        parts.append(Text(f"! {warning}", "bold yellow"))
    return Group(*parts)


def _color(state: str) -> str:
    return {"done": "green", "failed": "red", "running": "cyan", "held": "blue"}.get(state, "white")


def _table(title: str, headers: tuple[str, ...], rows: list[tuple[str, ...]], more: int) -> Any:
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title, title_justify="left", title_style="bold", box=None, pad_edge=False,
                  show_edge=False)
    for h in headers:
        table.add_column(h, overflow="ellipsis", no_wrap=True)
    for row in rows:
        table.add_row(*[Text(clean(x)) for x in row])
    if more:
        table.add_row(f"... and {more} more", *[""] * (len(headers) - 1))
    return table


def run_exit(sample: Sample) -> int | None:
    """The exit code the run's end gives, or None while it goes on."""
    if sample.gone:
        return EXIT_FAILED
    if sample.runs or sample.state == "running":
        return None
    return EXIT_DONE if sample.state == "done" else EXIT_FAILED


def watch(pool: PoolLayout, run: RunLayout | None, interval: float = 1.0, out: IO[str] | None = None,
          keys: IO[str] | None = None) -> int:
    """Show the run (or the pool) until it ends, ``q`` or Ctrl-C; returns the exit code."""
    out = sys.stdout if out is None else out
    keys = sys.stdin if keys is None else keys
    looker = Looker(pool, run, why=why_hook() if run is not None else None)
    folders = [run.state_dir(s) for s in STATES] if run is not None else [pool.root]
    wakeup = Wakeup([*folders, pool.workers_dir])
    title = run.run_id if run is not None else pool.root
    try:
        if out.isatty():
            return _on_terminal(looker, wakeup, title, interval, out, keys)
        return _plain(looker, wakeup, title, interval, out)
    except KeyboardInterrupt:
        leaving_on_interrupt()
        return EXIT_INTERRUPTED
    finally:
        wakeup.close()


def _wait(wakeup: Wakeup, timeout: float, key_fd: int | None) -> tuple[bool, str]:
    """Wait up to ``timeout`` for an event or a key; (an event came, the keys typed)."""
    fds = [wakeup.read_fd] + ([key_fd] if key_fd is not None else [])
    ready, _, _ = select.select(fds, [], [], max(0.0, timeout))
    typed = ""
    if key_fd is not None and key_fd in ready:
        try:
            typed = os.read(key_fd, 64).decode(errors="replace")
        except OSError:
            typed = ""
        if typed == "":  # stdin closed: no more keys
            typed = "\0"
    return wakeup.drain() if wakeup.read_fd in ready else False, typed


class _Pacer:
    """When to look next: ``interval`` after a change, doubling up to IDLE_EVERY while idle."""

    def __init__(self, interval: float):
        self.interval = interval
        self.delay = interval
        self.next = 0.0
        self.last_line: Any = None

    def looked(self, mono: float, changed: bool) -> None:
        self.delay = self.interval if changed else min(max(self.delay * 2, self.interval), IDLE_EVERY)
        self.next = mono + self.delay


def _key(sample: Sample) -> Any:
    return (sample.state, tuple(sorted(sample.counts.items())), tuple(r["job"] for r in sample.running),
            tuple(f["job"] for f in sample.failures), tuple(sample.warnings), len(sample.runs),
            tuple((r.get("run_id"), r.get("state"), tuple(sorted((r.get("counts") or {}).items())))
                  for r in sample.runs), tuple((w["worker"], w["alive"]) for w in sample.workers))


def _on_terminal(looker: Looker, wakeup: Wakeup, title: str, interval: float, out: IO[str], keys: IO[str]) -> int:
    from rich.console import Console
    from rich.live import Live

    console = Console(file=out)
    key_fd = keys.fileno() if keys.isatty() else None
    saved = None
    if key_fd is not None:
        import termios
        import tty

        saved = termios.tcgetattr(key_fd)
        tty.setcbreak(key_fd)  # keys come one by one, unechoed; Ctrl-C still interrupts
    pacer, rate = _Pacer(interval), Rate()
    ended: int | None = None
    final, gone = "", None
    try:
        with Live(console=console, screen=True, auto_refresh=False, transient=False) as live:
            sample, looked = looker.look(), time.monotonic()
            pacer.looked(looked, True)
            pacer.last_line = _key(sample)
            while True:
                mono = time.monotonic()
                finished = sample.counts.get("done", 0) + sample.counts.get("failed", 0)
                rate.add(looked, finished)
                live.update(screen(title, sample, rate.per_second(mono), looked, mono), refresh=True)
                ended = run_exit(sample)
                if ended is not None:
                    gone = sample.gone
                    final = plain_line(title, sample)
                    break
                woke, typed = _wait(wakeup, min(DRAW_EVERY, pacer.next - time.monotonic()), key_fd)
                if "q" in typed.lower() or "\0" in typed:
                    ended, final = EXIT_DONE, plain_line(title, sample)
                    break
                if woke or time.monotonic() >= pacer.next:
                    if woke:
                        time.sleep(0.05)  # a burst of events (a commit is several renames): one look
                        wakeup.drain()
                    sample, looked = looker.look(), time.monotonic()
                    key = _key(sample)
                    pacer.looked(looked, key != pacer.last_line)
                    pacer.last_line = key
    finally:
        if saved is not None and key_fd is not None:
            import termios

            termios.tcsetattr(key_fd, termios.TCSADRAIN, saved)
    if gone:  # the screen is restored: say why the view ended
        print(f"exec-status: error: {gone}", file=sys.stderr, flush=True)
    elif final:
        print(final, file=out, flush=True)
    return ended if ended is not None else EXIT_DONE


def _plain(looker: Looker, wakeup: Wakeup, title: str, interval: float, out: IO[str]) -> int:
    pacer = _Pacer(interval)
    said: set[str] = set()
    last = None
    while True:
        sample = looker.look()
        mono = time.monotonic()
        line = plain_line(title, sample)
        pacer.looked(mono, line != last)
        if sample.gone:
            print(f"exec-status: error: {sample.gone}", file=sys.stderr, flush=True)
            return EXIT_FAILED
        if line != last:
            print(f"{time.strftime('%H:%M:%S')} {line}", file=out, flush=True)
            last = line
        for warning in sample.warnings:
            if warning not in said:
                said.add(warning)
                print(f"{time.strftime('%H:%M:%S')} {title}: {warning}", file=out, flush=True)
        ended = run_exit(sample)
        if ended is not None:
            return ended
        woke, _ = _wait(wakeup, pacer.next - time.monotonic(), None)
        if woke:
            time.sleep(0.05)
            wakeup.drain()
