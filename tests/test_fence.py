"""Leaving running/ through a private folder, fence first: every interleaving forced.

Each test pauses one process at a chosen rename (by patching ``os.rename`` to run the
other process's step first) and checks what a user would see: the job in exactly one
folder, once, with a whole record; nothing left in running/.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import pytest

from executioner import PoolLayout, run_status

from executioner.protocol import fence, store
from executioner.protocol.fsio import atomic_write_json, read_json
from executioner.liveness.reap import Reaper, recover_private, requeue_lost

from .conftest import submit, work

TAKE = "stale"


def everywhere(run) -> list[str]:
    """Every entry of every state folder, private folders included (no dot files)."""
    out = []
    for state in ("waiting", "queued", "running", "done", "failed"):
        out += [f"{state}/{n}" for n in sorted(os.listdir(run.state_dir(state))) if not n.startswith(".")]
    return out


def remote_claim(pool: Path, run, job: str = "a", worker: str = "far-1"):
    claim = store.claim(run, job, store.Owner(worker, "far-away-host", 999_999_999, 1.0))
    store.write_lock(claim)
    atomic_write_json(PoolLayout(str(pool)).heartbeat(worker), {"worker": worker, "host": "far-away-host"})
    return claim


def before_rename(monkeypatch, when: Callable[[str, str], bool], step: Callable[[], None]) -> list[bool]:
    """Run ``step`` once, just before the first rename matching ``when(src, dst)``."""
    real = os.rename
    fired: list[bool] = []

    def rename(src, dst):
        if not fired and when(str(src), str(dst)):
            fired.append(True)
            step()
        return real(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    return fired


def into(folder: str) -> Callable[[str, str], bool]:
    return lambda src, dst: os.path.dirname(dst) == folder


def result(claim, status: str = "done") -> dict:
    return dict(claim.record, tries=[store.try_record(1, 1, status, start=1.0, end=2.0, worker="far-1",
                                                       host="far-away-host", worker_pid=1, exit_code=0)])


def private_of(run) -> fence.Private:
    [name] = [n for n in os.listdir(run.state_dir("running")) if "+" in n]
    private = fence.Private.parse(run, name)
    assert private is not None
    return private


@pytest.fixture
def run(pool: Path, make_workflow):
    return submit(pool, make_workflow([{"id": "a", "command": "true"}]))


def test_finishing_leaves_nothing_behind_and_never_writes_into_the_claim(pool, run, monkeypatch) -> None:
    claim = remote_claim(pool, run)
    inode = os.stat(claim.path).st_ino
    claim_bytes = Path(claim.path).read_bytes()
    assert store.finish(claim, result(claim), "done")
    assert everywhere(run) == ["done/a.json"]
    # the new record is a new file; the claim's inode was never written
    assert os.stat(run.job("a", "done")).st_ino != inode
    assert read_json(run.job("a", "done"))["tries"][0]["status"] == "done"
    assert b'"tries": []' in claim_bytes


def test_owner_vs_reaper_the_reaper_fences_first(pool, run, monkeypatch) -> None:
    claim = remote_claim(pool, run)
    # the reaper takes the claim just before the owner's fence rename
    before_rename(monkeypatch, lambda s, d: s == claim.path and "+done-" in d,
                  lambda: requeue_lost(run, "a", claim.token, claim.record, TAKE, None))
    assert store.finish(claim, result(claim), "done") is False
    monkeypatch.undo()
    assert everywhere(run) == ["queued/a.json"]
    assert [t["status"] for t in read_json(run.job("a", "queued"))["tries"]] == ["lost"]


def test_owner_vs_reaper_the_owner_fences_first(pool, run, monkeypatch) -> None:
    claim = remote_claim(pool, run)
    outcome: list[object] = []
    # the owner is fenced and swapping its result in when the reaper tries to take the claim
    before_rename(monkeypatch, into(run.state_dir("done")),
                  lambda: outcome.append(requeue_lost(run, "a", claim.token, claim.record, TAKE, None)))
    assert store.finish(claim, result(claim), "done")
    monkeypatch.undo()
    assert outcome == [None]  # the reaper's fence failed: it wrote nothing
    assert everywhere(run) == ["done/a.json"]
    assert [t["status"] for t in read_json(run.job("a", "done"))["tries"]] == ["done"]


def test_reaper_vs_reaper_one_takes_the_claim(pool, run, monkeypatch) -> None:
    claim = remote_claim(pool, run)
    second: list[object] = []
    before_rename(monkeypatch, lambda s, d: s == claim.path,
                  lambda: second.append(requeue_lost(run, "a", claim.token, claim.record, "second", None)))
    first = requeue_lost(run, "a", claim.token, claim.record, "first", None)
    monkeypatch.undo()
    assert sorted(map(str, [first, *second])) == ["None", "queued"]
    assert everywhere(run) == ["queued/a.json"]
    assert len(read_json(run.job("a", "queued"))["tries"]) == 1


def frozen_after_swap(run, claim, monkeypatch, then: Callable[[], None]) -> bool:
    """The owner swaps its result into its private folder, then (frozen) ``then`` runs
    before its final rename; returns what the owner's finish returned."""
    before_rename(monkeypatch, into(run.state_dir("done")), then)
    outcome = store.finish(claim, result(claim), "done")
    monkeypatch.undo()
    return outcome


