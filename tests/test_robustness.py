"""A broken file or an error of our own never stops a worker or strands a job."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from executioner import run_status

from executioner.protocol import store
from executioner.protocol.fsio import read_json

from .conftest import files, submit, work


@pytest.mark.parametrize("content", [b"{not json", b"", b'{"id": "b", "spec": {}, "tries": []}', b"[1, 2]"])
def test_a_broken_queued_file_is_quarantined_and_the_rest_runs(pool: Path, make_workflow, content: bytes) -> None:
    run = submit(pool, make_workflow([{"id": j, "command": "true"} for j in ("a", "b", "c")]))
    Path(run.job("b", "queued")).write_bytes(content)
    worker = work(pool, run, slots=1)
    quarantined = sorted(os.listdir(run.quarantine_dir))
    assert len(quarantined) == 2 and quarantined[0].startswith("running--b@") and quarantined[1].endswith(".reason")
    assert "unreadable job file" in (Path(run.quarantine_dir) / quarantined[1]).read_text()
    # an idle worker does not leave while a job it saw missing waits to be rebuilt: b is
    # rebuilt from the workflow (with a lost try saying why) and runs
    assert files(run, "done") == ["a.json", "b.json", "c.json"] and files(run, "running") == []
    assert worker.finished == 3
    lost, done = read_json(run.job("b", "done"))["tries"]
    assert lost["status"] == "lost" and "unreadable job file" in lost["reason"] and done["status"] == "done"


def test_an_internal_error_while_running_is_a_lost_try_and_max_lost_ends_it(
        pool: Path, make_workflow, monkeypatch) -> None:
    import executioner.execution.worker as worker_module

    real = worker_module.run_command

    def explode(argv, *a, **kw):
        if "boom" in argv[-1]:
            raise RuntimeError("disk on fire")
        return real(argv, *a, **kw)

    monkeypatch.setattr(worker_module, "run_command", explode)
    run = submit(pool, make_workflow([{"id": "boom", "command": "echo boom"}, {"id": "fine", "command": "true"}]))
    work(pool, run, slots=1)
    record = read_json(run.job("boom", "failed"))
    assert "internal error" in record["reason"] and "disk on fire" in record["reason"]
    assert "max_lost 3" in record["reason"]
    # an error of the worker's own uses up no retry: each is a lost try, and max_lost ends it
    assert [t["status"] for t in record["tries"]] == ["lost", "lost", "lost"]
    assert files(run, "done") == ["fine.json"] and files(run, "running") == []


def test_a_crash_after_writing_the_result_leaves_the_job_running_with_it(pool: Path, make_workflow, monkeypatch) -> None:
    """Killed after swapping its result into its private folder, before the final rename:
    the job stays in running/ (in that folder, with the result) for the reaper; nothing is
    lost or doubled."""
    run = submit(pool, make_workflow([{"id": "a", "command": "true"}]))
    claim = store.claim(run, "a", store.Owner.current("w"))
    real_rename = os.rename

    def crash(src, dst):
        if os.path.dirname(dst) == run.state_dir("done"):
            raise KeyboardInterrupt("killed here")
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", crash)
    with pytest.raises(KeyboardInterrupt):
        store.finish(claim, dict(claim.record, tries=[{"try": 1, "status": "done"}]), "done")
    monkeypatch.undo()
    status = run_status(run)
    assert status["counts"]["running"] == 1 and [j["tries"] for j in status["jobs"]] == [1]
    assert files(run, "done") == [] and os.listdir(run.state_dir("done")) == []


@pytest.mark.parametrize("state,make,why", [
    ("done", lambda p: p.write_text(""), "empty file"),
    ("done", lambda p: p.write_text('{"id": "zz", "spec": {"command": "x"}, "tries": [], "dependencies": [],'
                                    ' "dependents": []}'), "holds job 'zz'"),
    ("failed", lambda p: p.write_text('{"id": "x"}'), "missing spec"),
    ("waiting", lambda p: p.mkdir(), "a directory"),
    ("queued", lambda p: p.symlink_to("/etc/hostname"), "a symlink"),
    ("done", lambda p: (p.parent / "notes.txt").write_text("hi"), "foreign name"),
])
def test_broken_files_in_any_state_folder_are_quarantined(pool: Path, make_workflow, state, make, why) -> None:
    from executioner.protocol.scrub import Scrubber

    run = submit(pool, make_workflow([{"id": "a", "command": "true"}]))
    make(Path(run.state_dir(state)) / "x.json")
    quarantined = Scrubber().scrub(run, now=0.0)
    assert len(quarantined) == 1
    [reason] = [p for p in Path(run.quarantine_dir).iterdir() if p.name.endswith(".reason")]
    assert why in reason.read_text()
    assert files(run, "queued") == ["a.json"]  # the good job is untouched
    work(pool, run)
    assert files(run, "done") == ["a.json"]


def test_stale_temp_files_are_cleaned_and_fresh_ones_left(pool: Path, make_workflow) -> None:
    from executioner.protocol.fsio import HOST
    from executioner.protocol.scrub import TEMP_MAX_AGE, Scrubber

    run = submit(pool, make_workflow([{"id": "a", "command": "true"}]))
    queued = Path(run.state_dir("queued"))
    dead = queued / f".tmp-{HOST}-999999999-abcd"  # this host, no such pid
    old = queued / ".tmp-other-host-12-abcd"
    fresh = queued / ".tmp-other-host-13-abcd"
    for p in (dead, old, fresh):
        p.write_text("{half")
    os.utime(old, (1000.0, 1000.0))
    os.utime(fresh, (5000.0, 5000.0))
    Scrubber().scrub(run, now=1000.0 + TEMP_MAX_AGE + 1)
    assert not dead.exists() and not old.exists() and fresh.exists()
    assert not Path(run.quarantine_dir).exists()


def test_a_corrupt_run_record_shows_as_corrupt_and_workers_skip_it(pool: Path, make_workflow) -> None:
    from .conftest import cli

    bad = submit(pool, make_workflow([{"id": "a", "command": "true"}], name="bad"))
    good = submit(pool, make_workflow([{"id": "a", "command": "true"}], name="good"))
    Path(bad.record).write_text("{garbage")
    work(pool)
    assert files(good, "done") == ["a.json"] and files(bad, "queued") == ["a.json"]
    status = cli("exec-status", str(pool), "--json")
    runs = {r["run_id"]: r for r in __import__("json").loads(status.stdout)["runs"]}
    assert runs[bad.run_id]["state"] == "corrupt" and "run.json is corrupt" in runs[bad.run_id]["reason"]
    assert runs[good.run_id]["state"] == "done"
    human = cli("exec-status", str(pool))
    assert "corrupt" in human.stdout


def test_a_dormant_run_is_still_picked_up_by_polling(pool: Path, make_workflow, tmp_path: Path, monkeypatch) -> None:
    """A finished run is looked at rarely; work that appears in it later still gets done."""
    import threading
    import time

    from executioner import Worker

    run = submit(pool, make_workflow([{"id": "a", "command": "true"},
                                      {"id": "late", "command": f"touch '{tmp_path}/late'", "dependencies": ["x"]},
                                      {"id": "x", "command": "exit 1"}]))
    worker = Worker(str(pool), slots=1, poll_min=0.02, poll_max=0.1, sweep_every=0.1, dormant_every=0.5,
                    heartbeat=0.1, stale_after=60)
    from executioner.execution.events import Events

    monkeypatch.setattr(Events, "watch", lambda self, folder: None)  # polling only, as on NFS
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while files(run, "failed") != ["x.json"] or files(run, "done") != ["a.json"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(1.0)  # let the run go dormant (not waiting for staleness)
    # a person fixes x by hand: mark it done; the sweep promotes "late" and a worker runs it
    os.rename(run.job("x", "failed"), run.job("x", "done"))
    while not (tmp_path / "late").exists():
        assert time.monotonic() < deadline, "dormant run never looked at again"
        time.sleep(0.05)
    worker.stop()
    thread.join(10)
    assert files(run, "done") == ["a.json", "late.json", "x.json"]
