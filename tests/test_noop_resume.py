"""A resume that would change nothing writes nothing: no ghost attempts, no job file touched."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import cli, work
from .test_resume import attempt_numbers, chain, resume, states, submit_cli, tree, write_wf

GATED = ("import os, sys, time\n"
         "while not os.path.exists(sys.argv[1]): time.sleep(0.002)\n"
         "from executioner.cli import submit_main\nsys.exit(submit_main(sys.argv[2:]))\n")


def failed_once(tmp_path: Path) -> list[dict]:
    """a -> b -> c -> d; b fails its first try and succeeds later."""
    jobs = chain(tmp_path)
    marker = tmp_path / "b-failed-once"
    jobs[1]["command"] = f"test -e '{marker}' || {{ touch '{marker}'; exit 3; }}"
    return jobs


@pytest.mark.timeout(120)
def test_four_concurrent_resumes_record_one_attempt(pool: Path, tmp_path: Path) -> None:
    run = submit_cli(pool, write_wf(tmp_path / "wf.yaml", failed_once(tmp_path)))
    work(pool, run)
    assert states(run) == {"a": "done", "b": "failed", "c": "blocked", "d": "blocked"}
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", GATED, str(go), "--pool", str(pool), "--resume", run.run_id],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    time.sleep(0.5)  # let them all start (a barrier, not a wait for staleness)
    go.touch()
    results = [(p.wait(timeout=60), p.stdout.read(), p.stderr.read()) for p in procs]  # type: ignore[union-attr]
    assert attempt_numbers(run) == ["0001.json", "0002.json"], results
    idle = "nothing to do: attempt 2 is in progress (1 queued, 0 running, 2 waiting)\n"
    applied = [r for r in results if r[0] == 0 and r[1] != idle]
    assert len(applied) == 1 and applied[0][1] == f"{run.run_id} {run.root}\n", results
    for rc, out, err in results:
        assert rc == 0 and out in (idle, applied[0][1]) or rc == 3 and "is being changed by" in err, (rc, out, err)
    # and one more afterwards, as a plain and as a dry run: the same words, not a byte written
    before = tree(run.root)
    for flags in ((), ("--dry-run",)):
        out = resume(pool, run, *flags)
        assert out.returncode == 0, out.stderr
        assert out.stdout.endswith(idle), out.stdout
    assert tree(run.root) == before
    work(pool, run)
    assert set(states(run).values()) == {"done"}


@pytest.mark.timeout(60)
def test_a_resume_of_a_finished_run_says_it_is_done_and_writes_nothing(pool: Path, tmp_path: Path) -> None:
    run = submit_cli(pool, write_wf(tmp_path / "wf.yaml", chain(tmp_path)))
    work(pool, run)
    before = tree(run.root)
    out = resume(pool, run)
    assert (out.returncode, out.stdout, out.stderr) == (0, "nothing to do: the run is done\n", "")
    assert tree(run.root) == before and attempt_numbers(run) == ["0001.json"]


@pytest.mark.timeout(60)
def test_a_resume_with_something_to_do_still_records_its_attempt(pool: Path, tmp_path: Path) -> None:
    run = submit_cli(pool, write_wf(tmp_path / "wf.yaml", chain(tmp_path)))
    work(pool, run)
    for flags in (("--rollback-to", "c"), ("--from-job", "d")):  # c runs again; then d is queued: both move jobs
        out = resume(pool, run, *flags)
        assert out.returncode == 0 and "nothing to do" not in out.stdout, out.stdout + out.stderr
    assert attempt_numbers(run) == ["0001.json", "0002.json", "0003.json"]


@pytest.mark.timeout(60)
def test_a_changed_retry_setting_is_not_nothing(pool: Path, tmp_path: Path) -> None:
    jobs = failed_once(tmp_path)
    wf = write_wf(tmp_path / "wf.yaml", jobs)
    run = submit_cli(pool, wf)
    work(pool, run)
    assert resume(pool, run).returncode == 0  # b requeued: attempt 2
    jobs[1]["max_retries"] = 2  # b is queued: the change is accepted, and recorded
    out = resume(pool, run, str(write_wf(tmp_path / "wf2.yaml", jobs)))
    assert out.returncode == 0 and "nothing to do" not in out.stdout, out.stdout
    assert attempt_numbers(run) == ["0001.json", "0002.json", "0003.json"]


@pytest.mark.timeout(60)
def test_no_retry_failed_on_a_stopped_run_says_so_and_writes_nothing(pool: Path, tmp_path: Path) -> None:
    jobs = chain(tmp_path, fail="a")
    run = submit_cli(pool, write_wf(tmp_path / "wf.yaml", jobs))
    work(pool, run)
    assert resume(pool, run, "--no-retry-failed").stdout == "nothing to do: attempt 1 has stopped (1 failed, 3 blocked)\n"
    assert attempt_numbers(run) == ["0001.json"]
    assert os.path.exists(run.job("a", "failed"))
    out = cli("exec-submit", "--pool", str(pool), "--resume", run.run_id, "--failed-only")
    assert out.returncode == 0 and "nothing to do" not in out.stdout
