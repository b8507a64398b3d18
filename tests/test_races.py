"""Each # RACE: window in the store, forced deterministically."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from executioner.protocol import store
from executioner.protocol.fsio import read_json

from .conftest import files, submit, work


def one_job_run(pool: Path, make_workflow, **job):
    return submit(pool, make_workflow([{"id": "a", "command": "true", **job}]))


def owner(name: str) -> store.Owner:
    return store.Owner.current(name)


def test_two_claims_of_one_job_one_wins(pool: Path, make_workflow) -> None:
    run = one_job_run(pool, make_workflow)
    first = store.claim(run, "a", owner("w1"))
    second = store.claim(run, "a", owner("w2"))
    assert first is not None and second is None
    assert files(run, "running") == [f"a@{first.token}.json"]


def test_claim_race_between_threads_has_one_winner(pool: Path, make_workflow) -> None:
    run = one_job_run(pool, make_workflow)
    barrier = threading.Barrier(8)
    results: list[object] = []

    def go(i: int) -> None:
        barrier.wait()
        results.append(store.claim(run, "a", owner(f"w{i}")))

    threads = [threading.Thread(target=go, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r is not None for r in results) == 1


def test_finish_after_claim_taken_away_writes_nothing(pool: Path, make_workflow) -> None:
    """The fence: a worker whose claim was requeued meanwhile cannot complete the job."""
    run = one_job_run(pool, make_workflow)
    claim = store.claim(run, "a", owner("w1"))
    store.write_lock(claim)
    # a reaper takes the claim away: the job is back in queued/
    os.rename(claim.path, run.job("a", "queued"))
    before = Path(run.job("a", "queued")).read_bytes()
    record = dict(claim.record, tries=[{"try": 1, "status": "done"}])
    assert store.finish(claim, record, "done") is False
    assert files(run, "done") == [] and files(run, "queued") == ["a.json"]
    assert Path(run.job("a", "queued")).read_bytes() == before
    assert [n for n in os.listdir(run.state_dir("done"))] == []  # no temp file left behind
    # the claim's lock stays as the record of that try; it names the lost token
    assert read_json(claim.lock)["token"] == claim.token


def test_requeue_after_claim_taken_away_writes_nothing(pool: Path, make_workflow) -> None:
    run = one_job_run(pool, make_workflow)
    claim = store.claim(run, "a", owner("w1"))
    os.rename(claim.path, run.job("a", "done"))  # someone else finished it
    assert store.finish(claim, dict(claim.record, not_before=1.0), "queued") is False
    assert files(run, "queued") == [] and os.listdir(run.state_dir("queued")) == []
    assert files(run, "done") == ["a.json"]


def test_requeue_content_is_in_place_before_it_is_claimable(pool: Path, make_workflow, monkeypatch) -> None:
    """Whoever sees the job appear in queued/ reads the new content (with not_before)."""
    run = one_job_run(pool, make_workflow)
    claim = store.claim(run, "a", owner("w1"))
    seen: list[dict] = []
    real_rename = os.rename

    def spying_rename(src, dst):
        real_rename(src, dst)
        if dst == run.job("a", "queued"):
            seen.append(read_json(dst))  # a claimer racing right after the rename

    monkeypatch.setattr(os, "rename", spying_rename)
    assert store.finish(claim, dict(claim.record, not_before=123.0), "queued")
    assert seen and seen[0]["not_before"] == 123.0
    assert os.listdir(run.state_dir("running")) == []


def test_promotion_race_one_rename_wins(pool: Path, make_workflow) -> None:
    run = submit(pool, make_workflow([
        {"id": "x", "command": "true"}, {"id": "y", "command": "true"},
        {"id": "d", "command": "true", "dependencies": ["x", "y"]}]))
    for job in ("x", "y"):
        c = store.claim(run, job, owner("w"))
        assert store.finish(c, c.record, "done")
    # both finishers promote at once: exactly one moves d
    results = [store.promote(run, ["d"]), store.promote(run, ["d"])]
    assert results == [["d"], []]
    assert files(run, "queued") == ["d.json"] and files(run, "waiting") == []


def test_promotion_missed_by_a_crash_is_done_by_the_sweep(pool: Path, make_workflow, tmp_path: Path) -> None:
    run = submit(pool, make_workflow([
        {"id": "x", "command": "true"}, {"id": "d", "command": f"touch '{tmp_path}/ran'", "dependencies": ["x"]}]))
    c = store.claim(run, "x", owner("w"))
    assert store.finish(c, c.record, "done")  # ...and the worker dies before promoting d
    assert files(run, "waiting") == ["d.json"]
    work(pool, run)
    assert (tmp_path / "ran").exists() and files(run, "done") == ["d.json", "x.json"]


def test_temp_files_are_never_claimed(pool: Path, make_workflow) -> None:
    run = one_job_run(pool, make_workflow)
    tmp = Path(run.state_dir("queued")) / ".tmp-otherhost-123-abcd"
    tmp.write_text("{half a fi")
    assert store.list_jobs(run, "queued") == ["a"]
    work(pool, run)
    assert tmp.exists() and files(run, "done") == ["a.json"]


def test_a_running_job_shows_who_runs_it_from_its_claim_record(pool: Path, make_workflow) -> None:
    from executioner import run_status
    from executioner.protocol.fsio import HOST

    run = one_job_run(pool, make_workflow)
    claim = store.claim(run, "a", owner("w7"))
    [job] = run_status(run)["jobs"]
    assert (job["state"], job["host"]) == ("running", None)  # lock not written yet: no owner shown
    store.write_lock(claim)
    [job] = run_status(run)["jobs"]
    assert (job["state"], job["host"]) == ("running", HOST) and "worker w7" in job["reason"]
    assert os.path.basename(claim.lock) == "a.1.claim"
