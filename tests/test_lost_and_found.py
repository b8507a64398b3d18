"""Faults that lost or hung a job before format 2, each reproduced: a dead worker seen only
by short-lived processes, a failing commit write, a job missing from every folder, mismatched
staleness settings, a job that signals its own worker."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from executioner import PoolLayout, run_status

from executioner.protocol import fsio, store
from executioner.protocol.fsio import atomic_write_json, read_json
from executioner.liveness.reap import Reaper
from executioner.protocol.scrub import quarantine

from .conftest import files, submit, work

WORKER = "import sys; from executioner.cli import worker_main; sys.exit(worker_main(sys.argv[1:]))"


def worker_cmd(pool: Path, *args: str) -> list[str]:
    return [sys.executable, "-c", WORKER, "--pool", str(pool), "-q", *args]


@pytest.mark.timeout(120)
def test_a_dead_worker_is_requeued_by_a_series_of_short_lived_workers(pool: Path, make_workflow, tmp_path) -> None:
    """Killed on another host; afterwards only `--max-jobs 1` workers, each living less than
    --stale-after, look at the pool: together they watch its heartbeat stand still."""
    jobs = [{"id": "a", "command": f"echo a >> '{tmp_path}/ledger'"}]
    jobs += [{"id": f"q{i:02d}", "command": "true"} for i in range(40)]
    run = submit(pool, make_workflow(jobs))
    claim = store.claim(run, "a", store.Owner("far-1", "far-away-host", 4242, 1.0))
    store.write_lock(claim)
    atomic_write_json(PoolLayout(str(pool)).heartbeat("far-1"), {"worker": "far-1", "host": "far-away-host"})
    lives = []
    for _ in range(40):
        t = time.monotonic()
        subprocess.run(worker_cmd(pool, "--max-jobs", "1", "--heartbeat", "1", "--stale-after", "3"),
                       check=True, timeout=30)
        lives.append(time.monotonic() - t)
        if os.path.exists(run.job("a", "done")):
            break
    assert os.path.exists(run.job("a", "done")), "the dead worker's claim was never requeued"
    assert max(lives) < 3, f"each worker must live less than --stale-after: {lives}"
    record = read_json(run.job("a", "done"))
    assert [t["status"] for t in record["tries"]] == ["lost", "done"]
    assert "far-away-host" in record["tries"][0]["reason"]
    assert (tmp_path / "ledger").read_text() == "a\n"


def test_a_checker_waits_as_long_as_the_owner_s_own_settings_say(pool: Path, make_workflow) -> None:
    """`--stale-after 3` next to a worker that beats every 10 s (stale after 60): its live
    claim is not requeued after 3 s of standing still, only after 60."""
    run = submit(pool, make_workflow([{"id": "a", "command": "true"}]))
    claim = store.claim(run, "a", store.Owner("slow-1", "far-away-host", 1, 1.0))
    store.write_lock(claim)
    atomic_write_json(PoolLayout(str(pool)).heartbeat("slow-1"),
                      {"worker": "slow-1", "host": "far-away-host", "heartbeat": 10.0, "stale_after": 60.0})
    hasty = Reaper(PoolLayout(str(pool)), stale_after=3)
    assert hasty.reap(run, mono=0) == [] and hasty.reap(run, mono=10) == [] and hasty.reap(run, mono=59) == []
    assert hasty.reap(run, mono=61) == ["a"]


def test_a_commit_write_that_fails_for_a_while_is_retried(pool: Path, make_workflow, monkeypatch) -> None:
    run = submit(pool, make_workflow([{"id": "a", "command": "true"}, {"id": "b", "command": "true",
                                                                        "dependencies": ["a"]}]))
    real = fsio.write_temp
    failures = [3]

    def flaky(directory, payload):
        if failures[0] and os.path.basename(directory) == "running":
            failures[0] -= 1
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(directory, payload)

    monkeypatch.setattr(fsio, "write_temp", flaky)
    worker = work(pool, run)
    assert failures == [0] and worker.finished == 2
    assert files(run, "done") == ["a.json", "b.json"] and os.listdir(run.state_dir("running")) == []
    assert [t["status"] for t in read_json(run.job("a", "done"))["tries"]] == ["done"]


def test_a_commit_write_that_keeps_failing_hands_the_job_back_untouched(pool: Path, make_workflow,
                                                                        monkeypatch, tmp_path) -> None:
    """No try is recorded and none of the job's retries is used: the job runs again later."""
    run = submit(pool, make_workflow([{"id": "a", "command": f"echo x >> '{tmp_path}/ledger'"}]))
    before = Path(run.job("a", "queued")).read_bytes()

    real = fsio.write_temp

    def full(directory, payload):
        if os.path.basename(directory) == "running":
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
        return real(directory, payload)

    from executioner.execution.worker import Worker

    monkeypatch.setattr(fsio, "write_temp", full)
    worker = Worker(str(pool), run_ids=[run.run_id], max_jobs=1, poll_min=0.02, poll_max=0.2)
    worker.commit_patience = 1.0
    worker.run()
    monkeypatch.undo()
    assert files(run, "queued") == ["a.json"] and os.listdir(run.state_dir("running")) == []
    assert Path(run.job("a", "queued")).read_bytes() == before
    work(pool, run)
    assert [t["status"] for t in read_json(run.job("a", "done"))["tries"]] == ["done"]
    assert (tmp_path / "ledger").read_text() == "x\nx\n"


