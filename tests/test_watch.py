"""exec-status POOL RUN --watch: a live view on a pseudo-terminal (read back by stripping the
ANSI sequences), one line per change without one, and its exit codes."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import shlex
import shutil
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest

from executioner.protocol.fsio import HOST

from .conftest import submit
from .test_faults import start_worker

STATUS = "import sys; from executioner.cli import status_main; sys.exit(status_main(sys.argv[1:]))"
ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][0-9A-Za-z]|\x1b[=>78]")


class Screen:
    """A command on a pseudo-terminal of 140 x 50, its output collected by a thread."""

    def __init__(self, *args: str):
        self.leader, follower = pty.openpty()
        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 140, 0, 0))
        self.proc = subprocess.Popen([sys.executable, "-c", STATUS, *args], stdin=follower, stdout=follower,
                                     stderr=follower, close_fds=True, env={**os.environ, "TERM": "xterm"})
        os.close(follower)
        self.chunks: list[bytes] = []
        self.reader = threading.Thread(target=self._drain, daemon=True)
        self.reader.start()

    def _drain(self) -> None:
        while True:
            try:
                data = os.read(self.leader, 65536)
            except OSError:
                return
            if not data:
                return
            self.chunks.append(data)

    def text(self) -> str:
        return ANSI.sub("", b"".join(self.chunks).decode(errors="replace"))

    def wait_text(self, *words: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.text()
            if all(w in text for w in words):
                return text
            assert time.monotonic() < deadline, f"never showed {words}: {text[-3000:]}"
            assert self.proc.poll() is None, f"exited {self.proc.returncode}: {text[-3000:]}"
            time.sleep(0.05)

    def type(self, keys: bytes) -> None:
        os.write(self.leader, keys)

    def close(self) -> int:
        code = self.proc.wait(timeout=30)
        self.reader.join(5)
        os.close(self.leader)
        return code


def test_watch_shows_counts_and_a_running_job_then_exits_0_when_the_run_is_done(pool: Path, make_workflow) -> None:
    run = submit(pool, make_workflow([{"id": f"j{i}", "command": "sleep 1.5"} for i in range(4)]))
    screen = Screen(str(pool), run.run_id, "--watch", "--interval", "0.2")
    try:
        screen.wait_text(run.run_id, "queued 4", "workers (0 alive", "no live worker")
        worker = start_worker(pool, "-j", "2", "--exit-when-idle", "1", "--heartbeat", "1", "--stale-after", "5")
        text = screen.wait_text("running 2", "running (2)", HOST, "1 alive")
        assert re.search(r"j[0-3]\s+1\s+" + re.escape(HOST), text), text[-2000:]  # job, try 1, its host
        assert worker.wait(timeout=60) == 0
        assert screen.close() == 0
    finally:
        screen.proc.kill()
    text = screen.text()
    assert "done 4" in text and "4/4" in text and "Traceback" not in text
    assert text.rstrip().endswith(f"{run.run_id}: done  waiting 0  queued 0  running 0  done 4  failed 0  blocked 0")


def test_q_exits_and_failures_show_their_last_stderr_line(pool: Path, make_workflow) -> None:
    run = submit(pool, make_workflow([{"id": "bad", "command": "echo first >&2; echo the last words >&2; exit 3"},
                                      {"id": "later", "command": "sleep 30", "dependencies": []}]))
    worker = start_worker(pool, "-j", "2", "--heartbeat", "1", "--stale-after", "5")
    screen = Screen(str(pool), run.run_id, "--watch", "--interval", "0.2")
    try:
        text = screen.wait_text("latest failures (1)", "the last words", "running (1)")
        assert re.search(r"bad\s+3\s+the last words", text)
        screen.type(b"q")
        assert screen.close() == 0
    finally:
        screen.proc.kill()
        worker.terminate()
        worker.wait(timeout=30)


def test_watch_of_a_removed_run_is_one_line_and_exit_1(pool: Path, make_workflow) -> None:
    run = submit(pool, make_workflow([{"id": "a", "command": "true"}]))
    screen = Screen(str(pool), run.run_id, "--watch", "--interval", "0.1")
    try:
        screen.wait_text("queued 1")
        shutil.rmtree(run.root)
        assert screen.close() == 1
    finally:
        screen.proc.kill()
    text = screen.text()
    assert "Traceback" not in text and "the run was removed" in text


def test_watch_without_a_terminal_prints_a_line_per_change_and_exits_1_when_the_run_failed(
        pool: Path, make_workflow) -> None:
    run = submit(pool, make_workflow([{"id": "a", "command": "exit 2"},
                                      {"id": "b", "command": "true", "dependencies": ["a"]}]))
    proc = subprocess.Popen([sys.executable, "-c", STATUS, str(pool), run.run_id, "--watch", "--interval", "0.1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    time.sleep(0.5)  # it has printed its first line (a test of output, not of timing: any moment works)
    worker = start_worker(pool, "--exit-when-idle", "0.5")
    out, err = proc.communicate(timeout=60)
    worker.wait(timeout=60)
    assert proc.returncode == 1, err
    lines = out.splitlines()
    assert any(f"{run.run_id}: running  waiting 1  queued 1" in line for line in lines)
    assert lines[-1].endswith(f"{run.run_id}: failed  waiting 0  queued 0  running 0  done 0  failed 1  blocked 1")
    assert len(set(lines)) == len(lines) and "\x1b" not in out and err == ""


@pytest.mark.parametrize("args", [["--watch", "--json"], ["--interval", "2"], ["--watch", "--interval", "0"],
                                  ["--watch", "--joblog"]])
def test_watch_flags(pool: Path, make_workflow, args: list[str]) -> None:
    run = submit(pool, make_workflow([{"id": "a", "command": "true"}]))
    out = subprocess.run([sys.executable, "-c", STATUS, str(pool), run.run_id, *args], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 2 and len(out.stderr.splitlines()) == 1, out.stderr




def test_an_idle_look_reads_no_file_and_the_view_slows_down_while_nothing_changes(
        pool: Path, make_workflow, monkeypatch) -> None:
    from executioner.protocol import fsio as fsio_module
    from executioner.views import looking
    from executioner.views.live import IDLE_EVERY, _Pacer
    from executioner.protocol.layout import PoolLayout

    run = submit(pool, make_workflow([{"id": f"j{i}", "command": "true"} for i in range(50)]
                                     + [{"id": "bad", "command": "exit 1"}]))
    from .conftest import work
    work(pool, run, max_jobs=20)
    layout = PoolLayout(str(pool))
    looker = looking.Looker(layout, run)
    first = looker.look()
    assert first.counts["done"] + first.counts["failed"] == 20 and first.counts["queued"] == 31
    reads: list[str] = []
    real_read_job, real_read_json = looking.read_job, fsio_module.read_json
    monkeypatch.setattr(looking, "read_job", lambda path, unit: reads.append(path) or real_read_job(path, unit))
    monkeypatch.setattr(fsio_module, "read_json", lambda path, *a, **k: reads.append(path) or real_read_json(path, *a, **k))
    listed: list[str] = []
    real_listdir = os.listdir
    monkeypatch.setattr(os, "listdir", lambda path=".": listed.append(str(path)) or real_listdir(path))
    for _ in range(5):
        again = looker.look()
    assert reads == [] and listed == [] and again.counts == first.counts
    pacer = _Pacer(0.5)
    waits = []
    for _ in range(8):
        pacer.looked(0.0, False)
        waits.append(pacer.delay)
    assert waits[0] == 1.0 and waits[-1] == IDLE_EVERY and sorted(waits) == waits
    pacer.looked(0.0, True)
    assert pacer.delay == 0.5


def test_the_hook_for_jobs_that_fit_no_worker_is_shown(pool: Path, make_workflow) -> None:
    from executioner.protocol.layout import PoolLayout
    from executioner.views.looking import Looker

    run = submit(pool, make_workflow([{"id": "big", "command": "true", "resources": {"gpus": 8}}]))
    layout = PoolLayout(str(pool))
    os.makedirs(layout.workers_dir, exist_ok=True)
    from executioner.protocol.fsio import atomic_write_json
    atomic_write_json(layout.heartbeat("w-1"), {"worker": "w-1", "host": HOST, "pid": os.getpid(),
                                               "pid_start": __import__("psutil").Process().create_time()})
    seen = Looker(layout, run, why=lambda r: [f"big of {r.run_id} needs 8 gpus: no live worker has them"]).look()
    assert seen.warnings == [f"big of {run.run_id} needs 8 gpus: no live worker has them"]
    broken = Looker(layout, run, why=lambda r: 1 / 0).look()
    assert broken.warnings and "cannot tell which jobs fit no worker" in broken.warnings[0]


def test_a_pool_view_shows_runs_as_they_come_and_end_and_ctrl_c_exits_130(pool: Path, make_workflow) -> None:
    import signal

    first = submit(pool, make_workflow([{"id": "a", "command": "true"}], name="one"))
    proc = subprocess.Popen([sys.executable, "-c", STATUS, str(pool), "--watch", "--interval", "0.1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()

    def shown(text: str) -> None:
        deadline = time.monotonic() + 30
        while not any(text in line for line in lines):
            assert time.monotonic() < deadline and proc.poll() is None, lines
            time.sleep(0.05)
    shown(f"{first.run_id} running (0/1 done, 0 failed)")
    second = submit(pool, make_workflow([{"id": "b", "command": "exit 1"}], name="two"))
    shown(f"{second.run_id} running (0/1 done, 0 failed)")
    from .conftest import work
    work(pool)
    shown(f"{first.run_id} done (1/1 done, 0 failed) | {second.run_id} failed (0/1 done, 1 failed)")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 130
    reader.join(5)
    assert "Traceback" not in proc.stderr.read()


def test_a_crashed_resume_is_a_warning_and_it_follows_the_coordinator(pool: Path, make_workflow) -> None:
    from executioner.protocol import fsio
    from executioner.protocol.layout import PoolLayout
    from executioner.views.looking import Looker

    from .test_status_change import chain_done

    run = chain_done(pool, make_workflow)
    code = ("import os, sys\nimport executioner.coordinator.change as c\nc._stage = lambda *a: os._exit(9)\n"
            "from executioner.cli import submit_main\nsys.exit(submit_main(sys.argv[1:]))\n")
    assert subprocess.run([sys.executable, "-c", code, "--pool", str(pool), "--resume", run.run_id,
                           "--rollback-to", "j2"]).returncode == 9
    out = subprocess.run([sys.executable, "-c", STATUS, str(pool), run.run_id, "--watch"], capture_output=True,
                         text=True, timeout=30)
    assert f"{run.run_id}: a resume of this run was interrupted: 2 jobs are waiting in" in out.stdout, out.stdout
    # the coordinator's lock names a live process: in progress; then a dead one: interrupted
    # again, though no state folder changed in between
    fsio.atomic_write_json(run.coordinator_info, {"user": "ann", "host": fsio.HOST, "pid": os.getpid(),
                                                  "action": "from-job", "since": 0})
    looker = Looker(PoolLayout(str(pool)), run)
    assert any("is in progress (ann@" in w for w in looker.look().warnings)
    fsio.atomic_write_json(run.coordinator_info, {"user": "ann", "host": fsio.HOST, "pid": 999_999_999,
                                                  "action": "from-job", "since": 0})
    assert any("was interrupted" in w for w in looker.look().warnings)


def test_running_claims_of_dead_workers_are_a_warning(pool: Path, make_workflow, monkeypatch) -> None:
    from executioner.liveness.clock import storage_now
    from executioner.protocol.layout import PoolLayout
    from executioner.views import looking

    from .test_faults import fake_remote_claim

    run = submit(pool, make_workflow([{"id": "a", "command": "true"}]))
    layout = PoolLayout(str(pool))
    fake_remote_claim(pool, run, "a", worker="far-1-abcd", host="far-away-host")
    os.utime(layout.heartbeat("far-1-abcd"), (storage_now(layout) - 600,) * 2)
    monkeypatch.setattr(looking, "NO_WORKER_GRACE", 0.0)
    sample = looking.Looker(layout, run).look()
    assert sample.running[0]["job"] == "a" and sample.running[0]["host"] == "far-away-host"
    assert [w["alive"] for w in sample.workers] == [False]
    assert sample.warnings == ["no live worker: 1 running belong to workers that look dead (a reaper requeues "
                               f"them); 0 queued wait; start `exec-worker --pool {shlex.quote(str(pool))}`"]


def test_running_and_failed_tasks_of_an_array_are_named_as_tasks(pool: Path, make_workflow) -> None:
    from executioner.protocol.layout import PoolLayout
    from executioner.views.looking import Looker

    from .test_faults import fake_remote_claim

    run = submit(pool, make_workflow([{"id": "sim", "array": {"start": 10, "stop": 13}, "command": "exit 0"}]))
    units = sorted(n[:-5] for n in os.listdir(run.state_dir("queued")))
    assert units == ["sim.0", "sim.1", "sim.2"]
    fake_remote_claim(pool, run, "sim.1")
    sample = Looker(PoolLayout(str(pool)), run).look()
    assert [r["job"] for r in sample.running] == ["sim:11"] and sample.running[0]["try"] == 1


def test_events_wake_the_view_for_moves_only_not_for_reads_or_heartbeats(tmp_path: Path) -> None:
    """A heartbeat (a utime every few seconds per worker) or the view's own reads of job files
    must not wake the view: each would cost a look, and its reads would wake it again."""
    from executioner.views.live import Wakeup

    folder = tmp_path / "queued"
    folder.mkdir()
    (folder / "a.json").write_text("{}")
    wakeup = Wakeup([str(folder)])
    if wakeup._observer is None:
        pytest.skip("no filesystem events here")
    try:
        def woke(act) -> bool:
            act()
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                if wakeup.drain():
                    return True
                time.sleep(0.02)
            return False
        assert not woke(lambda: (folder / "a.json").read_text())
        assert not woke(lambda: os.utime(folder / "a.json"))
        assert not woke(lambda: os.listdir(folder))
        (folder / ".tmp-x").write_text("{}")
        assert not woke(lambda: os.rename(folder / ".tmp-x", folder / ".watch-host-boot.json"))
        assert woke(lambda: os.rename(folder / "a.json", folder / "b.json"))
        assert woke(lambda: (folder / "c.json").write_text("{}"))
        assert woke(lambda: os.unlink(folder / "b.json"))
    finally:
        wakeup.close()


def test_two_ctrl_c_in_a_row_exit_130_without_a_traceback(pool: Path, make_workflow) -> None:
    """As `timeout -s INT` does (the child, then its group): the second arrives while the view
    leaves, or while Python shuts down. A guard, not a forced race: before the fix 3 of 12 such
    tries by hand died of SIGINT or printed "OSError: Signal 2 ignored due to race condition",
    and this test caught it only sometimes."""
    import signal

    submit(pool, make_workflow([{"id": "a", "command": "true"}]))
    for gap in (0.0, 0.0005, 0.002, 0.005, 0.01, 0.02):
        proc = subprocess.Popen([sys.executable, "-c", STATUS, str(pool), "--watch"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        assert proc.stdout is not None and "running" in proc.stdout.readline()  # it is watching
        proc.send_signal(signal.SIGINT)
        time.sleep(gap)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert (proc.returncode, err) == (130, ""), (gap, err)


def test_the_live_view_says_when_a_queued_job_fits_no_live_worker(pool: Path, make_workflow) -> None:
    import psutil

    from executioner.protocol.fsio import atomic_write_json
    from executioner.protocol.layout import PoolLayout
    from executioner.views.live import why_hook
    from executioner.views.looking import Looker

    run = submit(pool, make_workflow([{"id": "big", "command": "true", "resources": {"gpus": 8}}]))
    layout = PoolLayout(str(pool))
    os.makedirs(layout.workers_dir, exist_ok=True)
    atomic_write_json(layout.heartbeat("w-1"), {
        "worker": "w-1", "host": HOST, "pid": os.getpid(), "pid_start": psutil.Process().create_time(),
        "capacity": {"cpus": 4, "gpus": [], "mem_gb": 8.0, "resources": {}, "tags": []}})
    hook = why_hook()
    assert hook is not None
    warnings = Looker(layout, run, why=hook).look().warnings
    assert any("`big` fits no live worker: needs 8 GPUs" in w for w in warnings), warnings
