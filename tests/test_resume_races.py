"""A resume on a live run: workers moving jobs under it, live and dead claims, crashes."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from executioner import PoolLayout, RunLayout, store
from executioner.change import apply, recover
from executioner.errors import Refused
from executioner.fsio import HOST
from executioner.layout import STATES
from executioner.plan import Options, plan_resume, workflow_for_resume

from .conftest import cli, files, submit, work
from .test_resume import tree


def where(run: RunLayout) -> dict[str, list[str]]:
    """job -> every folder holding it (a correct run has exactly one each)."""
    out: dict[str, list[str]] = collections.defaultdict(list)
    for state in STATES:
        for name in os.listdir(run.state_dir(state)):
            if not name.startswith("."):
                out[name.split("@")[0].removesuffix(".json")].append(state)
    return out


def test_a_claim_between_plan_and_grab_makes_the_resume_plan_again(pool: Path, make_workflow) -> None:
    run = submit(pool, make_workflow([{"id": "x", "command": "true"}, {"id": "y", "command": "true"}]))
    pool_l = PoolLayout(str(pool))
    workflow = workflow_for_resume(run, None)
    before = tree(run.root)
    calls = []

    def make():
        plan = plan_resume(pool_l, run, workflow, Options())
        calls.append(plan)
        if len(calls) == 2:  # under the lock, planned: now a worker claims x
            claim = store.claim(run, "x", store.Owner.current("w-live"))
            assert claim is not None
            store.write_lock(claim)
        return plan

    with pytest.raises(Refused) as info:
        apply(run, make)
    assert len(calls) == 3  # the grab of x failed, y was put back, the run was planned again
    assert "job x is running on host " + HOST in str(info.value) and "wait, or use --force" in str(info.value)
    after = tree(run.root)
    assert after["queued/y.json"] == before["queued/y.json"]  # put back untouched
    assert not os.path.exists(run.staging_dir) and "attempts/0002.json" not in after


def test_live_claim_refuses_and_force_takes_it_back(pool: Path, make_workflow, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    ledger = tmp_path / "ledger"
    command = f"echo $EXEC_TRY >> '{ledger}'; [ -e '{marker}' ] && exit 0; touch '{marker}'; sleep 30"
    run = submit(pool, make_workflow([{"id": "s", "command": command}]))
    worker = subprocess.Popen([sys.executable, "-c", "import sys; from executioner.cli import worker_main; "
                               "sys.exit(worker_main(sys.argv[1:]))", "--pool", str(pool), "--heartbeat", "0.2",
                               "--stale-after", "1", "--exit-when-idle", "1", "-q"])
    try:
        deadline = time.monotonic() + 20
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists()
        out = cli("exec-submit", "--pool", str(pool), "--resume", run.run_id, "--rollback-to", "s")
        assert out.returncode == 3, out.stderr
        assert f"job s is running on host {HOST}, worker " in out.stderr and "wait, or use --force" in out.stderr
        out = cli("exec-submit", "--pool", str(pool), "--resume", run.run_id, "--rollback-to", "s", "--force")
        assert out.returncode == 0, out.stderr
        assert worker.wait(timeout=30) == 0  # its claim was taken: it killed the sleep and ran s again
    finally:
        worker.kill()
    record = json.loads(Path(run.job("s", "done")).read_text())
    assert [(t["attempt"], t["status"]) for t in record["tries"]] == [(1, "lost"), (2, "done")]
    assert "taken back by exec-submit --rollback --force" in record["tries"][0]["reason"]
    assert ledger.read_text().split() == ["1", "2"]


def test_a_dead_workers_claim_is_requeued_by_the_resume(pool: Path, make_workflow) -> None:
    run = submit(pool, make_workflow([{"id": "a", "command": "true"}]))
    gone = subprocess.Popen(["true"])
    gone.wait()
    claim = store.claim(run, "a", store.Owner("w-dead", HOST, gone.pid, time.time()))
    assert claim is not None
    store.write_lock(claim)
    out = cli("exec-submit", "--pool", str(pool), "--resume", run.run_id)
    assert out.returncode == 0, out.stderr
    assert "stale claim: requeued" in out.stderr
    assert files(run, "queued") == ["a.json"] and files(run, "running") == []
    work(pool, run)
    record = json.loads(Path(run.job("a", "done")).read_text())
    assert [(t["attempt"], t["status"]) for t in record["tries"]] == [(1, "lost"), (2, "done")]


CRASH = ("import os, sys\nimport executioner.change as c\n"
         "point = sys.argv[1]\n"
         "if point == 'before-commit':\n"
         "    c._stage = lambda *a: os._exit(9)\n"
         "else:  # die after placing the first job of the committed change\n"
         "    real, placed = c.store.transition, []\n"
         "    def move(run, job, src, dst, **kw):\n"
         "        if src.startswith('new:'):\n"
         "            if placed:\n"
         "                os._exit(9)\n"
         "            placed.append(job)\n"
         "        return real(run, job, src, dst, **kw)\n"
         "    c.store.transition = move\n"
         "from executioner.cli import submit_main\nsys.exit(submit_main(sys.argv[2:]))\n")


@pytest.mark.parametrize("point", ["before-commit", "after-commit"])
def test_a_crashed_resume_is_undone_or_finished_by_the_next(pool: Path, tmp_path: Path, point: str) -> None:
    ledger = tmp_path / "ledger"
    jobs = [{"id": f"j{i}", "command": f"echo j{i} >> '{ledger}'", "dependencies": [f"j{i - 1}"] if i else []}
            for i in range(4)]
    wf = tmp_path / "wf.yaml"
    wf.write_text(yaml.safe_dump({"name": "c", "jobs": jobs}))
    run = submit(pool, wf)
    work(pool, run)
    args = [sys.executable, "-c", CRASH, point, "--pool", str(pool), "--resume", run.run_id, "--rollback-to", "j1"]
    assert subprocess.run(args, capture_output=True).returncode == 9
    assert os.path.isdir(run.staging_dir)  # the crash left its staging area (and its lock)
    shown = json.loads(cli("exec-status", run.root, "--json").stdout)
    assert "a resume of this run was interrupted" in shown["reason"]
    dry = cli("exec-submit", "--pool", str(pool), "--resume", run.run_id, "--dry-run")
    assert dry.returncode == 0 and " added" not in dry.stdout, dry.stdout  # sees the grabbed jobs
    assert recover(run) == ("undone" if point == "before-commit" else "finished")
    assert not os.path.exists(run.staging_dir)
    placed = where(run)
    assert sorted(placed) == ["j0", "j1", "j2", "j3"] and all(len(v) == 1 for v in placed.values())
    if point == "before-commit":
        assert files(run, "done") == ["j0.json", "j1.json", "j2.json", "j3.json"]
        assert sorted(os.listdir(run.attempts_dir)) == ["0001.json", "0001.workflow.yaml"]
    else:
        assert files(run, "done") == ["j0.json"] and files(run, "queued") == ["j1.json"]
        assert files(run, "waiting") == ["j2.json", "j3.json"]
        assert "0002.json" in os.listdir(run.attempts_dir)
    # and the next resume, after breaking the dead coordinator's lock, works
    out = cli("exec-submit", "--pool", str(pool), "--resume", run.run_id, "--rollback-to", "j2")
    assert out.returncode == 0, out.stderr
    work(pool, run)
    assert files(run, "done") == ["j0.json", "j1.json", "j2.json", "j3.json"]


def test_resumes_while_workers_run_never_duplicate_or_lose_a_job(pool: Path, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    jobs = [{"id": f"j{i:03d}", "command": f"echo j{i:03d} >> '{ledger}'"} for i in range(150)]
    for i in range(50, 150):
        jobs[i]["dependencies"] = [f"j{i - 50:03d}"]
    wf = tmp_path / "wf.yaml"
    wf.write_text(yaml.safe_dump({"name": "busy", "jobs": jobs}))
    run = submit(pool, wf)
    code = ("import sys\nfrom executioner import Worker\n"
            "Worker(sys.argv[1], run_ids=[sys.argv[2]], slots=2, exit_when_idle=1.5, poll_min=0.02,"
            " poll_max=0.2, sweep_every=0.1).run()\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(pool), run.run_id]) for _ in range(2)]
    try:
        resumed = 0
        for root in ("j010", "j020", "j030"):
            out = cli("exec-submit", "--pool", str(pool), "--resume", run.run_id, "--rollback-to", root, "--force")
            assert out.returncode in (0, 3), out.stderr  # 3: refused (the run kept changing), never broken
            resumed += out.returncode == 0
            placed = where(run)
            assert all(len(v) == 1 for v in placed.values()), placed
        assert [p.wait(timeout=120) for p in procs] == [0, 0]
    finally:
        for p in procs:
            p.kill()
    assert resumed >= 1
    placed = where(run)
    assert len(placed) == 150 and all(v == ["done"] for v in placed.values()), placed
    runs = collections.Counter(ledger.read_text().split())
    for job_id in placed:
        record = json.loads(Path(run.job(job_id, "done")).read_text())
        done_tries = [t for t in record["tries"] if t["status"] == "done"]
        assert len(done_tries) >= 1
        # every execution that completed is in the history; none completed twice in one attempt
        assert len({t["attempt"] for t in done_tries}) == len(done_tries)
        assert runs[job_id] >= len(done_tries)
