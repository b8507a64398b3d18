"""Adversarial review r1 of format 2: each test reproduces one demonstrated problem.

Each test asserts the behaviour the README promises; each failed on the code as reviewed
(commit 609c0ba's parent) and passes since the fixes that follow it.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from executioner import PoolLayout

from executioner.protocol import fence, fsio, store
from executioner.errors import Refused
from executioner.protocol.fsio import atomic_write_json, read_json
from executioner.liveness.reap import Reaper, recover_private

from .conftest import submit, work


def remote_claim(pool: Path, run, job: str = "a", worker: str = "far-1"):
    claim = store.claim(run, job, store.Owner(worker, "far-away-host", 999_999_999, 1.0))
    store.write_lock(claim)
    atomic_write_json(PoolLayout(str(pool)).heartbeat(worker), {"worker": worker, "host": "far-away-host"})
    return claim


def result(claim, status: str = "done") -> dict:
    return dict(claim.record, tries=[store.try_record(1, 1, status, start=1.0, end=2.0, worker="far-1",
                                                       host="far-away-host", worker_pid=1, exit_code=0)])


def entries(run) -> list[str]:
    out = []
    for state in ("waiting", "queued", "running", "done", "failed"):
        out += [f"{state}/{n}" for n in sorted(os.listdir(run.state_dir(state))) if not n.startswith(".")]
    return out


@pytest.fixture
def run(pool: Path, make_workflow):
    return submit(pool, make_workflow([{"id": "a", "command": "true"}]))


# ---- 1. a stopping worker never exits while its hand-back keeps failing ------------------
@pytest.mark.timeout(120)
def test_a_stopped_worker_exits_even_if_its_hand_back_keeps_failing(pool, run, monkeypatch) -> None:
    """The result cannot be written (read-only / full filesystem) and the hand-back rename
    fails too. On SIGTERM (worker.stop()) the worker should exit (its heartbeat stops and a
    reaper requeues the claim, as _hand_back's own comment says). Observed: run() never
    returns: _hand_back waits on _slots_done, which is only set after every slot returned,
    and the heartbeat thread keeps the stuck claim looking alive forever."""
    from executioner.execution.worker import Worker

    real_write_temp, real_rename = fsio.write_temp, os.rename
    handbacks = []

    def ro_write_temp(directory, payload):
        if os.path.basename(directory) == "running":
            raise OSError(errno.EROFS, "Read-only file system")
        return real_write_temp(directory, payload)

    def ro_rename(src, dst):
        if os.path.dirname(str(dst)) == run.state_dir("queued"):
            handbacks.append(time.monotonic())
            raise OSError(errno.EROFS, "Read-only file system")
        return real_rename(src, dst)

    monkeypatch.setattr(fsio, "write_temp", ro_write_temp)
    monkeypatch.setattr(os, "rename", ro_rename)
    worker = Worker(str(pool), run_ids=[run.run_id], max_jobs=1, poll_min=0.02, poll_max=0.2, heartbeat=0.5,
                    stale_after=2)
    worker.commit_patience = 0.5
    t = threading.Thread(target=worker.run, daemon=True)
    t.start()
    deadline = time.monotonic() + 30
    while not handbacks and time.monotonic() < deadline:
        time.sleep(0.05)
    assert handbacks, "the hand-back was never tried"
    worker.stop("SIGTERM")  # what exec-worker's SIGTERM handler does
    t.join(15)
    hung = t.is_alive()
    monkeypatch.undo()  # let it finish now, whatever happened
    t.join(30)
    assert not hung, "worker.run() did not return within 15 s of stop(): stuck in _hand_back"


# ---- 2. an empty private folder of a killed owner stays in running/ forever ---------------
KILL_AT_FENCE = r"""
import os, signal, sys
from executioner import PoolLayout
from executioner.protocol import store
from executioner.protocol.layout import RunLayout
run = RunLayout(sys.argv[1])
claim = store.claim(run, "a", store.Owner.current("victim"))
store.write_lock(claim)
real = os.rename
def rename(src, dst):
    if str(src) == claim.path and "+done-" in str(dst):
        os.kill(os.getpid(), signal.SIGKILL)   # dies between its mkdir and its fence
    return real(src, dst)
os.rename = rename
store.finish(claim, dict(claim.record, tries=[]), "done")
"""


@pytest.mark.timeout(120)
def test_a_private_folder_left_empty_by_a_killed_owner_is_cleaned_up(pool, run) -> None:
    """SIGKILL between mkdir of the private folder and the fence (or between the final rename
    and the rmdir) leaves an empty `running/a@T+done-...` folder. The claim itself is requeued
    and the job completes, but the empty folder is never removed: running_jobs() skips empty
    folders, the reaper never judges them, scrub skips private folders. scripts/chaos.py
    counts it as 'left in running/' and fails."""
    proc = subprocess.run([sys.executable, "-c", KILL_AT_FENCE, run.root], timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert any("+done-" in n for n in os.listdir(run.state_dir("running")))
    for _ in range(3):  # a few passes of a worker with reaping, sweeping and scrubbing
        w = work(pool, run, idle=1.0, heartbeat=0.2, stale_after=0.5)
        w.scrubber.scrub(run, time.time())
        w.reaper.reap(run)
    assert os.path.exists(run.job("a", "done"))
    assert os.listdir(run.state_dir("running")) == [], "debris left in running/ forever"


# ---- 3. an old 'no heartbeat' observation makes a live claim stale at once ---------------
def test_a_heartbeat_missing_for_an_instant_twice_does_not_requeue_a_live_claim(pool, run) -> None:
    """tidy.py promises: 'a reaper that finds no heartbeat judges the claim by its lock file
    instead, with a fresh watch, so a removal can only make a reaper wait longer, never
    requeue sooner'. But the watch key 'claim:<run>/<job@token>' (stamp: the lock's mtime,
    which never changes) is kept (for 3 h, shared by the host) from the first time the
    heartbeat was missing. The live worker restores its heartbeat and keeps beating; when
    its heartbeat is missing again for an instant 61 s later, its claim is requeued at once."""
    remote_claim(pool, run)
    beat = PoolLayout(str(pool)).heartbeat("far-1")
    reaper = Reaper(PoolLayout(str(pool)), stale_after=60)
    os.unlink(beat)  # gone for an instant (cleaned by hand, a tidy, ...)
    assert reaper.reap(run, mono=0) == []
    atomic_write_json(beat, {"worker": "far-1", "host": "far-away-host"})  # the worker puts it back
    for i, mono in enumerate(range(10, 61, 10)):
        os.utime(beat, (1000.0 + i, 1000.0 + i))  # and keeps beating
        assert reaper.reap(run, mono=mono) == []
    os.unlink(beat)  # missing for an instant again
    moved = reaper.reap(run, mono=61)
    assert moved == [], f"a live claim was requeued the instant its heartbeat went missing: {entries(run)}"


# ---- 4. a stalled recoverer loses the owner's finished result --------------------------
def test_a_recoverer_that_stalls_after_its_swap_does_not_turn_a_finished_result_into_a_loss(
        pool, run, monkeypatch) -> None:
    """Owner O swapped its `done` result in and froze; recoverer R1 renamed O's folder to its
    own (`+recover-...`) and froze before its final rename into done/; recoverer R2 takes
    R1's folder. R2 no longer knows the intent (`recover` is not a state), so the whole,
    finished `done` result is recorded as a lost try and the job is requeued: it runs again
    and the loss counts against max_lost."""
    claim = remote_claim(pool, run)
    real = os.rename
    outcomes: list[object] = []

    def rename(src, dst):
        src, dst = str(src), str(dst)
        if os.path.dirname(dst) == run.state_dir("done") and "+done-" in src and not outcomes:
            # O is frozen before its final rename: R1 recovers its folder ...
            outcomes.append("O frozen")
            private = fence.Private.parse(run, os.path.basename(os.path.dirname(src)))
            outcomes.append(recover_private(run, private, "R1: stood still"))
        elif os.path.dirname(dst) == run.state_dir("done") and "+done-" in src and outcomes == ["O frozen"]:
            # ... and R1 freezes before its own final rename: R2 recovers R1's folder
            outcomes.append("R1 frozen")
            r1 = fence.Private.parse(run, os.path.basename(os.path.dirname(src)))
            outcomes.append(recover_private(run, r1, "R2: stood still"))
        return real(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    assert store.finish(claim, result(claim), "done") is False
    monkeypatch.undo()
    assert outcomes[1:] == ["R1 frozen", "done", None]  # R2 completed it; R1's rename failed
    assert entries(run) == ["done/a.json"], (entries(run), read_json(run.job("a", "queued"))["tries"])
    assert [t["status"] for t in read_json(run.job("a", "done"))["tries"]] == ["done"]


# ---- 5. a private folder is judged with the checker's --stale-after, not its owner's -----
def test_a_checker_waits_as_long_as_the_owner_s_settings_say_inside_a_commit_too(pool, run, monkeypatch) -> None:
    """Claims get `_patience` (a hasty `--stale-after 3` checker waits the 60 s a slow worker
    declares: test_lost_and_found.test_a_checker_waits_as_long_as_the_owner_s_own_settings_say).
    A private folder does not: the same worker, frozen for 4 s in the middle of its commit
    (fenced, its result written to a temp file, not swapped in yet), has its try recorded as
    `lost` and its job requeued by the hasty checker. Each such loss counts against max_lost (default 3),
    so a job that succeeds every time can end in failed/."""
    claim = store.claim(run, "a", store.Owner("slow-1", "far-away-host", 1, 1.0))
    store.write_lock(claim)
    atomic_write_json(PoolLayout(str(pool)).heartbeat("slow-1"),
                      {"worker": "slow-1", "host": "far-away-host", "heartbeat": 10.0, "stale_after": 60.0})
    hasty = Reaper(PoolLayout(str(pool)), stale_after=3)
    seen: list[object] = []
    real = os.rename

    def rename(src, dst):
        if os.path.basename(str(src)).startswith(".tmp-") and "+done-" in str(dst) and not seen:
            seen.append(hasty.reap(run, mono=0))
            seen.append(hasty.reap(run, mono=4))  # frozen 4 s of the 60 it declares
        return real(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    finished = store.finish(claim, result(claim), "done")
    monkeypatch.undo()
    assert seen == [[], []] and finished, (seen, entries(run))


# ---- 6. LostFinder rebuilds a job that is only moving: two copies -----------------------
def test_a_job_claimed_and_released_while_it_is_looked_for_is_not_rebuilt_as_a_second_copy(
        pool, make_workflow, monkeypatch, tmp_path) -> None:
    """seen_jobs() lists waiting/, queued/, running/ one after another and state_of() checks
    queued/ before running/: a job that goes running -> queued between the two looks is seen
    nowhere. That is what a worker does with a retry that is not due yet (claim, read,
    release: store.release), and what every retry/requeue/hand-back does. Forced here on both
    looks of LostFinder and on place_record's last state_of: the job, sitting in queued/ the
    whole time, is 'rebuilt' into waiting/ too (os.link only guards the destination folder).
    Two copies: both run, the job completes twice (the second rename into done/ overwrites
    the first)."""
    from executioner.protocol.rebuild import LostFinder

    ledger = tmp_path / "ledger"
    run = submit(pool, make_workflow([{"id": "a", "command": f"echo a >> '{ledger}'"}]))
    other = store.Owner("other-worker", fsio.HOST, os.getpid(), 1.0)
    held: list[store.Claim] = []
    real_listdir, real_exists = os.listdir, os.path.exists

    def claim_it() -> None:
        if not held and real_exists(run.job("a", "queued")):
            c = store.claim(run, "a", other)  # another worker claims a (its retry is not due) ...
            if c is not None:
                held.append(c)

    def release_it() -> None:
        if held:
            store.release(held.pop())  # ... and puts it back

    def listdir(path="."):
        if str(path) == run.state_dir("queued"):
            claim_it()
        elif str(path) == run.state_dir("running"):
            release_it()
        return real_listdir(path)

    def exists(path):
        if str(path) == run.job("a", "queued"):
            claim_it()
        return real_exists(path)

    finder = LostFinder(confirm=2.0)
    monkeypatch.setattr(os, "listdir", listdir)
    monkeypatch.setattr(os.path, "exists", exists)
    first = finder.check(run, 1, mono=0.0)
    second = finder.check(run, 1, mono=3.0)
    monkeypatch.undo()
    assert first == []
    copies = [e for e in entries(run) if e.endswith("/a.json")]
    work(pool, run)
    runs = ledger.read_text().count("a")
    assert (second, copies, runs) == ([], ["queued/a.json"], 1)


# ---- 7. a resume whose take of a claim hits a full disk leaves its grabs in .coord/ ------
def test_a_resume_that_cannot_write_a_take_puts_back_what_it_grabbed(pool, make_workflow, monkeypatch) -> None:
    """README: when the disk fills up, 'a resume says so in one line (exit 1) and puts back
    what it had grabbed'. The take of a stale claim writes a record (fence.leave ->
    write_temp); its OSError escapes _grab_all, which only undoes on _Moved. The jobs already
    grabbed (here: b, from failed/) stay in .coord/<token>/ after the resume exits: invisible
    to workers and to `ls failed/`, until a worker's housekeeping settles the abandoned change."""
    from executioner.coordinator.change import apply
    from executioner.coordinator.plan import Options, plan_resume, workflow_for_resume

    run = submit(pool, make_workflow([{"id": "a", "command": "true"}, {"id": "b", "command": "false"}]))
    dead = store.claim(run, "a", store.Owner("gone-1", "far-away-host", 1, 1.0))
    store.write_lock(dead)  # no heartbeat file: a resume judges it stale and takes it back
    claim = store.claim(run, "b", store.Owner.current("w"))
    assert store.finish(claim, dict(claim.record, reason="exit code 1"), "failed")
    real = fsio.write_temp

    def full(directory, payload):
        if os.path.basename(directory) == "running":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(directory, payload)

    monkeypatch.setattr(fsio, "write_temp", full)
    pool_layout = PoolLayout(str(pool))
    workflow = workflow_for_resume(run, None)
    with pytest.raises(Refused, match="cannot take a claim back"):
        apply(run, lambda: plan_resume(pool_layout, run, workflow, Options(stale_after=60)))
    monkeypatch.undo()
    staged = [os.path.join(d, n) for d, _, ns in os.walk(run.staging_root) for n in ns] \
        if os.path.isdir(run.staging_root) else []
    # b is back in failed/; a (its worker dead) waits in the resume's private folder, still
    # running, until a worker places it once the disk has room
    assert staged == [] and entries(run)[-1] == "failed/b.json"
    assert [(r.job_id, r.private is not None) for r in store.running_jobs(run)] == [("a", True)]
    reaper = Reaper(PoolLayout(str(pool)), stale_after=60)
    assert reaper.reap(run, mono=0) == [] and reaper.reap(run, mono=61) == ["a"]
    assert entries(run) == ["queued/a.json", "failed/b.json"]


