"""Run one try of a job: environment, working directory, logs, timeout, killing the tree."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Literal, Mapping

import psutil

from ..protocol import fsio
from ..protocol.layout import aside
from ..errors import ForeignFile, WorkflowError
from ..workflow.env import MAX_VALUE, env_items, human

TryStatus = Literal["done", "failed", "timeout", "lost", "preempted"]
# signals that end a command because its worker is being stopped (Slurm: scancel,
# preemption, the time limit), not because it failed
STOP_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP", "SIGKILL", "SIGUSR2")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class TryResult:
    status: TryStatus
    exit_code: int | None  # 128 + n when killed by signal n (shell convention)
    signal: str | None
    start: float
    end: float
    reason: str | None = None
    pid: int | None = None  # of the command's process


def expand(value: str, env: Mapping[str, str], name: str = "a value") -> str:
    """Replace ``${VAR}`` with its value in ``env`` (empty when unset, as a shell does).

    Nested references can make a short value stand for gigabytes: when the result would pass
    MAX_VALUE characters, WorkflowError says so (naming ``name``) and nothing is built."""
    parts = _VAR.split(value)  # text, name, text, name, ..., text
    size = sum(len(p) if i % 2 == 0 else len(env.get(p, "")) for i, p in enumerate(parts))
    if size > MAX_VALUE:
        shown = name if len(name) <= 80 else name[:80] + "…"
        raise WorkflowError(f"{shown} would expand to {human(size)}; a value may expand to at most "
                            f"{human(MAX_VALUE)}", key="env")
    return "".join(p if i % 2 == 0 else env.get(p, "") for i, p in enumerate(parts))


def build_env(base: dict[str, str], layers: list[Any], extra: dict[str, str]) -> dict[str, str]:
    """``base`` (os.environ) and ``extra`` (EXEC_*), then each layer in order, each value
    expanded against what is set so far; ``extra`` wins in the end. A layer is stored as a
    mapping or as ``[[name, value], ...]`` pairs in written order (see executioner.workflow.env);
    either way its keys apply in the order given."""
    env = {**base, **extra}
    for layer in layers:
        for name, value in env_items(layer):
            env[name] = expand(value, env, name)
    env.update(extra)
    return env


def command_argv(command: str | list[str], env: dict[str, str]) -> list[str]:
    if isinstance(command, str):
        return ["/bin/sh", "-c", command]
    return [expand(a, env) for a in command]


def open_logs(out_path: str, err_path: str) -> tuple[int, int]:
    """Create the try's two log files, each a new file of ours: whatever was at either name
    (the logs of an earlier run of this try whose result could not be recorded, or a link
    someone planted there) is moved aside and kept, never truncated nor written through."""
    out, err = fsio.create_fresh([out_path, err_path], aside)
    return out, err


def run_command(argv: list[str], cwd: str, env: dict[str, str], out_path: str | int, err_path: str | int,
                timeout: float | None, kill_grace: float, marker: str,
                keep_going: Callable[[], bool] | None = None, tick: float = 1.0,
                cores: Iterable[int] = ()) -> TryResult:
    """Run ``argv`` in its own session; kill its whole tree on timeout or when told to stop.

    ``marker`` is the value of ``EXEC_CLAIM`` in the child's environment: it finds
    descendants that left the process group. ``keep_going`` is asked every ``tick``
    seconds; when it returns False the tree is killed and the try is ``lost``. ``out_path``
    and ``err_path`` name the try's log files to create, or are files already open (a
    chunk's spool files, left open for the caller). ``cores``: pin the command to these CPUs.
    """
    start = time.time()
    mine = not isinstance(out_path, int)
    try:
        out, err = open_logs(out_path, err_path) if mine else (out_path, err_path)  # type: ignore[arg-type]
    except FileExistsError as e:  # re-planted as fast as it was moved aside: this try cannot run
        return TryResult("failed", None, None, start, time.time(), f"cannot create its log file {e.filename}: "
                                                                   f"{e.strerror}")
    except ForeignFile as e:  # logs/ swapped for a symlink
        return TryResult("failed", None, None, start, time.time(), f"cannot create its log file {e}")
    pinned = _pin(cores)
    try:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=_devnull(), stdout=out,
                                stderr=err, start_new_session=True)
    except OSError as e:
        if not os.path.isdir(cwd):
            why = (127, f"working directory not found: {cwd}")
        elif isinstance(e, FileNotFoundError):
            why = (127, f"command not found: {e.filename or argv[0]}")
        else:  # no permission, no shebang (ENOEXEC), a directory, ...
            why = (126, f"cannot execute {argv[0]}: {e.strerror}")
        try:
            fsio.write_all(err, (why[1] + "\n").encode())
        except OSError:
            pass  # a full disk: the reason is in the try's record all the same
        return TryResult("failed", why[0], None, start, time.time(), why[1])
    finally:
        if pinned is not None:
            os.sched_setaffinity(0, pinned)
        if mine:
            os.close(out)
            os.close(err)
    deadline = None if timeout is None else time.monotonic() + timeout
    status: TryStatus = "done"
    reason: str | None = None
    exited = _ExitWaiter(proc)
    try:
        while True:
            wait = tick if deadline is None else min(tick, max(0.0, deadline - time.monotonic()))
            if exited(wait if keep_going is not None or deadline is not None else None):
                break
            if deadline is not None and time.monotonic() >= deadline:
                status, reason = "timeout", f"timed out after {timeout:g} s"
                kill_tree(proc, marker, kill_grace)
                break
            if keep_going is not None and not keep_going():
                status, reason = "lost", "the claim was taken away; command stopped"
                kill_tree(proc, marker, kill_grace)
                break
    finally:
        exited.close()
    _kill_group(proc.pid, signal.SIGKILL)  # leftovers of a finished command
    rc = proc.returncode
    sig = signal.Signals(-rc).name if rc is not None and rc < 0 else None
    code: int | None = None if rc is None else (128 - rc if rc < 0 else rc)
    if status == "done" and code != 0:
        status = "failed"
        reason = f"killed by {sig}" if sig else f"exit code {code}"
    return TryResult(status, code, sig, start, time.time(), reason, proc.pid)


def _pin(cores: Iterable[int]) -> set[int] | None:
    """Pin the calling thread to ``cores`` (a child inherits its parent thread's mask at
    fork, vfork or posix_spawn: no preexec_fn, which would force a slow fork, and no window
    in which the child runs unpinned); return the mask to restore, or None."""
    wanted = set(cores)
    if not wanted:
        return None
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, wanted)
    return before


_DEVNULL: list[int] = []
_DEVNULL_LOCK = threading.Lock()


def _devnull() -> int:
    """One /dev/null kept open for every command's stdin (Popen's DEVNULL opens and closes
    one per command)."""
    if not _DEVNULL:
        with _DEVNULL_LOCK:
            if not _DEVNULL:
                _DEVNULL.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
    return _DEVNULL[0]


class _ExitWaiter:
    """``exited(timeout)``: wait up to ``timeout`` s for ``proc``; True once it has exited.

    A pidfd wakes us the moment the child exits; ``Popen.wait(timeout)`` would poll with
    growing sleeps and add milliseconds to every short job. (A class, not a context
    manager: this runs once per task of an array.)
    """

    def __init__(self, proc: subprocess.Popen[Any]):
        self.proc = proc
        try:
            self.pidfd: int | None = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):
            self.pidfd = None
            return
        self.poller = select.poll()
        self.poller.register(self.pidfd, select.POLLIN)

    def __call__(self, timeout: float | None) -> bool:
        proc = self.proc
        if self.pidfd is None:
            try:
                proc.wait(timeout=timeout)
                return True
            except subprocess.TimeoutExpired:
                return False
        ready = self.poller.poll(None if timeout is None else timeout * 1000)
        if ready or proc.poll() is not None:
            proc.wait()
            return True
        return False

    def close(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


def _kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _tree(proc: subprocess.Popen[Any], marker: str) -> dict[int, psutil.Process]:
    """The command's descendants, plus any process carrying its marker (double-forked ones)."""
    found: dict[int, psutil.Process] = {}
    try:
        for p in psutil.Process(proc.pid).children(recursive=True):
            found[p.pid] = p
    except psutil.NoSuchProcess:
        pass
    for p in psutil.process_iter():
        if p.pid in found or p.pid == proc.pid or p.pid == os.getpid():
            continue
        try:
            if p.environ().get("EXEC_CLAIM") == marker:
                found[p.pid] = p
        except (psutil.Error, OSError):
            continue
    return found


def kill_tree(proc: subprocess.Popen[Any], marker: str, grace: float) -> None:
    """SIGTERM to the group and every descendant, ``grace`` seconds, then SIGKILL to all."""
    tree = _tree(proc, marker)
    _kill_group(proc.pid, signal.SIGTERM)
    _signal_all(tree.values(), signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    if tree:
        psutil.wait_procs(list(tree.values()), timeout=max(0.0, grace / 2))
    tree.update(_tree(proc, marker))
    _kill_group(proc.pid, signal.SIGKILL)
    _signal_all(tree.values(), signal.SIGKILL)
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def _signal_all(procs: Iterable[psutil.Process], sig: int) -> None:
    for p in procs:
        try:
            p.send_signal(sig)
        except psutil.Error:
            pass  # gone already


def missing_outputs(cwd: str, outputs: list[str]) -> list[str]:
    return [o for o in outputs if not os.path.exists(os.path.join(cwd, o))]
