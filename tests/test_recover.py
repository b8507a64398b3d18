"""Settling what a crashed coordinator left in .coord/: torn COMMITs, placements done twice,
and one bad staging folder among good ones."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from executioner import RunLayout

from executioner.protocol import store
from executioner.coordinator.change import recover
from executioner.errors import ChangeIncomplete

from .conftest import cli, files, submit, work
from .test_resume_races import where

# Dies right after the change is staged and COMMIT written, before anything is placed.
DIE_AT_COMMIT = ("import os, sys\nimport executioner.coordinator.change as c\n"
                 "c._commit = lambda *a, **k: os._exit(9)\n"
                 "from executioner.cli import submit_main\nsys.exit(submit_main(sys.argv[1:]))\n")


def crashed_rollback(pool: Path, make_workflow, *flags: str) -> RunLayout:
    """A done chain j0 -> j1 -> j2 -> j3 and a rollback of j1 that died at its COMMIT."""
    jobs = [{"id": f"j{i}", "command": "true", **({"dependencies": [f"j{i - 1}"]} if i else {})} for i in range(4)]
    run = submit(pool, make_workflow(jobs))
    work(pool, run)
    args = [sys.executable, "-c", DIE_AT_COMMIT, "--pool", str(pool), "--resume", run.run_id, "--rollback-to", "j1",
            *flags]
    assert subprocess.run(args, capture_output=True).returncode == 9
    return run


def stage_of(run: RunLayout) -> str:
    (name,) = os.listdir(run.staging_root)
    return name


def tear(path: str) -> None:
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])


@pytest.mark.timeout(60)
def test_a_torn_commit_is_undone_by_recover(pool: Path, make_workflow) -> None:
    run = crashed_rollback(pool, make_workflow)
    stage = stage_of(run)
    tear(run.staging_commit(stage))
    assert files(run, "done") == ["j0.json"]  # j1..j3 are grabbed, invisible
    assert recover(run) == "undone"
    assert not os.path.exists(run.staging_root)
    assert files(run, "done") == ["j0.json", "j1.json", "j2.json", "j3.json"]
    assert sorted(n for n in os.listdir(run.attempts_dir) if n.endswith(".json")) == ["0001.json"]


@pytest.mark.timeout(60)
def test_the_next_resume_undoes_a_torn_commit_and_status_shows_every_job(pool: Path, make_workflow) -> None:
    run = crashed_rollback(pool, make_workflow)
    tear(run.staging_commit(stage_of(run)))
    out = cli("exec-submit", "--pool", str(pool), "--resume", run.run_id, "--rollback-to", "j2")
    assert out.returncode == 0, out.stderr
    shown = json.loads(cli("exec-status", run.root, "--json").stdout)
    assert {j["id"]: j["state"] for j in shown["jobs"]} == {"j0": "done", "j1": "done", "j2": "queued",
                                                             "j3": "waiting"}
    assert "reason" not in shown and not os.path.exists(run.staging_root)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("content", [b"", b"[]", b'{"placements": 3, "files": []}', b"\x00" * 10])
def test_any_unparseable_commit_counts_as_never_written(pool: Path, make_workflow, content: bytes) -> None:
    run = crashed_rollback(pool, make_workflow)
    Path(run.staging_commit(stage_of(run))).write_bytes(content)
    assert recover(run) == "undone"
    assert files(run, "done") == ["j0.json", "j1.json", "j2.json", "j3.json"]


@pytest.mark.timeout(60)
def test_finishing_a_commit_twice_places_each_job_once(pool: Path, make_workflow) -> None:
    run = crashed_rollback(pool, make_workflow)
    stage = stage_of(run)
    commit = json.loads(Path(run.staging_commit(stage)).read_text())
    # A settler that placed j3 and died before dropping j3's original; j2's new file is gone too.
    j3 = next(p for p in commit["placements"] if p["job"] == "j3")
    store.transition(run, "j3", f"new:{j3['dst']}", j3["dst"], token=stage)
    os.unlink(run.staged_new(stage, "j2", "waiting"))
    assert recover(run) == "finished"
    placed = where(run)
    assert all(len(v) == 1 for v in placed.values()), placed
    assert placed == {"j0": ["done"], "j1": ["queued"], "j2": ["done"], "j3": ["waiting"]}  # j2 kept as it was
    assert not os.path.exists(run.staging_root)


@pytest.mark.timeout(60)
def test_one_bad_staging_folder_does_not_stop_the_others(pool: Path, make_workflow, monkeypatch) -> None:
    run = crashed_rollback(pool, make_workflow)
    good = stage_of(run)
    bad = os.path.join(run.staging_root, "000bad")  # sorts first
    os.makedirs(bad)
    Path(bad, "done~zz.json").write_text("{}")
    real = store.transition

    def failing(run_, job, src, dst, **kw):
        if job == "zz":
            raise OSError(5, "Input/output error")
        return real(run_, job, src, dst, **kw)

    monkeypatch.setattr(store, "transition", failing)
    with pytest.raises(ChangeIncomplete) as info:
        recover(run)
    assert "000bad" in str(info.value) and "Input/output error" in str(info.value)
    assert files(run, "queued") == ["j1.json"]  # the good one was finished all the same
    assert os.listdir(run.staging_root) == [".settle-000bad"]
    assert good not in str(info.value)
    monkeypatch.undo()  # the disk is back: the next settling finishes the bad one too
    assert recover(run) == "undone"
    assert where(run)["zz"] == ["done"] and not os.path.exists(run.staging_root)


@pytest.mark.timeout(60)
def test_a_file_in_coord_is_quarantined_not_fatal(pool: Path, make_workflow) -> None:
    run = crashed_rollback(pool, make_workflow)
    Path(run.staging_root, "stray").write_text("not a folder")
    assert recover(run) == "finished"
    assert files(run, "queued") == ["j1.json"] and not os.path.exists(run.staging_root)
    assert any("stray" in n for n in os.listdir(run.quarantine_dir))


@pytest.mark.timeout(60)
def test_a_full_disk_while_staging_puts_every_job_back(pool: Path, make_workflow, monkeypatch) -> None:
    import errno

    from executioner import PoolLayout

    from executioner.protocol import fsio
    from executioner.coordinator.change import apply
    from executioner.errors import Refused
    from executioner.coordinator.plan import Options, plan_resume, workflow_for_resume

    from .test_resume import tree

    jobs = [{"id": f"j{i}", "command": "true", **({"dependencies": [f"j{i - 1}"]} if i else {})} for i in range(4)]
    run = submit(pool, make_workflow(jobs))
    work(pool, run)
    before = tree(run.root)
    real, written = fsio.write_unsynced, []

    def full(path: str, payload: bytes) -> None:
        if written:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written.append(path)
        real(path, payload)

    monkeypatch.setattr(fsio, "write_unsynced", full)
    workflow = workflow_for_resume(run, None)
    with pytest.raises(Refused) as info:
        apply(run, lambda: plan_resume(PoolLayout(str(pool)), run, workflow, Options(rollback_to=("j1",))))
    assert str(info.value) == (f"run {run.run_id}: cannot stage the change (No space left on device); "
                               "nothing was changed")
    after = tree(run.root)
    assert {k: v for k, v in after.items() if not k.startswith("workers")} == before


FULL = {  # every write writes nothing; or only executioner's own (the lock is taken, coordinator.json is not)
    "all": "import os\nos.write = lambda fd, data: 0\n",
    "ours": "import errno\nfrom executioner.protocol import fsio\n"
            "def full(*a, **k):\n    raise OSError(errno.ENOSPC, 'No space left on device')\n"
            "fsio.write_all = full\n"}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("which", sorted(FULL))
def test_a_resume_on_a_full_disk_fails_in_one_line_and_changes_nothing(pool: Path, make_workflow,
                                                                       which: str) -> None:
    from .test_resume import tree

    jobs = [{"id": f"j{i}", "command": "true", **({"dependencies": [f"j{i - 1}"]} if i else {})} for i in range(4)]
    run = submit(pool, make_workflow(jobs))
    work(pool, run)
    before = tree(run.root)
    full = FULL[which] + "import sys\nfrom executioner.cli import submit_main\nsys.exit(submit_main(sys.argv[1:]))\n"
    out = subprocess.run([sys.executable, "-c", full, "--pool", str(pool), "--resume", run.run_id,
                          "--rollback-to", "j1"], capture_output=True, text=True)
    assert out.returncode == 1
    assert out.stderr.startswith("exec-submit: error: [Errno ") and len(out.stderr.splitlines()) == 1, out.stderr
    assert tree(run.root) == before