# ---- 8. a take undone after its write failed strands a live worker's claim forever ------
@pytest.mark.timeout(120)
def test_a_claim_put_back_by_a_taker_whose_write_failed_is_not_stranded(pool, make_workflow, monkeypatch) -> None:
    """A reaper (or a resume --force) fences a claim, then cannot write the lost record (full
    disk): fence._undo puts the claim back under its own name. The owner, alive, saw its
    claim gone meanwhile (its once-a-second check), stopped its command and, finding the job
    'running' in the taker's private folder, wrote nothing (_vanished). Then the claim
    reappears: running/a@T.json, locked by a live worker that no longer runs it and keeps
    beating. No reaper ever calls it stale, and the worker itself never becomes idle
    (_work_pending counts that claim): the job and the run hang for the worker's lifetime."""
    from executioner.liveness.reap import requeue_lost
    from executioner.execution.worker import Worker

    run = submit(pool, make_workflow([{"id": "a", "command": "sleep 30"}]))
    worker = Worker(str(pool), run_ids=[run.run_id], exit_when_idle=1.0, poll_min=0.02, poll_max=0.2,
                    heartbeat=0.5, stale_after=10)
    vanished = threading.Event()
    real_vanished, real_write_temp = worker._vanished, fsio.write_temp

    def spy_vanished(claim, why):
        real_vanished(claim, why)
        vanished.set()

    def slow_full_disk(directory, payload):
        if threading.current_thread().name == "taker" and os.path.basename(directory) == "running":
            vanished.wait(20)  # the write takes a while (NFS), and then fails
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write_temp(directory, payload)

    monkeypatch.setattr(worker, "_vanished", spy_vanished)
    monkeypatch.setattr(fsio, "write_temp", slow_full_disk)
    t = threading.Thread(target=worker.run, daemon=True)
    t.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        running = [r for r in store.running_jobs(run) if r.private is None]
        if running and os.path.exists(run.claim_record("a", 1)):
            break
        time.sleep(0.05)
    [claim] = running
    record = read_json(claim.path)
    lock = store.claim_lock(run, "a", claim.token, record)

    def take() -> None:
        try:
            requeue_lost(run, "a", claim.token, record, "judged stale", lock)
        except OSError:
            pass  # the taker gives up; its claim was put back untouched

    taker = threading.Thread(target=take, name="taker")
    taker.start()
    taker.join(30)
    monkeypatch.undo()
    assert vanished.is_set()
    t.join(15)  # a healthy worker runs the job again (or hands it back) and exits when idle
    other = Reaper(PoolLayout(str(pool)), stale_after=2)  # another checker, watching for 5 s
    moved = []
    for _ in range(10):
        moved += other.reap(run)
        time.sleep(0.5)
    stranded = t.is_alive() and os.path.exists(claim.path) and not moved
    worker.stop()
    t.join(30)
    assert not stranded, "running/a@T.json stays, locked by a live worker that no longer runs it"
