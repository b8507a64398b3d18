"""Who can read a run: its owner alone by default, the group with --shared-group, never the world.

A workflow's ``env`` may hold a token, and the workflow file, its copies, ``run.json`` and every
job file carry it; so does a job's output. Every command here runs under umask 022, the usual
default, which would make all of that world-readable if we left modes to the umask.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

WORKFLOW = """\
name: secret
env: {TOKEN: s3cr3t-token}
jobs:
  - {id: a, command: 'echo $TOKEN $JOB_TOKEN', env: {JOB_TOKEN: job-s3cr3t}}
  - {id: b, command: 'echo b', dependencies: [a]}
"""


def run_cli(*args: str, umask: int = 0o022, env: dict[str, str] | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """A console script as a user with ``umask`` runs it."""
    prog, *rest = args
    entry = {"exec-submit": "submit_main", "exec-worker": "worker_main", "exec-status": "status_main"}[prog]
    code = f"import sys; from executioner.cli import {entry}; sys.exit({entry}(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *rest], capture_output=True, text=True, umask=umask,
                          timeout=timeout, env={**os.environ, **(env or {})})


def private_workflow(tmp_path: Path) -> Path:
    path = tmp_path / "secret.yaml"
    path.write_text(WORKFLOW)
    path.chmod(0o600)
    return path


def mode(path: Path | str) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def everything(root: Path) -> list[tuple[str, int, bool]]:
    """(path, mode, is a directory) of ``root`` and everything under it."""
    out = [(str(root), mode(root), True)]
    for base, dirs, files in os.walk(root):
        out += [(os.path.join(base, d), mode(os.path.join(base, d)), True) for d in dirs]
        out += [(os.path.join(base, f), mode(os.path.join(base, f)), False) for f in files]
    return out


def assert_private(root: Path) -> None:
    wide = [(p, oct(m)) for p, m, _ in everything(root) if m & 0o077]
    assert not wide, f"readable by others: {wide}"


def assert_group_only(root: Path) -> None:
    """Directories rwx for the group with setgid (new files keep the group); files readable by
    the group; nothing at all for the world."""
    entries = everything(root)
    world = [(p, oct(m)) for p, m, _ in entries if m & 0o007]
    assert not world, f"open to the world: {world}"
    dirs = [(p, oct(m)) for p, m, is_dir in entries if is_dir and (m & 0o2770) != 0o2770]
    assert not dirs, f"directories without group rwx and setgid: {dirs}"
    files = [(p, oct(m)) for p, m, is_dir in entries if not is_dir and not m & 0o040]
    assert not files, f"files the group cannot read: {files}"


def submit_work_resume(pool: Path, workflow: Path, *flags: str) -> Path:
    """Submit (with local workers, waiting), then roll back and run again: every kind of file
    a run gets (copies, attempts, job files, claims, logs, launch records, a resume's)."""
    sub = run_cli("exec-submit", str(workflow), "--pool", str(pool), "--workers", "1", "--wait", *flags)
    assert sub.returncode == 0, sub.stderr
    run_id, run_dir = sub.stdout.splitlines()[0].split(" ", 1)
    again = run_cli("exec-submit", "--pool", str(pool), "--resume", run_id, "--rollback-to", "a")
    assert again.returncode == 0, again.stderr
    work = run_cli("exec-worker", "--pool", str(pool), "--exit-when-idle", "0.3", "-q")
    assert work.returncode == 0, work.stderr
    run = Path(run_dir)
    assert (run / "attempts" / "0002.workflow.yaml").exists() and (run / "logs" / "a.2.out").exists()
    assert json.loads((run / "done" / "a.json").read_text())["tries"][-1]["status"] == "done"
    return run


@pytest.mark.timeout(90)
def test_a_new_pool_and_run_are_private_under_umask_022(tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    run = submit_work_resume(pool, private_workflow(tmp_path))
    assert mode(pool) == 0o700 and mode(pool / "workers") == 0o700 and mode(run) == 0o700
    for name in ("workflow.yaml", "run.json", "attempts/0001.workflow.yaml", "attempts/0001.json",
                 "done/a.json", "logs/a.1.out"):
        assert mode(run / name) == 0o600, name
    # what is being protected: secrets in the job files, run.json and the logs
    assert "job-s3cr3t" in (run / "done" / "a.json").read_text()
    assert "s3cr3t-token" in (run / "run.json").read_text()
    assert (run / "logs" / "a.1.out").read_text() == "s3cr3t-token job-s3cr3t\n"
    assert_private(pool)


@pytest.mark.timeout(90)
def test_an_existing_pool_keeps_its_mode_and_a_run_in_it_is_still_private(tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    pool.mkdir()
    pool.chmod(0o755)
    run = submit_work_resume(pool, private_workflow(tmp_path))
    assert mode(pool) == 0o755
    assert_private(run)
    assert_private(pool / "workers")


@pytest.mark.timeout(90)
def test_shared_group_gives_the_group_access_and_never_the_world(tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    run = submit_work_resume(pool, private_workflow(tmp_path), "--shared-group")
    assert mode(pool) == 0o2770 and mode(run) == 0o2770
    assert mode(run / "workflow.yaml") == 0o640
    assert_group_only(pool)


@pytest.mark.timeout(90)
def test_a_shared_run_takes_the_group_of_a_setgid_pool(tmp_path: Path) -> None:
    import grp

    other = next((g for g in grp.getgrall() if g.gr_gid != os.getgid()), None)
    if other is None:
        pytest.skip("no group other than our own")
    pool = tmp_path / "pool"
    pool.mkdir()
    os.chown(pool, -1, other.gr_gid)
    pool.chmod(0o2770)
    run = submit_work_resume(pool, private_workflow(tmp_path), "--shared-group")
    groups = {p: os.lstat(p).st_gid for p, _, _ in everything(pool)}
    assert set(groups.values()) == {other.gr_gid}, groups
    assert mode(pool) == 0o2770
    assert_group_only(run)


def test_a_resume_keeps_the_runs_mode_and_refuses_shared_group(tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    sub = run_cli("exec-submit", str(private_workflow(tmp_path)), "--pool", str(pool))
    run_id = sub.stdout.split()[0]
    refused = run_cli("exec-submit", "--pool", str(pool), "--resume", run_id, "--shared-group")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert "--shared-group" in refused.stderr
    assert mode(pool / run_id) == 0o700


def test_a_worker_warns_that_others_can_write_to_its_pool(tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    pool.mkdir()
    pool.chmod(0o777)
    result = run_cli("exec-worker", "--pool", str(pool), "--exit-when-idle", "0.2", "-q")
    assert result.returncode == 0, result.stderr
    assert "warning" in result.stderr and "can run commands as" in result.stderr, result.stderr
    pool.chmod(0o700)
    quiet = run_cli("exec-worker", "--pool", str(pool), "--exit-when-idle", "0.2", "-q")
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr


def test_shared_group_in_a_pool_the_group_cannot_serve_says_so(tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    (pool / "workers").mkdir(parents=True)
    (pool / "workers").chmod(0o700)
    result = run_cli("exec-submit", str(private_workflow(tmp_path)), "--pool", str(pool), "--shared-group")
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("\n") == 1 and "warning" in result.stderr and "chmod 2770" in result.stderr
    assert mode(pool / result.stdout.split()[0]) == 0o2770
