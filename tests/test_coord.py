"""The coordinator lock: one change to a run at a time, across processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from executioner.coordinator import coord
from executioner.coordinator.change import settle_if_abandoned
from executioner.coordinator.coord import COORD_STALE, abandoned, coordinating
from executioner.errors import RunBusy
from executioner.liveness.watch import Watch

from .conftest import files, submit, work


def test_a_second_coordinator_fails_at_once_naming_the_first(pool: Path, make_workflow) -> None:
    run = submit(pool, make_workflow([{"id": "a", "command": "true"}]))
    with coordinating(run, "resume"):
        with pytest.raises(RunBusy) as info:
            with coordinating(run, "rollback"):
                pass
    message = str(info.value)
    assert f"run {run.run_id} is being changed by" in message and f"pid {os.getpid()}" in message
    assert "(resume)" in message
    assert not os.path.exists(run.coordinator_lock) and not os.path.exists(run.coordinator_info)
    with coordinating(run, "again"):  # released: free again
        pass


def test_a_dead_holders_lock_is_broken(pool: Path, make_workflow) -> None:
    run = submit(pool, make_workflow([{"id": "a", "command": "true"}]))
    code = ("import os, sys\nfrom executioner import RunLayout\nfrom executioner.coordinator.coord import coordinating\n"
            "with coordinating(RunLayout(sys.argv[1]), 'crash'):\n    os._exit(9)\n")
    assert subprocess.run([sys.executable, "-c", code, run.root]).returncode == 9
    assert os.path.exists(run.coordinator_lock)  # left behind by the dead process
    with coordinating(run, "resume"):
        pass


# ---- judged by watching, not by comparing clocks ---------------------------------------
HOLD = ("import os, sys, time\nfrom executioner import RunLayout\nfrom executioner.coordinator.coord import coordinating\n"
        "with coordinating(RunLayout(sys.argv[1]), 'rollback'):\n"
        "    open(sys.argv[2] + '.ready', 'w').close()\n"
        "    while not os.path.exists(sys.argv[2] + '.go'):\n        time.sleep(0.02)\n")


def hold(run, tmp_path: Path, **env: str) -> tuple[subprocess.Popen, Path]:
    """A real process holding the run's lock until ``<go>.go`` appears."""
    go = tmp_path / "hold"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, run.root, str(go)], env={**os.environ, **env},
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not Path(str(go) + ".ready").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()  # type: ignore[union-attr]
        time.sleep(0.02)
    return proc, go


def release(proc: subprocess.Popen, go: Path) -> None:
    os.kill(proc.pid, signal.SIGCONT)
    Path(str(go) + ".go").touch()
    assert proc.wait(30) == 0, proc.stderr.read()  # type: ignore[union-attr]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("shift", [-7200.0, 7200.0])
def test_a_live_lock_is_not_broken_whatever_its_mtime_says(pool: Path, make_workflow, tmp_path: Path,
                                                           shift: float) -> None:
    run = submit(pool, make_workflow([{"id": "a", "command": "true"}]))
    proc, go = hold(run, tmp_path)
    try:
        stamp = time.time() + shift  # as a coordinator two hours ahead (or behind) would see it
        os.utime(run.coordinator_lock, (stamp, stamp))
        for watch, mono in ((None, None), (Watch(), 0.0)):
            with pytest.raises(RunBusy) as info:
                with coordinating(run, "resume", watch=watch, mono=mono):
                    pass
            assert f"pid {proc.pid}" in str(info.value) and "(rollback)" in str(info.value)
    finally:
        release(proc, go)
    assert not os.path.exists(run.coordinator_lock)


@pytest.mark.timeout(60)
def test_a_still_lock_is_abandoned_after_coord_stale_of_watching(pool: Path, make_workflow,
                                                                 tmp_path: Path) -> None:
    run = submit(pool, make_workflow([{"id": "a", "command": "true"}]))
    proc, go = hold(run, tmp_path, EXEC_HOSTNAME="far-node")  # its pid cannot be checked from here
    try:
        os.kill(proc.pid, signal.SIGSTOP)  # it stops touching its lock
        watch = Watch()
        assert abandoned(run, watch, 1000.0) is None
        with pytest.raises(RunBusy):
            with coordinating(run, "resume", watch=watch, mono=1000.0 + COORD_STALE - 1):
                pass
        os.utime(run.coordinator_lock)  # a sign of life: the watch starts again
        assert abandoned(run, watch, 1000.0 + COORD_STALE + 1) is None
        reason = abandoned(run, watch, 1000.0 + 2 * COORD_STALE + 1)
        assert reason == f"its holder (pid {proc.pid} on far-node) has not touched it for {COORD_STALE:.0f} s"
        with coordinating(run, "resume", watch=watch, mono=1000.0 + 2 * COORD_STALE + 1) as lock:
            release(proc, go)  # it wakes up, finds the lock not its own, and leaves ours alone
            assert lock.is_lock_held_by_us
            assert json.loads(Path(run.coordinator_info).read_text())["pid"] == os.getpid()
    finally:
        if proc.poll() is None:
            release(proc, go)
    assert not os.path.exists(run.coordinator_lock)


