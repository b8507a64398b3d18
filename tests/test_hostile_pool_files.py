"""Files planted in a pool (issue 10, the write side): a symlink or a hard link at a path the
project writes, or in place of a job file, must never make a worker, reaper, coordinator or
submit write outside the pool, nor run what it points to."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import types
from pathlib import Path

import psutil
import pytest

from executioner import PoolLayout, run_status
from executioner.execution.worker import Worker
from executioner.protocol import fsio, store
from executioner.protocol.fsio import read_json
from executioner.protocol.rebuild import place_record
from executioner.protocol.scrub import Scrubber

from .conftest import precious as _precious, untouched as _untouched, files, submit, work



def _reasons(run) -> list[str]:
    return sorted(p.read_text() for p in Path(run.quarantine_dir).glob("*.reason"))


# ---- the three cases of the issue ---------------------------------------------------------
def test_a_symlink_planted_at_a_log_path_is_not_written_through(pool: Path, make_workflow, tmp_path: Path) -> None:
    run = submit(pool, make_workflow([{"id": "a", "command": "echo out-of-a; echo err-of-a >&2"}]))
    precious = _precious(tmp_path)
    dangling = tmp_path / "outside" / "created-through-a-link"
    os.symlink(precious, run.log("a", 1, "out"))
    os.symlink(dangling, run.log("a", 1, "err"))
    work(pool, run)
    assert _untouched(precious) and not dangling.exists()
    [t] = read_json(run.job("a", "done"))["tries"]
    out, err = Path(run.root, t["stdout"]), Path(run.root, t["stderr"])
    assert not out.is_symlink() and out.read_text() == "out-of-a\n"
    assert not err.is_symlink() and err.read_text() == "err-of-a\n"
    # the planted links are kept aside, neither followed nor deleted
    aside = sorted(os.readlink(p) for p in Path(run.logs_dir).glob("a.1.*.old-*"))
    assert aside == sorted([str(dangling), str(precious)])


def test_a_job_file_that_is_a_symlink_is_quarantined_and_never_run(pool: Path, make_workflow, tmp_path: Path,
                                                                   monkeypatch) -> None:
    """What the symlink points to is neither run nor rewritten; the job itself, rebuilt from
    the workflow with a ``lost`` try that says why, runs as the workflow says."""
    ledger, ran = tmp_path / "ledger", tmp_path / "ran-outside"
    run = submit(pool, make_workflow([{"id": "a", "command": f"echo a >> '{ledger}'"},
                                      {"id": "b", "command": "true"}]))
    outside = tmp_path / "outside" / "a.json"
    outside.parent.mkdir()
    record = read_json(run.job("a", "queued"))
    record["spec"]["command"] = f"touch '{ran}'"
    outside.write_bytes(fsio.dumps(record))
    os.utime(outside, (1000.0, 1000.0))
    before = outside.read_bytes()
    os.unlink(run.job("a", "queued"))
    os.symlink(outside, run.job("a", "queued"))
    rows = {}
    real_claim = store.claim

    def claim_then_look(run_, job_id, *a, **kw):
        got = real_claim(run_, job_id, *a, **kw)
        if job_id == "a" and not rows:  # what exec-status shows right after the refusal
            rows.update({j["id"]: j for j in run_status(run)["jobs"]})
        return got

    monkeypatch.setattr(store, "claim", claim_then_look)
    _work_rebuilding(pool, run)
    assert not ran.exists(), "the job a symlink pointed to was run"
    assert outside.read_bytes() == before and outside.stat().st_mtime == 1000.0
    [reason] = _reasons(run)
    assert "refused job file: a symlink" in reason and "running/a@" in reason
    assert rows["a"]["state"] == "lost" and "a symlink" in rows["a"]["reason"]
    assert files(run, "done") == ["a.json", "b.json"] and ledger.read_text() == "a\n"
    lost, done = read_json(run.job("a", "done"))["tries"]
    assert lost["status"] == "lost" and "a symlink" in lost["reason"] and done["status"] == "done"


def test_a_waiting_job_file_that_is_a_symlink_is_neither_promoted_nor_run(pool: Path, make_workflow,
                                                                          tmp_path: Path) -> None:
    ledger, ran = tmp_path / "ledger", tmp_path / "ran-outside"
    run = submit(pool, make_workflow([{"id": "a", "command": "true"},
                                      {"id": "b", "command": f"echo b >> '{ledger}'", "dependencies": ["a"]}]))
    outside = tmp_path / "outside" / "b.json"
    outside.parent.mkdir()
    record = read_json(run.job("b", "waiting"))
    record["spec"]["command"] = f"touch '{ran}'"
    outside.write_bytes(fsio.dumps(record))
    before = outside.read_bytes()
    os.unlink(run.job("b", "waiting"))
    os.symlink(outside, run.job("b", "waiting"))
    _work_rebuilding(pool, run)
    assert not ran.exists() and outside.read_bytes() == before
    [reason] = _reasons(run)
    assert reason.startswith("waiting/b.json: refused job file: a symlink")
    assert files(run, "done") == ["a.json", "b.json"] and ledger.read_text() == "b\n"


def _work_rebuilding(pool: Path, run) -> Worker:
    """One worker, one slot, that rebuilds lost jobs at once (a real one waits some seconds)."""
    worker = Worker(str(pool), run_ids=[run.run_id], slots=1, exit_when_idle=1.0, poll_min=0.02, poll_max=0.2,
                    sweep_every=0.1)
    worker.lost_every = 0.1
    worker.lost.confirm = 0.2
    worker.run()
    return worker


def test_a_hard_linked_snapshot_of_a_run_is_left_as_it_was(pool: Path, make_workflow, tmp_path: Path) -> None:
    """``cp -al RUN SNAP``: every job file of the live run now has a second name in the
    snapshot. The live run goes on as usual, each job once and with its history (no lost try),
    because no job file's inode is ever written into: the snapshot stays byte for byte."""
    ledger = tmp_path / "ledger"
    run = submit(pool, make_workflow([{"id": "a", "command": f"echo a >> '{ledger}'"},
                                      {"id": "b", "command": f"echo b >> '{ledger}'"},
                                      {"id": "c", "command": f"echo c >> '{ledger}'", "dependencies": ["a"]}]))
    snap = tmp_path / "snapshot"
    subprocess.run(["cp", "-al", run.root, str(snap)], check=True, timeout=30)

    def snapshot() -> dict[str, tuple[bytes, int]]:
        return {str(p.relative_to(snap)): (p.read_bytes(), p.stat().st_mtime_ns)
                for p in sorted(snap.rglob("*")) if p.is_file()}

    before = snapshot()
    assert os.stat(run.job("a", "queued")).st_nlink == 2
    _work_rebuilding(pool, run)
    assert snapshot() == before
    assert files(run, "done") == ["a.json", "b.json", "c.json"]
    assert sorted(ledger.read_text().split()) == ["a", "b", "c"]  # each ran once
    for job in ("a", "b", "c"):
        [done] = read_json(run.job(job, "done"))["tries"]
        assert done["status"] == "done"
    assert not os.path.exists(run.quarantine_dir) or not os.listdir(run.quarantine_dir)


