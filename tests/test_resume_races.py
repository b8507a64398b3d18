"""A resume on a live run: workers moving jobs under it, live and dead claims, crashes."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from executioner import PoolLayout, RunLayout

from executioner.protocol import store
from executioner.coordinator.change import apply, recover
from executioner.coordinator.coord import COORD_STALE, shared_watch, watch_key
from executioner.errors import Refused
from executioner.protocol.fsio import HOST
from executioner.protocol.layout import STATES
from executioner.coordinator import plan as plan_module
from executioner.coordinator.plan import Options, plan_resume, workflow_for_resume

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

    def make():  # (--failed-only holds x and y: a plan that moves them, so it takes the lock)
        plan = plan_resume(pool_l, run, workflow, Options(failed_only=True))
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
    assert not os.path.exists(run.staging_root) and "attempts/0002.json" not in after


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


CRASH = ("import os, sys\nimport executioner.coordinator.change as c\n"
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
    assert os.listdir(run.staging_root)  # the crash left its staging folder (and its lock)
    shown = json.loads(cli("exec-status", run.root, "--json").stdout)
    assert "a resume of this run was interrupted" in shown["reason"]
    dry = cli("exec-submit", "--pool", str(pool), "--resume", run.run_id, "--dry-run")
    assert dry.returncode == 0 and " added" not in dry.stdout, dry.stdout  # sees the grabbed jobs
    assert recover(run) == ("undone" if point == "before-commit" else "finished")
    assert not os.path.exists(run.staging_root)
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
            # The folders are listed one after another while workers move jobs on: a job that
            # leaves running/ for done/ between two listings is seen in both. A job really in
            # two folders stays so (until a worker runs it again: the ledger below sees that).
            for _ in range(5):
                placed = where(run)
                if all(len(v) == 1 for v in placed.values()):
                    break
                time.sleep(0.05)
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


def test_a_job_claimed_while_the_plan_reads_it_is_not_planned_as_new(pool: Path, make_workflow,
                                                                      monkeypatch) -> None:
    run = submit(pool, make_workflow([{"id": "x", "command": "true"}, {"id": "y", "command": "true"}]))
    pool_l, workflow = PoolLayout(str(pool)), workflow_for_resume(run, None)
    real, reads = plan_module.read_checked, []

    def racing_read(path: str, job_id: str, *a, **kw):
        if job_id == "x" and f"{os.sep}queued{os.sep}" in path:
            reads.append(path)
            if len(reads) == 2:  # the plan under the lock lists x in queued/; a worker claims it now
                claim = store.claim(run, "x", store.Owner.current("w-live"))
                assert claim is not None
                store.write_lock(claim)
        return real(path, job_id, *a, **kw)

    monkeypatch.setattr(plan_module, "read_checked", racing_read)
    # (--failed-only holds y: a plan that moves a job, so it is planned again under the lock)
    plan = apply(run, lambda: plan_resume(pool_l, run, workflow, Options(force=True, failed_only=True)))
    [x] = [s for s in plan.steps if s.job == "x"]
    assert x.src == "running" and x.dst is None  # seen where it went, and left running
    assert where(run)["x"] == ["running"]  # one job, one folder


def _finish(run: RunLayout, job: str, state: str) -> None:
    claim = store.claim(run, job, store.Owner.current("w"))
    assert claim is not None
    entry = store.try_record(1, 1, state, start=0, end=1, worker="w", host="h", worker_pid=1)
    assert store.finish(claim, dict(claim.record, tries=[entry]), state)


def test_a_stale_promotion_after_a_rollback_cannot_run_a_job_before_its_upstream(
        pool: Path, make_workflow, tmp_path: Path, monkeypatch) -> None:
    ledger = tmp_path / "ledger"
    run = submit(pool, make_workflow([{"id": "a", "command": f"echo a >> '{ledger}'"},
                                      {"id": "b", "command": f"echo b >> '{ledger}'", "dependencies": ["a"]}]))
    _finish(run, "a", "done")  # a is done; b's promotion is still to come
    pool_l, workflow = PoolLayout(str(pool)), workflow_for_resume(run, None)
    real, fired = store.transition, []

    def slow_promoter(run_, job, src, dst, **kw):
        if (job, src, dst) == ("b", "waiting", "queued") and not fired:
            fired.append(1)  # the sweep has judged b ready; before its rename, a rollback of a
            apply(run, lambda: plan_resume(pool_l, run, workflow, Options(rollback_to=("a",))))
        return real(run_, job, src, dst, **kw)

    monkeypatch.setattr(store, "transition", slow_promoter)
    store.sweep(run)  # its stale rename puts the new b in queued/, beside a
    monkeypatch.setattr(store, "transition", real)
    assert files(run, "queued") == ["a.json", "b.json"]
    work(pool, run, slots=2)
    assert ledger.read_text().split() == ["a", "b"]  # b was put back until a was done again


def test_a_stale_promotion_cannot_release_a_held_job(pool: Path, make_workflow, tmp_path: Path,
                                                      monkeypatch) -> None:
    ledger = tmp_path / "ledger"
    run = submit(pool, make_workflow([{"id": "a", "command": "true"},
                                      {"id": "b", "command": f"echo b >> '{ledger}'", "dependencies": ["a"]},
                                      {"id": "f", "command": "false"}]))
    _finish(run, "a", "done")
    _finish(run, "f", "failed")
    pool_l, workflow = PoolLayout(str(pool)), workflow_for_resume(run, None)
    real, fired = store.transition, []

    def slow_promoter(run_, job, src, dst, **kw):
        if (job, src, dst) == ("b", "waiting", "queued") and not fired:
            fired.append(1)
            apply(run, lambda: plan_resume(pool_l, run, workflow, Options(failed_only=True)))
        return real(run_, job, src, dst, **kw)

    monkeypatch.setattr(store, "transition", slow_promoter)
    store.promote(run, ["b"])
    monkeypatch.setattr(store, "transition", real)
    work(pool, run)
    assert not ledger.exists()  # b stayed held
    assert json.loads(cli("exec-status", run.root, "--json").stdout)["jobs"][1]["state"] == "held"


PAUSED = ("import os, sys, time\nimport executioner.coordinator.change as c\n"
          "tag, go = sys.argv[1], sys.argv[2]\nreal = c._stage\n"
          "def paused(*a):\n"
          "    open(go + '.' + tag + '.grabbed', 'w').close()\n"
          "    while not os.path.exists(go + '.' + tag):\n"
          "        time.sleep(0.05)\n"
          "    return real(*a)\n"
          "c._stage = paused\n"
          "from executioner.cli import submit_main\nsys.exit(submit_main(sys.argv[3:]))\n")


def _wait_for(path: str, limit: float = 30) -> None:
    deadline = time.monotonic() + limit
    while not os.path.exists(path):
        assert time.monotonic() < deadline, path
        time.sleep(0.05)


def test_a_coordinator_whose_lock_was_broken_while_it_stalled_applies_nothing(
        pool: Path, make_workflow, tmp_path: Path) -> None:
    jobs = [{"id": j, "command": "true", **({"dependencies": [d]} if d else {})}
            for j, d in (("a", None), ("b", "a"), ("c", "b"), ("d", "c"))]
    run = submit(pool, make_workflow(jobs))
    work(pool, run)
    go = str(tmp_path / "go")
    base = [sys.executable, "-c", PAUSED]
    first = subprocess.Popen(base + ["A", go, "--pool", str(pool), "--resume", run.run_id, "--rollback-to", "d"],
                             stderr=subprocess.PIPE, text=True)
    second = None
    try:
        _wait_for(go + ".A.grabbed")  # A holds the lock, has grabbed d, and stalls ...
        os.kill(first.pid, signal.SIGSTOP)  # ... touching its lock no more ...
        watch = shared_watch(run)  # ... for longer than COORD_STALE, as this host has watched it
        watch.still_for(watch_key(run), os.stat(run.coordinator_lock).st_mtime, time.monotonic() - COORD_STALE - 1)
        watch.save(force=True)
        second = subprocess.Popen(base + ["B", go, "--pool", str(pool), "--resume", run.run_id, "--rollback-to", "a"],
                                  stderr=subprocess.PIPE, text=True)
        _wait_for(go + ".B.grabbed")  # B broke the lock, fenced and undid A, grabbed a b c d
        os.kill(first.pid, signal.SIGCONT)
        open(go + ".A", "w").close()  # A wakes up
        assert first.wait(30) == 3
        assert "another coordinator took the run over; nothing of it was applied" in first.stderr.read()  # type: ignore[union-attr]
        open(go + ".B", "w").close()
        assert second.wait(30) == 0, second.stderr.read()  # type: ignore[union-attr]
    finally:
        for p in (first, second):
            if p is not None and p.poll() is None:
                os.kill(p.pid, signal.SIGCONT)
                p.kill()
    placed = where(run)
    assert placed == {"a": ["queued"], "b": ["waiting"], "c": ["waiting"], "d": ["waiting"]}, placed
    assert sorted(n for n in os.listdir(run.attempts_dir) if n.endswith(".json")) == ["0001.json", "0002.json"]


def test_an_idle_pool_worker_leaves_a_run_moved_to_the_slurm_backend(pool: Path, make_workflow,
                                                                      tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    run = submit(pool, make_workflow([{"id": "a", "command": f"echo a >> '{ledger}'"}]))
    worker = subprocess.Popen([sys.executable, "-c", "import sys; from executioner.cli import worker_main; "
                               "sys.exit(worker_main(sys.argv[1:]))", "--pool", str(pool), "--exit-when-idle", "4",
                               "-q"])
    try:
        deadline = time.monotonic() + 20
        while not os.path.exists(run.job("a", "done")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert os.path.exists(run.job("a", "done"))  # it has read run.json and is idle now
        # a resume moves the run to the Slurm backend (without submitting: the library alone)
        workflow = workflow_for_resume(run, None)
        apply(run, lambda: plan_resume(PoolLayout(str(pool)), run, workflow,
                                       Options(rollback_to=("a",), backend="slurm")))
        assert worker.wait(timeout=30) == 0
    finally:
        worker.kill()
    assert ledger.read_text().split() == ["a"]  # the pool worker did not run it again
    assert files(run, "queued") == ["a.json"]


def test_a_claim_taken_back_cannot_be_claimed_again_before_the_change_grabs_it(
        pool: Path, make_workflow, monkeypatch: pytest.MonkeyPatch) -> None:
    """RACE (coordinator.change.TAKEN_INTO): a claim taken back by --force was put in queued/
    and grabbed from there; an idle worker slot claimed it in between, the change was planned
    again and the job got a second lost try. A worker's claim right after the take now finds
    nothing to claim."""
    from executioner.coordinator import change

    run = submit(pool, make_workflow([{"id": "s", "command": "true"}]))
    claim = store.claim(run, "s", store.Owner.current("w-live"))
    assert claim is not None
    store.write_lock(claim)  # live: this process holds it
    real = change.requeue_lost
    raced: list[object] = []

    def take_then_race(*a, **kw):
        state = real(*a, **kw)
        raced.append(store.claim(run, "s", store.Owner.current("w-idle-slot")))  # a worker, at once
        return state

    monkeypatch.setattr(change, "requeue_lost", take_then_race)
    workflow = workflow_for_resume(run, None)
    apply(run, lambda: plan_resume(PoolLayout(str(pool)), run, workflow, Options(force=True, rollback_to=("s",))))
    assert raced == [None]  # nothing in queued/ to claim while the change held the job
    record = json.loads(Path(run.job("s", "queued")).read_text())
    assert [(t["try"], t["status"]) for t in record["tries"]] == [(1, "lost")]
    assert record["attempt"] == 2
