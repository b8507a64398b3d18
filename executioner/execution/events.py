"""Local filesystem events (watchdog/inotify) that wake idle workers at once.

Only a convenience: another machine's writes on a network filesystem raise no local
events, so workers never depend on them; polling alone guarantees progress.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Callable

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.utils import BaseThread

from ..protocol import fsio

log = logging.getLogger("executioner.worker")
# watchdog logs a benign error when events arrive while its observer stops
logging.getLogger("watchdog").setLevel(logging.CRITICAL)


def _quiet_watchdog_deaths() -> None:
    """A watchdog thread that dies (its delayed queue mixes wall-clock time and breaks when
    the clock jumps) costs us only the events: polling goes on. Say so in one line instead
    of a traceback on the user's terminal."""
    previous = threading.excepthook
    if getattr(previous, "_executioner", False):
        return

    def hook(args: threading.ExceptHookArgs) -> None:
        if isinstance(args.thread, BaseThread):
            log.info("filesystem events stopped (%s: %s); polling only", args.exc_type.__name__, args.exc_value)
            return
        previous(args)

    hook._executioner = True  # type: ignore[attr-defined]
    threading.excepthook = hook


class _Wake(FileSystemEventHandler):
    """Wakes idle slots when a job file appears in a watched queued/ folder (or a run appears)."""

    def __init__(self, wake: Callable[[], None]):
        self.wake = wake

    def on_created(self, event: FileSystemEvent) -> None:
        self._maybe(str(event.src_path))

    def on_moved(self, event: FileSystemEvent) -> None:
        self._maybe(str(event.dest_path))

    def _maybe(self, path: str) -> None:
        if not fsio.is_temp(os.path.basename(path)):
            self.wake()


class Events:
    """Watches the pool root (new runs) and, as runs are found, each run's queued/ folder
    only: few events per job, none from logs or temp files."""

    def __init__(self, wake: Callable[[], None]):
        self.wake = wake
        self._watched: set[str] = set()
        _quiet_watchdog_deaths()
        self._observer: BaseObserver | None = None
        try:
            observer = Observer()
            observer.daemon = True
            observer.start()
            self._observer = observer
        except Exception as e:  # no inotify here (or out of watches): polling still works
            log.info("no filesystem events (%s); polling only", e)

    def watch(self, folder: str) -> None:
        if self._observer is None or folder in self._watched:
            return
        self._watched.add(folder)
        try:
            self._observer.schedule(_Wake(self.wake), folder)
        except Exception as e:
            log.info("cannot watch %s (%s); polling it", folder, e)

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