# ---- log files of a try: created, never reused ----------------------------------------------
def test_a_leftover_log_is_kept_aside_and_a_hard_link_at_a_log_path_is_not_truncated(
        pool: Path, make_workflow, tmp_path: Path) -> None:
    run = submit(pool, make_workflow([{"id": "a", "command": "echo new; echo new-err >&2"}]))
    Path(run.log("a", 1, "out")).write_text("output of a try whose result could not be recorded\n")
    precious = _precious(tmp_path)
    os.link(precious, run.log("a", 1, "err"))
    work(pool, run)
    assert _untouched(precious)
    assert Path(run.log("a", 1, "out")).read_text() == "new\n"
    assert Path(run.log("a", 1, "err")).read_text() == "new-err\n"
    kept = sorted(p.read_text() for p in Path(run.logs_dir).glob("a.1.out.old-*"))
    assert kept == ["output of a try whose result could not be recorded\n"]


def test_a_log_name_taken_again_and_again_fails_the_try_with_the_reason(pool: Path, make_workflow,
                                                                        monkeypatch) -> None:
    """Someone re-plants the log name as fast as it is moved aside: the try is not run, and
    its record says why (the job's retry policy applies)."""
    run = submit(pool, make_workflow([{"id": "a", "command": "echo hi"}]))
    real_rename = os.rename

    def replant(src, dst, *a, **kw):
        real_rename(src, dst, *a, **kw)
        if os.path.basename(str(src)) == "a.1.out":
            os.symlink("/nonexistent", run.log("a", 1, "out"))

    os.symlink("/nonexistent", run.log("a", 1, "out"))
    monkeypatch.setattr(os, "rename", replant)
    work(pool, run, slots=1)
    monkeypatch.undo()
    record = read_json(run.job("a", "failed"))
    assert "logs/a.1.out" in record["reason"] and "exists" in record["reason"]
    assert record["tries"][0]["exit_code"] is None


