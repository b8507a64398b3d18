"""Start local worker processes for ``exec-submit --workers N``, detached from the terminal.

Each worker is an ordinary ``exec-worker`` process, started in a session of its own
(``setsid``): no controlling terminal, stdin from ``/dev/null``, stdout and stderr to files
in the run's ``launch/`` folder. Closing the terminal or the ssh connection that started
it (SIGHUP to the terminal's session), or pressing Ctrl-C while ``exec-submit --wait``
follows the run (SIGINT to the terminal's foreground group), reaches none of them: they
finish the run and exit once it is idle. What was started is recorded beside the logs::

    RUN/launch/worker-<id>.json   {"pid", "pid_start", "host", "command", "stdout", "stderr", "started"}
    RUN/launch/worker-<id>.out    its stdout
    RUN/launch/worker-<id>.err    its stderr (its log)

submitit's LocalExecutor is not used for this: it starts its controller with a plain
``Popen`` in the caller's session and process group (no new session, stdin inherited), so
the workers died with the terminal.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass

import psutil

from ..protocol import fsio
from ..protocol.layout import PoolLayout, RunLayout
from .capacity import Capacity, detect


@dataclass(frozen=True)
class Launched:
    """One local worker we started: enough to find it, read its log and stop it."""

    pid: int
    stdout: str
    stderr: str


def worker_command(pool: PoolLayout, run: RunLayout, slots: int, exit_when_idle: float,
                   heartbeat: float | None = None, stale_after: float | None = None) -> list[str]:
    """The ``exec-worker`` command line of a local worker for ``run``, run by this Python."""
    argv = [sys.executable, "-m", "executioner", "worker", "--pool", pool.root, "--run", run.run_id,
            "-j", str(slots), "--exit-when-idle", repr(exit_when_idle)]
    if heartbeat is not None:
        argv += ["--heartbeat", repr(heartbeat)]
    if stale_after is not None:
        argv += ["--stale-after", repr(stale_after)]
    return argv


def _shown(text: str) -> str:
    """``text`` as JSON can hold it: a path that is not UTF-8 (a pool in a directory named
    in another encoding) with its stray bytes as ``\\xNN``."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def start_detached(argv: list[str], run: RunLayout) -> Launched:
    """Start ``argv`` in a new session with no terminal, its output in ``run``'s launch/."""
    fsio.make_dirs(run.launch_dir)
    name, out_fd, err_fd = _new_logs(run)
    out, err = run.launched(name, "out"), run.launched(name, "err")
    try:
        with open(os.devnull, "rb") as stdin:
            proc = subprocess.Popen(argv, stdin=stdin, stdout=out_fd, stderr=err_fd, close_fds=True,
                                    start_new_session=True)
    finally:
        os.close(out_fd)
        os.close(err_fd)
    try:
        pid_start: float | None = psutil.Process(proc.pid).create_time()
    except psutil.Error:  # it has already exited: its log says why
        pid_start = None
    fsio.atomic_write_json(run.launched(name, "json"), {
        "pid": proc.pid, "pid_start": pid_start, "host": fsio.HOST, "command": [_shown(a) for a in argv],
        "stdout": _shown(out), "stderr": _shown(err), "started": time.time()})
    return Launched(proc.pid, out, err)


def _new_logs(run: RunLayout) -> tuple[str, int, int]:
    """A fresh worker name and its two log files, created by us (O_EXCL, no symlink
    followed): a name already taken, by anything, is never opened; another name is drawn."""
    for _ in range(100):
        name = f"worker-{secrets.token_hex(4)}"
        try:
            out = os.open(run.launched(name, "out"), fsio.NEW_FILE, fsio.file_mode())
        except FileExistsError:
            continue
        try:
            return name, out, os.open(run.launched(name, "err"), fsio.NEW_FILE, fsio.file_mode())
        except FileExistsError:
            os.close(out)  # RACE: its .err was taken meanwhile: give this name up, draw again
            fsio.unlink_quietly(run.launched(name, "out"))
            continue
    raise FileExistsError(f"{run.launch_dir}: no free worker name in 100 draws")


def start_local_workers(pool: PoolLayout, run: RunLayout, count: int, slots: int = 1,
                        exit_when_idle: float = 3.0, heartbeat: float | None = None,
                        stale_after: float | None = None) -> list[str]:
    """Start ``count`` detached local workers for one run; they exit once it is idle.
    Returns their pids (as strings)."""
    argv = worker_command(pool, run, slots, exit_when_idle, heartbeat, stale_after)
    shares = split_capacity(count)
    return [str(start_detached(argv + share, run).pid) for share in shares]


def split_capacity(count: int, found: Capacity | None = None) -> list[list[str]]:
    """Flags that give each of ``count`` workers on this machine GPUs of its own: each would
    otherwise declare every GPU of the machine, and two of them would hand GPU 0 to two jobs
    at once. GPUs go round-robin (a worker may get none). CPUs and memory are not split: a
    job asking for all of them must still fit a worker, and sharing a CPU slows jobs down
    where sharing a GPU can make them fail. One worker, or no GPU: no flag."""
    found = detect() if found is None and count > 1 else found
    if count <= 1 or found is None or not found.gpus:
        return [[] for _ in range(max(count, 0))]
    out = []
    for i in range(count):
        mine = found.gpus[i::count]
        out.append(["--gpus", ",".join(mine) + "," if mine else "0"])  # "2," is GPU 2; "0" a count of none
    return out