def test_a_job_that_deletes_its_own_file_is_put_back_and_max_lost_ends_it(pool: Path, make_workflow) -> None:
    cmd = 'rm -f "$EXEC_RUN_DIR"/running/"$EXEC_JOB_ID"@"$EXEC_CLAIM".json; sleep 2'
    run = submit(pool, make_workflow([{"id": "a", "command": cmd, "max_lost": 2},
                                      {"id": "b", "command": "true", "dependencies": ["a"]}]))
    work(pool, run, idle=1.0)
    record = read_json(run.job("a", "failed"))
    assert [t["status"] for t in record["tries"]] == ["lost", "lost"]
    assert "disappeared" in record["reason"] and "max_lost 2" in record["reason"]
    status = run_status(run)
    assert status["state"] == "failed" and status["counts"]["blocked"] == 1


def test_a_quarantined_job_is_shown_lost_and_rebuilt_by_a_worker(pool: Path, make_workflow) -> None:
    run = submit(pool, make_workflow([{"id": "a", "command": "true"}, {"id": "b", "command": "true",
                                                                        "dependencies": ["a"]}]))
    quarantine(run, run.job("a", "queued"), "unreadable job file: not valid JSON")
    status = run_status(run)
    rows = {j["id"]: j for j in status["jobs"]}
    assert status["state"] == "running"  # not done: a job of the run is in no folder
    assert rows["a"]["state"] == "lost" and "no state folder" in rows["a"]["reason"]
    assert "waits for a, which is lost" in rows["b"]["reason"]
    from executioner.execution.worker import Worker

    worker = Worker(str(pool), run_ids=[run.run_id], exit_when_idle=3.0, poll_min=0.02, poll_max=0.2,
                    sweep_every=0.1)
    worker.lost_every = 0.1
    worker.lost.confirm = 0.2
    worker.run()
    assert files(run, "done") == ["a.json", "b.json"]
    [lost, done] = read_json(run.job("a", "done"))["tries"]
    assert lost["status"] == "lost" and "quarantined" in lost["reason"] and "not valid JSON" in lost["reason"]
    assert done["status"] == "done"
    assert run_status(run)["state"] == "done"


@pytest.mark.timeout(120)
def test_a_job_that_signals_its_own_worker_is_stopped_by_max_lost(pool: Path, make_workflow) -> None:
    run = submit(pool, make_workflow([{"id": "rogue", "command": "kill -TERM $PPID; sleep 5", "max_lost": 2}]))
    for _ in range(6):
        proc = subprocess.run(worker_cmd(pool, "--exit-when-idle", "0.5"), timeout=60)
        assert proc.returncode == 0
        if files(run, "failed"):
            break
    record = read_json(run.job("rogue", "failed"))
    assert [t["status"] for t in record["tries"]] == ["preempted", "preempted", "preempted"]
    assert "preempted 3 times in a row" in record["reason"]


def test_a_single_preemption_costs_nothing(pool: Path, make_workflow) -> None:
    from executioner.protocol.retry import losses

    assert losses([{"status": "preempted"}, {"status": "failed"}, {"status": "preempted"}]) == 0
    assert losses([{"status": "preempted"}, {"status": "preempted"}, {"status": "lost"}]) == 2