# ---- the project's own second links ---------------------------------------------------------
def test_a_job_being_placed_with_a_second_link_is_not_quarantined_meanwhile(pool: Path, make_workflow,
                                                                            monkeypatch) -> None:
    """rebuild.place_record links a temp file into place and unlinks the temp: for that
    instant the job file has two links. A claim or a scrub in that instant takes it as it is."""
    from executioner.protocol import rebuild

    run = submit(pool, make_workflow([{"id": "a", "command": "true"}]))
    record = read_json(run.job("a", "queued"))
    os.unlink(run.job("a", "queued"))
    seen: dict[str, object] = {}
    real_link = os.link

    def link_then_look(src, dst, *a, **kw):
        real_link(src, dst, *a, **kw)
        seen["links"] = os.stat(dst).st_nlink
        seen["scrubbed"] = Scrubber().scrub(run, now=time.time())
        seen["claim"] = store.claim(run, "a", store.Owner.current("w"))

    monkeypatch.setattr(rebuild.os, "link", link_then_look)
    assert place_record(run, "a", record, "queued")
    monkeypatch.undo()
    assert seen["links"] == 2 and seen["scrubbed"] == []
    assert seen["claim"] is not None, "a job in the middle of its placement was refused"
    assert not Path(run.quarantine_dir).exists()


# ---- siblings: every other file a process keeps writing or touching --------------------------
@pytest.mark.parametrize("link", ["ln -s", "ln"])
def test_a_heartbeat_replaced_by_a_link_is_not_touched_through(pool: Path, make_workflow, tmp_path: Path,
                                                               link: str) -> None:
    precious = _precious(tmp_path)
    cmd = f'for f in "$EXEC_RUN_DIR"/../workers/*.json; do rm -f "$f"; {link} "$OUT" "$f"; done; sleep 1'
    run = submit(pool, make_workflow([{"id": "a", "command": cmd, "env": {"OUT": str(precious)}}]))
    work(pool, run, slots=1, heartbeat=0.05, stale_after=5.0)
    assert files(run, "done") == ["a.json"]
    assert _untouched(precious)


@pytest.mark.parametrize("plant", ["dangling symlink", "hard link"])
def test_the_clock_probe_is_never_made_or_touched_through_a_planted_link(pool: Path, tmp_path: Path,
                                                                         plant: str) -> None:
    from executioner.liveness.clock import storage_now

    layout = PoolLayout(str(pool))
    os.makedirs(layout.workers_dir)
    probe = layout.probe(fsio.HOST, os.getpid())
    target = tmp_path / "outside" / "made-through-a-link"
    if plant == "hard link":
        target = _precious(tmp_path)
        os.link(target, probe)
    else:
        target.parent.mkdir()
        os.symlink(target, probe)
    try:
        now = storage_now(layout)
        assert abs(now - time.time()) < 60
        assert _untouched(target) if plant == "hard link" else not target.exists()
        assert os.stat(probe, follow_symlinks=False).st_nlink == 1 and not os.path.islink(probe)
    finally:
        fsio.unlink_quietly(probe)


def test_launch_logs_are_created_never_opened_through_a_planted_link(pool: Path, make_workflow, tmp_path: Path,
                                                                     monkeypatch) -> None:
    from executioner.execution import launch

    run = submit(pool, make_workflow([{"id": "a", "command": "true"}]))
    names = iter(["0badc0de", "feedf00d"])
    monkeypatch.setattr(launch, "secrets", types.SimpleNamespace(token_hex=lambda n=4: next(names)))
    os.makedirs(run.launch_dir)
    precious = _precious(tmp_path)
    os.symlink(precious, run.launched("worker-0badc0de", "out"))
    os.link(precious, run.launched("worker-0badc0de", "err"))
    started = launch.start_detached([sys.executable, "-c", "print('hello')"], run)
    psutil.Process(started.pid).wait(timeout=30)
    assert _untouched(precious)
    assert started.stdout == run.launched("worker-feedf00d", "out")
    assert Path(started.stdout).read_text() == "hello\n"


