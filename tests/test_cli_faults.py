"""The commands when the world around them fails: a reader that goes away (``| head -1``), a
read-only pool, paths that are not UTF-8. One line at most, the documented exit code, no
traceback, nothing left half-made."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from executioner import PoolLayout, create_run, load_workflow

from .conftest import work

ENTRY = {"exec-submit": "submit_main", "exec-worker": "worker_main", "exec-status": "status_main"}
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for `yes | head -1`


def command(prog: str, *args: str | bytes) -> list[str | bytes]:
    code = f"import sys; from executioner.cli import {ENTRY[prog]}; sys.exit({ENTRY[prog]}(sys.argv[1:]))"
    return [sys.executable, "-c", code, *args]


def into_closed_pipe(prog: str, *args: str, both: bool = False) -> subprocess.CompletedProcess[bytes]:
    """Run with stdout (and with ``both`` stderr too) a pipe whose reader is already gone."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run(command(prog, *args), stdout=write, stderr=write if both else subprocess.PIPE,
                              timeout=60)
    finally:
        os.close(write)


def big_workflow(tmp_path: Path, n: int = 5000) -> Path:
    path = tmp_path / "big.json"
    path.write_text(json.dumps({"jobs": [{"id": f"j{i:05d}", "command": "true"} for i in range(n)]}))
    return path


def listing(root: Path) -> list[tuple[str, int]]:
    return sorted((os.path.join(b, n), os.lstat(os.path.join(b, n)).st_mtime_ns)
                  for b, dirs, files in os.walk(root) for n in dirs + files)


# ---- a reader that goes away -------------------------------------------------------------
@pytest.mark.timeout(120)
def test_output_into_a_closed_pipe_is_quiet_and_exits_141(tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    wf = big_workflow(tmp_path)
    made = into_closed_pipe("exec-submit", str(wf), "--pool", str(pool))
    assert (made.returncode, made.stderr) == (EXIT_BROKEN_PIPE, b""), made.stderr.decode()
    [run_id] = PoolLayout(str(pool)).run_ids()  # the run was made whole before its id was printed
    assert len(os.listdir(pool / run_id / "queued")) == 5000
    for args in ([str(wf), "--pool", str(pool), "--dry-run"],):
        result = into_closed_pipe("exec-submit", *args)
        assert (result.returncode, result.stderr) == (EXIT_BROKEN_PIPE, b""), (args, result.stderr.decode())
    for args in ([str(pool)], [str(pool), "--json"], [str(pool), run_id], [str(pool), run_id, "--json"],
                 [str(pool), run_id, "--attempts"], [str(pool), run_id, "--job", "j00001", "--json"]):
        result = into_closed_pipe("exec-status", *args)
        assert (result.returncode, result.stderr) == (EXIT_BROKEN_PIPE, b""), (args, result.stderr.decode())
    assert PoolLayout(str(pool)).run_ids() == [run_id]


@pytest.mark.timeout(60)
def test_a_worker_whose_output_goes_nowhere_still_does_its_work(tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    run = create_run(PoolLayout(str(pool)), load_workflow(str(big_workflow(tmp_path, 20))))
    result = into_closed_pipe("exec-worker", "--pool", str(pool), "--exit-when-idle", "0.3", both=True)
    assert result.returncode == 0
    assert len(os.listdir(run.state_dir("done"))) == 20 and os.listdir(run.state_dir("running")) == []
    assert os.listdir(pool / "workers") == []


# ---- a read-only pool --------------------------------------------------------------------
def read_only(pool: Path, prog: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run a command in a mount namespace of its own where ``pool`` is a read-only bind mount
    (root is not stopped by chmod 0555; this is the real EROFS, and no mount outlives it)."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare(1) for a private read-only bind mount")
    script = ('mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" "$1" || exit 99; shift; exec "$@"')
    result = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", str(pool),
                             *command(prog, *args)], capture_output=True, text=True, timeout=60)
    if result.returncode == 99:
        pytest.skip(f"cannot make a read-only bind mount here: {result.stderr.strip()}")
    return result


