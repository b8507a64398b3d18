"""Local workers started by ``exec-submit --workers`` outlive the terminal they were started from."""

from __future__ import annotations

import json
import os
import pty
import select
import shlex
import signal
import sys
import time
from pathlib import Path

import psutil
import pytest

import yaml

from executioner import RunLayout

from .conftest import cli

SUBMIT = "import sys; from executioner.cli import submit_main; sys.exit(submit_main(sys.argv[1:]))"


def _read_until(fd: int, needle: bytes, timeout: float) -> bytes:
    out = b""
    deadline = time.monotonic() + timeout
    while needle not in out:
        left = deadline - time.monotonic()
        assert left > 0, out.decode(errors="replace")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # the terminal is gone
                break
            if not chunk:
                break
            out += chunk
    return out


def _launched_pids(run: RunLayout) -> list[int]:
    try:
        names = os.listdir(run.launch_dir)
    except FileNotFoundError:
        return []
    return [json.loads(Path(run.launch_dir, n).read_text())["pid"] for n in names if n.endswith(".json")]


def _session_members(sid: int) -> list[psutil.Process]:
    members = []
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) == sid:
                members.append(p)
        except (ProcessLookupError, PermissionError):
            continue
    return members


@pytest.mark.timeout(90)
def test_workers_started_without_wait_finish_the_run_after_the_terminal_hangs_up(
        pool: Path, make_workflow, tmp_path: Path) -> None:
    # A chain, so the run lasts well past the hangup.
    jobs = [{"id": f"j{i}", "command": "sleep 0.4", "dependencies": [f"j{i - 1}"] if i else []} for i in range(6)]
    wf = make_workflow(jobs)
    submit = " ".join(shlex.quote(x) for x in [sys.executable, "-c", SUBMIT, str(wf), "--pool", str(pool),
                                                "--workers", "2"])
    # A login shell's session: the shell leads it and owns the terminal; exec-submit runs in it
    # and returns, and the user then closes the window while the workers still work.
    script = f"{submit}; echo SUBMITTED; sleep 60"
    pid, master = pty.fork()
    if pid == 0:  # the child: session leader with the pty as its controlling terminal
        try:
            os.execv("/bin/sh", ["/bin/sh", "-c", script])
        finally:
            os._exit(127)
    run = None
    try:
        out = _read_until(master, b"SUBMITTED", 30).decode(errors="replace")
        run_id = next(line.split()[0] for line in out.splitlines() if line.startswith("wf-"))
        run = RunLayout(str(pool / run_id))
        pids = _launched_pids(run)
        assert len(pids) == 2, out
        stop = next(line for line in out.splitlines() if "to stop them now: kill" in line)
        assert sorted(stop.split("kill ")[1].split()) == sorted(map(str, pids)), out
        assert not os.listdir(run.state_dir("done")), "the run ended before the hangup: make it longer"
        for p in pids:  # detached: a session of its own, no terminal, no stdin
            assert os.getsid(p) == p != os.getsid(pid)
            assert psutil.Process(p).terminal() is None and os.readlink(f"/proc/{p}/fd/0") == os.devnull
        # The terminal closes: SIGHUP to every process of its session, and the pty goes away.
        members = _session_members(pid)
        assert members, "no process left in the terminal's session"
        for p in members:
            try:
                p.send_signal(signal.SIGHUP)
            except psutil.NoSuchProcess:
                pass
        os.close(master)
        master = -1
        os.waitpid(pid, 0)
        deadline = time.monotonic() + 40
        while len(os.listdir(run.state_dir("done"))) < len(jobs):
            assert time.monotonic() < deadline, (sorted(os.listdir(run.state_dir("done"))),
                                                  [p for p in _launched_pids(run) if psutil.pid_exists(p)])
            time.sleep(0.1)
        assert sorted(os.listdir(run.state_dir("done"))) == sorted(f"j{i}.json" for i in range(len(jobs)))
        # Their logs are in launch/.
        for name in os.listdir(run.launch_dir):
            if name.endswith(".json"):
                record = json.loads(Path(run.launch_dir, name).read_text())
                assert os.path.isfile(record["stdout"]) and os.path.isfile(record["stderr"])
                assert os.path.dirname(record["stdout"]) == run.launch_dir
        # ... and they leave once the run is idle (exec-submit's default: a few seconds).
        deadline = time.monotonic() + 30
        while any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                  for p in _launched_pids(run)):
            assert time.monotonic() < deadline, "the local workers did not exit once the run was idle"
            time.sleep(0.1)
    finally:
        if master >= 0:
            os.close(master)
        for p in _launched_pids(run) if run else []:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def test_local_workers_each_get_gpus_of_their_own(pool: Path, tmp_path: Path) -> None:
    """exec-submit --workers 2 on a machine with GPUs 0 and 1: each worker declared both, and
    two jobs ran on GPU 0 at once (one per worker). They now split the GPUs between them."""
    ledger = tmp_path / "ledger"
    rec = tmp_path / "rec.py"
    rec.write_text("import os, sys, time\ns = time.time(); time.sleep(0.4)\n"
                   "with open(sys.argv[1], 'a') as f:\n"
                   "    f.write(f\"{s} {time.time()} {os.environ['CUDA_VISIBLE_DEVICES']}\\n\")\n")
    wf = tmp_path / "gpus.yaml"
    wf.write_text(yaml.safe_dump({"jobs": [{"id": f"g{i}", "command": [sys.executable, str(rec), str(ledger)],
                                            "resources": {"gpus": 1}} for i in range(6)]}))
    out = cli("exec-submit", str(wf), "--pool", str(pool), "--workers", "2", "--wait",
              env={"CUDA_VISIBLE_DEVICES": "0,1"}, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    rows = [line.split() for line in ledger.read_text().splitlines()]
    assert len(rows) == 6 and {r[2] for r in rows} == {"0", "1"}, rows
    for a in rows:
        for b in rows:
            if a is not b and float(a[0]) < float(b[1]) and float(b[0]) < float(a[1]):
                assert a[2] != b[2], rows  # two jobs at once never share a GPU