@pytest.mark.parametrize("link", ["symlink", "hard link"])
def test_the_coordinator_lock_is_not_touched_through_a_link(pool: Path, make_workflow, tmp_path: Path,
                                                            link: str) -> None:
    from executioner.coordinator.coord import coordinating, refresh

    run = submit(pool, make_workflow([{"id": "a", "command": "true"}]))
    precious = _precious(tmp_path)
    with coordinating(run, "test"):
        os.unlink(run.coordinator_lock)
        (os.symlink if link == "symlink" else os.link)(precious, run.coordinator_lock)
        refresh(run)
        assert _untouched(precious)
        os.unlink(run.coordinator_lock)
        Path(run.coordinator_lock).touch()  # for the release


def test_a_run_whose_logs_folder_is_a_symlink_is_left_alone(pool: Path, make_workflow, tmp_path: Path,
                                                            caplog) -> None:
    ran = tmp_path / "ran"
    run = submit(pool, make_workflow([{"id": "a", "command": f"touch '{ran}'"}]))
    elsewhere = tmp_path / "outside" / "logs"
    elsewhere.mkdir(parents=True)
    os.rmdir(run.logs_dir)
    os.symlink(elsewhere, run.logs_dir)
    work(pool, run)
    assert not ran.exists() and list(elsewhere.iterdir()) == []
    assert files(run, "queued") == ["a.json"]
    assert any("logs" in r.getMessage() and "symlink" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("window", ["renamed aside", "linked back"])
def test_a_coordinator_lock_put_back_by_a_contender_is_still_kept_alive(pool: Path, make_workflow,
                                                                         monkeypatch, window: str) -> None:
    """A contender that found the lock alive after renaming it aside puts it back with
    os.link, then unlinks its aside name: for a moment the lock is missing, then has two links.
    The holder's keeper looking at it then skips that touch and goes on: were it to stop, the
    live lock would stand still and be broken five minutes later."""
    import threading

    from executioner.coordinator import coord

    monkeypatch.setattr(coord, "TOUCH_EVERY", 0.02)
    run = submit(pool, make_workflow([{"id": "a", "command": "true"}]))
    lock = run.coordinator_lock
    opened, seen = threading.Event(), threading.Event()
    real_touch = fsio.touch

    def touch(path):
        if opened.is_set():
            seen.set()  # a touch in the window
        return real_touch(path)

    monkeypatch.setattr(fsio, "touch", touch)
    with coord.coordinating(run, "test") as held:
        real_held = type(held).is_lock_held_by_us

        def held_by_us(self) -> bool:
            answer = real_held.fget(self)
            if opened.is_set() and not answer:
                seen.set()  # a look in the window
            return answer

        monkeypatch.setattr(type(held), "is_lock_held_by_us", property(held_by_us))
        aside = f"{lock}.broken-elsewhere-1-abcd"
        os.rename(lock, aside)
        if window == "linked back":
            os.link(aside, lock)
        opened.set()
        assert seen.wait(10), "the keeper never looked during the window"
        opened.clear()
        if window == "renamed aside":
            os.link(aside, lock)
        os.unlink(aside)
        os.utime(lock, (1000.0, 1000.0))
        deadline = time.monotonic() + 10
        while os.stat(lock).st_mtime == 1000.0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert os.stat(lock).st_mtime != 1000.0, "the holder stopped keeping its lock alive"


def test_a_logs_folder_swapped_for_a_symlink_after_the_worker_took_the_run_up_is_not_written_through(
        pool: Path, make_workflow, tmp_path: Path, caplog) -> None:
    """The worker checked the run's folders when it took the run up; job a then swaps logs/
    for a symlink. The claim lock of b is written through logs/ opened without following
    it: the worker puts b back and leaves the run, saying why; nothing is written where the
    symlink points."""
    elsewhere = tmp_path / "outside" / "logs"
    elsewhere.mkdir(parents=True)
    swap = f'mv "$EXEC_RUN_DIR/logs" "$EXEC_RUN_DIR/logs.real" && ln -s "{elsewhere}" "$EXEC_RUN_DIR/logs"'
    run = submit(pool, make_workflow([{"id": "a", "command": swap},
                                      {"id": "b", "command": "echo b", "dependencies": ["a"]}]))
    work(pool, run, slots=1)
    assert list(elsewhere.iterdir()) == []
    assert files(run, "done") == ["a.json"] and files(run, "queued") == ["b.json"]
    assert any("leaving run" in r.getMessage() and "symlink" in r.getMessage() for r in caplog.records)


def test_logs_that_cannot_be_made_in_their_folder_fail_the_try_with_the_reason(pool: Path, make_workflow,
                                                                               tmp_path: Path,
                                                                               monkeypatch) -> None:
    """logs/ swapped for a symlink between the claim's lock and the try's logs, when the
    runner makes them itself (write_lock makes them with the lock, through the same folder
    handle, unless it could not)."""
    elsewhere = tmp_path / "outside" / "logs"
    elsewhere.mkdir(parents=True)
    run = submit(pool, make_workflow([{"id": "a", "command": "echo a"}]))
    real_write_lock = store.write_lock

    def lock_then_swap(claim, logs=()) -> None:
        real_write_lock(claim)  # the lock only: the runner makes the logs
        os.rename(run.logs_dir, run.logs_dir + ".real")
        os.symlink(elsewhere, run.logs_dir)

    monkeypatch.setattr(store, "write_lock", lock_then_swap)
    work(pool, run, slots=1)
    assert list(elsewhere.iterdir()) == []
    record = read_json(run.job("a", "failed"))
    assert "cannot create its log file" in record["reason"] and "symlink" in record["reason"]


def test_logs_made_with_the_lock_land_in_the_real_folder_even_if_it_is_swapped_later(
        pool: Path, make_workflow, tmp_path: Path, monkeypatch) -> None:
    """The same swap, when write_lock made the logs with the lock: they are in the real
    folder (created through its handle), nothing reaches the symlink's target."""
    elsewhere = tmp_path / "outside" / "logs"
    elsewhere.mkdir(parents=True)
    run = submit(pool, make_workflow([{"id": "a", "command": "echo hello"}]))
    real_write_lock = store.write_lock

    def lock_then_swap(claim, logs=()) -> None:
        real_write_lock(claim, logs)
        os.rename(run.logs_dir, run.logs_dir + ".real")
        os.symlink(elsewhere, run.logs_dir)

    monkeypatch.setattr(store, "write_lock", lock_then_swap)
    work(pool, run, slots=1)
    assert list(elsewhere.iterdir()) == []
    assert Path(run.logs_dir + ".real", "a.1.out").read_text() == "hello\n"


def test_a_worker_refuses_a_pool_whose_workers_folder_is_a_symlink(pool: Path, make_workflow,
                                                                   tmp_path: Path) -> None:
    from .conftest import cli

    run = submit(pool, make_workflow([{"id": "a", "command": "true"}]))
    elsewhere = tmp_path / "outside" / "workers"
    elsewhere.mkdir(parents=True)
    os.rmdir(PoolLayout(str(pool)).workers_dir)
    os.symlink(elsewhere, PoolLayout(str(pool)).workers_dir)
    result = cli("exec-worker", "--pool", str(pool), "--exit-when-idle", "0.2")
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().count("\n") == 0 and "workers: is a symlink" in result.stderr
    assert "Traceback" not in result.stderr
    assert list(elsewhere.iterdir()) == [] and files(run, "queued") == ["a.json"]


def test_nothing_is_quarantined_through_a_symlinked_quarantine_folder(pool: Path, make_workflow,
                                                                      tmp_path: Path) -> None:
    from executioner.protocol.scrub import quarantine

    run = submit(pool, make_workflow([{"id": "a", "command": "true"}]))
    elsewhere = tmp_path / "outside" / "quarantine"
    elsewhere.mkdir(parents=True)
    os.symlink(elsewhere, run.quarantine_dir)
    assert not quarantine(run, run.job("a", "queued"), "a test")
    assert list(elsewhere.iterdir()) == [] and files(run, "queued") == ["a.json"]
