"""An adversarial review of task arrays (session r3): damaged chunk files and journals,
crashes in a chunk's life, views over all of it. Each test was written first and seen to
fail on the code before its fix."""

from __future__ import annotations

import collections
import errno
import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from executioner import PoolLayout, RunLayout, create_run, load_workflow, run_status
from executioner.liveness.reap import requeue_lost
from executioner.protocol import store

from .conftest import cli, files


def submit(pool: Path, tmp_path: Path, jobs: list[dict], **top: Any) -> RunLayout:
    wf = tmp_path / "wf.yaml"
    wf.write_text(yaml.safe_dump({"name": "arr", "jobs": jobs, **top}, sort_keys=False))
    return create_run(PoolLayout(str(pool)), load_workflow(str(wf)))


def claimed(run: RunLayout, unit: str) -> tuple[store.Claim, dict[str, Any]]:
    """``unit`` claimed and locked by a worker of another host that is gone."""
    claim = store.claim(run, unit, store.Owner("w-gone", "elsewhere", 999999, 1.0))
    assert claim is not None
    store.write_lock(claim)
    return claim, json.loads(Path(claim.lock).read_text())


def no_traceback(result: Any) -> None:
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, result.stderr


# ---- 1. a journal of the wrong shape ----------------------------------------------------
BAD_LINES = [
    b"garbage that is not json",
    b'{"task": 1, "status": "done", "exit": 0, "start": "yesterday", "end": 5}',
    b'{"task": 2, "status": "done", "exit": 0, "start": 1, "end": [2]}',
    b'{"task": 3, "status": "done", "exit": 0, "out": 7}',
    b'{"task": 4, "status": "done", "exit": 0, "out": [1, 2, 3, 4]}',
    b'{"task": 5, "status": 5}',
    b'{"task": -1, "status": "done"}',
    b'{"task": 99999999999999999999999, "status": "done"}',
    b'{"task": 6, "status": "done", "exit": "zero"}',
    b'{"task": 7, "status": "done", "exit": 0, "reason": ["x"], "signal": 9}',
    b'{"task": true, "status": "done"}',
    b'[1, 2]',
]


def test_a_journal_of_the_wrong_shape_never_stops_a_chunk_being_taken_over(pool: Path, tmp_path: Path) -> None:
    """Lines a crash, a disk or a hand could leave in a journal: each unusable one counts as
    no line (its task runs again); the others keep their result; the chunk leaves running/."""
    run = submit(pool, tmp_path, [{"id": "s", "array": 10, "chunk": 10, "command": "true"}])
    claim, lock = claimed(run, "s.0-9")
    good = [b'{"task": 0, "status": "done", "exit": 0, "start": 1.0, "end": 2.0, "out": [0, 0], "err": [0, 0]}',
            b'{"task": 8, "status": "done", "exit": 0}', b'{"task": 8, "status": "done", "exit": 0}',
            b'{"task": 42, "status": "done", "exit": 0}']
    Path(run.task_journal("s.0-9", 1)).write_bytes(b"\n".join([*good, *BAD_LINES]) + b'\n{"task": 9, "sta')
    assert requeue_lost(run, "s.0-9", claim.token, claim.record, "stale", lock) is not None
    assert files(run, "running") == []
    done = sorted(files(run, "done"))
    assert done == ["s.0.json", "s.8.json"], done
    assert files(run, "queued") == ["s.1-7.json", "s.9.json"]
    record = json.loads(Path(run.job("s.1-7", "queued")).read_text())
    assert record["tries"][-1]["results"]["status"] == ["lost"] * 7
    no_traceback(cli("exec-status", str(pool), run.run_id, "--job", "s:0"))


