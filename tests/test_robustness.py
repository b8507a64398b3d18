"""A broken file or an error of our own never stops a worker or strands a job."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from executioner import run_status, store
from executioner.fsio import read_json

from .conftest import files, submit, work


@pytest.mark.parametrize("content", [b"{not json", b"", b'{"id": "b", "spec": {}, "tries": []}', b"[1, 2]"])
def test_a_broken_queued_file_is_quarantined_and_the_rest_runs(pool: Path, make_workflow, content: bytes) -> None:
    run = submit(pool, make_workflow([{"id": j, "command": "true"} for j in ("a", "b", "c")]))
    Path(run.job("b", "queued")).write_bytes(content)
    worker = work(pool, run, slots=1)
    assert files(run, "done") == ["a.json", "c.json"] and files(run, "running") == []
    assert worker.finished == 2
    quarantined = sorted(os.listdir(run.quarantine_dir))
    assert len(quarantined) == 2 and quarantined[0].startswith("b@") and quarantined[1].endswith(".reason")
    assert "unreadable job file" in (Path(run.quarantine_dir) / quarantined[1]).read_text()


def test_an_internal_error_while_running_fails_the_job_and_the_worker_goes_on(
        pool: Path, make_workflow, monkeypatch) -> None:
    import executioner.worker as worker_module

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
    assert record["tries"][-1]["status"] == "failed"
    assert files(run, "done") == ["fine.json"] and files(run, "running") == []


def test_a_crash_between_the_requeue_renames_leaves_the_job_visible(pool: Path, make_workflow, monkeypatch) -> None:
    run = submit(pool, make_workflow([{"id": "a", "command": "true"}]))
    claim = store.claim(run, "a", store.Owner.current("w"))
    real = os.rename

    def crash_on_commit(src, dst):
        if dst == run.job("a", "queued") and os.path.basename(src).startswith(".tmp-"):
            raise KeyboardInterrupt("killed here")
        return real(src, dst)

    monkeypatch.setattr(os, "rename", crash_on_commit)
    with pytest.raises(KeyboardInterrupt):
        store.finish(claim, dict(claim.record, not_before=1.0), "queued")
    monkeypatch.undo()
    status = run_status(run)
    assert status["counts"]["running"] == 1 and [j["id"] for j in status["jobs"]] == ["a"]
    assert status["state"] == "running"