def test_frozen_committer_vs_recoverer_the_result_is_completed_once(pool, run, monkeypatch) -> None:
    claim = remote_claim(pool, run)
    placed: list[object] = []
    owner = frozen_after_swap(run, claim, monkeypatch,
                              lambda: placed.append(recover_private(run, private_of(run), "stood still")))
    assert owner is False and placed == ["done"]  # the recoverer completed it; the owner's rename failed
    assert everywhere(run) == ["done/a.json"]
    assert [t["status"] for t in read_json(run.job("a", "done"))["tries"]] == ["done"]


def test_frozen_committer_before_its_swap_vs_recoverer(pool, run, monkeypatch) -> None:
    """Fenced, not yet swapped: the folder holds the claim as it was; the try is lost."""
    claim = remote_claim(pool, run)
    placed: list[object] = []

    def recover() -> None:
        placed.append(recover_private(run, private_of(run), "stood still"))

    before_rename(monkeypatch, lambda s, d: os.path.basename(s).startswith(".tmp-"), recover)
    assert store.finish(claim, result(claim), "done") is False
    monkeypatch.undo()
    assert placed == ["queued"]
    assert everywhere(run) == ["queued/a.json"]
    [lost] = read_json(run.job("a", "queued"))["tries"]
    assert lost["status"] == "lost" and "stood still" in lost["reason"]
    assert not any(n.startswith(".tmp-") for n in os.listdir(run.state_dir("running")))


def test_recoverer_vs_recoverer_one_takes_the_folder(pool, run, monkeypatch) -> None:
    claim = remote_claim(pool, run)
    outcomes: list[object] = []

    def two_recoverers() -> None:
        private = private_of(run)
        before_rename(monkeypatch, lambda s, d: s == private.path,
                      lambda: outcomes.append(recover_private(run, private, "second")))
        outcomes.append(recover_private(run, private, "first"))

    assert frozen_after_swap(run, claim, monkeypatch, two_recoverers) is False
    assert sorted(map(str, outcomes)) == ["None", "done"]
    assert everywhere(run) == ["done/a.json"]


def test_a_reaper_recovers_a_private_folder_only_after_watching_it_stand_still(pool, run, monkeypatch) -> None:
    claim = remote_claim(pool, run)
    reaper = Reaper(PoolLayout(str(pool)), stale_after=60)
    seen: list[list[str]] = []

    def watch() -> None:
        seen.append(reaper.reap(run, mono=0))
        seen.append(reaper.reap(run, mono=59))
        # a user looking now sees the job running, once
        status = run_status(run)
        seen.append([j["state"] for j in status["jobs"]])
        seen.append(reaper.reap(run, mono=61))

    assert frozen_after_swap(run, claim, monkeypatch, watch) is False
    assert seen == [[], [], ["running"], ["a"]]
    assert everywhere(run) == ["done/a.json"]


def test_a_private_folder_of_a_dead_process_here_is_recovered_at_once(pool, run) -> None:
    claim = remote_claim(pool, run)
    dead = 999_999_998
    folder = run.private("a", claim.token, f"done-abc-{dead}-{fence.who('x').split('-', 3)[3]}")
    os.mkdir(folder)
    os.rename(claim.path, run.private_job(folder, "a"))
    assert Reaper(PoolLayout(str(pool)), stale_after=3600).reap(run, mono=0) == ["a"]
    assert everywhere(run) == ["queued/a.json"]
    [lost] = read_json(run.job("a", "queued"))["tries"]
    assert "process gone" in lost["reason"]


def test_a_torn_job_file_in_a_private_folder_is_rebuilt_from_the_workflow(pool, run) -> None:
    claim = remote_claim(pool, run)
    folder = run.private("a", claim.token, "done-abc-1-far-away-host")
    os.mkdir(folder)
    os.rename(claim.path, run.private_job(folder, "a"))
    Path(run.private_job(folder, "a")).write_text('{"id": "a", "spec": {"comm')  # a storage fault
    reaper = Reaper(PoolLayout(str(pool)), stale_after=60)
    assert reaper.reap(run, mono=0) == [] and reaper.reap(run, mono=61) == ["a"]
    assert everywhere(run) == ["waiting/a.json"]
    record = read_json(run.job("a", "waiting"))
    [lost] = record["tries"]
    assert lost["status"] == "lost" and "torn" in lost["reason"] and record["spec"]["command"] == "true"
    work(pool, run)
    assert everywhere(run) == ["done/a.json"]