@pytest.mark.timeout(60)
def test_a_dead_holder_on_this_host_is_abandoned_at_once(pool: Path, make_workflow) -> None:
    run = submit(pool, make_workflow([{"id": "a", "command": "true"}]))
    code = ("import os, sys\nfrom executioner import RunLayout\nfrom executioner.coordinator.coord import coordinating\n"
            "with coordinating(RunLayout(sys.argv[1]), 'crash'):\n    print(os.getpid(), flush=True)\n"
            "    os._exit(9)\n")
    out = subprocess.run([sys.executable, "-c", code, run.root], capture_output=True, text=True)
    assert out.returncode == 9
    assert abandoned(run, Watch(), 0.0) == f"its holder, pid {out.stdout.strip()} on this host, is gone"


@pytest.mark.timeout(60)
def test_the_holder_keeps_its_lock_fresh_until_it_lets_go(pool: Path, make_workflow, monkeypatch) -> None:
    monkeypatch.setattr(coord, "TOUCH_EVERY", 0.02)
    run = submit(pool, make_workflow([{"id": "a", "command": "true"}]))
    with coordinating(run, "resume"):
        os.utime(run.coordinator_lock, (1000.0, 1000.0))
        deadline = time.monotonic() + 10
        while os.stat(run.coordinator_lock).st_mtime == 1000.0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert os.stat(run.coordinator_lock).st_mtime != 1000.0
    assert not [t for t in threading.enumerate() if t.name.startswith("coord-keeper")]


# ---- a worker settling an abandoned change ---------------------------------------------
def _chain_done(pool: Path, make_workflow):
    jobs = [{"id": f"j{i}", "command": "true", **({"dependencies": [f"j{i - 1}"]} if i else {})} for i in range(4)]
    run = submit(pool, make_workflow(jobs))
    work(pool, run)
    return run


@pytest.mark.timeout(60)
def test_settle_if_abandoned_undoes_a_crashed_change(pool: Path, make_workflow) -> None:
    run = _chain_done(pool, make_workflow)
    code = ("import os, sys\nimport executioner.coordinator.change as c\nc._stage = lambda *a: os._exit(9)\n"
            "from executioner.cli import submit_main\nsys.exit(submit_main(sys.argv[1:]))\n")
    assert subprocess.run([sys.executable, "-c", code, "--pool", str(pool), "--resume", run.run_id,
                           "--rollback-to", "j1"]).returncode == 9
    assert files(run, "done") == ["j0.json"]
    assert settle_if_abandoned(run, Watch(), 0.0) == "undone"
    assert files(run, "done") == ["j0.json", "j1.json", "j2.json", "j3.json"]
    assert not os.path.exists(run.staging_root) and not os.path.exists(run.coordinator_lock)
    assert settle_if_abandoned(run, Watch(), 0.0) is None  # nothing left


@pytest.mark.timeout(60)
def test_settle_if_abandoned_waits_out_a_stopped_coordinator(pool: Path, make_workflow, tmp_path: Path) -> None:
    from .test_resume_races import PAUSED, _wait_for

    run = _chain_done(pool, make_workflow)
    go = str(tmp_path / "go")
    proc = subprocess.Popen([sys.executable, "-c", PAUSED, "A", go, "--pool", str(pool), "--resume", run.run_id,
                             "--rollback-to", "j1"], stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(go + ".A.grabbed")
        os.kill(proc.pid, signal.SIGSTOP)
        watch = Watch()
        assert settle_if_abandoned(run, watch, 1000.0) is None  # alive, as far as we know
        assert settle_if_abandoned(run, watch, 1000.0 + COORD_STALE - 1) is None
        assert files(run, "done") == ["j0.json"]  # j1..j3 still grabbed
        assert settle_if_abandoned(run, watch, 1000.0 + COORD_STALE) == "undone"
        assert files(run, "done") == ["j0.json", "j1.json", "j2.json", "j3.json"]
        os.kill(proc.pid, signal.SIGCONT)
        Path(go + ".A").touch()
        assert proc.wait(30) == 3
        assert "another coordinator took the run over; nothing of it was applied" in proc.stderr.read()  # type: ignore[union-attr]
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
    assert files(run, "done") == ["j0.json", "j1.json", "j2.json", "j3.json"]
    assert sorted(n for n in os.listdir(run.attempts_dir) if n.endswith(".json")) == ["0001.json"]