def test_an_unreadable_journal_counts_as_none(pool: Path, tmp_path: Path, monkeypatch) -> None:
    run = submit(pool, tmp_path, [{"id": "s", "array": 4, "chunk": 4, "command": "true"}])
    claim, lock = claimed(run, "s.0-3")
    journal = run.task_journal("s.0-3", 1)
    Path(journal).write_text('{"task": 0, "status": "done", "exit": 0}\n')
    real = os.open

    def guarded(path: Any, flags: int, *a: Any, **kw: Any) -> int:
        if isinstance(path, str) and os.path.abspath(path) == os.path.abspath(journal):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        return real(path, flags, *a, **kw)

    monkeypatch.setattr(os, "open", guarded)
    assert requeue_lost(run, "s.0-3", claim.token, claim.record, "stale", lock) == "queued"
    assert files(run, "running") == [] and files(run, "queued") == ["s.0-3.json"]


# ---- 2. a chunk file whose content disagrees with its name ------------------------------
def _retarget(run: RunLayout, state: str, unit: str, new_unit: str, **changes: Any) -> None:
    record = json.loads(Path(run.job(unit, state)).read_text())
    record.update(id=new_unit, **changes)
    os.unlink(run.job(unit, state))
    Path(run.job(new_unit, state)).write_text(json.dumps(record))


@pytest.mark.parametrize("name, changes", [
    pytest.param("s.0-7", {"tasks": [0, 3]}, id="tasks-fewer-than-name"),
    pytest.param("s.0-7", {"tasks": [4, 7]}, id="tasks-elsewhere"),
    pytest.param("s.0-99999999999", {"tasks": [0, 7]}, id="name-out-of-range"),
    pytest.param("s.5-3", {"tasks": [0, 7]}, id="name-reversed"),
    pytest.param("s.00-7", {"tasks": [0, 7]}, id="name-zero-padded"),
    pytest.param("s.0-7", {"tasks": [0, 7], "job": "t"}, id="other-array"),
])
def test_a_chunk_whose_content_disagrees_with_its_name_is_quarantined_and_its_tasks_run_once(
        pool: Path, tmp_path: Path, name: str, changes: dict) -> None:
    from executioner.execution.worker import Worker

    ledger = tmp_path / "ledger"
    run = submit(pool, tmp_path, [{"id": "s", "array": 8, "chunk": 8, "command": f"echo s{{index}} >> {ledger}"},
                                  {"id": "t", "array": 8, "chunk": 8, "command": f"echo t{{index}} >> {ledger}"}])
    _retarget(run, "queued", "s.0-7", name, **changes)
    worker = Worker(str(pool), run_ids=[run.run_id], exit_when_idle=3.0, poll_min=0.02, poll_max=0.2,
                    sweep_every=0.1)
    worker.lost_every = 0.1
    worker.lost.confirm = 0.2
    worker.run()
    counts = collections.Counter(ledger.read_text().split())
    assert counts == collections.Counter([f"{j}{i}" for j in "st" for i in range(8)]), counts
    assert run_status(run)["state"] == "done"
    assert os.listdir(run.quarantine_dir)


# ---- 3. two chunk files that share tasks --------------------------------------------------
def _copy_chunk(run: RunLayout, state: str, unit: str, new_unit: str, lo: int, hi: int, dst: str = "queued") -> None:
    record = json.loads(Path(run.job(unit, state)).read_text())
    record.update(id=new_unit, tasks=[lo, hi])
    Path(run.job(new_unit, dst)).write_text(json.dumps(record))