def test_an_empty_private_folder_taken_from_under_the_owner_does_not_lose_its_claim(pool, run, monkeypatch) -> None:
    """The owner made its folder; a checker took it (empty) before the owner's fence. The
    claim is still in place: the owner fences again with a new folder and finishes."""
    claim = remote_claim(pool, run)
    taken: list[object] = []
    before_rename(monkeypatch, lambda s, d: s == claim.path and "+done-" in d,
                  lambda: taken.append(recover_private(run, private_of(run), "stood still")))
    assert store.finish(claim, result(claim), "done")
    monkeypatch.undo()
    assert taken == [None]
    assert everywhere(run) == ["done/a.json"]


def test_a_job_in_a_private_folder_counts_as_running_for_status_and_resume(pool, run, monkeypatch, make_workflow) -> None:
    from executioner.coordinator.plan import Options, plan_resume, workflow_for_resume

    claim = remote_claim(pool, run)
    seen: list[object] = []

    def look() -> None:
        status = run_status(run)
        seen.append((status["state"], status["counts"]["running"], [j["state"] for j in status["jobs"]]))
        plan = plan_resume(PoolLayout(str(pool)), run, workflow_for_resume(run, None), Options(stale_after=60))
        seen.append([(s.job, s.src) for s in plan.steps])

    assert frozen_after_swap(run, claim, monkeypatch, look)
    assert seen == [("running", 1, ["running"]), [("a", "running")]]


def test_the_write_fails_the_claim_is_put_back_untouched(pool, run, monkeypatch) -> None:
    import errno

    from executioner.protocol import fsio

    claim = remote_claim(pool, run)
    before = Path(claim.path).read_bytes()

    def full(*a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fsio, "write_temp", full)
    with pytest.raises(OSError):
        store.finish(claim, result(claim), "done")
    monkeypatch.undo()
    assert everywhere(run) == [f"running/a@{claim.token}.json"]
    assert Path(claim.path).read_bytes() == before


def test_a_format_1_run_is_read_and_finished(pool, make_workflow) -> None:
    run = submit(pool, make_workflow([{"id": "a", "command": "true"}, {"id": "b", "command": "true",
                                                                        "dependencies": ["a"]}]))
    for path in [run.record, run.job("a", "queued"), run.job("b", "waiting")]:
        record = read_json(path)
        record["format"] = 1
        atomic_write_json(path, record)
    work(pool, run)
    assert everywhere(run) == ["done/a.json", "done/b.json"]


def resume_takes(run, claim, private: bool = False) -> str:
    """What a resume's grab does with a running job it takes back (change._take_claim)."""
    from executioner.coordinator.change import _take_claim
    from executioner.coordinator.plan import Step

    step = Step("a", "run", "rolled back", "running", "queued", take="taken back by exec-submit --resume --force",
                token=claim.token, private=private_of(run).name if private else None)
    return _take_claim(run, step)


def test_owner_vs_resume_the_resume_fences_first(pool, run, monkeypatch) -> None:
    claim = remote_claim(pool, run)
    taken: list[str] = []
    before_rename(monkeypatch, lambda s, d: s == claim.path and "+done-" in d,
                  lambda: taken.append(resume_takes(run, claim)))
    assert store.finish(claim, result(claim), "done") is False
    monkeypatch.undo()
    # taken into waiting/ (TAKEN_INTO), where no worker claims it before the resume grabs it
    assert taken == ["waiting"] and everywhere(run) == ["waiting/a.json"]
    [lost] = read_json(run.job("a", "waiting"))["tries"]
    assert lost["status"] == "lost" and "taken back" in lost["reason"]


def test_owner_vs_resume_the_owner_is_inside_its_commit(pool, run, monkeypatch) -> None:
    """The resume takes the owner's private folder (its claim is no longer in running/ under
    its own name): the owner's last rename fails; the result is recorded as never committed."""
    claim = remote_claim(pool, run)
    taken: list[str] = []
    assert frozen_after_swap(run, claim, monkeypatch, lambda: taken.append(resume_takes(run, claim, True))) is False
    assert taken == ["waiting"] and everywhere(run) == ["waiting/a.json"]
    [lost] = read_json(run.job("a", "waiting"))["tries"]
    assert lost["status"] == "lost" and "never committed" in lost["reason"]
