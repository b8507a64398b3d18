"""Group limits across the pool (workflow ``limits``, job ``limit``): slots taken and given
back by rename under RUN/limits/<name>/, with real worker processes where concurrency
matters. Each job appends one line to a ledger (start, end, job) when it ends; the
assertions read it as a user would: never more than N of a limit running at once."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable

import psutil
import pytest

from executioner import PoolLayout, Worker
from executioner.execution.capacity import Capacity
from executioner.liveness.reap import requeue_lost
from executioner.protocol import slots, store
from executioner.protocol.scrub import read_checked

from .conftest import cli, files
from .test_placement_run import RECORD, overlapping, read_ledger, submit, worker_process

LIMITS = {"download": 4}


def downloads(ledger: Path, n: int, sleep: float, limit: str = "download") -> list[dict[str, Any]]:
    return [{"id": f"dl{i:02d}", "command": f"{RECORD} {sleep} '{ledger}'", "limit": limit} for i in range(n)]


def wait_for(what: Callable[[], Any], timeout: float = 30.0, step: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = what()
        if found:
            return found
        time.sleep(step)
    raise AssertionError(f"waited {timeout} s in vain for {what}")


def slot_files(run: Any, name: str = "download") -> tuple[list[str], list[str]]:
    return sorted(os.listdir(run.slots_free(name))), sorted(os.listdir(run.slots_held(name)))


def most_at_once(ledger: Path) -> int:
    return max(len(o) for o in overlapping(read_ledger(ledger)))


def finish(procs: list[subprocess.Popen[str]], timeout: float = 50) -> None:
    for p in procs:
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            raise


def kill_tree(pid: int) -> None:
    """SIGKILL a worker and every command it started (they run in sessions of their own)."""
    proc = psutil.Process(pid)
    family = [proc, *proc.children(recursive=True)]
    for p in family:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(family, timeout=10)


# ---- the layout ---------------------------------------------------------------------------
def test_submit_creates_one_free_slot_per_unit(pool: Path, tmp_path: Path) -> None:
    run = submit(pool, tmp_path, downloads(tmp_path / "l", 2, 0), limits={"download": 3, "other": 1})
    assert slot_files(run) == (["0", "1", "2"], [])
    assert slot_files(run, "other") == (["0"], [])


def test_a_run_without_limits_has_no_limits_folder(pool: Path, tmp_path: Path) -> None:
    run = submit(pool, tmp_path, [{"id": "a", "command": "true"}])
    assert not os.path.exists(run.limits_dir)


# ---- four real workers ----------------------------------------------------------------------
@pytest.mark.timeout(90)
def test_four_workers_never_run_more_than_the_limit(pool: Path, tmp_path: Path) -> None:
    """40 downloads, limit 4, 4 worker processes of -j 4 (16 could run at once)."""
    ledger = tmp_path / "ledger"
    run = submit(pool, tmp_path, downloads(ledger, 40, 0.15), limits=LIMITS)
    procs = [worker_process(pool, "-j", "4") for _ in range(4)]
    finish(procs)
    rows = read_ledger(ledger)
    assert sorted(r[2] for r in rows) == [f"dl{i:02d}" for i in range(40)]  # each ran once
    assert most_at_once(ledger) <= 4
    assert most_at_once(ledger) >= 2  # the limit, not a single worker, is what held them
    assert len(files(run, "done")) == 40
    assert slot_files(run) == (["0", "1", "2", "3"], [])


@pytest.mark.timeout(90)
def test_a_sigkilled_worker_gives_its_slots_back(pool: Path, tmp_path: Path) -> None:
    """A worker holding every slot is SIGKILLed with its commands; the others requeue its
    claims (same host: its process is gone, no wait for staleness) and free its slots."""
    ledger = tmp_path / "ledger"
    run = submit(pool, tmp_path, downloads(ledger, 20, 0.3), limits=LIMITS)
    first = worker_process(pool, "-j", "4")
    wait_for(lambda: len(slot_files(run)[1]) == 4)
    held = slot_files(run)[1]
    tokens = {name.partition("@")[2] for name in held}
    assert tokens <= {n.partition("@")[2][:-5] for n in os.listdir(run.state_dir("running"))}
    kill_tree(first.pid)
    procs = [worker_process(pool, "-j", "4") for _ in range(3)]
    finish(procs)
    assert len(files(run, "done")) == 20
    assert most_at_once(ledger) <= 4
    assert slot_files(run) == (["0", "1", "2", "3"], [])


# ---- races ------------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_a_slow_owner_never_frees_a_slot_someone_else_holds(pool: Path, tmp_path: Path) -> None:
    """A reaper takes a running claim (its worker is slow, not dead) and frees its slot; a
    new claim takes that slot; the slow owner's command ends: its release finds its own name
    gone and frees nothing. `ls held/` shows who holds what all along."""
    gate = tmp_path / "gate"
    run = submit(pool, tmp_path, [{"id": "dl", "command": f"while [ ! -e '{gate}' ]; do sleep 0.05; done",
                                   "limit": "one"}], limits={"one": 1})
    worker = Worker(str(pool), slots=1, poll_min=0.02, poll_max=0.2, sweep_every=0.1, capacity=Capacity(cpus=1))
    t = threading.Thread(target=worker.run, daemon=True)
    t.start()
    try:
        [held] = wait_for(lambda: slot_files(run, "one")[1])
        i, token = slots.parse_held(held) or (None, None)
        assert i == 0 and os.path.exists(run.running("dl", token))  # held/0@<token>: the claim's token
        assert slot_files(run, "one")[0] == []
        record, _ = read_checked(run.running("dl", token), "dl")
        assert requeue_lost(run, "dl", token, record, "taken for the test", None) == "queued"
        # the reaper gave the slot back; someone else takes it at once
        assert slot_files(run, "one") == (["0"], [])
        assert slots.take(run, "one", "someoneelse") == 0
        gate.touch()  # the slow owner's command ends (it was killed already: its claim is gone)
        time.sleep(1.0)  # the owner's release has happened by now (it polls its claim every 0.2 s)
        assert slot_files(run, "one") == ([], ["0@someoneelse"])
        assert "dl.json" in files(run, "queued")  # nobody may run it while the slot is held
        assert slots.release(run, "one", 0, "someoneelse")
        wait_for(lambda: "dl.json" in files(run, "done"))
        assert slot_files(run, "one") == (["0"], [])
    finally:
        gate.touch()
        worker.stop()
        t.join(20)


def test_owner_and_reaper_release_at_once_one_wins(pool: Path, tmp_path: Path, monkeypatch) -> None:
    """Both renames of held/0@T race (forced: the owner's waits inside os.rename until the
    reaper's is done); exactly one succeeds and free/0 exists once."""
    run = submit(pool, tmp_path, downloads(tmp_path / "l", 1, 0, "one"), limits={"one": 1})
    assert slots.take(run, "one", "T") == 0
    real = os.rename
    reaper_done = threading.Event()
    results: dict[str, bool] = {}

    def slow_rename(src: Any, dst: Any, *a: Any, **k: Any) -> None:
        if threading.current_thread().name == "owner":
            reaper_done.wait(10)
        real(src, dst, *a, **k)

    monkeypatch.setattr(os, "rename", slow_rename)
    owner = threading.Thread(target=lambda: results.update(owner=slots.release(run, "one", 0, "T")), name="owner")
    owner.start()
    results["reaper"] = slots.release_token(run, "one", "T") == 1
    reaper_done.set()
    owner.join(10)
    assert results == {"owner": False, "reaper": True}
    assert slot_files(run, "one") == (["0"], [])


def test_a_held_slot_without_a_claim_is_freed_after_two_looks(pool: Path, tmp_path: Path) -> None:
    run = submit(pool, tmp_path, downloads(tmp_path / "l", 1, 0, "one"), limits={"one": 2})
    assert slots.take(run, "one", "deadclaim") is not None
    finder = slots.OrphanFinder(confirm=5.0)
    assert finder.check(run, {"one": 2}, 100.0) == 0  # first look: noted
    assert finder.check(run, {"one": 2}, 102.0) == 0  # too soon
    assert len(slot_files(run, "one")[1]) == 1
    assert finder.check(run, {"one": 2}, 106.0) == 1
    assert slot_files(run, "one") == (["0", "1"], [])


def test_a_held_slot_of_a_running_claim_is_never_freed(pool: Path, tmp_path: Path) -> None:
    run = submit(pool, tmp_path, downloads(tmp_path / "l", 1, 0, "one"), limits={"one": 1})
    claim = store.claim(run, "dl00", store.Owner.current("w"))
    assert claim is not None and slots.take(run, "one", claim.token) == 0
    finder = slots.OrphanFinder(confirm=1.0)
    for mono in (0.0, 5.0, 10.0):
        assert finder.check(run, {"one": 1}, mono) == 0
    assert slot_files(run, "one") == ([], [f"0@{claim.token}"])


# ---- resume -----------------------------------------------------------------------------------
@pytest.mark.timeout(90)
def test_a_resume_lowering_the_limit(pool: Path, tmp_path: Path, make_workflow) -> None:
    ledger = tmp_path / "ledger"
    wf = make_workflow(downloads(ledger, 12, 0.15), limits={"download": 4})
    assert cli("exec-submit", "--pool", str(pool), str(wf)).returncode == 0
    [run_id] = PoolLayout(str(pool)).run_ids()
    run = PoolLayout(str(pool)).run(run_id)
    # a claim still running holds slot 3 while the limit is lowered to 2
    claim = store.claim(run, "dl11", store.Owner.current("w"))
    assert claim is not None and slots.take(run, "download", claim.token, rng=None) is not None
    [held] = slot_files(run)[1]
    i = int(held.partition("@")[0])
    wf2 = make_workflow(downloads(ledger, 12, 0.15), limits={"download": 2})
    r = cli("exec-submit", "--pool", str(pool), "--resume", run_id, str(wf2))
    assert r.returncode == 0, r.stderr
    free, now_held = slot_files(run)
    assert now_held == [held] and set(free) == {"0", "1"} - {str(i)}
    # given back by a worker that knows the new N: retired if past it
    assert slots.release(run, "download", i, claim.token, 2)
    assert slot_files(run)[0] == ["0", "1"]
    assert store.release(claim)
    procs = [worker_process(pool, "-j", "4") for _ in range(2)]
    finish(procs)
    assert len(read_ledger(ledger)) == 12 and most_at_once(ledger) <= 2
    assert slot_files(run) == (["0", "1"], [])


def test_a_resume_raising_the_limit_and_adding_one(pool: Path, tmp_path: Path, make_workflow) -> None:
    wf = make_workflow(downloads(tmp_path / "l", 2, 0), limits={"download": 2})
    assert cli("exec-submit", "--pool", str(pool), str(wf)).returncode == 0
    [run_id] = PoolLayout(str(pool)).run_ids()
    run = PoolLayout(str(pool)).run(run_id)
    assert slots.take(run, "download", "T") is not None
    jobs = downloads(tmp_path / "l", 2, 0) + [{"id": "up", "command": "true", "limit": "upload"}]
    wf2 = make_workflow(jobs, limits={"download": 5, "upload": 1})
    r = cli("exec-submit", "--pool", str(pool), "--resume", run_id, str(wf2))
    assert r.returncode == 0, r.stderr
    free, held = slot_files(run)
    assert len(held) == 1 and sorted(free + [held[0].partition("@")[0]]) == ["0", "1", "2", "3", "4"]
    assert slot_files(run, "upload") == (["0"], [])


# ---- arrays ------------------------------------------------------------------------------------
@pytest.mark.timeout(90)
def test_a_chunked_array_never_runs_more_tasks_than_the_limit(pool: Path, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    jobs = [{"id": "sweep", "command": f"{RECORD} 0.15 '{ledger}' EXEC_TASK_ID", "array": 24, "chunk": 8,
             "limit": "download"}]
    run = submit(pool, tmp_path, jobs, limits={"download": 3})
    procs = [worker_process(pool, "-j", "4") for _ in range(2)]
    finish(procs)
    rows = read_ledger(ledger)
    assert sorted(r[3][0] for r in rows) == sorted(f"sweep:{i}" for i in range(24))
    assert most_at_once(ledger) <= 3
    assert slot_files(run) == (["0", "1", "2"], [])


# ---- Slurm-DAG backend ---------------------------------------------------------------------------
def test_the_slurm_backend_refuses_limits(pool: Path, tmp_path: Path, make_workflow) -> None:
    wf = make_workflow(downloads(tmp_path / "l", 2, 0), limits={"download": 2})
    r = cli("exec-submit", "--pool", str(pool), "--backend", "slurm", str(wf))
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "limits" in r.stderr
    assert PoolLayout(str(pool)).run_ids() == []


def test_a_slot_freed_and_taken_again_between_two_looks_is_left_alone(pool: Path, tmp_path: Path) -> None:
    """RACE: the sweep's first look falls between a reaper's requeue and its release (the
    slot is held by no claim for an instant); by the second look the reaper gave it back
    and a new claim holds slot 0 under its own token: nothing is freed."""
    run = submit(pool, tmp_path, downloads(tmp_path / "l", 1, 0, "one"), limits={"one": 1})
    assert slots.take(run, "one", "reaped") == 0
    finder = slots.OrphanFinder(confirm=1.0)
    assert finder.check(run, {"one": 1}, 0.0) == 0 and finder.pending(run.run_id)
    assert slots.release_token(run, "one", "reaped") == 1  # the reaper's release
    claim = store.claim(run, "dl00", store.Owner.current("w"))
    assert claim is not None and slots.take(run, "one", claim.token) == 0
    assert finder.check(run, {"one": 1}, 5.0) == 0
    assert slot_files(run, "one") == ([], [f"0@{claim.token}"])


def test_a_claim_never_locked_is_reaped_with_its_slot(pool: Path, tmp_path: Path) -> None:
    """A worker died between its slot and its lock: the reaper requeues the claim (never
    locked: stale after stale_after of its own watching) and gives its slot back."""
    from executioner.liveness.reap import Reaper

    run = submit(pool, tmp_path, downloads(tmp_path / "l", 1, 0, "one"), limits={"one": 1})
    claim = store.claim(run, "dl00", store.Owner.current("w"))
    assert claim is not None and slots.take(run, "one", claim.token) == 0
    reaper = Reaper(PoolLayout(str(pool)), stale_after=5.0)
    assert reaper.reap(run, mono=100.0) == []  # first seen: not stale yet
    assert reaper.reap(run, mono=106.0) == ["dl00"]
    assert files(run, "queued") == ["dl00.json"]
    assert slot_files(run, "one") == (["0"], [])


def test_a_resume_makes_the_slots_a_run_lacks(pool: Path, tmp_path: Path, make_workflow) -> None:
    """A run submitted before limits were enforced has no limits/: its limited jobs wait
    (never run unlimited), and a plain resume makes the slots, whole (built aside, renamed in)."""
    import shutil

    wf = make_workflow(downloads(tmp_path / "l", 2, 0), limits={"download": 3})
    assert cli("exec-submit", "--pool", str(pool), str(wf)).returncode == 0
    [run_id] = PoolLayout(str(pool)).run_ids()
    run = PoolLayout(str(pool)).run(run_id)
    shutil.rmtree(run.limits_dir)
    w = Worker(str(pool), slots=2, exit_when_idle=0.3, poll_min=0.02, poll_max=0.1, sweep_every=0.05,
               capacity=Capacity(cpus=2))
    w.run()
    assert files(run, "queued") == ["dl00.json", "dl01.json"]
    r = cli("exec-submit", "--pool", str(pool), "--resume", run_id)
    assert r.returncode == 0, r.stderr
    assert slot_files(run) == (["0", "1", "2"], [])
    assert [n for n in os.listdir(run.limits_dir) if n.startswith(".")] == []


@pytest.mark.timeout(60)
def test_every_way_a_try_ends_gives_its_slot_back(pool: Path, tmp_path: Path) -> None:
    """With one slot, jobs that fail and retry, time out and fail for good all run one after
    another: each try gave the slot back (else the next would wait for ever)."""
    ledger = tmp_path / "ledger"
    jobs = [{"id": "retried", "command": f"{RECORD} 0 '{ledger}'; test \"$EXEC_TRY\" -ge 2", "limit": "one",
             "max_retries": 1, "retry_delay": 0},
            {"id": "slow", "command": "sleep 30", "limit": "one", "timeout": 0.5, "kill_grace": 0.5},
            {"id": "bad", "command": "exit 3", "limit": "one"},
            {"id": "fine", "command": f"{RECORD} 0 '{ledger}'", "limit": "one"}]
    run = submit(pool, tmp_path, jobs, limits={"one": 1})
    w = Worker(str(pool), slots=3, exit_when_idle=0.5, poll_min=0.02, poll_max=0.1, sweep_every=0.05,
               capacity=Capacity(cpus=3))
    w.orphans = slots.OrphanFinder(confirm=1e9)  # no sweep's help: each try gives its own slot back
    w.run()
    assert files(run, "done") == ["fine.json", "retried.json"]
    assert files(run, "failed") == ["bad.json", "slow.json"]
    assert slot_files(run, "one") == (["0"], [])


def holder_pids(run: Any) -> set[int]:
    """The worker pids holding slots now, as a user finds them: held/<i>@<token> ->
    running/<job>@<token>.json -> its lock in logs/."""
    pids = set()
    running = {n.partition("@")[2][:-5]: n.partition("@")[0] for n in os.listdir(run.state_dir("running"))
               if n.endswith(".json")}
    for name in slot_files(run)[1]:
        token = name.partition("@")[2]
        if token in running:
            job = running[token]
            try:
                record, _ = read_checked(run.running(job, token), job)
            except FileNotFoundError:
                continue
            lock = store.claim_lock(run, job, token, record) if record else None
            if lock:
                pids.add(int(lock["pid"]))
    return pids


@pytest.mark.timeout(90)
def test_one_of_four_workers_sigkilled_mid_run(pool: Path, tmp_path: Path) -> None:
    """4 workers of -j 4 share 40 downloads of limit 4; one holding a slot is SIGKILLed (with
    its command); the others free its slots and the run completes, never more than 4 at once."""
    ledger = tmp_path / "ledger"
    run = submit(pool, tmp_path, downloads(ledger, 40, 0.2), limits=LIMITS)
    procs = [worker_process(pool, "-j", "4") for _ in range(4)]
    ours = {p.pid: p for p in procs}
    victim = wait_for(lambda: next(iter(holder_pids(run) & set(ours)), None))
    kill_tree(victim)
    finish([p for p in procs if p.pid != victim])
    rows = read_ledger(ledger)
    assert len(files(run, "done")) == 40 and {r[2] for r in rows} == {f"dl{i:02d}" for i in range(40)}
    assert most_at_once(ledger) <= 4
    assert slot_files(run) == (["0", "1", "2", "3"], [])


class _InOrder:
    """An rng whose shuffle keeps the listing's order (both takers try slot 0 first)."""

    def shuffle(self, items: list[Any]) -> None:
        items.sort()


def test_two_takers_of_one_slot_one_wins_the_other_takes_another(pool: Path, tmp_path: Path,
                                                                  monkeypatch) -> None:
    """RACE: both list free/ before either renames; the second's rename of free/0 fails
    (ENOENT) and it takes free/1: never both holding slot 0."""
    run = submit(pool, tmp_path, downloads(tmp_path / "l", 1, 0, "two"), limits={"two": 2})
    stale = slots._free_numbers(run, "two")  # the listing both took
    monkeypatch.setattr(slots, "_free_numbers", lambda _run, _name: list(stale))
    assert slots.take(run, "two", "A", rng=_InOrder()) == 0  # type: ignore[arg-type]
    assert slots.take(run, "two", "B", rng=_InOrder()) == 1  # type: ignore[arg-type]
    assert slots.take(run, "two", "C", rng=_InOrder()) is None  # type: ignore[arg-type]
    monkeypatch.undo()
    assert slot_files(run, "two") == ([], ["0@A", "1@B"])


def test_two_resumes_adding_one_limit_publish_it_once(pool: Path, tmp_path: Path) -> None:
    """RACE: two coordinators build a new limit's folder at once: one rename of the name wins,
    the other's is dropped whole (no slot of it ever seen)."""
    run = submit(pool, tmp_path, downloads(tmp_path / "l", 1, 0, "two"), limits={"two": 2})
    assert slots._publish(run, "new", 3) is True
    assert slots.take(run, "new", "A") is not None
    assert slots._publish(run, "new", 3) is False  # the second coordinator
    free, held = slot_files(run, "new")
    assert len(free) == 2 and len(held) == 1
    assert sorted(os.listdir(run.limits_dir)) == ["new", "two"]  # no temp folder left
