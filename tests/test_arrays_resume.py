"""Resume, rollback, --failed-only and --from-job on runs with task arrays (issue 11): the
same guarantees as for jobs, task by task."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import yaml

from executioner import PoolLayout, RunLayout, create_run, load_workflow, run_status

from .conftest import cli, files, work


def write(tmp_path: Path, jobs: list[dict]) -> Path:
    wf = tmp_path / "wf.yaml"
    wf.write_text(yaml.safe_dump({"name": "arr", "jobs": jobs}, sort_keys=False))
    return wf


def resume(pool: Path, run: RunLayout, *args: str) -> str:
    out = cli("exec-submit", "--pool", str(pool), "--resume", run.run_id, *args)
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    return out.stdout


def ledger_counts(ledger: Path) -> collections.Counter:
    return collections.Counter(ledger.read_text().split())


def sweep_jobs(ledger: Path, fail: str = "") -> list[dict]:
    return [
        {"id": "sim", "array": 8, "chunk": 4, "command": f"echo sim{{index}} >> {ledger}; {fail or 'true'}"},
        {"id": "post", "array": 8, "chunk": 4, "command": f"echo post{{index}} >> {ledger}",
         "dependencies": ["sim:{index}"]},
        {"id": "agg", "command": f"echo agg >> {ledger}", "dependencies": ["post"]},
    ]


def test_resume_runs_again_only_the_failed_task_and_what_it_blocked(pool: Path, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    flag = tmp_path / "fixed"
    wf = write(tmp_path, sweep_jobs(ledger, fail=f"test {{index}} != 5 || test -e {flag}"))
    run = create_run(PoolLayout(str(pool)), load_workflow(str(wf)))
    work(pool, run)
    assert run_status(run)["state"] == "failed" and files(run, "failed") == ["sim.5.json"]
    flag.touch()
    resume(pool, run)
    work(pool, run)
    assert run_status(run)["state"] == "done"
    counts = ledger_counts(ledger)
    assert counts["sim5"] == 2 and counts["post5"] == 1 and counts["agg"] == 1
    assert all(counts[f"sim{i}"] == 1 for i in range(8) if i != 5)
    record = json.loads(Path(run.job("sim.5", "done")).read_text())
    assert [t["attempt"] for t in record["tries"]] == [1, 2] and record["attempt"] == 2


def test_rollback_of_one_task_reruns_it_its_element_wise_dependent_and_the_aggregate(pool: Path, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    run = create_run(PoolLayout(str(pool)), load_workflow(str(write(tmp_path, sweep_jobs(ledger)))))
    work(pool, run)
    assert run_status(run)["state"] == "done"
    dry = cli("exec-submit", "--pool", str(pool), "--resume", run.run_id, "--rollback-to", "sim:6", "--dry-run")
    assert "sim.6 -> queued: rolled back (--rollback-to sim:6)" in dry.stdout
    assert "post.6 -> waiting: downstream of sim:6" in dry.stdout
    resume(pool, run, "--rollback-to", "sim:6")
    assert "sim.6.json" in files(run, "queued") and {"sim.4-5.json", "sim.7.json"} <= set(files(run, "done"))
    work(pool, run)
    counts = ledger_counts(ledger)
    assert counts["sim6"] == 2 and counts["post6"] == 2 and counts["agg"] == 2
    assert sum(counts.values()) == 8 + 8 + 1 + 3
    assert run_status(run)["state"] == "done"


def test_rollback_of_the_whole_array(pool: Path, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    run = create_run(PoolLayout(str(pool)), load_workflow(str(write(tmp_path, sweep_jobs(ledger)))))
    work(pool, run)
    resume(pool, run, "--rollback-to", "post")
    work(pool, run)
    counts = ledger_counts(ledger)
    assert all(counts[f"post{i}"] == 2 and counts[f"sim{i}"] == 1 for i in range(8)) and counts["agg"] == 2


def test_unknown_task_names_are_one_line(pool: Path, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    run = create_run(PoolLayout(str(pool)), load_workflow(str(write(tmp_path, sweep_jobs(ledger)))))
    out = cli("exec-submit", "--pool", str(pool), "--resume", run.run_id, "--rollback-to", "sim:8")
    assert out.returncode == 2 and "no task 'sim:8' (its tasks are sim:0 to sim:7)" in out.stderr
    out = cli("exec-submit", "--pool", str(pool), "--resume", run.run_id, "--rollback-to", "agg:1")
    assert out.returncode == 2 and "'agg' is not an array" in out.stderr


def test_failed_only_holds_the_rest(pool: Path, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    flag = tmp_path / "fixed"
    jobs = sweep_jobs(ledger, fail=f"test {{index}} != 1 || test -e {flag}")
    run = create_run(PoolLayout(str(pool)), load_workflow(str(write(tmp_path, jobs))))
    work(pool, run)
    flag.touch()
    resume(pool, run, "--failed-only")
    work(pool, run)
    assert "sim.1.json" in files(run, "done")
    assert run_status(run)["state"] in ("held", "done")
    assert ledger_counts(ledger)["sim1"] == 2


def test_an_array_that_grows_adds_tasks_and_one_that_shrinks_removes_them(pool: Path, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    jobs = [{"id": "s", "array": 6, "chunk": 4, "command": f"echo s{{index}} >> {ledger}"}]
    wf = write(tmp_path, jobs)
    run = create_run(PoolLayout(str(pool)), load_workflow(str(wf)))
    work(pool, run)
    jobs[0]["array"] = 10
    write(tmp_path, jobs)
    resume(pool, run, str(wf))
    work(pool, run)
    counts = ledger_counts(ledger)
    assert sorted(counts) == sorted(f"s{i}" for i in range(10)) and set(counts.values()) == {1}
    assert run_status(run)["counts"]["done"] == 10
    jobs[0]["array"] = 5
    write(tmp_path, jobs)
    out = cli("exec-submit", "--pool", str(pool), "--resume", run.run_id, str(wf))
    assert out.returncode != 0 and "--force" in out.stderr  # done tasks would be removed
    resume(pool, run, str(wf), "--force")
    assert run_status(run)["counts"]["done"] == 5
    assert run_status(run)["state"] == "done"
    assert sorted(files(run, "removed")) != []


def test_a_changed_command_needs_force_then_reruns_every_task(pool: Path, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    jobs = [{"id": "s", "array": 4, "command": f"echo s{{index}} >> {ledger}"}]
    wf = write(tmp_path, jobs)
    run = create_run(PoolLayout(str(pool)), load_workflow(str(wf)))
    work(pool, run)
    jobs[0]["command"] = f"echo t{{index}} >> {ledger}"
    write(tmp_path, jobs)
    out = cli("exec-submit", "--pool", str(pool), "--resume", run.run_id, str(wf))
    assert out.returncode != 0 and "--force" in out.stderr
    resume(pool, run, str(wf), "--force")
    work(pool, run)
    assert sorted(ledger_counts(ledger)) == [f"{x}{i}" for x in "st" for i in range(4)]


def test_from_job_assumes_an_upstream_array_done_at_submit_and_at_resume(pool: Path, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    wf = write(tmp_path, sweep_jobs(ledger))
    out = cli("exec-submit", str(wf), "--pool", str(pool), "--from-job", "post")
    assert out.returncode == 0, out.stderr
    run = PoolLayout(str(pool)).run(out.stdout.split()[0])
    work(pool, run)
    counts = ledger_counts(ledger)
    assert not any(k.startswith("sim") for k in counts) and counts["agg"] == 1
    assert all(counts[f"post{i}"] == 1 for i in range(8))
    sim = json.loads(Path(run.job("sim.0-3", "done")).read_text())
    assert sim["skipped"]["reason"] == "assumed done (--from-job post)" and sim["tries"] == []
    resume(pool, run, "--from-job", "agg")
    work(pool, run)
    counts = ledger_counts(ledger)
    assert counts["agg"] == 2 and all(counts[f"post{i}"] == 1 for i in range(8))


def test_no_retry_failed_leaves_a_failed_task_failed(pool: Path, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    run = create_run(PoolLayout(str(pool)), load_workflow(str(write(tmp_path, sweep_jobs(ledger, fail="test {index} != 2")))))
    work(pool, run)
    assert files(run, "failed") == ["sim.2.json"]
    resume(pool, run, "--no-retry-failed")
    work(pool, run)
    assert files(run, "failed") == ["sim.2.json"] and ledger_counts(ledger)["sim2"] == 1
    assert run_status(run)["state"] == "failed"