def test_overlapping_chunk_files_are_said_and_one_is_quarantined_before_tasks_run_twice(
        pool: Path, tmp_path: Path) -> None:
    from executioner.execution.worker import Worker
    from executioner.protocol.rebuild import LostFinder

    ledger = tmp_path / "ledger"
    run = submit(pool, tmp_path, [{"id": "s", "array": 16, "chunk": 8, "command": f"echo {{index}} >> {ledger}"}])
    _copy_chunk(run, "queued", "s.0-7", "s.4-11", 4, 11)
    data = json.loads(cli("exec-status", str(pool), run.run_id, "--json").stdout)
    row = data["jobs"][0]
    assert "8 tasks counted twice" in row["reason"] and "queued/s.4-11.json" in row["reason"], row
    finder = LostFinder(confirm=1.0)
    assert finder.check(run, 2, 100.0) == [] and files(run, "queued") == ["s.0-7.json", "s.4-11.json", "s.8-15.json"]
    finder.check(run, 2, 101.5)
    assert files(run, "queued") == ["s.0-7.json", "s.8-15.json"]
    assert "overlaps queued/s.0-7.json (tasks 4-7 would run or count twice)" in "".join(
        p.read_text() for p in Path(run.quarantine_dir).glob("*.reason"))
    worker = Worker(str(pool), run_ids=[run.run_id], exit_when_idle=2.0, poll_min=0.02, poll_max=0.2,
                    sweep_every=0.1)
    worker.lost_every = 0.1
    worker.lost.confirm = 0.2
    worker.run()
    assert collections.Counter(ledger.read_text().split()) == collections.Counter(str(i) for i in range(16))
    status = run_status(run)
    assert status["state"] == "done" and status["counts"]["done"] == 16


def test_an_overlap_with_done_tasks_leaves_the_done_ones_and_rebuilds_the_rest(pool: Path, tmp_path: Path) -> None:
    from executioner.execution.worker import Worker
    from executioner.protocol.rebuild import LostFinder

    ledger = tmp_path / "ledger"
    run = submit(pool, tmp_path, [{"id": "s", "array": 8, "chunk": 4, "command": f"echo {{index}} >> {ledger}"}])
    os.rename(run.job("s.0-3", "queued"), run.job("s.0-3", "done"))
    os.unlink(run.job("s.4-7", "queued"))
    _copy_chunk(run, "done", "s.0-3", "s.2-7", 2, 7)  # tasks 2-3 twice, 4-7 only here
    finder = LostFinder(confirm=1.0)
    finder.check(run, 1, 100.0)
    finder.check(run, 1, 101.5)
    assert files(run, "queued") == [] and files(run, "done") == ["s.0-3.json"]
    worker = Worker(str(pool), run_ids=[run.run_id], exit_when_idle=3.0, poll_min=0.02, poll_max=0.2,
                    sweep_every=0.1)
    worker.lost_every = 0.1
    worker.lost.confirm = 0.2
    worker.run()
    assert sorted(ledger.read_text().split()) == ["4", "5", "6", "7"]
    assert run_status(run)["counts"]["done"] == 8


def test_a_chunk_stalled_half_way_through_placing_its_pieces_is_counted_once(
        pool: Path, tmp_path: Path, monkeypatch) -> None:
    """A worker killed (or frozen) after its commit, between renaming its pieces out: the
    tasks already placed are counted where they are, the rest as running, none twice."""
    from executioner.protocol import fence
    from executioner.protocol.pieces import split

    run = submit(pool, tmp_path, [{"id": "s", "array": 8, "chunk": 8, "command": "true"}])
    claim, _ = claimed(run, "s.0-7")
    pieces = split(claim.record, None, lambda p: ("done" if p < 4 else "queued", None, None))

    def first_only(private: fence.Private, placed: list[tuple[str, str]]) -> str | None:
        os.rename(*placed[0])
        return None  # the process dies here

    monkeypatch.setattr(fence, "_place_pieces", first_only)
    store.finish_pieces(claim, pieces)
    assert files(run, "done") == ["s.0-3.json"] and len(files(run, "running")) == 1
    data = json.loads(cli("exec-status", str(pool), run.run_id, "--json").stdout)
    assert data["counts"]["done"] == 4 and data["counts"]["running"] == 4, data
    assert data["jobs"][0]["reason"] == "4 running, 4 done", data["jobs"][0]
    monkeypatch.undo()
    from executioner.liveness.reap import recover_private
    [private] = [r.private for r in store.running_jobs(run)]
    assert recover_private(run, private, "stalled") == "queued"
    assert files(run, "queued") == ["s.4-7.json"] and files(run, "running") == []


