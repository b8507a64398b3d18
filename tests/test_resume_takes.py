"""A resume takes claims back only once the rest of its change is certain."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from executioner import PoolLayout

from executioner.protocol import store
from executioner.coordinator.change import apply
from executioner.errors import Refused
from executioner.protocol.fsio import read_json
from executioner.coordinator.plan import Options, plan_resume, workflow_for_resume

from .conftest import files, submit


def test_a_refused_resume_leaves_no_claim_taken_back(pool: Path, make_workflow, monkeypatch) -> None:
    run = submit(pool, make_workflow([{"id": "a", "command": "true"}, {"id": "b", "command": "false"}]))
    dead = store.claim(run, "a", store.Owner("gone-1", "far-away-host", 1, 1.0))
    store.write_lock(dead)  # no heartbeat file: a resume judges it stale
    claim = store.claim(run, "b", store.Owner.current("w"))
    assert store.finish(claim, dict(claim.record, reason="exit code 1"), "failed")
    import executioner.coordinator.change as change

    real = change.store.transition

    def b_keeps_moving(run_, job, src, dst, **kw):
        if job == "b" and dst.startswith("staged:"):
            return False  # a worker beats the resume to b, every time
        return real(run_, job, src, dst, **kw)

    monkeypatch.setattr(change.store, "transition", b_keeps_moving)
    pool_layout = PoolLayout(str(pool))
    workflow = workflow_for_resume(run, None)
    with pytest.raises(Refused):
        apply(run, lambda: plan_resume(pool_layout, run, workflow, Options(stale_after=60)))
    monkeypatch.undo()
    assert files(run, "running") == [os.path.basename(dead.path)]
    assert read_json(dead.path)["tries"] == []  # no lost try recorded for a change that did not happen
    assert files(run, "failed") == ["b.json"]
    assert not os.path.isdir(run.staging_root) or not os.listdir(run.staging_root)


def test_a_claim_whose_worker_finishes_while_the_resume_takes_it_is_grabbed_where_it_went(
        pool: Path, make_workflow, monkeypatch) -> None:
    run = submit(pool, make_workflow([{"id": "a", "command": "true"}]))
    live = store.claim(run, "a", store.Owner.current("w"))
    store.write_lock(live)
    import executioner.coordinator.change as change

    real = change.requeue_lost

    def worker_first(run_, job, token, record, reason, claim, into=None):
        # the worker finishes its job just before the resume's take
        assert store.finish(live, dict(live.record, tries=[store.try_record(
            1, 1, "done", start=1.0, end=2.0, worker="w", host="h", worker_pid=1)]), "done")
        return real(run_, job, token, record, reason, claim, into)

    monkeypatch.setattr(change, "requeue_lost", worker_first)
    pool_layout = PoolLayout(str(pool))
    workflow = workflow_for_resume(run, None)
    plan = apply(run, lambda: plan_resume(pool_layout, run, workflow,
                                          Options(stale_after=60, force=True, rollback_to=("a",))))
    assert plan.attempt == 2
    assert files(run, "queued") == ["a.json"] and files(run, "running") == [] and files(run, "done") == []
    assert [t["status"] for t in read_json(run.job("a", "queued"))["tries"]] == ["done"]