@pytest.mark.timeout(120)
def test_a_read_only_pool_is_one_line_and_nothing_changes(tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    wf = tmp_path / "wf.yaml"
    wf.write_text("jobs:\n  - {id: a, command: 'true'}\n  - {id: b, command: 'true', dependencies: [a]}\n")
    run = create_run(PoolLayout(str(pool)), load_workflow(str(wf)))
    work(pool, run)  # done: a rollback then has something to change
    before = listing(pool)
    for prog, *args in (["exec-submit", str(wf), "--pool", str(pool)],
                        ["exec-submit", "--pool", str(pool), "--resume", run.run_id, "--rollback-to", "a"],
                        ["exec-worker", "--pool", str(pool), "--exit-when-idle", "0.3"]):
        result = read_only(pool, prog, *args)
        assert result.returncode == 1, (prog, args, result.stderr)
        assert result.stderr.count("\n") == 1 and "Read-only file system" in result.stderr, (args, result.stderr)
        assert result.stderr.startswith(f"{prog}: error: "), result.stderr
    # a new pool that cannot be created there: the path is the user's to fix, as for any pool path
    result = read_only(pool, "exec-submit", str(wf), "--pool", str(pool / "new"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "cannot create the pool directory: Read-only file system" in result.stderr
    for args in ([str(pool)], [str(pool), run.run_id, "--json"], [str(pool), run.run_id, "--attempts"]):
        result = read_only(pool, "exec-status", *args)
        assert result.returncode == 0 and result.stderr == "", (args, result.stderr)
    assert '"done": 2' in read_only(pool, "exec-status", str(pool), run.run_id, "--json").stdout
    assert listing(pool) == before


# ---- paths that are not UTF-8 ------------------------------------------------------------
def latin1_dir(tmp_path: Path, name: bytes) -> bytes:
    path = os.fsencode(tmp_path) + b"/" + name
    os.mkdir(path)
    return path


def test_a_workflow_under_a_non_utf8_name_leaves_an_existing_pool_untouched(tmp_path: Path) -> None:
    directory = latin1_dir(tmp_path, b"caf\xe9")
    with open(directory + b"/wf.yaml", "wb") as f:
        f.write(b"jobs: [{id: a, command: 'true'}]\n")
    pool = tmp_path / "pool"
    pool.mkdir()
    result = subprocess.run(command("exec-submit", directory + b"/wf.yaml", "--pool", str(pool)),
                            capture_output=True, timeout=60)
    assert result.returncode == 2 and result.stderr.count(b"\n") == 1, result.stderr
    assert b"Traceback" not in result.stderr and os.listdir(pool) == []


@pytest.mark.timeout(90)
def test_a_pool_under_a_non_utf8_name_works_end_to_end(tmp_path: Path) -> None:
    pool = latin1_dir(tmp_path, b"p\xe9ol")
    wf = tmp_path / "wf.yaml"
    wf.write_text("jobs: [{id: a, command: 'true'}]\n")
    env = {**os.environ, "PYTHONIOENCODING": "utf-8:strict"}  # a UTF-8 locale's strict stdout
    result = subprocess.run(command("exec-submit", str(wf), "--pool", pool, "--workers", "1", "--wait"),
                            capture_output=True, timeout=60, env=env)
    assert result.returncode == 0 and b"Traceback" not in result.stderr, result.stderr
    run_id, run_dir = result.stdout.splitlines()[0].split(b" ", 1)
    assert run_dir == pool + b"/" + run_id  # the path as it is, usable by the next command
    [record] = [n for n in os.listdir(run_dir + b"/launch") if n.endswith(b".json")]
    launched = json.loads(open(run_dir + b"/launch/" + record, "rb").read())
    assert "p\\xe9ol" in launched["stdout"]
    for args in ([pool], [pool, run_id], [pool, "--json"], [run_dir, "--json"]):
        status = subprocess.run(command("exec-status", *args), capture_output=True, timeout=60, env=env)
        assert status.returncode == 0 and status.stderr == b"", (args, status.stderr)
        assert b"done" in status.stdout


# ---- text from files on a terminal -------------------------------------------------------
def test_control_characters_in_a_reason_cannot_reach_the_terminal(tmp_path: Path) -> None:
    from executioner.protocol import store

    pool = tmp_path / "pool"
    wf = tmp_path / "wf.yaml"
    wf.write_text("jobs:\n  - {id: a, command: 'true'}\n  - {id: b, command: 'true', dependencies: [a]}\n")
    run = create_run(PoolLayout(str(pool)), load_workflow(str(wf)))
    claim = store.claim(run, "a", store.Owner.current("w"))
    assert claim is not None
    assert store.finish(claim, dict(claim.record, reason="oops\x1b]0;pwned\x07\x1b[2J\nnext line"), "failed")
    result = subprocess.run(command("exec-status", str(pool), run.run_id), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout
    [line] = [x for x in result.stdout.splitlines() if x.startswith("a ")]
    assert line.endswith("oops\\x1b]0;pwned\\x07\\x1b[2J\\x0anext line"), line
    assert len(result.stdout.splitlines()) == 4  # title, header, a, b: one line per job


def test_a_slurm_dag_submit_refused_by_sbatch_prints_no_run_line(tmp_path: Path) -> None:
    """The run line came first and then "the run was not kept": a script reading the first
    line of stdout took a run that does not exist."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "sbatch").write_text("#!/bin/sh\necho 'sbatch: error: Invalid partition name specified' >&2\nexit 1\n")
    (fake / "sbatch").chmod(0o755)
    wf = tmp_path / "wf.yaml"
    wf.write_text("jobs:\n  - {id: a, command: 'true'}\n")
    out = subprocess.run(command("exec-submit", str(wf), "--pool", str(tmp_path / "pool"), "--backend", "slurm"),
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PATH": f"{fake}{os.pathsep}{os.environ['PATH']}"})
    assert out.returncode != 0 and out.stdout == "", out.stdout
    assert "Invalid partition" in out.stderr and "the run was not kept" in out.stderr
    assert "Traceback" not in out.stderr
    assert [p.name for p in (tmp_path / "pool").iterdir() if not p.name.startswith(".")] == ["workers"]
