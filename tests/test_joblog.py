"""exec-status POOL RUN --joblog: every ended try in GNU parallel's --joblog format, read the
way parallel's documentation describes the file (TAB separated: sequence number, sshlogin,
start time as seconds since epoch, run time in seconds, bytes sent, bytes received, exit
status, signal, command), and compared with what a real ``parallel --joblog`` writes for the
same commands."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from executioner.protocol.fsio import HOST

from .conftest import cli, submit, work

COMMANDS = {"ok": "true", "three": "exit 3", "killed": "kill -9 $$", "termed": "kill -TERM $$"}


def parse(text: str) -> tuple[list[str], list[dict]]:
    """A joblog as parallel's man page describes it: a header line, then TAB-separated columns."""
    lines = text.splitlines()
    header = lines[0].split("\t")
    rows = []
    for raw in lines[1:]:
        cells = raw.split("\t")
        assert len(cells) == 9, raw
        seq, host, start, took, send, receive, exitval, sig, command = cells
        rows.append({"Seq": int(seq), "Host": host, "Starttime": float(start), "JobRuntime": float(took),
                     "Send": int(send), "Receive": int(receive), "Exitval": int(exitval), "Signal": int(sig),
                     "Command": command, "raw": cells})
    return header, rows


def parallel_joblog(tmp_path: Path, commands: list[str], *options: str) -> str:
    if not shutil.which("parallel"):
        pytest.skip("GNU parallel is not installed (apt-get install parallel)")
    log = tmp_path / "parallel.joblog"
    subprocess.run(["parallel", *options, "--joblog", str(log), ":::", *commands], capture_output=True, timeout=30)
    return log.read_text()


def test_joblog_has_parallels_columns_and_exit_columns(pool: Path, make_workflow, tmp_path: Path) -> None:
    jobs = [{"id": k, "command": c} for k, c in COMMANDS.items()]
    jobs += [{"id": "slow", "command": "sleep 5", "timeout": 0.5, "kill_grace": 0.5},
             {"id": "retried", "command": "exit 1", "max_retries": 1},
             {"id": "tab", "command": "printf 'a\\tb' # tab\there"}]
    run = submit(pool, make_workflow(jobs))
    before = time.time()
    work(pool, run)
    out = cli("exec-status", str(pool), run.run_id, "--joblog")
    assert out.returncode == 0, out.stderr
    header, rows = parse(out.stdout)
    theirs, their_rows = parse(parallel_joblog(tmp_path, list(COMMANDS.values())))
    assert header == theirs == ["Seq", "Host", "Starttime", "JobRuntime", "Send", "Receive", "Exitval", "Signal",
                                "Command"]
    # the same layout of each column as parallel's: start with 3 decimals, runtime %10.3f
    for ours, real in zip(rows[:1], their_rows[:1]):
        assert len(ours["raw"][2].split(".")[1]) == len(real["raw"][2].split(".")[1]) == 3
        assert len(ours["raw"][3]) == len(real["raw"][3]) == 10
    by_command = {r["Command"]: r for r in rows}
    for real in their_rows:  # every command ends with the Exitval and Signal parallel gives it
        ours = by_command[real["Command"]]
        assert (ours["Exitval"], ours["Signal"]) == (real["Exitval"], real["Signal"]), real["Command"]
    # a timeout is parallel's --timeout convention: -1 and the signal that ended it
    slow = by_command["sleep 5"]
    assert slow["Exitval"] == -1 and slow["Signal"] in (9, 15)
    timed = parse(parallel_joblog(tmp_path, ["sleep 5"], "--timeout", "0.5"))[1][0]
    assert timed["Exitval"] == -1 and timed["Signal"] == 15
    # every try is a line; a retried job's tries share its Seq
    retried = [r for r in rows if r["Command"] == "exit 1"]
    assert len(retried) == 2 and retried[0]["Seq"] == retried[1]["Seq"]
    assert all(r["Exitval"] == 1 for r in retried)
    # Seq numbers the jobs in id order; one line per try, nothing else
    ids = sorted(j["id"] for j in jobs)
    assert {r["Seq"] for r in rows} == set(range(1, len(ids) + 1))
    assert by_command["true"]["Seq"] == ids.index("ok") + 1
    assert len(rows) == len(jobs) + 1
    assert all(r["Host"] == HOST and r["Send"] == 0 == r["Receive"] for r in rows)
    assert all(before - 1 <= r["Starttime"] <= time.time() and r["JobRuntime"] >= 0 for r in rows)
    assert slow["JobRuntime"] >= 0.5
    assert by_command["printf 'a\\\\tb' # tab\\there"]["Exitval"] == 0  # a tab is written \t: one line


def test_joblog_of_an_array_is_one_line_per_task_try(pool: Path, make_workflow) -> None:
    run = submit(pool, make_workflow([
        {"id": "first", "command": "true"},
        {"id": "sim", "array": {"start": 10, "stop": 15}, "command": "test {index} != 12 && echo {index}"},
        {"id": "zz", "command": ["sh", "-c", "exit 4", "x y"]}]))
    work(pool, run, slots=3)
    out = cli("exec-status", str(pool), run.run_id, "--joblog")
    assert out.returncode == 0, out.stderr
    _, rows = parse(out.stdout)
    tasks = [r for r in rows if r["Command"].startswith("test ")]
    assert [r["Command"] for r in tasks] == [f"test {i} != 12 && echo {i}" for i in range(10, 15)]
    assert [r["Seq"] for r in tasks] == [2, 3, 4, 5, 6]  # after "first", by position
    assert [r["Exitval"] for r in tasks] == [0, 0, 1, 0, 0]
    last = rows[-1]
    assert last["Seq"] == 7 and last["Command"] == "sh -c 'exit 4' 'x y'" and last["Exitval"] == 4


def test_joblog_of_a_running_job_leaves_it_out_and_a_removed_run_is_one_line(pool: Path, make_workflow) -> None:
    run = submit(pool, make_workflow([{"id": "a", "command": "true"}]))
    out = cli("exec-status", str(pool), run.run_id, "--joblog")
    assert out.returncode == 0 and out.stdout.splitlines()[1:] == []
    out = cli("exec-status", str(pool), "nosuch-0001", "--joblog")
    assert out.returncode == 2 and "Traceback" not in out.stderr and len(out.stderr.splitlines()) == 1
    out = cli("exec-status", str(pool), "--joblog")
    assert out.returncode == 2 and "need a run" in out.stderr
    out = cli("exec-status", str(pool), run.run_id, "--joblog", "--json")
    assert out.returncode == 2 and "--joblog" in out.stderr
