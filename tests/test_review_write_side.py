"""Adversarial review of issue 10, write side: what a planted link, a swapped folder or a full
disk still did to real workers and resumes after the first round of fixes. Each test shows
one problem as a user sees it (a run that hangs, a file written outside the pool, a traceback
on a worker's stderr)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from executioner.protocol import fsio
from executioner.protocol.fsio import read_json

from .conftest import precious as _precious, untouched as _untouched, cli, files, submit, work



def _missed_promotion(pool: Path, make_workflow, ledger: Path):
    """A run whose `a` is done and whose `b` (depending on a) is still in waiting/: the worker
    that finished `a` died before promoting `b`. Only a sweep can move it on."""
    run = submit(pool, make_workflow([{"id": "a", "command": "true"},
                                      {"id": "b", "command": f"echo b >> '{ledger}'", "dependencies": ["a"]}]))
    work(pool, run, max_jobs=1)
    assert files(run, "done") == ["a.json"]
    if files(run, "queued") == ["b.json"]:
        os.rename(run.job("b", "queued"), run.job("b", "waiting"))
    assert files(run, "waiting") == ["b.json"]
    return run


def _exec_worker(pool: Path, *extra: str, timeout: float = 45) -> subprocess.CompletedProcess[str]:
    return cli("exec-worker", "--pool", str(pool), "--exit-when-idle", "1.5", *extra, timeout=timeout)


# ---- 1. the sweep lease in waiting/ ------------------------------------------------------------
@pytest.mark.parametrize("plant", ["symlink", "dangling symlink", "directory", "fifo"])
def test_something_planted_as_the_sweep_lease_does_not_stop_the_run(pool: Path, make_workflow, tmp_path: Path,
                                                                    plant: str) -> None:
    """waiting/.sweep.lock is the sweepers' lease. Something else at that name (a symlink, a
    directory, a FIFO) made every sweep of the run fail for good: `b`, whose dependency is
    done, stayed in waiting/ forever (and with a directory, a traceback on every sweep). It
    is moved to quarantine/, never followed, and the run goes on."""
    ledger = tmp_path / "ledger"
    run = _missed_promotion(pool, make_workflow, ledger)
    lease = os.path.join(run.state_dir("waiting"), ".sweep.lock")
    precious = _precious(tmp_path)
    if plant == "symlink":
        os.symlink(precious, lease)
    elif plant == "dangling symlink":
        os.symlink(tmp_path / "outside" / "made-through-a-link", lease)
    elif plant == "directory":
        os.mkdir(lease)
    else:
        os.mkfifo(lease)
    done = _exec_worker(pool)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert files(run, "done") == ["a.json", "b.json"] and ledger.read_text() == "b\n"
    assert _untouched(precious) and not (tmp_path / "outside" / "made-through-a-link").exists()
    reasons = [p.read_text() for p in Path(run.quarantine_dir).glob("*.reason")]
    assert len(reasons) == 1 and "waiting/.sweep.lock" in reasons[0], reasons


def test_a_sweep_lease_no_sweeper_wrote_is_cleared_once_it_has_stood_still(pool: Path, make_workflow,
                                                                           tmp_path: Path) -> None:
    """A regular file at waiting/.sweep.lock that filelock cannot read as a lease (empty: a
    sweeper killed between creating and writing it, or garbage) was never taken over, so the
    run's sweeps stopped for good. Once this host has watched it stand still for three lease
    durations it is quarantined (a live sweeper refreshes its lease every 10 s)."""
    from executioner.liveness.watch import Watch
    from executioner.protocol.scrub import lease_watch_key, lease_stamp

    ledger = tmp_path / "ledger"
    run = _missed_promotion(pool, make_workflow, ledger)
    lease = os.path.join(run.state_dir("waiting"), ".sweep.lock")
    Path(lease).write_bytes(b"")
    # Age the observation, as os.utime ages a file: this host has seen it unchanged for 1000 s.
    watch = Watch.shared(os.path.join(str(pool), "workers"))
    mono = time.monotonic()
    watch.still_for(lease_watch_key(run, lease), lease_stamp(os.lstat(lease)), mono - 1000)
    watch.still_for(lease_watch_key(run, lease), lease_stamp(os.lstat(lease)), mono)
    watch.save(mono, force=True)
    done = _exec_worker(pool)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert files(run, "done") == ["a.json", "b.json"] and ledger.read_text() == "b\n"
    assert "stood still" in "".join(p.read_text() for p in Path(run.quarantine_dir).glob("*.reason"))


# ---- 2. a resume into a run whose folder is a symlink --------------------------------------------
def test_a_resume_writes_nothing_through_a_symlinked_folder_of_the_run(pool: Path, make_workflow,
                                                                       tmp_path: Path) -> None:
    """Workers skip a run whose folder is a symlink. `exec-submit --resume` did not: it wrote
    its attempt record and workflow copy wherever attempts/ pointed (outside the pool), and
    queued jobs that no worker would ever run. It refuses in one line (exit 3) instead."""
    run = submit(pool, make_workflow([{"id": "a", "command": "exit 3"}]))
    work(pool, run)
    assert files(run, "failed") == ["a.json"]
    outside = tmp_path / "outside" / "attempts"
    shutil.move(run.attempts_dir, outside)
    os.symlink(outside, run.attempts_dir)
    before = sorted(os.listdir(outside))
    got = cli("exec-submit", "--pool", str(pool), "--resume", run.run_id)
    assert got.returncode == 3, got  # refused, as any resume that fails a check
    assert "Traceback" not in got.stderr
    assert "attempts/" in got.stderr and "symlink" in got.stderr
    assert sorted(os.listdir(outside)) == before
    assert files(run, "failed") == ["a.json"]


def test_a_resume_writes_no_watch_file_through_a_symlinked_workers_folder(pool: Path, make_workflow,
                                                                         tmp_path: Path) -> None:
    """exec-worker refuses a pool whose workers/ is a symlink. A resume that found a
    coordinator lock saved this host's observations (.watch-<host>-<boot>.json) through it,
    replacing whatever had that name wherever workers/ pointed."""
    run = submit(pool, make_workflow([{"id": "a", "command": "exit 3"}]))
    work(pool, run)
    outside = tmp_path / "outside" / "workers"
    outside.mkdir(parents=True)
    shutil.rmtree(os.path.join(str(pool), "workers"))
    os.symlink(outside, os.path.join(str(pool), "workers"))
    Path(run.coordinator_lock).write_text("{}")  # a coordinator at work (or one that died)
    got = cli("exec-submit", "--pool", str(pool), "--resume", run.run_id)
    assert got.returncode == 3 and "Traceback" not in got.stderr, got
    assert list(outside.iterdir()) == []


def test_a_crafted_commit_in_coord_moves_nothing_out_of_the_run(pool: Path, make_workflow, tmp_path: Path) -> None:
    """.coord/ of a run is writable by whatever can write the run (a job, a co-user of a shared
    pool). A COMMIT whose placement names a job id with '/' and '..' made the settling
    process (the next resume, or any worker's housekeeping) rename files along that path:
    here a file of the run out of the pool. Job ids in COMMIT are checked like any job id:
    such a COMMIT is no COMMIT, and the change is undone."""
    run = submit(pool, make_workflow([{"id": "a", "command": "exit 3"}]))
    work(pool, run)
    job = "x/../../../../escaped"
    stage = os.path.join(run.root, ".coord", "crafted")
    os.makedirs(os.path.join(stage, "new", "queued~x"))
    os.makedirs(os.path.join(run.state_dir("queued"), "x"))
    Path(run.root, "escaped.json").write_text("moved out\n")
    Path(stage, "COMMIT").write_text(
        '{"placements": [{"job": "%s", "src": null, "dst": "queued"}], "files": []}' % job)
    escaped = os.path.normpath(os.path.join(run.state_dir("queued"), job + ".json"))
    assert not escaped.startswith(str(pool))
    got = cli("exec-submit", "--pool", str(pool), "--resume", run.run_id)
    assert "Traceback" not in got.stderr, got.stderr
    assert not os.path.exists(escaped), "a crafted COMMIT moved a file out of the pool"


# ---- 3. a full disk when a claim's lock is written ------------------------------------------------
def test_a_full_disk_at_the_claim_lock_puts_the_job_back_without_a_traceback(pool: Path, make_workflow,
                                                                            monkeypatch, caplog) -> None:
    """No room for the claim's lock (ENOSPC, no inode left): the worker logged a traceback on
    every poll and, never idle, never exited with --exit-when-idle. It puts the job back in
    queued/ untouched, says so in one line, and exits when idle as asked."""
    from executioner.protocol import store

    run = submit(pool, make_workflow([{"id": "a", "command": "true"}]))
    before = Path(run.job("a", "queued")).read_bytes()

    def full(claim, logs=()):
        raise OSError(28, "No space left on device", claim.lock)

    monkeypatch.setattr(store, "write_lock", full)
    started = time.monotonic()
    work(pool, run, slots=1, idle=0.5)
    assert time.monotonic() - started < 20
    assert files(run, "queued") == ["a.json"] and Path(run.job("a", "queued")).read_bytes() == before
    assert files(run, "running") == []
    assert not any(r.exc_info for r in caplog.records), "a traceback was logged"
    assert any("No space left" in r.getMessage() for r in caplog.records)


def test_a_full_disk_when_a_try_creates_its_logs_is_one_line(pool: Path, make_workflow, monkeypatch,
                                                            caplog) -> None:
    """No inode left for the try's log files: the job was handled (a `lost` try naming the
    error), but the worker logged it as an 'unexpected error' with a traceback."""
    from executioner.execution import execute
    from executioner.protocol import fsio

    run = submit(pool, make_workflow([{"id": "a", "command": "true", "max_lost": 1}]))
    real_create_in = fsio.create_in

    def full(out_path, err_path):
        raise OSError(28, "No space left on device", os.path.basename(out_path))

    def full_but_the_lock(dir_fd, path, aside, tries=3):  # the lock fits, then the disk is full
        if path.endswith((".out", ".err")):
            raise OSError(28, "No space left on device", path)
        return real_create_in(dir_fd, path, aside, tries)

    monkeypatch.setattr(fsio, "create_in", full_but_the_lock)
    monkeypatch.setattr(execute, "open_logs", full)
    work(pool, run, slots=1)
    [t] = read_json(run.job("a", "failed"))["tries"]
    assert t["status"] == "lost" and "No space left" in t["reason"]
    assert not any(r.exc_info for r in caplog.records), "a traceback was logged"


def test_a_deleted_logs_folder_is_made_again(pool: Path, make_workflow) -> None:
    """`rm -r RUN/logs` (a user cleaning up old logs): no claim's lock could be written any
    more, so every claim was put back at once and the run never moved again. The folder is
    made again (never through a symlink: one there is still refused)."""
    run = submit(pool, make_workflow([{"id": "a", "command": "echo hi"}]))
    shutil.rmtree(run.logs_dir)
    work(pool, run, slots=1)
    assert files(run, "done") == ["a.json"]
    assert Path(run.log("a", 1, "out")).read_text() == "hi\n"


# ---- 4. a dead worker's heartbeat that is a symlink --------------------------------------------
@pytest.mark.parametrize("plant", ["loop", "to a changing file"])
def test_a_symlink_at_a_dead_workers_heartbeat_does_not_keep_its_claim_forever(pool: Path, make_workflow,
                                                                                tmp_path: Path, plant: str) -> None:
    """A claim of a dead worker on another host whose heartbeat name is a symlink: the reaper
    followed it. A loop gave 'cannot judge' every second forever; a link to a file that keeps
    changing kept the dead claim alive forever. Either way the run hung. A heartbeat that is
    a symlink is no worker's heartbeat: the claim is judged as one with none."""
    run = submit(pool, make_workflow([{"id": "a", "command": "true"}]))
    token = "0123456789ab"
    os.rename(run.job("a", "queued"), run.running("a", token))
    fsio.atomic_write_json(run.claim_record("a", 1), {
        "job": "a", "try": 1, "token": token, "worker": "elsewhere-1-dead", "host": "elsewhere", "pid": 1,
        "pid_start": 1.0, "claimed_at": time.time(), "dag": False})
    workers = os.path.join(str(pool), "workers")
    os.makedirs(workers, exist_ok=True)
    beat = os.path.join(workers, "elsewhere-1-dead.json")
    changing = tmp_path / "outside" / "changing"
    changing.parent.mkdir()
    changing.write_text("x")
    if plant == "loop":
        os.symlink("elsewhere-1-dead.json", beat)
    else:
        os.symlink(changing, beat)
    proc = subprocess.Popen(["sh", "-c", f"while :; do touch '{changing}'; sleep 0.2; done"])
    try:
        got = _exec_worker(pool, "--heartbeat", "0.5", "--stale-after", "2", timeout=50)
    finally:
        proc.kill()
        proc.wait()
    assert got.returncode == 0, got.stderr
    assert files(run, "done") == ["a.json"], got.stderr
    lost, done = read_json(run.job("a", "done"))["tries"]
    assert lost["status"] == "lost" and done["status"] == "done"


# ---- 5. a state folder swapped for a symlink while a job runs ------------------------------------
@pytest.mark.xfail(strict=True, reason="only logs/ is written through a handle opened without following a "
                                       "symlink; a state folder (done/ here) swapped for a symlink after the "
                                       "worker took the run up is written through: the finished job's record "
                                       "lands outside the pool")
def test_a_state_folder_swapped_for_a_symlink_while_a_job_runs_is_not_written_through(
        pool: Path, make_workflow, tmp_path: Path) -> None:
    outside = tmp_path / "outside" / "done"
    outside.mkdir(parents=True)
    swap = (f'mv "$EXEC_RUN_DIR/done" "$EXEC_RUN_DIR/done.moved" && ln -s "{outside}" "$EXEC_RUN_DIR/done"')
    run = submit(pool, make_workflow([{"id": "a", "command": swap}]))
    work(pool, run, slots=1)
    assert list(outside.iterdir()) == []
