"""Against a real Slurm cluster (scripts/slurm-local.sh): worker arrays and the Slurm-DAG backend.

Skipped, with the reason, when no cluster answers; CI starts one (scripts/test.sh).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from executioner import RunLayout
from executioner.backends.slurm import SlurmOptions, merge_dependency

from .conftest import cli

pytestmark = pytest.mark.timeout(300)  # these wait on a real scheduler (one test up to ~4 min at worst)


def until(what: str, check: Callable[[], Any], limit: float = 90.0) -> Any:
    deadline = time.monotonic() + limit
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def write(tmp_path: Path, jobs: list[dict[str, Any]], name: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "jobs": jobs}, sort_keys=False))
    return path


def submit(pool: Path, wf: Path, *flags: str) -> RunLayout:
    out = cli("exec-submit", str(wf), "--pool", str(pool), *flags)
    assert out.returncode == 0, out.stderr
    return RunLayout(out.stdout.splitlines()[0].split(" ", 1)[1])


def status(run: RunLayout) -> dict[str, Any]:
    out = cli("exec-status", run.root, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def squeue(job_ids: list[str]) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-o", "%i %T"], capture_output=True, text=True, timeout=20)
    return [line for line in out.stdout.splitlines() if line.split()[0].split("_")[0] in
            {i.split("_")[0] for i in job_ids}]


def record(run: RunLayout, job: str, state: str) -> dict[str, Any]:
    return json.loads(Path(run.job(job, state)).read_text())


# ---- no cluster needed ---------------------------------------------------------------------
def test_a_users_dependency_is_joined_with_ours_never_replaced() -> None:
    assert merge_dependency({"dependency": "afterany:5", "qos": "long"}, "afterok:7:8") == \
        {"dependency": "afterany:5,afterok:7:8", "qos": "long"}
    assert merge_dependency({}, "afterok:7") == {"dependency": "afterok:7"}
    assert merge_dependency({"dependency": "singleton"}, None) == {"dependency": "singleton"}
    job = SlurmOptions(cpus=2, additional_parameters={"dependency": "afterany:5"})
    params = job.over(SlurmOptions(partition="debug", time=10, additional_parameters={"account": "a"})) \
        .executor_parameters("afterok:9")
    assert params["slurm_partition"] == "debug" and params["timeout_min"] == 10 and params["cpus_per_task"] == 2
    assert params["slurm_additional_parameters"] == {"account": "a", "dependency": "afterany:5,afterok:9"}


def test_slurm_settings_are_validated(tmp_path: Path, slurm_pool: Path) -> None:
    wf = tmp_path / "bad.yaml"
    wf.write_text("jobs:\n  - {id: a, command: 'true', slurm: {additional_parameters: [x]}}\n"
                  "  - {id: b, command: 'true', slurm: {cpu: 2}}\n")
    out = cli("exec-submit", str(wf), "--pool", str(slurm_pool), "--backend", "slurm")
    assert out.returncode == 2 and not slurm_pool.exists()
    assert "job 'a': key 'slurm': additional_parameters must be a mapping" in out.stderr
    assert "job 'b': key 'slurm': unknown key 'cpu' (did you mean 'cpus'?)" in out.stderr
    out = cli("exec-submit", str(wf), "--pool", str(slurm_pool), "--slurm-param", "novalue")
    assert out.returncode == 2 and "expected KEY=VALUE" in out.stderr


# ---- worker arrays -------------------------------------------------------------------------
def test_an_array_of_two_workers_finishes_twenty_jobs(slurm: None, slurm_pool: Path, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    wf = write(tmp_path, [{"id": f"j{i:02d}", "command": f"echo $EXEC_JOB_ID $SLURM_JOB_ID >> '{ledger}'"}
                          for i in range(20)], "twenty")
    run = submit(slurm_pool, wf, "--slurm-workers", "2", "--slurm-time", "5")
    until("the run to finish", lambda: status(run)["state"] == "done")
    data = status(run)
    assert data["counts"]["done"] == 20 and len(data["slurm"]["workers"]) == 2
    lines = ledger.read_text().splitlines()
    assert sorted(line.split()[0] for line in lines) == [f"j{i:02d}" for i in range(20)]  # each once
    workers = {record(run, f"j{i:02d}", "done")["tries"][0]["worker"] for i in range(20)}
    assert all(w.startswith("slurm") for w in workers)
    human = cli("exec-status", run.root).stdout
    assert "Slurm workers" in human and data["slurm"]["workers"][0] in human
    until("the workers to exit when idle", lambda: not squeue(data["slurm"]["workers"]), 60)


def test_a_cancelled_worker_hands_its_job_to_the_other(slurm: None, slurm_pool: Path, tmp_path: Path) -> None:
    marker = tmp_path / "started"
    ledger = tmp_path / "ledger"
    # the first try checkpoints on SIGTERM and exits 3, as many codes do: still handed back
    command = (f"echo $EXEC_TRY >> '{ledger}'; if [ ! -e '{marker}' ]; then touch '{marker}'; "
               "trap 'echo saving; exit 3' TERM; sleep 120 & wait $!; exit $?; fi")
    # (wait $!, not a bare wait: that returns 0 once Slurm's SIGTERM has killed the sleep)
    wf = write(tmp_path, [{"id": "long", "command": command}], "handover")
    run = submit(slurm_pool, wf, "--slurm-workers", "2", "--slurm-time", "5")
    until("the job to start", marker.exists)
    holder = until("its claim", lambda: [n for n in os.listdir(run.state_dir("running"))])
    claim = json.loads(Path(run.claim_record("long", 1)).read_text())
    slurm_job = claim["worker"].split("-")[0].removeprefix("slurm")
    assert holder and slurm_job
    subprocess.run(["scancel", slurm_job], check=True, timeout=20)
    until("the other worker to finish it", lambda: os.path.exists(run.job("long", "done")))
    tries = record(run, "long", "done")["tries"]
    assert [t["status"] for t in tries] == ["preempted", "done"]
    assert "stopped by Slurm (SIGTERM" in tries[0]["reason"]
    assert tries[0]["worker"] != tries[1]["worker"]
    assert ledger.read_text().split() == ["1", "2"]


def test_a_worker_at_its_time_limit_hands_its_job_back(slurm: None, slurm_pool: Path, tmp_path: Path) -> None:
    wf = write(tmp_path, [{"id": "endless", "command": "sleep 600"},
                          {"id": "too-long", "command": "true", "timeout": 600}], "limit")
    run = submit(slurm_pool, wf, "--slurm-workers", "1", "--slurm-time", "8")
    [worker] = status(run)["slurm"]["workers"]
    until("the worker to take the job", lambda: os.listdir(run.state_dir("running")), 60)
    # Now cut its allocation to one minute: Slurm's warning (SIGUSR2, 30 s before the end, or
    # up to a minute earlier) comes within the minute.
    subprocess.run(["scontrol", "update", f"JobId={worker}", "TimeLimit=1"], check=True, timeout=20)
    until("the job to be handed back", lambda: os.path.exists(run.job("endless", "queued")), 100)
    tries = record(run, "endless", "queued")["tries"]
    assert [t["status"] for t in tries] == ["preempted"]
    assert "the time limit of its Slurm job was near" in tries[0]["reason"]
    until("the worker to leave", lambda: not squeue([worker]), 60)
    # a job whose timeout (600 s) cannot end within the 8-minute allocation was never claimed
    assert record(run, "too-long", "queued")["tries"] == []


# ---- the Slurm-DAG backend -----------------------------------------------------------------
def diamond(tmp_path: Path, fail: str | None = None) -> Path:
    order = tmp_path / "order"
    jobs = [{"id": j, "command": ("exit 4" if j == fail else f"echo {j} >> '{order}'"),
             **({"dependencies": deps} if deps else {})}
            for j, deps in (("a", []), ("b", ["a"]), ("c", ["a"]), ("d", ["b", "c"]))]
    jobs[2]["slurm"] = {"cpus": 1, "additional_parameters": {"comment": "from the workflow"}}
    # a custom resource is a Slurm license, a tag a node feature (the test cluster has both)
    jobs[1].update(resources={"dl": 1}, tags=["a100"])
    return write(tmp_path, jobs, "diamond")


def test_a_diamond_runs_as_slurm_jobs_in_dependency_order(slurm: None, slurm_pool: Path, tmp_path: Path) -> None:
    run = submit(slurm_pool, diamond(tmp_path), "--backend", "slurm")
    until("the run to finish", lambda: status(run)["state"] == "done")
    order = (tmp_path / "order").read_text().split()
    assert order[0] == "a" and order[-1] == "d" and sorted(order) == ["a", "b", "c", "d"]
    for job in "abcd":
        r = record(run, job, "done")
        assert r["tries"][0]["worker"].startswith(f"slurm{r['slurm']['job_id']}-")  # ran by its own Slurm job
    assert len(status(run)["slurm"]["dag"]) == 4
    c_id = record(run, "c", "done")["slurm"]["job_id"]
    shown = subprocess.run(["scontrol", "show", "job", c_id], capture_output=True, text=True, timeout=20).stdout
    assert "Comment=from the workflow" in shown  # the job's own slurm: settings reached sbatch
    b_id = record(run, "b", "done")["slurm"]["job_id"]
    shown = subprocess.run(["scontrol", "show", "job", b_id], capture_output=True, text=True, timeout=20).stdout
    assert "Licenses=dl:1" in shown and "Features=a100" in shown, shown
    assert f"afterok:{record(run, 'a', 'done')['slurm']['job_id']}" in \
        Path(run.slurm_dir, b_id, f"{b_id}_submission.sh").read_text()


def test_a_failed_slurm_job_blocks_its_dependents(slurm: None, slurm_pool: Path, tmp_path: Path) -> None:
    run = submit(slurm_pool, diamond(tmp_path, fail="b"), "--backend", "slurm")
    until("the run to fail", lambda: status(run)["state"] == "failed")
    states = {j["id"]: (j["state"], j["reason"]) for j in status(run)["jobs"]}
    assert states["b"][0] == "failed" and states["c"][0] == "done"
    assert states["d"][0] == "blocked" and states["d"][1].startswith("upstream failed: b")
    # fixed and resumed at once, while Slurm may still hold d's old job (afterok on the failed
    # one): it is not reused but replaced; only b and d run again

    fixed = diamond(tmp_path)
    out = cli("exec-submit", "--pool", str(slurm_pool), "--resume", run.run_id, str(fixed))
    assert out.returncode == 0, out.stderr
    until("the resumed run to finish", lambda: status(run)["state"] == "done")
    assert (tmp_path / "order").read_text().split().count("a") == 1


def test_cancel_leaves_the_run_resumable_and_resume_reuses_pending_jobs(
        slurm: None, slurm_pool: Path, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    jobs = [{"id": "first", "command": f"while [ ! -e '{gate}' ]; do sleep 0.2; done"},
            {"id": "second", "command": "true", "dependencies": ["first"]}]
    wf = write(tmp_path, jobs, "cancel")
    run = submit(slurm_pool, wf, "--backend", "slurm")
    until("first to run", lambda: os.listdir(run.state_dir("running")), 60)
    pending = record(run, "second", "waiting")["slurm"]["job_id"]
    # a resume while it runs reuses both Slurm jobs instead of submitting them again
    out = cli("exec-submit", "--pool", str(slurm_pool), "--resume", run.run_id, "--force")
    assert out.returncode == 0, out.stderr
    assert record(run, "second", "waiting")["slurm"]["job_id"] == pending
    assert len(status(run)["slurm"]["dag"]) == 2
    dry = cli("exec-submit", "--pool", str(slurm_pool), "--cancel", run.run_id, "--dry-run")
    assert dry.returncode == 0 and "would cancel 2 Slurm job(s)" in dry.stdout, dry.stdout + dry.stderr
    out = cli("exec-submit", "--pool", str(slurm_pool), "--cancel", run.run_id)
    assert out.returncode == 0 and "cancelled 2 Slurm job(s)" in out.stdout, out.stdout + out.stderr
    assert os.path.exists(run.slurm_cancelled)  # the views say cancelled, not "queued / Slurm job N"
    until("first to be handed back", lambda: os.path.exists(run.job("first", "failed")), 60)
    tries = record(run, "first", "failed")["tries"]
    assert [t["status"] for t in tries] == ["preempted"] and "exec-submit --resume` runs it again" in tries[0]["reason"]
    assert status(run)["jobs"][1]["state"] == "blocked"
    gate.touch()
    out = cli("exec-submit", "--pool", str(slurm_pool), "--resume", run.run_id)
    assert out.returncode == 0, out.stderr
    until("the resumed run to finish", lambda: status(run)["state"] == "done")
    assert not os.path.exists(run.slurm_cancelled)  # submitted again: no longer cancelled


def test_a_pool_workers_claim_stops_a_slurm_submission(slurm_pool: Path, tmp_path: Path) -> None:
    from executioner.protocol import store

    wf = write(tmp_path, [{"id": "x", "command": "true"}], "mixed")
    run = submit(slurm_pool, wf)  # a pool-worker run, whose job a worker of a Slurm array holds ...
    claim = store.claim(run, "x", store.Owner.current("slurm99_0-vm-1-abcd"))
    assert claim is not None
    store.write_lock(claim)
    out = cli("exec-submit", "--pool", str(slurm_pool), "--resume", run.run_id, "--backend", "slurm", "--force")
    assert out.returncode == 3
    assert "job x is held in running/ by pool worker slurm99_0-vm-1-abcd" in out.stderr
    dry = cli("exec-submit", "--pool", str(slurm_pool), "--resume", run.run_id, "--backend", "slurm", "--dry-run")
    assert dry.returncode == 3 and "FAIL Slurm backend: job x is held in running/" in dry.stdout


def test_the_sbatch_template_starts_workers_by_hand(slurm: None, slurm_pool: Path, tmp_path: Path) -> None:
    import sys

    wf = write(tmp_path, [{"id": f"t{i}", "command": "true"} for i in range(10)], "byhand")
    run = submit(slurm_pool, wf)
    template = Path(__file__).parent.parent / "scripts" / "exec-worker.sbatch"
    env = {**os.environ, "EXEC_IDLE": "3", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    if sys.prefix != sys.base_prefix:  # tests run in a virtual environment: the template activates it
        env["EXEC_VENV"] = sys.prefix
    out = subprocess.run(["sbatch", "--parsable", "--array=0-1", f"--output={tmp_path}/w-%A_%a.log",
                          str(template), str(slurm_pool), run.run_id],
                         capture_output=True, text=True, timeout=30, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    array = out.stdout.strip().split(";")[0]
    try:
        until("the run to finish", lambda: status(run)["state"] == "done")
        workers = {json.loads(Path(run.job(f"t{i}", "done")).read_text())["tries"][0]["worker"] for i in range(10)}
        assert all(w.startswith(f"slurm{array}_") for w in workers)
        until("the workers to exit", lambda: not squeue([array]), 60)
    finally:
        subprocess.run(["scancel", array], capture_output=True, timeout=20)


def test_slurm_jobs_it_no_longer_knows_are_simply_absent(slurm: None) -> None:
    from executioner.backends.slurm import job_states

    assert job_states(["999999"]) == {}  # squeue alone would fail: "Invalid job id specified"
    assert job_states(["999998", "999999"]) == {}


def test_resume_replaces_slurm_jobs_whose_upstream_is_skipped_or_taken_back(
        slurm: None, slurm_pool: Path, tmp_path: Path) -> None:
    gate, order = tmp_path / "gate", tmp_path / "order"
    jobs = [{"id": "a", "command": f"echo a >> '{order}'", "slurm": {"additional_parameters": {"begin": "now+600"}}},
            {"id": "b", "command": f"echo b >> '{order}'", "dependencies": ["a"]},
            {"id": "c", "command": f"echo c >> '{order}'", "dependencies": ["b"]}]
    run = submit(slurm_pool, write(tmp_path, jobs, "skip"), "--backend", "slurm")
    old_b = record(run, "b", "waiting")["slurm"]["job_id"]
    # a will not start for ten minutes: start from b instead. b's pending Slurm job waits on a's
    # (cancelled now), so it must be replaced, not reused.
    out = cli("exec-submit", "--pool", str(slurm_pool), "--resume", run.run_id, "--from-job", "b")
    assert out.returncode == 0, out.stderr
    until("the run to finish", lambda: status(run)["state"] == "done")
    assert record(run, "b", "done")["slurm"]["job_id"] != old_b
    assert order.read_text().split() == ["b", "c"]
    # and a running job whose claim a forced rollback takes back gets a new Slurm job too
    jobs = [{"id": "x", "command": "true"},
            {"id": "y", "command": f"while [ ! -e '{gate}' ]; do sleep 0.2; done", "dependencies": ["x"]}]
    run = submit(slurm_pool, write(tmp_path, jobs, "taken"), "--backend", "slurm")
    until("y to run", lambda: os.listdir(run.state_dir("running")), 60)
    running_y = json.loads(Path(run.state_dir("running"), os.listdir(run.state_dir("running"))[0]).read_text())
    old_y = running_y["slurm"]["job_id"]
    out = cli("exec-submit", "--pool", str(slurm_pool), "--resume", run.run_id, "--rollback-to", "x", "--force")
    assert out.returncode == 0, out.stderr
    gate.touch()
    until("the rolled-back run to finish", lambda: status(run)["state"] == "done")
    y = record(run, "y", "done")
    assert y["slurm"]["job_id"] != old_y and [t["status"] for t in y["tries"]][-1] == "done"


def test_wait_stops_when_no_slurm_job_of_the_run_is_left(slurm: None, slurm_pool: Path, tmp_path: Path) -> None:
    import sys

    jobs = [{"id": "later", "command": "true", "slurm": {"additional_parameters": {"begin": "now+600"}}}]
    wf = write(tmp_path, jobs, "stranded")
    waiter = subprocess.Popen([sys.executable, "-c", "import sys; from executioner.cli import submit_main; "
                               "sys.exit(submit_main(sys.argv[1:]))", str(wf), "--pool", str(slurm_pool),
                               "--backend", "slurm", "--wait"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    try:
        run_dir = waiter.stdout.readline().split(" ", 1)[1].strip()  # type: ignore[union-attr]
        run = RunLayout(run_dir)
        job_id = until("its Slurm job id", lambda: record(run, "later", "queued").get("slurm", {}).get("job_id"))
        subprocess.run(["scancel", str(job_id)], check=True, timeout=20)  # by hand, not --cancel
        assert waiter.wait(timeout=60) == 1
        assert "none of its Slurm jobs is left, and some jobs never ran" in waiter.stderr.read()  # type: ignore[union-attr]
    finally:
        waiter.kill()
