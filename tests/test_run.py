"""A workflow submitted and worked on: order, failure, retries, timeouts, outputs, logs."""

from __future__ import annotations

import os
import shlex
import time
from pathlib import Path

import psutil

from executioner import run_status
from executioner.protocol.fsio import read_json

from .conftest import files, submit, work


def ledger_cmd(ledger: Path, name: str, extra: str = "") -> str:
    return f"{extra}echo {name} $(date +%s.%N) >> '{ledger}'"


def test_diamond_runs_in_dependency_order(pool: Path, tmp_path: Path, make_workflow) -> None:
    ledger = tmp_path / "ledger"
    wf = make_workflow([
        {"id": "top", "command": ledger_cmd(ledger, "top", "sleep 0.2; ")},
        {"id": "left", "command": ledger_cmd(ledger, "left"), "dependencies": ["top"]},
        {"id": "right", "command": ledger_cmd(ledger, "right", "sleep 0.1; "), "dependencies": ["top"]},
        {"id": "bottom", "command": ledger_cmd(ledger, "bottom"), "dependencies": ["left", "right"]},
    ])
    run = submit(pool, wf)
    assert files(run, "queued") == ["top.json"]
    assert files(run, "waiting") == ["bottom.json", "left.json", "right.json"]
    work(pool, run)
    order = [line.split()[0] for line in ledger.read_text().splitlines()]
    assert order[0] == "top" and order[-1] == "bottom" and sorted(order[1:3]) == ["left", "right"]
    assert files(run, "done") == ["bottom.json", "left.json", "right.json", "top.json"]
    status = run_status(run)
    assert status["state"] == "done" and status["counts"]["done"] == 4


def test_failed_job_blocks_its_dependents(pool: Path, make_workflow) -> None:
    wf = make_workflow([
        {"id": "a", "command": "exit 3"},
        {"id": "b", "command": "true", "dependencies": ["a"]},
        {"id": "c", "command": "true", "dependencies": ["b"]},
        {"id": "free", "command": "true"},
    ])
    run = submit(pool, wf)
    work(pool, run)
    assert files(run, "failed") == ["a.json"] and files(run, "done") == ["free.json"]
    assert files(run, "waiting") == ["b.json", "c.json"]
    status = run_status(run)
    jobs = {j["id"]: j for j in status["jobs"]}
    assert status["state"] == "failed"
    assert jobs["a"]["exit_code"] == 3 and "exit code 3" in jobs["a"]["reason"]
    assert jobs["b"]["state"] == jobs["c"]["state"] == "blocked"
    assert jobs["b"]["reason"] == jobs["c"]["reason"] == "upstream failed: a"
    assert status["counts"] == {"waiting": 0, "queued": 0, "running": 0, "done": 1, "failed": 1, "blocked": 2}


def tries_of(run, job: str, state: str) -> list[dict]:
    return read_json(run.job(job, state))["tries"]


def test_retry_delay_and_backoff_read_from_recorded_tries(pool: Path, make_workflow) -> None:
    wf = make_workflow([{"id": "r", "command": "exit 1", "max_retries": 3, "retry_delay": 0.3,
                         "retry_backoff": 2.0}])
    run = submit(pool, wf)
    work(pool, run, idle=0.3)
    tries = tries_of(run, "r", "failed")
    assert [t["status"] for t in tries] == ["failed"] * 4
    gaps = [b["start"] - a["end"] for a, b in zip(tries, tries[1:])]
    for gap, expected in zip(gaps, [0.3, 0.6, 1.2]):
        assert gap >= expected, gaps
        assert gap < expected + 1.0, gaps


def test_retry_only_on_listed_exit_codes(pool: Path, make_workflow, tmp_path: Path) -> None:
    counter = tmp_path / "n"
    # exit 75 on the first try (retried), then exit 3 (not in the list: no more tries)
    cmd = f"echo x >> '{counter}'; test $(wc -l < '{counter}') -ge 2 && exit 3; exit 75"
    wf = make_workflow([{"id": "r", "command": cmd, "max_retries": 5, "retry_on_exit_codes": [75]}])
    run = submit(pool, wf)
    work(pool, run)
    tries = tries_of(run, "r", "failed")
    assert [t["exit_code"] for t in tries] == [75, 3]
    record = read_json(run.job("r", "failed"))
    assert record["last_exit_code"] == 3 and "retry_on_exit_codes" in record["reason"]


