"""Workers that die, freeze, or are stopped: no job lost, none completed twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from executioner import PoolLayout

from executioner.protocol import fsio, store
from executioner.protocol.fsio import HOST, atomic_write_json, read_json
from executioner.liveness.clock import storage_now
from executioner.liveness.reap import Reaper, requeue_lost

from .conftest import files, submit, work

WORKER = ("import sys; from executioner.cli import worker_main; sys.exit(worker_main(sys.argv[1:]))")


def start_worker(pool: Path, *args: str, **kw) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", WORKER, "--pool", str(pool), "-q", *args], **kw)


def wait_for(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def running_names(run) -> list[str]:
    return [n for n in os.listdir(run.state_dir("running")) if not n.startswith(".")]


def test_a_killed_worker_on_this_host_is_requeued_at_once(pool: Path, make_workflow, tmp_path: Path) -> None:
    cmd = 'if [ "$EXEC_TRY" = 1 ]; then sleep 60; fi; echo ran >> ' + f"'{tmp_path}/ledger'"
    run = submit(pool, make_workflow([{"id": "a", "command": cmd}]))
    proc = start_worker(pool, "--stale-after", "3600")
    wait_for(lambda: running_names(run) and os.path.exists(run.claim_record("a", 1)))
    orphans = psutil.Process(proc.pid).children(recursive=True)  # its command lives on
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # the stale-after bound is an hour: only the same-host pid check can requeue it now
    assert Reaper(PoolLayout(str(pool)), stale_after=3600).reap(run) == ["a"]
    record = read_json(run.job("a", "queued"))
    [lost] = record["tries"]
    assert lost["status"] == "lost" and "worker process gone" in lost["reason"] and HOST in lost["reason"]
    work(pool, run)
    record = read_json(run.job("a", "done"))
    assert [t["status"] for t in record["tries"]] == ["lost", "done"]
    assert (tmp_path / "ledger").read_text() == "ran\n"
    for orphan in orphans:
        try:
            orphan.kill()
        except psutil.NoSuchProcess:
            pass


def fake_remote_claim(pool: Path, run, job: str, worker: str = "far-1-abcd", host: str = "far-away-host"):
    claim = store.claim(run, job, store.Owner(worker, host, 999_999_999, 1.0))
    store.write_lock(claim)
    atomic_write_json(PoolLayout(str(pool)).heartbeat(worker),
                      {"worker": worker, "host": host, "pid": 999_999_999, "pid_start": 1.0})
    return claim


def age(path: str, seconds: float, pool: Path) -> None:
    t = storage_now(PoolLayout(str(pool))) - seconds
    os.utime(path, (t, t))


def test_a_remote_claim_is_requeued_only_when_its_heartbeat_is_stale(pool: Path, make_workflow) -> None:
    run = submit(pool, make_workflow([{"id": "a", "command": "true"}]))
    fake_remote_claim(pool, run, "a")
    beat = PoolLayout(str(pool)).heartbeat("far-1-abcd")
    reaper = Reaper(PoolLayout(str(pool)), stale_after=60)
    # an old stamp (or one an hour in the future) means nothing by itself: only a stamp
    # this reaper watched stay unchanged for stale-after does
    age(beat, 7200, pool)
    assert reaper.reap(run, mono=0) == [] and reaper.reap(run, mono=59) == []
    age(beat, -3600, pool)  # the worker beat (with a clock an hour ahead)
    assert reaper.reap(run, mono=100) == [] and reaper.reap(run, mono=159) == []
    assert len(running_names(run)) == 1
    assert reaper.reap(run, mono=161) == ["a"]
    [lost] = read_json(run.job("a", "queued"))["tries"]
    assert "no heartbeat for 61 s" in lost["reason"] and "far-away-host" in lost["reason"]


def test_a_claim_never_locked_is_judged_by_its_rename_time(pool: Path, make_workflow) -> None:
    run = submit(pool, make_workflow([{"id": "a", "command": "true"}]))
    claim = store.claim(run, "a", store.Owner("w", "far-away-host", 1, 1.0))
    name = os.path.basename(claim.path)
    reaper = Reaper(PoolLayout(str(pool)), stale_after=60)
    assert not reaper.judge(run, name, claim.record, 0.0, {}).stale
    assert not reaper.judge(run, name, claim.record, 59.0, {}).stale
    verdict = reaper.judge(run, name, claim.record, 61.0, {})
    assert verdict.stale and "never locked" in verdict.reason


def test_a_job_that_keeps_losing_its_worker_fails_after_max_lost(pool: Path, make_workflow) -> None:
    run = submit(pool, make_workflow([{"id": "oom", "command": "true", "max_lost": 2}]))
    reaper = Reaper(PoolLayout(str(pool)), stale_after=60)
    for n in (1, 2):
        fake_remote_claim(pool, run, "oom", worker=f"w{n}")
        age(PoolLayout(str(pool)).heartbeat(f"w{n}"), 120, pool)
        assert reaper.reap(run, mono=1000 * n) == []
        assert reaper.reap(run, mono=1000 * n + 61) == ["oom"]
    record = read_json(run.job("oom", "failed"))
    assert [t["status"] for t in record["tries"]] == ["lost", "lost"]
    assert record["reason"].startswith("lost 2 times (max_lost 2)")


def test_owner_finishing_while_the_reaper_decides_one_wins(pool: Path, make_workflow) -> None:
    run = submit(pool, make_workflow([{"id": "a", "command": "true"}]))
    claim = fake_remote_claim(pool, run, "a")
    # the reaper has read the claim and judged it stale; the owner finishes first
    assert store.finish(claim, dict(claim.record, tries=[{"try": 1, "status": "done"}]), "done")
    assert requeue_lost(run, "a", claim.token, claim.record, "stale", None) is None
    assert files(run, "done") == ["a.json"] and files(run, "queued") == []
    assert read_json(run.job("a", "done"))["tries"] == [{"try": 1, "status": "done"}]


def test_a_frozen_worker_that_wakes_up_writes_nothing(pool: Path, make_workflow, tmp_path: Path) -> None:
    """SIGSTOP a worker, requeue its claim, let another finish the job, SIGCONT the first."""
    pidfile = tmp_path / "first.pid"
    cmd = (f'if [ "$EXEC_TRY" = 1 ]; then echo $$ > \'{pidfile}\'; exec sleep 60; fi; '
           f"echo try$EXEC_TRY >> '{tmp_path}/ledger'")
    run = submit(pool, make_workflow([{"id": "a", "command": cmd}]))
    frozen = start_worker(pool, "--heartbeat", "0.2", "--stale-after", "3600", "--exit-when-idle", "1")
    wait_for(lambda: pidfile.exists() and os.path.exists(run.claim_record("a", 1)))
    frozen.send_signal(signal.SIGSTOP)
    try:
        claim = read_json(run.claim_record("a", 1))
        age(PoolLayout(str(pool)).heartbeat(claim["worker"]), 7200, pool)
        reaper = Reaper(PoolLayout(str(pool)), stale_after=3600)
        assert reaper.reap(run, mono=0) == [] and reaper.reap(run, mono=3601) == ["a"]
        work(pool, run, stale_after=3600)
        done_bytes = Path(run.job("a", "done")).read_bytes()
    finally:
        frozen.send_signal(signal.SIGCONT)
    assert frozen.wait(timeout=30) == 0
    # the woken worker saw its claim gone, killed its command, and recorded nothing
    first = int(pidfile.read_text())
    wait_for(lambda: not psutil.pid_exists(first) or psutil.Process(first).status() == psutil.STATUS_ZOMBIE)
    assert Path(run.job("a", "done")).read_bytes() == done_bytes
    assert [t["status"] for t in read_json(run.job("a", "done"))["tries"]] == ["lost", "done"]
    assert (tmp_path / "ledger").read_text() == "try2\n"
    assert all(files(run, s) == [] for s in ("queued", "running", "failed", "waiting"))


def test_sigterm_hands_running_jobs_back_at_once(pool: Path, make_workflow, tmp_path: Path) -> None:
    pidfile = tmp_path / "cmd.pid"
    cmd = f'if [ "$EXEC_TRY" = 1 ]; then echo $$ > \'{pidfile}\'; exec sleep 60; fi'
    run = submit(pool, make_workflow([{"id": "long", "command": cmd, "kill_grace": 2}]))
    proc = start_worker(pool)
    wait_for(lambda: pidfile.exists() and os.path.exists(run.claim_record("long", 1)))
    t = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    assert time.monotonic() - t < 5
    record = read_json(run.job("long", "queued"))
    [t1] = record["tries"]
    assert t1["status"] == "preempted" and record["not_before"] is None
    assert not psutil.pid_exists(int(pidfile.read_text()))
    # a preempted try uses up no retry (max_retries is 0) and counts as no lost try
    work(pool, run)
    assert [t["status"] for t in read_json(run.job("long", "done"))["tries"]] == ["preempted", "done"]


def test_a_second_ctrl_c_stops_at_once(pool: Path, make_workflow, tmp_path: Path) -> None:
    pidfile = tmp_path / "cmd.pid"
    # the command ignores SIGTERM, so a graceful stop would wait out kill_grace (60 s)
    cmd = f"trap '' TERM; echo $$ > '{pidfile}'; while true; do sleep 0.1; done"
    run = submit(pool, make_workflow([{"id": "stubborn", "command": cmd, "kill_grace": 60}]))
    proc = start_worker(pool, stderr=subprocess.PIPE)
    wait_for(lambda: pidfile.exists())
    proc.send_signal(signal.SIGINT)
    assert b"stopping" in proc.stderr.readline()  # the first Ctrl-C was handled
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=5) == 130
    os.killpg(int(pidfile.read_text()), signal.SIGKILL)
    assert len(running_names(run)) == 1  # left for the reaper: its pid is gone now
    assert Reaper(PoolLayout(str(pool)), stale_after=3600).reap(run) == ["stubborn"]


def test_a_requeue_racing_a_reaper_leaves_one_copy(pool: Path, make_workflow) -> None:
    """The owner re-queues its claim (a retry) while a reaper re-queues it as lost: one wins."""
    run = submit(pool, make_workflow([{"id": "a", "command": "true"}]))
    claim = fake_remote_claim(pool, run, "a", worker="slow-1")
    # the reaper read the claim, judged it stale, and wins the race to the rename
    assert requeue_lost(run, "a", claim.token, claim.record, "stale", None) == "queued"
    # the owner wakes up and tries to put it back for a retry: its claim name is gone
    assert store.finish(claim, dict(claim.record, not_before=1.0), "queued") is False
    assert files(run, "queued") == ["a.json"] and running_names(run) == []
    assert [t["status"] for t in read_json(run.job("a", "queued"))["tries"]] == ["lost"]
    # the other order: the owner first, then a second reaper with its stale view
    claim = store.claim(run, "a", store.Owner("w2", "far-away-host", 1, 1.0))
    assert store.finish(claim, dict(claim.record, not_before=1.0), "queued")
    assert requeue_lost(run, "a", claim.token, claim.record, "stale", None) is None
    assert files(run, "queued") == ["a.json"] and read_json(run.job("a", "queued"))["not_before"] == 1.0


def test_a_stopping_worker_keeps_beating_until_its_commands_are_gone(pool: Path, make_workflow, tmp_path: Path) -> None:
    """During kill_grace the worker still holds the claim: others must not think it dead."""
    pidfile = tmp_path / "cmd.pid"
    cmd = f"trap 'sleep 2; exit 0' TERM; echo $$ > '{pidfile}'; while true; do sleep 0.1; done"
    run = submit(pool, make_workflow([{"id": "slow-stop", "command": cmd, "kill_grace": 5}]))
    proc = start_worker(pool, "--heartbeat", "0.2", "--stale-after", "1", stderr=subprocess.PIPE)
    wait_for(lambda: pidfile.exists() and os.path.exists(run.claim_record("slow-stop", 1)))
    beat = PoolLayout(str(pool)).heartbeat(read_json(run.claim_record("slow-stop", 1))["worker"])
    proc.send_signal(signal.SIGTERM)
    assert b"stopping" in proc.stderr.readline()
    stamps = set()
    while proc.poll() is None and len(stamps) < 4:
        try:
            stamps.add(os.stat(beat).st_mtime)
        except FileNotFoundError:
            break
        time.sleep(0.1)
    assert len(stamps) >= 4, "the heartbeat stood still while the worker was stopping"
    assert proc.wait(timeout=20) == 0
    assert [t["status"] for t in read_json(run.job("slow-stop", "queued"))["tries"]] == ["preempted"]


def test_a_result_written_but_not_committed_is_recorded_as_lost_once(pool: Path, make_workflow) -> None:
    """The owner writes its result into its claim, then stops before the fenced rename;
    the reaper must not keep that "done" try as if it had completed the job."""
    run = submit(pool, make_workflow([{"id": "a", "command": "true"}]))
    claim = fake_remote_claim(pool, run, "a")
    result = store.try_record(1, 1, "done", start=1.0, end=2.0, worker="far-1-abcd", host="far-away-host",
                              worker_pid=999_999_999, exit_code=0)
    path = run.running("a", claim.token)
    with open(path, "r+b") as f:  # what the owner's finish does before its rename
        payload = fsio.dumps(dict(claim.record, tries=[result], last_exit_code=0))
        f.write(payload)
        f.truncate(len(payload))
    reaper = Reaper(PoolLayout(str(pool)), stale_after=60)
    assert reaper.reap(run, mono=0) == [] and reaper.reap(run, mono=61) == ["a"]
    queued = read_json(run.job("a", "queued"))
    assert [(t["try"], t["status"]) for t in queued["tries"]] == [(1, "lost")]
    assert "was written but never committed" in queued["tries"][0]["reason"]
    work(pool, run)
    assert [(t["try"], t["status"]) for t in read_json(run.job("a", "done"))["tries"]] == [(1, "lost"), (2, "done")]
