"""The three commands as a user runs them, on a pool path with spaces and quotes."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .conftest import HOSTILE, cli

RUN_KEYS = {"run_id", "name", "state", "counts", "jobs"}
COUNT_KEYS = {"waiting", "queued", "running", "done", "failed", "blocked"}
JOB_KEYS = {"id", "state", "tries", "exit_code", "duration", "host", "reason"}


def write(tmp_path: Path, text: str, name: str = "wf.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_submit_worker_status_with_hostile_pool_path(pool: Path, tmp_path: Path) -> None:
    assert HOSTILE in str(pool)
    wf = write(tmp_path, "name: demo\njobs:\n  - {id: a, command: 'echo hi'}\n"
                         "  - {id: b, command: 'echo there', dependencies: [a]}\n")
    sub = cli("exec-submit", str(wf), "--pool", str(pool))
    assert sub.returncode == 0, sub.stderr
    run_id, run_dir = sub.stdout.strip().split(" ", 1)
    assert run_id == "demo-0001" and Path(run_dir) == pool / run_id
    work = cli("exec-worker", "--pool", str(pool), "--exit-when-idle", "0.5", "-q")
    assert work.returncode == 0, work.stderr
    status = cli("exec-status", str(pool), "--json")
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    assert set(data) == {"runs"}
    [r] = data["runs"]
    assert set(r) == {"run_id", "name", "state", "counts"} and set(r["counts"]) == COUNT_KEYS
    assert (r["run_id"], r["name"], r["state"], r["counts"]["done"]) == ("demo-0001", "demo", "done", 2)
    # a run: by pool + id, and by its directory
    for args in ([str(pool), run_id], [run_dir]):
        out = cli("exec-status", *args, "--json")
        data = json.loads(out.stdout)
        assert set(data) == RUN_KEYS and set(data["counts"]) == COUNT_KEYS
        assert [set(j) for j in data["jobs"]] == [JOB_KEYS, JOB_KEYS]
        assert [(j["id"], j["state"], j["tries"], j["exit_code"]) for j in data["jobs"]] == \
            [("a", "done", 1, 0), ("b", "done", 1, 0)]
    human = cli("exec-status", str(pool), run_id)
    assert human.returncode == 0 and "demo-0001" in human.stdout and "done" in human.stdout
    table = cli("exec-status", str(pool))
    assert table.returncode == 0 and "last update" in table.stdout and "done 2" in table.stdout


def test_pool_from_environment_and_run_ids_are_sequential(pool: Path, tmp_path: Path) -> None:
    wf = write(tmp_path, "jobs: [{id: a, command: 'true'}]\n", name="etl.yaml")
    ids = [cli("exec-submit", str(wf), env={"EXEC_POOL": str(pool)}).stdout.split()[0] for _ in range(3)]
    assert ids == ["etl-0001", "etl-0002", "etl-0003"]


def test_wait_with_local_workers_exit_codes(pool: Path, tmp_path: Path) -> None:
    ok = write(tmp_path, "jobs:\n  - {id: a, command: 'true'}\n  - {id: b, command: 'true', dependencies: [a]}\n",
               name="ok.yaml")
    # -j has one long name in both commands (it was --jobs-per-worker here, --jobs in exec-worker)
    result = cli("exec-submit", str(ok), "--pool", str(pool), "--workers", "2", "--jobs", "2", "--wait")
    assert result.returncode == 0, result.stderr
    assert "done (done 2, failed 0, blocked 0)" in result.stdout
    bad = write(tmp_path, "jobs:\n  - {id: a, command: 'exit 4'}\n  - {id: b, command: 'true', dependencies: [a]}\n",
                name="bad.yaml")
    result = cli("exec-submit", str(bad), "--pool", str(pool), "--workers", "1", "--wait")
    assert result.returncode == 1, result.stderr
    assert "failed (done 0, failed 1, blocked 1)" in result.stdout
    # the plain progress lines (not a terminal)
    assert "failed 1" in result.stderr


def test_status_and_worker_bad_input_exit_2_one_line(tmp_path: Path) -> None:
    for args in (["exec-status", str(tmp_path / "nope")],
                 ["exec-status", str(tmp_path), "no-such-run"],
                 ["exec-worker", "--pool", str(tmp_path / "nope")],
                 ["exec-worker", "--pool", str(tmp_path), "--run", "ghost-0001"],
                 ["exec-worker", "--pool", str(tmp_path), "-j", "0"],
                 ["exec-submit", str(tmp_path / "x.yaml"), "--pool", str(tmp_path), "--workers", "-1"]):
        result = cli(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1, (args, result.stderr)


def test_run_directory_is_readable_by_hand(pool: Path, tmp_path: Path) -> None:
    wf = write(tmp_path, "jobs:\n  - {id: a, command: 'echo hello'}\n")
    run_dir = Path(cli("exec-submit", str(wf), "--pool", str(pool)).stdout.split(" ", 1)[1].strip())
    assert sorted(os.listdir(run_dir)) == ["attempts", "done", "failed", "graph.json", "logs", "queued",
                                           "run.json", "running", "waiting", "workflow.yaml"]
    assert (run_dir / "workflow.yaml").read_bytes() == wf.read_bytes()
    assert sorted(os.listdir(run_dir / "attempts")) == ["0001.json", "0001.workflow.yaml"]
    assert json.loads((run_dir / "attempts" / "0001.json").read_text())["why"] == "submit"
    cli("exec-worker", "--pool", str(pool), "--exit-when-idle", "0.3", "-q")
    job = json.loads((run_dir / "done" / "a.json").read_text())
    assert job["id"] == "a" and job["tries"][0]["stdout"] == "logs/a.1.out"
    assert (run_dir / "logs" / "a.1.out").read_text() == "hello\n"


def test_the_job_table_shows_every_state_and_bracketed_text_as_is(pool: Path, tmp_path: Path) -> None:
    wf = write(tmp_path, "jobs:\n  - {id: a, command: 'echo [x]; exit 3'}\n"
                         "  - {id: b, command: 'true', dependencies: [a]}\n  - {id: c, command: 'true'}\n")
    run_dir = cli("exec-submit", str(wf), "--pool", str(pool)).stdout.split(" ", 1)[1].strip()
    before = cli("exec-status", run_dir)  # queued and waiting jobs (no colour of their own)
    assert before.returncode == 0 and "waiting" in before.stdout and "queued" in before.stdout, before.stderr
    cli("exec-worker", "--pool", str(pool), "--exit-when-idle", "0.3", "-q")
    after = cli("exec-status", run_dir)
    assert after.returncode == 0 and "blocked" in after.stdout and "failed" in after.stdout, after.stderr


def test_time_flags_are_validated_alike_in_every_command(pool: Path, tmp_path: Path) -> None:
    wf = write(tmp_path, "jobs: [{id: a, command: 'true'}]\n")
    pool.mkdir(parents=True)
    submit = ["exec-submit", str(wf), "--pool", str(pool)]
    worker = ["exec-worker", "--pool", str(pool)]
    cases = [(submit + ["--stale-after", v], "--stale-after") for v in ("0", "-1", "nan", "inf", "1e9")]
    cases += [(worker + ["--heartbeat", v], "--heartbeat") for v in ("nan", "0", "inf")]
    cases += [(worker + ["--exit-when-idle", v], "--exit-when-idle") for v in ("0", "nan", "-3")]
    cases += [(worker + ["--stale-after", "nan"], "--stale-after"),
              (worker + ["--heartbeat", "10", "--stale-after", "20"], "more than twice --heartbeat")]
    for args, says in cases:
        result = cli(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.count("\n") == 1 and says in result.stderr and "Traceback" not in result.stderr, \
            (args, result.stderr)
    assert sorted(os.listdir(pool)) == [], "a refused exec-submit wrote something"
    ok = cli(*worker, "--heartbeat", "0.5", "--stale-after", "1.5", "--exit-when-idle", "0.2", "-q")
    assert ok.returncode == 0, ok.stderr


def test_workers_that_cannot_start_are_one_line_and_the_run_stays(pool: Path, tmp_path: Path, monkeypatch,
                                                                  capsys) -> None:
    import executioner.execution.launch
    from executioner.cli import submit_main

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", "launch")

    monkeypatch.setattr(executioner.execution.launch, "start_detached", refuse)
    wf = write(tmp_path, "jobs: [{id: a, command: 'true'}]\n")
    assert submit_main([str(wf), "--pool", str(pool), "--workers", "2"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot start local workers" in err and "Permission denied" in err
    assert "exec-worker --pool" in err and os.listdir(pool / "wf-0001" / "queued") == ["a.json"]