# ---- 4. views over damaged chunk files ----------------------------------------------------
@pytest.mark.parametrize("damage", [
    pytest.param(lambda r: r.update(tries=[{"status": "done", "try": 1, "results": {
        "first": 0, "status": ["done"] * 8, "duration": ["x"] * 8}}]), id="duration-text"),
    pytest.param(lambda r: r.update(tries=[{"status": "done", "try": 1, "results": {
        "first": 0, "status": ["done"] * 8, "exit": "abc"}}]), id="exit-column-text"),
    pytest.param(lambda r: r.update(tries=[{"status": "done", "try": 1, "results": {
        "first": 0, "status": ["done"] * 8, "exit": [10 ** 40] * 8}}]), id="exit-huge"),
    pytest.param(lambda r: r.update(tries=[{"status": "done", "try": 1, "results": {
        "first": 0, "status": ["done"] * 8, "out": [5] * 8}}]), id="out-not-a-span"),
    pytest.param(None, id="not-json"),
])
def test_every_view_of_an_array_with_a_damaged_chunk_says_so_in_one_line(pool: Path, tmp_path: Path, damage) -> None:
    run = submit(pool, tmp_path, [{"id": "s", "array": 16, "chunk": 8, "command": "true"}])
    path = Path(run.job("s.0-7", "queued"))
    if damage is None:
        path.write_text("{torn")
    else:
        record = json.loads(path.read_text())
        damage(record)
        path.write_text(json.dumps(record))
    listing = cli("exec-status", str(pool), run.run_id, "--job", "s", "--json")
    no_traceback(listing)
    rows = json.loads(listing.stdout)["tasks"]
    assert [r["task"] for r in rows] == [f"s:{i}" for i in range(16)]  # none left out
    assert all("its file cannot be used" in r["reason"] for r in rows[:8]) and rows[8]["reason"] is None
    table = cli("exec-status", str(pool), run.run_id, "--job", "s")
    no_traceback(table)
    assert table.returncode == 0
    one = cli("exec-status", str(pool), run.run_id, "--job", "s:4")
    no_traceback(one)
    assert one.returncode == 2 and one.stderr.count("\n") == 1
    assert "task s:4 is in queued/s.0-7.json, but its file cannot be used" in one.stderr, one.stderr
    for args in ((), ("--json",), ("--attempts",)):
        no_traceback(cli("exec-status", str(pool), run.run_id, *args))


# ---- 5. a chunk try whose log names are taken -------------------------------------------
@pytest.mark.parametrize("leftover", ["out", "tasks", "symlink"])
def test_a_chunk_try_moves_leftover_logs_aside_instead_of_losing_the_try(
        pool: Path, tmp_path: Path, leftover: str) -> None:
    """The logs of a try whose result could not be recorded (a full disk at the commit hands
    the chunk back untouched: its next claim is the same try number), or a planted link,
    are kept aside as a job's are; the try runs and uses up nothing."""
    from .conftest import precious, untouched, work

    ledger = tmp_path / "ledger"
    run = submit(pool, tmp_path, [{"id": "s", "array": 4, "chunk": 4, "command": f"echo {{index}} >> {ledger}"}])
    outside = precious(tmp_path)
    if leftover == "symlink":
        os.symlink(outside, run.task_journal("s.0-3", 1))
    elif leftover == "tasks":
        Path(run.task_journal("s.0-3", 1)).write_text('{"task": 0, "status": "done", "exit": 0}\n')
    else:
        Path(run.log("s.0-3", 1, "out")).write_text("the logs of an earlier run of try 1\n")
    work(pool, run)
    assert sorted(ledger.read_text().split()) == ["0", "1", "2", "3"]
    record = json.loads(Path(run.job("s.0-3", "done")).read_text())
    assert [t["status"] for t in record["tries"]] == ["done"], record["tries"]
    assert untouched(outside)
    assert any(".old-" in n for n in os.listdir(run.logs_dir))