def test_retry_on_status_filter_skips_timeouts(pool: Path, make_workflow) -> None:
    wf = make_workflow([{"id": "t", "command": "sleep 5", "timeout": 0.3, "kill_grace": 0.2,
                         "max_retries": 3, "retry_on_status": ["failed"]}])
    run = submit(pool, wf)
    work(pool, run)
    tries = tries_of(run, "t", "failed")
    assert [t["status"] for t in tries] == ["timeout"]


def test_max_retry_time_stops_new_tries(pool: Path, make_workflow) -> None:
    wf = make_workflow([{"id": "m", "command": "sleep 0.2; exit 1", "max_retries": 50,
                         "retry_delay": 0.2, "max_retry_time": 1.0}])
    run = submit(pool, wf)
    work(pool, run)
    tries = tries_of(run, "m", "failed")
    assert 2 <= len(tries) <= 4
    # checked on the storage's clock when a retry is claimed (a few ms before its command starts),
    # however late a busy worker gets to it: a retry due too late is failed, not started
    assert all(t["start_storage"] - tries[0]["start_storage"] <= 1.0 + 0.25 for t in tries)
    assert "max_retry_time" in read_json(run.job("m", "failed"))["reason"]


def test_timeout_kills_a_grandchild_that_left_the_group(pool: Path, make_workflow, tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    # The grandchild starts its own session (leaves the process group), ignores SIGTERM, and
    # its parent exits at once: it is no one's descendant any more, only its environment
    # (EXEC_CLAIM) still ties it to the job.
    grandchild = f"import os,signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); os.setsid(); " \
                 f"open({str(pidfile)!r},'w').write(str(os.getpid())); time.sleep(60)"
    middle = f"import subprocess; subprocess.Popen(['python3','-c',{grandchild!r}])"
    cmd = f"python3 -c {shlex.quote(middle)}; sleep 60"
    wf = make_workflow([{"id": "slow", "command": cmd, "timeout": 1.5, "kill_grace": 0.5}])
    run = submit(pool, wf)
    work(pool, run)
    [attempt] = tries_of(run, "slow", "failed")
    assert attempt["status"] == "timeout" and "timed out" in attempt["reason"]
    pid = int(pidfile.read_text())
    assert psutil.Process(pid).ppid() != attempt["pid"] if psutil.pid_exists(pid) else True
    deadline = time.time() + 5
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE and time.time() < deadline:
        time.sleep(0.05)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_timeouts_leak_no_file_descriptors(tmp_path: Path) -> None:
    from executioner.execution.execute import run_command
    before = len(os.listdir("/proc/self/fd"))
    for i in range(20):
        r = run_command(["sleep", "5"], str(tmp_path), dict(os.environ), str(tmp_path / f"{i}.out"),
                        str(tmp_path / f"{i}.err"), 0.05, 0.1, f"m{i}")
        assert r.status == "timeout"
    assert len(os.listdir("/proc/self/fd")) == before


def test_missing_outputs_fail_the_try(pool: Path, make_workflow, tmp_path: Path) -> None:
    wf = make_workflow([
        {"id": "makes", "command": "touch made.txt", "outputs": ["made.txt"]},
        {"id": "forgets", "command": "true", "outputs": ["never.txt", "made.txt"]},
    ], workdir=str(tmp_path / "wd"))
    (tmp_path / "wd").mkdir()
    run = submit(pool, wf)
    work(pool, run)
    assert files(run, "done") == ["makes.json"]
    record = read_json(run.job("forgets", "failed"))
    assert record["tries"][0]["exit_code"] == 0 and record["tries"][0]["status"] == "failed"
    assert "missing outputs: never.txt" in record["reason"]


def test_logs_exit_codes_env_and_workdir_recorded_per_try(pool: Path, make_workflow, tmp_path: Path) -> None:
    (tmp_path / "base" / "sub").mkdir(parents=True)
    cmd = 'echo "out $EXEC_TRY $GREETING $EXEC_JOB_ID $(basename $PWD)"; echo "err $EXEC_TRY" >&2; exit $((EXEC_TRY + 4))'
    wf = make_workflow([{"id": "j", "command": cmd, "max_retries": 1, "workdir": "sub",
                         "env": {"GREETING": "${WHO}-hi"}}],
                       workdir=str(tmp_path / "base"), env={"WHO": "wf"})
    run = submit(pool, wf)
    work(pool, run)
    record = read_json(run.job("j", "failed"))
    assert [t["exit_code"] for t in record["tries"]] == [5, 6] and record["last_exit_code"] == 6
    for n, t in enumerate(record["tries"], 1):
        assert t["try"] == n and t["host"] and t["worker"] and t["end"] >= t["start"]
        assert t["pid"] > 0 and t["pid"] != os.getpid() and t["signal"] is None
        out = (Path(run.root) / t["stdout"]).read_text()
        assert out == f"out {n} wf-hi j sub\n"
        assert (Path(run.root) / t["stderr"]).read_text() == f"err {n}\n"


def test_list_command_runs_without_a_shell(pool: Path, make_workflow, tmp_path: Path) -> None:
    wf = make_workflow([{"id": "argv", "command": ["printf", "%s|", "a b", "$HOME", "${X}"], "env": {"X": "y"}}])
    run = submit(pool, wf)
    work(pool, run)
    t = read_json(run.job("argv", "done"))["tries"][0]
    assert (Path(run.root) / t["stdout"]).read_text() == "a b|$HOME|y|"


def test_missing_program_is_a_failed_try_not_a_crash(pool: Path, make_workflow) -> None:
    wf = make_workflow([{"id": "nope", "command": ["no-such-program-xyz"]}])
    run = submit(pool, wf)
    work(pool, run)
    record = read_json(run.job("nope", "failed"))
    assert record["last_exit_code"] == 127 and "command not found" in record["reason"]


def test_waiting_retry_does_not_hold_a_slot(pool: Path, make_workflow, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    wf = make_workflow([
        {"id": "slowretry", "command": f"echo fail >> '{ledger}'; exit 1", "max_retries": 1, "retry_delay": 1.5},
        *[{"id": f"q{i}", "command": f"echo q{i} >> '{ledger}'"} for i in range(5)],
    ])
    run = submit(pool, wf)
    work(pool, run, slots=1)
    lines = ledger.read_text().split()
    assert lines.count("fail") == 2
    # With one slot, every other job ran while the retry waited out its delay.
    assert len(lines) == 7 and lines[-1] == "fail", lines


def test_a_command_killed_by_a_signal_records_the_signal(pool: Path, make_workflow) -> None:
    wf = make_workflow([{"id": "k", "command": "kill -KILL $$"}])
    run = submit(pool, wf)
    work(pool, run)
    record = read_json(run.job("k", "failed"))
    [t] = record["tries"]
    assert (t["signal"], t["exit_code"], record["last_exit_code"]) == ("SIGKILL", 137, 137)
    assert "killed by SIGKILL" in record["reason"]


def test_exec_variables_can_be_used_in_env_values(pool: Path, make_workflow) -> None:
    wf = make_workflow([{"id": "e", "command": 'echo "$WHERE"', "env": {"WHERE": "${EXEC_JOB_ID}@${EXEC_RUN_ID}"}}])
    run = submit(pool, wf)
    work(pool, run)
    t = read_json(run.job("e", "done"))["tries"][0]
    assert (Path(run.root) / t["stdout"]).read_text() == f"e@{run.run_id}\n"


def test_a_script_that_cannot_be_executed_fails_cleanly(pool: Path, make_workflow, tmp_path: Path) -> None:
    script = tmp_path / "noshebang"
    script.write_bytes(b"\x7fELF not really")
    script.chmod(0o755)
    wf = make_workflow([{"id": "x", "command": [str(script)]}, {"id": "y", "command": "true"}])
    run = submit(pool, wf)
    work(pool, run)
    record = read_json(run.job("x", "failed"))
    assert record["last_exit_code"] == 126 and "cannot execute" in record["reason"]
    assert files(run, "done") == ["y.json"] and files(run, "running") == []


def test_a_retry_no_worker_could_start_in_time_is_failed_when_claimed(pool: Path, make_workflow, tmp_path) -> None:
    """The retry was due within max_retry_time when decided, but every worker was busy (or
    none was running) until long after: it is failed, not started late."""
    from executioner.protocol import store
    from executioner.liveness.clock import storage_now
    from executioner.protocol.fsio import atomic_write_json
    from executioner.protocol.layout import PoolLayout

    run = submit(pool, make_workflow([{"id": "m", "command": f"touch '{tmp_path}/ran'", "max_retries": 5,
                                       "max_retry_time": 60}]))
    path = run.job("m", "queued")
    record = read_json(path)
    now = storage_now(PoolLayout(str(pool)))
    record["tries"] = [store.try_record(1, 1, "failed", start=now - 3600, end=now - 3599, worker="w", host="h",
                                        worker_pid=1, exit_code=1, reason="exit code 1")]
    record["tries"][0]["start_storage"] = now - 3600
    record["not_before"], record["retry_delay_s"] = now - 3500, 1.0
    atomic_write_json(path, record)
    work(pool, run)
    failed = read_json(run.job("m", "failed"))
    assert len(failed["tries"]) == 1 and "max_retry_time 60 s passed before its retry could start" in failed["reason"]
    assert not (tmp_path / "ran").exists()
