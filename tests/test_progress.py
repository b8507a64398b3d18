"""exec-submit --wait: a rich progress bar on a terminal, plain lines otherwise."""

from __future__ import annotations

import io
import os
import shlex
import pty
import threading
from pathlib import Path

from executioner.views.progress import wait_for_run

from .conftest import submit, work


def test_progress_bar_on_a_terminal_and_final_status(pool: Path, make_workflow) -> None:
    run = submit(pool, make_workflow([{"id": f"j{i}", "command": "sleep 0.1"} for i in range(6)]))
    leader, follower = pty.openpty()
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(leader, 4096)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    worker = threading.Thread(target=work, args=(pool, run), daemon=True)
    worker.start()
    with os.fdopen(follower, "w") as tty:
        status = wait_for_run(run, total=6, interval=0.05, stream=tty)
    worker.join(30)
    os.close(leader)
    screen = b"".join(chunks).decode(errors="replace")
    assert status["state"] == "done" and status["counts"]["done"] == 6
    assert run.run_id in screen and "6/6" in screen and "━" in screen


def test_plain_lines_when_not_a_terminal(pool: Path, make_workflow) -> None:
    run = submit(pool, make_workflow([{"id": "a", "command": "exit 1"}, {"id": "b", "command": "true",
                                                                        "dependencies": ["a"]}]))
    out = io.StringIO()
    worker = threading.Thread(target=work, args=(pool, run), daemon=True)
    worker.start()
    status = wait_for_run(run, total=2, interval=0.05, stream=out)
    worker.join(30)
    assert status["state"] == "failed" and status["counts"]["blocked"] == 1
    lines = [line for line in out.getvalue().splitlines() if "no live worker" not in line]
    assert lines and all(f"{run.run_id}: waiting" in line for line in lines)
    assert "━" not in out.getvalue()


def test_wait_reaps_stale_claims_and_says_when_no_worker_is_alive(pool: Path, make_workflow) -> None:
    from .test_faults import fake_remote_claim

    run = submit(pool, make_workflow([{"id": "a", "command": "true"}, {"id": "b", "command": "true"}]))
    from executioner.protocol.fsio import HOST

    fake_remote_claim(pool, run, "a", worker="dead-1", host=HOST)  # its pid does not exist
    out = io.StringIO()
    result: list[dict] = []
    waiter = threading.Thread(target=lambda: result.append(
        wait_for_run(run, total=2, interval=0.05, stream=out, stale_after=60)), daemon=True)
    waiter.start()
    deadline = __import__("time").monotonic() + 20
    while "no live worker" not in out.getvalue():
        assert __import__("time").monotonic() < deadline, out.getvalue()
        __import__("time").sleep(0.05)
    text = out.getvalue()
    assert "requeued a: its worker is gone" in text
    assert f"start `exec-worker --pool {shlex.quote(str(pool))}`" in text
    work(pool, run)
    waiter.join(30)
    assert result and result[0]["state"] == "done"


def test_live_workers_are_judged_by_their_heartbeat_changing_not_by_clocks(pool: Path, make_workflow) -> None:
    from executioner import PoolLayout
    from executioner.protocol.fsio import atomic_write_json
    from executioner.views.progress import LiveWorkers

    submit(pool, make_workflow([{"id": "a", "command": "true"}]))
    layout = PoolLayout(str(pool))
    beat = layout.heartbeat("far-1")
    atomic_write_json(beat, {"worker": "far-1", "host": "far-away-host", "pid": 1, "pid_start": 1.0})
    os.utime(beat, (1.0, 1.0))  # stamped by a clock decades behind: still live while it changes
    live = LiveWorkers(layout, stale_after=60)
    assert live.count(mono=0) == 1 and live.count(mono=59) == 1
    os.utime(beat, (2.0, 2.0))  # it beat
    assert live.count(mono=100) == 1 and live.count(mono=159) == 1
    assert live.count(mono=161) == 0  # stood still for stale_after: gone


def test_a_worker_pinned_to_another_run_is_not_a_live_worker_of_this_one(pool: Path, make_workflow) -> None:
    from executioner import PoolLayout
    from executioner.protocol.fsio import atomic_write_json
    from executioner.views.progress import LiveWorkers

    run = submit(pool, make_workflow([{"id": "a", "command": "true"}]))
    layout = PoolLayout(str(pool))
    for worker, runs in (("pinned-1", ["other-0001"]), ("any-1", None), ("mine-1", ["x-0001", run.run_id])):
        atomic_write_json(layout.heartbeat(worker), {"worker": worker, "host": "far-away-host", "pid": 1,
                                                     "pid_start": 1.0, "runs": runs})
    assert LiveWorkers(layout, stale_after=60).count(mono=0) == 3  # the pool's live workers
    assert LiveWorkers(layout, stale_after=60, run_id=run.run_id).count(mono=0) == 2
    os.unlink(layout.heartbeat("any-1"))
    os.unlink(layout.heartbeat("mine-1"))
    assert LiveWorkers(layout, stale_after=60, run_id=run.run_id).count(mono=0) == 0


def test_submit_wait_says_no_live_worker_when_the_only_worker_serves_another_run(
        pool: Path, make_workflow, tmp_path: Path) -> None:
    import subprocess
    import sys
    import time

    from .test_faults import start_worker

    other = submit(pool, make_workflow([{"id": "x", "command": "true"}], name="other"))
    wf = make_workflow([{"id": "a", "command": "true"}], name="mine")
    worker = start_worker(pool, "--run", other.run_id, "--heartbeat", "0.5", "--stale-after", "3")
    code = "import sys; from executioner.cli import submit_main; sys.exit(submit_main(sys.argv[1:]))"
    waiter = subprocess.Popen([sys.executable, "-c", code, str(wf), "--pool", str(pool), "--wait",
                               "--stale-after", "3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(waiter.stderr), daemon=True)  # type: ignore[arg-type]
    reader.start()
    try:
        deadline = time.monotonic() + 30
        while not any("no live worker" in line for line in lines):
            assert time.monotonic() < deadline, "".join(lines)
            assert waiter.poll() is None, "".join(lines)
            time.sleep(0.1)
        [beat] = [n for n in os.listdir(pool / "workers") if n.endswith(".json") and not n.startswith(".")]
        assert worker.poll() is None  # the pinned worker, alive all along
        [mine] = [n for n in os.listdir(pool) if n.startswith("mine-")]
        assert os.listdir(pool / mine / "queued") == ["a.json"]  # and it did not take the job
    finally:
        waiter.kill()
        worker.kill()
        waiter.wait()
        worker.wait()