# ---- 6. a private folder holding pieces that are not its chunk's -------------------------
def test_a_committed_pieces_folder_places_only_pieces_of_its_own_chunk(pool: Path, tmp_path: Path) -> None:
    """A crashed commit's folder with, besides its own pieces, a piece of another array, one
    past its chunk, or a plain job's (a hand's or a tool's): only its own are placed (else
    tasks it never ran would be marked done); the others are quarantined with the reason."""
    from executioner.liveness.reap import recover_private
    from executioner.protocol.pieces import split

    run = submit(pool, tmp_path, [{"id": "s", "array": 8, "chunk": 4, "command": "true"},
                                  {"id": "t", "array": 8, "chunk": 8, "command": "true"},
                                  {"id": "p", "command": "true"}])
    claim, _ = claimed(run, "s.0-3")
    folder = Path(run.private("s.0-3", claim.token, "pieces-abcdef-999999-elsewhere"))
    folder.mkdir()
    for state, unit, record in split(claim.record, None, lambda p: ("done" if p < 2 else "queued", None, None)):
        Path(run.piece(str(folder), unit, state)).write_text(json.dumps(record))
    t_record = json.loads(Path(run.job("t.0-7", "queued")).read_text())
    for unit in ("t.0-7", "s.4-7", "p"):
        Path(run.piece(str(folder), unit, "done")).write_text(json.dumps(dict(t_record, id=unit)))
    os.unlink(run.running("s.0-3", claim.token))  # committed: the chunk file is gone
    [private] = [r.private for r in store.running_jobs(run)]
    recover_private(run, private, "stalled")
    assert files(run, "done") == ["s.0-1.json"]
    assert files(run, "queued") == ["p.json", "s.2-3.json", "s.4-7.json", "t.0-7.json"]
    assert files(run, "running") == []
    notes = "".join(p.read_text() for p in Path(run.quarantine_dir).glob("*.reason"))
    assert notes.count("not a piece of chunk s.0-3") == 3, notes


