"""Restarting runs from the command line: resume, --force, --from-job, rollback, --dry-run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from executioner import RunLayout

from .conftest import cli, files, work


def write_wf(path: Path, jobs: list[dict[str, Any]], name: str = "chain") -> Path:
    path.write_text(yaml.safe_dump({"name": name, "jobs": jobs}, sort_keys=False))
    return path


def chain(tmp_path: Path, fail: str | None = None, **extra: dict[str, Any]) -> list[dict[str, Any]]:
    """a -> b -> c -> d; each appends its name to ran.log; ``fail`` exits 3."""
    log = tmp_path / "ran.log"
    jobs = []
    for i, j in enumerate("abcd"):
        command = "exit 3" if j == fail else f"echo {j} >> '{log}'"
        job: dict[str, Any] = {"id": j, "command": command, **extra.get(j, {})}
        if i:
            job["dependencies"] = ["abcd"[i - 1]]
        jobs.append(job)
    return jobs


def ran(tmp_path: Path) -> list[str]:
    log = tmp_path / "ran.log"
    return log.read_text().split() if log.exists() else []


def submit_cli(pool: Path, wf: Path, *flags: str) -> RunLayout:
    out = cli("exec-submit", str(wf), "--pool", str(pool), *flags)
    assert out.returncode == 0, out.stderr
    return RunLayout(out.stdout.splitlines()[0].split(" ", 1)[1])


def resume(pool: Path, run: RunLayout, *args: str) -> subprocess.CompletedProcess[str]:
    return cli("exec-submit", "--pool", str(pool), "--resume", run.run_id, *args)


def status(run: RunLayout) -> dict[str, Any]:
    out = cli("exec-status", run.root, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def states(run: RunLayout) -> dict[str, str]:
    return {j["id"]: j["state"] for j in status(run)["jobs"]}


def tree(root: str) -> dict[str, bytes | None]:
    """Every file and folder under ``root`` with its content: what "byte-identical" compares."""
    out: dict[str, bytes | None] = {}
    for d, dirs, names in os.walk(root):
        for n in dirs:
            out[os.path.relpath(os.path.join(d, n), root) + "/"] = None
        for n in names:
            with open(os.path.join(d, n), "rb") as f:
                out[os.path.relpath(os.path.join(d, n), root)] = f.read()
    return out


def attempt_numbers(run: RunLayout) -> list[str]:
    return sorted(n for n in os.listdir(run.attempts_dir) if n.endswith(".json"))


def test_resume_after_a_fix_runs_the_failed_job_and_its_dependents_only(pool: Path, tmp_path: Path) -> None:
    wf = write_wf(tmp_path / "wf.yaml", chain(tmp_path, fail="c"))
    run = submit_cli(pool, wf)
    work(pool, run)
    assert ran(tmp_path) == ["a", "b"] and states(run) == {"a": "done", "b": "done", "c": "failed", "d": "blocked"}
    write_wf(wf, chain(tmp_path))  # the fix
    out = resume(pool, run, str(wf))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == run.run_id  # the same run
    assert "c: command: 'exit 3' ->" in out.stderr  # the accepted change is shown
    work(pool, run)
    assert ran(tmp_path) == ["a", "b", "c", "d"]  # a and b did not run again
    data = status(run)
    assert data["state"] == "done" and data["counts"]["done"] == 4
    record = json.loads((Path(run.attempts_dir) / "0002.json").read_text())
    assert (record["attempt"], record["why"], record["parent"]) == (2, "resume", 1)
    assert [(c["job"], c["field"]) for c in record["changes"]] == [("c", "command")]
    assert {s["job"]: s["action"] for s in record["plan"]} == {"a": "skip", "b": "skip", "c": "run", "d": "run"}
    assert (Path(run.root) / record["workflow_copy"]).read_bytes() == wf.read_bytes()
    c = json.loads((Path(run.state_dir("done")) / "c.json").read_text())
    assert [(t["attempt"], t["try"], t["status"]) for t in c["tries"]] == [(1, 1, "failed"), (2, 2, "done")]
    # --attempts tells the story; a plain resume now has nothing to run
    out = cli("exec-status", run.root, "--attempts", "--json")
    data = json.loads(out.stdout)
    assert [(a["attempt"], a["why"], a["tries"]) for a in data["attempts"]] == \
        [(1, "submit", {"done": 2, "failed": 1}), (2, "resume", {"done": 2})]
    assert data["next"]["planned"] == {"skip": 4}


def test_changed_done_job_refuses_until_forced_then_reruns_with_descendants(pool: Path, tmp_path: Path) -> None:
    wf = write_wf(tmp_path / "wf.yaml", chain(tmp_path))
    run = submit_cli(pool, wf)
    work(pool, run)
    jobs = chain(tmp_path)
    jobs[1]["command"] = f"echo B >> '{tmp_path / 'ran.log'}'"
    jobs[2]["env"] = {"X": "1"}
    write_wf(wf, jobs)
    before = tree(run.root)
    out = resume(pool, run, str(wf))
    assert out.returncode == 3, out.stderr
    assert "needs --force" in out.stderr and "b: command:" in out.stderr and "c: env: {} -> {'X': '1'}" in out.stderr
    assert "nothing was changed" in out.stderr and "Traceback" not in out.stderr
    assert tree(run.root) == before  # no ghost attempt, nothing moved
    out = resume(pool, run, str(wf), "--force")
    assert out.returncode == 0, out.stderr
    work(pool, run)
    assert ran(tmp_path) == ["a", "b", "c", "d", "B", "c", "d"]
    record = json.loads((Path(run.attempts_dir) / "0002.json").read_text())
    assert record["flags"]["force"] is True
    assert {(c["job"], c["field"], c["needs_force"]) for c in record["changes"]} == \
        {("b", "command", True), ("c", "env", True)}


def test_removed_job_refuses_and_force_keeps_its_file_under_removed(pool: Path, tmp_path: Path) -> None:
    wf = write_wf(tmp_path / "wf.yaml", chain(tmp_path))
    run = submit_cli(pool, wf)
    work(pool, run)
    write_wf(wf, chain(tmp_path)[:3])
    out = resume(pool, run, str(wf))
    assert out.returncode == 3 and "d: removed (needs --force)" in out.stderr
    assert attempt_numbers(run) == ["0001.json"]
    assert resume(pool, run, str(wf), "--force").returncode == 0
    assert files(run, "done") == ["a.json", "b.json", "c.json"]
    assert os.listdir(run.removed_dir) == ["d.json"]
    data = status(run)
    assert data["state"] == "done" and sum(data["counts"].values()) == 3


def test_added_job_runs_and_the_run_ends_done(pool: Path, tmp_path: Path) -> None:
    wf = write_wf(tmp_path / "wf.yaml", chain(tmp_path))
    run = submit_cli(pool, wf)
    work(pool, run)
    jobs = chain(tmp_path) + [{"id": "e", "command": f"echo e >> '{tmp_path / 'ran.log'}'", "dependencies": ["d"]}]
    write_wf(wf, jobs)
    out = resume(pool, run, str(wf))
    assert out.returncode == 0, out.stderr
    work(pool, run)
    assert ran(tmp_path) == ["a", "b", "c", "d", "e"]
    data = status(run)
    assert data["state"] == "done" and data["counts"]["done"] == 5


def test_from_job_in_a_chain_of_four_runs_the_last_two(pool: Path, tmp_path: Path) -> None:
    wf = write_wf(tmp_path / "wf.yaml", chain(tmp_path))
    run = submit_cli(pool, wf, "--from-job", "c")
    work(pool, run)
    assert ran(tmp_path) == ["c", "d"]
    data = status(run)
    assert [(j["id"], j["state"], j["reason"]) for j in data["jobs"]][:2] == [
        ("a", "skipped", "assumed done (--from-job c)"), ("b", "skipped", "assumed done (--from-job c)")]
    assert data["state"] == "done" and data["counts"]["done"] == 4
    out = cli("exec-submit", str(wf), "--pool", str(pool), "--from-job", "cc")
    assert out.returncode == 2 and "no job 'cc'" in out.stderr and "did you mean 'c'" in out.stderr
    # a resume with no workflow file: the error names the option, not a file the user did not pass
    out = resume(pool, run, "--rollback-to", "x")
    assert out.returncode == 2 and out.stderr.strip() == "exec-submit: error: --rollback-to x: no job 'x' in the workflow"


def test_from_job_on_a_resume_skips_ancestors_that_never_ran(pool: Path, tmp_path: Path) -> None:
    wf = write_wf(tmp_path / "wf.yaml", chain(tmp_path, fail="a"))
    run = submit_cli(pool, wf)
    work(pool, run)
    out = resume(pool, run, "--from-job", "c")
    assert out.returncode == 0, out.stderr
    work(pool, run)
    assert ran(tmp_path) == ["c", "d"]
    assert states(run) == {"a": "skipped", "b": "skipped", "c": "done", "d": "done"}


def test_rollback_of_the_second_of_four_reruns_three(pool: Path, tmp_path: Path) -> None:
    wf = write_wf(tmp_path / "wf.yaml", chain(tmp_path))
    run = submit_cli(pool, wf)
    work(pool, run)
    out = resume(pool, run, "--rollback-to", "b")
    assert out.returncode == 0, out.stderr
    assert files(run, "queued") == ["b.json"] and files(run, "waiting") == ["c.json", "d.json"]
    work(pool, run)
    assert ran(tmp_path) == ["a", "b", "c", "d", "b", "c", "d"]
    b = json.loads((Path(run.state_dir("done")) / "b.json").read_text())
    assert [(t["attempt"], t["try"]) for t in b["tries"]] == [(1, 1), (2, 2)]  # history kept
    assert json.loads((Path(run.attempts_dir) / "0002.json").read_text())["why"] == "rollback"


def test_dry_run_changes_no_byte(pool: Path, tmp_path: Path) -> None:
    wf = write_wf(tmp_path / "wf.yaml", chain(tmp_path, fail="b"))
    run = submit_cli(pool, wf)
    work(pool, run)
    before = tree(run.root)
    write_wf(wf, chain(tmp_path))
    for flags in ([str(wf)], ["--rollback-to", "a"], ["--from-job", "c"], ["--failed-only"], ["--no-retry-failed"]):
        out = resume(pool, run, *flags, "--dry-run")
        assert out.returncode == 0, (flags, out.stderr)
        assert "checks:" in out.stdout
        assert tree(run.root) == before, flags
    out = resume(pool, run, "--rollback-to", "a", "--dry-run")
    lines = [line.split(None, 2) for line in out.stdout.splitlines()]
    assert ["run", "a", "rolled back (--rollback-to a)"] in lines
    assert ["run", "c", "downstream of a"] in lines


def test_a_resume_that_fails_a_check_leaves_no_attempt_record(pool: Path, tmp_path: Path) -> None:
    wf = write_wf(tmp_path / "wf.yaml", chain(tmp_path))
    run = submit_cli(pool, wf)
    work(pool, run)
    write_wf(wf, chain(tmp_path, fail="a"))
    before = tree(run.root)
    out = resume(pool, run, str(wf))
    assert out.returncode == 3
    assert tree(run.root) == before and attempt_numbers(run) == ["0001.json"]


def test_two_resumes_started_together_exactly_one_proceeds(pool: Path, tmp_path: Path) -> None:
    wf = write_wf(tmp_path / "wf.yaml", chain(tmp_path, fail="b"))
    run = submit_cli(pool, wf)
    work(pool, run)
    go = tmp_path / "go"
    # Each resume holds the lock a little longer than usual, so the two surely overlap.
    code = ("import os, sys, time\nimport executioner.coordinator.change as c\n"
            "slow = c._stage\nc._stage = lambda *a: (time.sleep(1.5), slow(*a))\n"
            "while not os.path.exists(sys.argv[1]): time.sleep(0.005)\n"
            "from executioner.cli import submit_main\nsys.exit(submit_main(sys.argv[2:]))\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(go), "--pool", str(pool), "--resume", run.run_id],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    time.sleep(0.5)
    go.touch()
    results = [(p.wait(timeout=60), p.stderr.read()) for p in procs]  # type: ignore[union-attr]
    codes = sorted(r[0] for r in results)
    assert codes == [0, 3], results
    loser = next(err for rc, err in results if rc == 3)
    assert f"run {run.run_id} is being changed by" in loser and "(resume)" in loser
    assert attempt_numbers(run) == ["0001.json", "0002.json"]


def test_retry_policy_on_exit_codes_applies_again_on_resume(pool: Path, tmp_path: Path) -> None:
    counter = tmp_path / "n"
    command = f"n=$(cat '{counter}' 2>/dev/null || echo 0); n=$((n+1)); echo $n > '{counter}'; [ $n -ge 4 ] || exit 75"
    wf = write_wf(tmp_path / "wf.yaml", [{"id": "flaky", "command": command, "max_retries": 1,
                                          "retry_on_exit_codes": [75]}])
    run = submit_cli(pool, wf)
    work(pool, run)
    assert states(run) == {"flaky": "failed"}  # tries 1 and 2 failed with 75
    assert resume(pool, run).returncode == 0
    work(pool, run)
    history = json.loads(cli("exec-status", run.root, "--job", "flaky", "--json").stdout)
    assert [(t["attempt"], t["try"], t["status"], t["exit_code"]) for t in history["tries"]] == [
        (1, 1, "failed", 75), (1, 2, "failed", 75), (2, 3, "failed", 75), (2, 4, "done", 0)]
    assert history["state"] == "done"


def test_a_job_done_on_its_third_try_keeps_three_tries(pool: Path, tmp_path: Path) -> None:
    counter = tmp_path / "n"
    command = f"n=$(cat '{counter}' 2>/dev/null || echo 0); n=$((n+1)); echo $n > '{counter}'; [ $n -ge 3 ]"
    wf = write_wf(tmp_path / "wf.yaml", [{"id": "j", "command": command, "max_retries": 2}])
    run = submit_cli(pool, wf)
    work(pool, run)
    out = cli("exec-status", run.root, "--job", "j", "--json")
    history = json.loads(out.stdout)
    assert [(t["try"], t["status"]) for t in history["tries"]] == [(1, "failed"), (2, "failed"), (3, "done")]
    assert all(os.path.exists(t["stdout"]) and os.path.exists(t["stderr"]) for t in history["tries"])
    human = cli("exec-status", run.root, "--job", "j")
    assert human.returncode == 0 and "done" in human.stdout


def test_failed_only_holds_jobs_that_never_ran_until_a_plain_resume(pool: Path, tmp_path: Path) -> None:
    log = tmp_path / "ran.log"
    wf = write_wf(tmp_path / "wf.yaml", [
        {"id": "bad", "command": "exit 3"},
        {"id": "after", "command": f"echo after >> '{log}'", "dependencies": ["bad"]},
        {"id": "other", "command": f"echo other >> '{log}'", "dependencies": ["slow"]},
        {"id": "slow", "command": "exit 3"}])
    run = submit_cli(pool, wf)
    work(pool, run)
    write_wf(wf, [
        {"id": "bad", "command": "true"},
        {"id": "after", "command": f"echo after >> '{log}'", "dependencies": ["bad"]},
        {"id": "other", "command": f"echo other >> '{log}'", "dependencies": ["slow"]},
        {"id": "slow", "command": "true"}])
    # --wait with local workers: what --failed-only let run succeeded, so exit 0 (not 1)
    out = resume(pool, run, str(wf), "--failed-only", "--workers", "1", "--wait")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "held" in out.stdout and "plain --resume" in out.stdout
    assert ran(tmp_path) == []
    data = status(run)
    assert data["state"] == "held"
    assert {j["id"]: j["state"] for j in data["jobs"]} == {"bad": "done", "slow": "done", "after": "held", "other": "held"}
    assert data["counts"]["waiting"] == 2  # the count keys stay those of issue 2
    assert resume(pool, run).returncode == 0
    work(pool, run)
    assert sorted(ran(tmp_path)) == ["after", "other"] and status(run)["state"] == "done"


def test_no_retry_failed_keeps_failures_and_runs_the_rest(pool: Path, tmp_path: Path) -> None:
    log = tmp_path / "ran.log"
    jobs = [{"id": "bad", "command": "exit 3"},
            {"id": "after", "command": f"echo after >> '{log}'", "dependencies": ["bad"]}]
    wf = write_wf(tmp_path / "wf.yaml", jobs)
    run = submit_cli(pool, wf)
    work(pool, run)
    write_wf(wf, [*jobs, {"id": "extra", "command": f"echo extra >> '{log}'"}])
    out = resume(pool, run, str(wf), "--no-retry-failed", "--dry-run")
    assert out.returncode == 0 and "skip    bad    failed, not retried (--no-retry-failed)" in out.stdout
    assert "blocked after  upstream failed: bad" in out.stdout and "run     extra  added" in out.stdout
    assert resume(pool, run, str(wf), "--no-retry-failed").returncode == 0
    work(pool, run)
    assert ran(tmp_path) == ["extra"]
    assert states(run) == {"bad": "failed", "after": "blocked", "extra": "done"}
    bad = json.loads((Path(run.state_dir("failed")) / "bad.json").read_text())
    assert len(bad["tries"]) == 1


def test_always_rerun_and_missing_outputs_run_again_with_descendants(pool: Path, tmp_path: Path) -> None:
    log = tmp_path / "ran.log"
    wf = write_wf(tmp_path / "wf.yaml", [
        {"id": "make", "command": f"echo make >> '{log}'; echo x > out.csv", "outputs": ["out.csv"]},
        {"id": "use", "command": f"echo use >> '{log}'", "dependencies": ["make"]},
        {"id": "stamp", "command": f"echo stamp >> '{log}'", "always_rerun": True},
        {"id": "fixed", "command": f"echo fixed >> '{log}'"}])
    run = submit_cli(pool, wf)
    work(pool, run)
    (tmp_path / "out.csv").unlink()
    out = resume(pool, run, "--dry-run")
    assert "run     make   outputs missing: out.csv" in out.stdout
    assert "run     use    downstream of make" in out.stdout and "run     stamp  always_rerun" in out.stdout
    assert "skip    fixed  done in attempt 1" in out.stdout
    assert resume(pool, run).returncode == 0
    work(pool, run)
    assert sorted(ran(tmp_path)) == sorted(["make", "use", "stamp", "fixed", "make", "use", "stamp"])


def test_a_dry_run_submit_prints_the_plan_and_creates_nothing(pool: Path, tmp_path: Path) -> None:
    wf = write_wf(tmp_path / "wf.yaml", chain(tmp_path))
    out = cli("exec-submit", str(wf), "--pool", str(pool), "--from-job", "c", "--dry-run")
    assert out.returncode == 0, out.stderr
    lines = [line.split(None, 2) for line in out.stdout.splitlines()]
    assert ["skip", "a", "assumed done (--from-job c)"] in lines and ["run", "d", "new"] in lines
    assert not pool.exists()


def test_a_job_file_gone_to_quarantine_is_recreated_with_a_lost_try(pool: Path, tmp_path: Path) -> None:
    wf = write_wf(tmp_path / "wf.yaml", chain(tmp_path))
    run = submit_cli(pool, wf)
    work(pool, run)
    os.makedirs(run.quarantine_dir, exist_ok=True)
    os.rename(run.job("b", "done"), os.path.join(run.quarantine_dir, "b.json"))  # as the scrubber does
    out = resume(pool, run)
    assert out.returncode == 0, out.stderr
    assert "recreated from the workflow (its file was missing)" in out.stderr
    work(pool, run)
    assert ran(tmp_path) == ["a", "b", "c", "d", "b"] and states(run)["b"] == "done"
    tries = json.loads(Path(run.job("b", "done")).read_text())["tries"]
    assert [t["status"] for t in tries] == ["lost", "done"] and "quarantined" in tries[0]["reason"]


def test_a_removed_job_added_back_keeps_its_history(pool: Path, tmp_path: Path) -> None:
    wf = write_wf(tmp_path / "wf.yaml", chain(tmp_path))
    run = submit_cli(pool, wf)
    work(pool, run)
    write_wf(wf, chain(tmp_path)[:3])
    assert resume(pool, run, str(wf), "--force").returncode == 0
    write_wf(wf, chain(tmp_path))
    out = resume(pool, run, str(wf))
    assert out.returncode == 0, out.stderr
    work(pool, run)
    d = json.loads(Path(run.job("d", "done")).read_text())
    assert [(t["attempt"], t["try"]) for t in d["tries"]] == [(1, 1), (3, 2)]  # its try 1 and log kept
    assert not os.path.exists(run.job("d", "removed"))
    assert (Path(run.logs_dir) / "d.1.out").exists() and (Path(run.logs_dir) / "d.2.out").exists()


def test_rollback_of_a_job_that_from_job_assumes_done_is_an_error(pool: Path, tmp_path: Path) -> None:
    wf = write_wf(tmp_path / "wf.yaml", chain(tmp_path))
    run = submit_cli(pool, wf)
    work(pool, run)
    before = tree(run.root)
    out = resume(pool, run, "--rollback-to", "b", "--from-job", "c")
    assert out.returncode == 2 and "--rollback-to b asks to run it again, but --from-job c" in out.stderr
    assert tree(run.root) == before