# ---- 7. an each_line copy that was deleted -----------------------------------------------
def test_a_deleted_each_line_copy_is_named_in_one_line(pool: Path, tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_text("a\nb\n")
    run = submit(pool, tmp_path, [{"id": "per", "each_line": "in.txt", "command": "echo {line}"}])
    copy = run.attempt_lines(1, "per")
    os.unlink(copy)
    out = cli("exec-submit", "--pool", str(pool), "--resume", run.run_id, "--dry-run")
    no_traceback(out)
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert f"the run's copy of it, {copy}, is missing" in out.stderr, out.stderr


# ---- 8. SIGKILL inside a pieces commit, real processes -------------------------------------
WORKER = ("import sys\nfrom executioner import Worker\n"
          "Worker(sys.argv[1], run_ids=[sys.argv[2]], slots=2, exit_when_idle=1.0, poll_min=0.02, poll_max=0.2,"
          " sweep_every=0.1, stale_after=60.0).run()\n")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("moment", ["before-unlink", "after-unlink"])
def test_a_worker_killed_inside_its_pieces_commit_leaves_every_task_done_once(
        pool: Path, tmp_path: Path, moment: str) -> None:
    import signal
    import subprocess
    import sys
    import time

    ledger = tmp_path / "ledger"
    run = submit(pool, tmp_path, [{"id": "s", "array": 6, "chunk": 6, "max_retries": 1,
                                   "command": f"echo {{index}} >> {ledger}; test {{index}} != 2 || exit 3"}])
    env = {**os.environ, "EXEC_TEST_COMMIT_PAUSE": "3"}
    proc = subprocess.Popen([sys.executable, "-c", WORKER, str(pool), run.run_id], env=env,
                            stderr=subprocess.DEVNULL)
    running = Path(run.state_dir("running"))
    deadline = time.time() + 60
    caught = False
    while time.time() < deadline and not caught:
        for folder in running.glob("*+pieces-*"):
            names = os.listdir(folder) if folder.is_dir() else []
            has_chunk = "s.0-5.json" in names
            if any("~" in n for n in names) and has_chunk == (moment == "before-unlink"):
                caught = True
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert caught
    subprocess.run([sys.executable, "-c", WORKER, str(pool), run.run_id], timeout=90, check=True,
                   stderr=subprocess.DEVNULL)
    counts = collections.Counter(ledger.read_text().split())
    # task 2 fails once and is retried (max_retries 1); every other task ran once: the
    # journal said each had finished, so the recoverer kept its result
    assert counts == collections.Counter({"0": 1, "1": 1, "2": 2, "3": 1, "4": 1, "5": 1}), counts
    assert files(run, "running") == [] and files(run, "queued") == []
    data = json.loads(cli("exec-status", str(pool), run.run_id, "--json").stdout)
    assert data["counts"]["failed"] == 1 and data["counts"]["done"] == 5


# ---- 9. the journal is written within about a second of a task's end ---------------------
@pytest.mark.timeout(120)
def test_a_finished_task_is_in_the_journal_within_a_second_even_while_the_others_run_on(
        pool: Path, tmp_path: Path) -> None:
    """README: a task's journal line is written at most a second after it ends, so a crash
    runs again at most the last second of finished tasks. A quick task next to long ones
    waited in the buffer until another task ended (here: never, before the kill)."""
    import signal
    import subprocess
    import sys
    import time

    ledger = tmp_path / "ledger"
    run = submit(pool, tmp_path, [{"id": "s", "array": 2, "chunk": 2,
                                   "command": f"echo {{index}} >> {ledger}; test {{index}} = 0 || sleep 15"}])
    proc = subprocess.Popen([sys.executable, "-c", WORKER, str(pool), run.run_id], stderr=subprocess.DEVNULL)
    journal = Path(run.task_journal("s.0-1", 1))
    deadline = time.time() + 30
    while time.time() < deadline and not (ledger.exists() and sorted(ledger.read_text().split()) == ["0", "1"]):
        time.sleep(0.02)
    time.sleep(2.5)  # a second and a half more than the promise (the machine may be busy)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    lines = journal.read_text().splitlines() if journal.exists() else []
    assert [json.loads(x)["task"] for x in lines] == [0], lines


def test_a_log_write_cut_short_by_a_full_disk_goes_on_where_it_stopped(tmp_path: Path, monkeypatch) -> None:
    """A write that stops half way (ENOSPC after a short write) and is tried again must not
    write its first part twice: the journal's offsets would point into the wrong output."""
    from executioner.execution import tasks

    log = tasks.TryLog(str(tmp_path / "u.1.out"), str(tmp_path / "u.1.err"), str(tmp_path / "u.1.tasks"))
    output = b"==> u:0 try 1 done exit 0 <==\n" + b"x" * 1000 + b"\n"
    real, calls = os.write, []

    def flaky(fd: int, data: Any) -> int:
        calls.append(len(data))
        if len(calls) == 1:
            return real(fd, bytes(data)[:300])  # a short write
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data)

    monkeypatch.setattr(os, "write", flaky)
    with log.lock:
        log.buffers[0] += output
        with pytest.raises(OSError):
            log._flush()
    monkeypatch.undo()
    log.close()  # the disk has room again
    assert (tmp_path / "u.1.out").read_bytes() == output


# ---- 10. views of all of the above on a read-only pool -------------------------------------
@pytest.mark.timeout(120)
def test_every_view_of_a_damaged_array_works_on_a_read_only_pool_and_changes_nothing(
        pool: Path, tmp_path: Path) -> None:
    from .test_cli_faults import listing, read_only

    run = submit(pool, tmp_path, [{"id": "s", "array": 16, "chunk": 4, "command": "true"},
                                  {"id": "t", "array": 16, "chunk": 4, "command": "true",
                                   "dependencies": ["s:{index}"]}])
    _copy_chunk(run, "queued", "s.0-3", "s.2-5", 2, 5)  # an overlap
    Path(run.job("s.8-11", "queued")).write_text("{torn")  # a broken chunk
    claim, _ = claimed(run, "s.12-15")  # a crashed commit, with a piece not of its chunk
    folder = Path(run.private("s.12-15", claim.token, "pieces-abcdef-999999-elsewhere"))
    folder.mkdir()
    Path(run.piece(str(folder), "t.0-3", "done")).write_text(Path(run.job("t.0-3", "waiting")).read_text())
    os.rename(run.running("s.12-15", claim.token), folder / "s.12-15.json")
    Path(run.task_journal("s.12-15", 1)).write_text("garbage\n")
    before = listing(pool)
    for args in ((), ("--json",), ("--job", "s"), ("--job", "s", "--json"), ("--job", "s:4"), ("--job", "s:9"),
                 ("--job", "t:1"), ("--attempts",)):
        result = read_only(pool, "exec-status", str(pool), run.run_id, *args)
        no_traceback(result)
        assert result.returncode in (0, 2) and (result.returncode == 0 or result.stderr.count("\n") == 1), result
    data = json.loads(read_only(pool, "exec-status", str(pool), run.run_id, "--json").stdout)
    row = next(j for j in data["jobs"] if j["id"] == "s")
    assert row["counts"] == {"queued": 16, "running": 4} and "4 tasks counted twice" in row["reason"], row
    pool_view = read_only(pool, "exec-status", str(pool), "--json")
    assert pool_view.returncode == 0 and json.loads(pool_view.stdout)["runs"][0]["run_id"] == run.run_id
    assert listing(pool) == before


def test_a_chunk_past_a_stale_cached_array_size_is_not_refused(pool: Path, tmp_path: Path) -> None:
    """RACE: a resume that grew the array published run.json, then its new chunks; a worker
    whose cached sizes (or attribute cache) predate that must not quarantine them."""
    from executioner.protocol import ready

    run = submit(pool, tmp_path, [{"id": "s", "array": 8, "chunk": 4, "command": "true"}])
    ready.arrays_of(run)
    key, _ = ready._ARRAYS[run.root]
    ready._ARRAYS[run.root] = (key, {"s": 4})  # as seen before the growth
    claim = store.claim(run, "s.4-7", store.Owner("w-x", "elsewhere", 999999, 1.0))
    assert claim is not None and not os.path.exists(run.quarantine_dir)


# ---- 11. an internal error at the end of a chunk try ------------------------------------
def test_an_internal_error_after_a_chunk_ran_keeps_the_results_its_journal_holds(
        pool: Path, tmp_path: Path, monkeypatch) -> None:
    """An error of the worker's own once the tasks have run (and are in the journal) made the
    whole chunk one ``lost`` try: every task ran again, and past max_lost the whole chunk,
    tasks that succeeded included, went to failed/. Its journal is read, as a recoverer's."""
    from executioner.execution import chunk as chunk_module
    from .conftest import work

    ledger = tmp_path / "ledger"
    run = submit(pool, tmp_path, [{"id": "s", "array": 4, "chunk": 4, "max_lost": 1,
                                   "command": f"echo {{index}} >> {ledger}"}])

    def broken(self: Any, start: float, end: float) -> Any:
        raise RuntimeError("a bug of ours")

    monkeypatch.setattr(chunk_module.ChunkTry, "_pieces", broken)
    work(pool, run)
    assert sorted(ledger.read_text().split()) == ["0", "1", "2", "3"]  # each ran once
    assert files(run, "done") == ["s.0-3.json"] and files(run, "failed") == []
    record = json.loads(Path(run.job("s.0-3", "done")).read_text())
    assert record["tries"][0]["results"]["status"] == ["done"] * 4
    assert "a bug of ours" in record["tries"][0]["reason"]
