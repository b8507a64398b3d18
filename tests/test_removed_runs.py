"""A run removed under a live worker (``rm -r POOL/RUN``) stays removed: the worker never
makes its folders again (filelock's lease makes missing parents) and forgets it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path
from typing import Any

import filelock
import pytest

from executioner import Worker

from .conftest import cli, submit, work


def _serve(pool: Path, **kw: Any) -> tuple[Worker, threading.Thread]:
    worker = Worker(str(pool), slots=1, exit_when_idle=1.5, poll_min=0.02, poll_max=0.1, sweep_every=0.05,
                    dormant_every=0.05, **kw)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    return worker, thread


def test_a_run_removed_under_a_worker_is_not_made_again(pool: Path, make_workflow: Any) -> None:
    gone = submit(pool, make_workflow([{"id": "a", "command": "true"}], name="gone"))
    work(pool, gone)
    kept = submit(pool, make_workflow([{"id": "b", "command": "true"}], name="kept"))
    removed = threading.Event()
    real = filelock.SoftFileLease.acquire

    def acquire(self: Any, *a: Any, **kw: Any) -> Any:
        if gone.root in str(self.lock_file) and not removed.is_set():
            removed.set()
            shutil.rmtree(gone.root)  # rm -r while the worker sweeps it
        return real(self, *a, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(filelock.SoftFileLease, "acquire", acquire)
        worker, thread = _serve(pool)
        thread.join(30)
    assert not thread.is_alive() and removed.is_set()
    assert not os.path.exists(gone.root), sorted(os.listdir(pool))  # no ghost RUN/waiting/
    assert os.listdir(kept.state_dir("done")) == ["b.json"]  # the other run was served
    assert gone.run_id not in worker._known and gone.run_id not in worker._records


def test_a_run_removed_before_a_sweep_is_forgotten_without_touching_it(pool: Path, make_workflow: Any,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    gone = submit(pool, make_workflow([{"id": "a", "command": "true"}], name="gone"))
    work(pool, gone)
    made: list[str] = []
    real = filelock.SoftFileLease.acquire

    def acquire(self: Any, *a: Any, **kw: Any) -> Any:
        made.append(str(self.lock_file))
        return real(self, *a, **kw)

    shutil.rmtree(gone.root)
    os.makedirs(gone.root)  # a half-made directory of that name (say, a new submit under way): no run.json
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(filelock.SoftFileLease, "acquire", acquire)
        worker, thread = _serve(pool, run_ids=[gone.run_id])
        thread.join(30)
    assert not thread.is_alive()
    assert not [m for m in made if gone.root in m]  # no lease taken in it
    assert os.listdir(gone.root) == []  # nothing made in it


# ---- exec-submit --delete / --archive --------------------------------------------------------
def _pool_runs(pool: Path) -> list[str]:
    return sorted(n for n in os.listdir(pool) if not n.startswith(".") and n != "workers")


def test_delete_removes_a_finished_run_and_dry_run_changes_nothing(pool: Path, make_workflow: Any) -> None:
    run = submit(pool, make_workflow([{"id": "a", "command": "true"}], name="old"))
    work(pool, run)
    out = cli("exec-submit", "--pool", str(pool), "--delete", run.run_id, "--dry-run")
    assert out.returncode == 0 and out.stdout.strip() == f"{run.run_id}: would remove", out.stdout + out.stderr
    assert _pool_runs(pool) == [run.run_id]
    out = cli("exec-submit", "--pool", str(pool), "--delete", run.run_id)
    assert out.returncode == 0 and out.stdout.strip() == f"{run.run_id}: removed", out.stdout + out.stderr
    assert os.listdir(pool) == ["workers"]  # nothing left, not even a hidden folder
    again = cli("exec-submit", "--pool", str(pool), "--delete", run.run_id)
    assert again.returncode == 2 and f"no run '{run.run_id}'" in again.stderr and "Traceback" not in again.stderr


def test_delete_is_refused_while_a_job_runs_and_force_stops_it(pool: Path, make_workflow: Any, tmp_path: Path) -> None:
    late = tmp_path / "late"
    run = submit(pool, make_workflow([{"id": "slow", "command": f"sleep 20; touch '{late}'"}], name="busy"))
    log = open(tmp_path / "worker.log", "w")
    worker = subprocess.Popen([sys.executable, "-c", "import sys; from executioner.cli import worker_main; "
                               "sys.exit(worker_main(sys.argv[1:]))", "--pool", str(pool), "--exit-when-idle", "2"],
                              stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while not os.listdir(run.state_dir("running")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert os.listdir(run.state_dir("running"))
        out = cli("exec-submit", "--pool", str(pool), "--delete", run.run_id)
        assert out.returncode == 3, out.stdout + out.stderr
        assert "1 running job(s): slow (" in out.stderr and "--force" in out.stderr
        assert _pool_runs(pool) == [run.run_id]
        out = cli("exec-submit", "--pool", str(pool), "--delete", run.run_id, "--force")
        assert out.returncode == 0 and "removed; stopped: slow" in out.stdout, out.stdout + out.stderr
        assert worker.wait(30) == 0  # it stopped the command, forgot the run, went idle and left
    finally:
        worker.kill()
        log.close()
    assert not late.exists()  # the command was stopped
    assert _pool_runs(pool) == [] and not [n for n in os.listdir(pool) if n.startswith(".removing")]
    said = (tmp_path / "worker.log").read_text()
    assert "the run was removed; nothing recorded" in said and "Traceback" not in said and "ERROR" not in said


def test_archive_writes_a_checked_tarball_then_removes_the_run(pool: Path, make_workflow: Any,
                                                               tmp_path: Path) -> None:
    run = submit(pool, make_workflow([{"id": "a", "command": "echo hello"}], name="keep"))
    work(pool, run)
    dest = tmp_path / "keep.tar.gz"
    inside = cli("exec-submit", "--pool", str(pool), "--archive", run.run_id, os.path.join(run.root, "x.tar.gz"))
    assert inside.returncode == 2 and "inside the run" in inside.stderr
    out = cli("exec-submit", "--pool", str(pool), "--archive", run.run_id, str(dest))
    assert out.returncode == 0 and f"archived into {dest} and removed" in out.stdout, out.stdout + out.stderr
    assert _pool_runs(pool) == []
    with tarfile.open(dest) as tar:
        names = tar.getnames()
        assert f"{run.run_id}/run.json" in names and f"{run.run_id}/done/a.json" in names
        assert f"{run.run_id}/coordinator.lock" not in names  # the archive's own lock is not kept
        stdout = tar.extractfile(f"{run.run_id}/logs/a.1.out")
        assert stdout is not None and stdout.read() == b"hello\n"
    other = submit(pool, make_workflow([{"id": "b", "command": "true"}], name="keep"))
    exists = cli("exec-submit", "--pool", str(pool), "--archive", other.run_id, str(dest))
    assert exists.returncode == 2 and "exists already" in exists.stderr and _pool_runs(pool) == [other.run_id]


def test_an_archive_that_does_not_fit_puts_the_run_back(pool: Path, make_workflow: Any, tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (not root?)")
    try:
        run = submit(pool, make_workflow([{"id": "a", "command": "head -c 400000 /dev/urandom"}], name="big"))
        work(pool, run)
        before = sorted(str(p.relative_to(run.root)) for p in Path(run.root).rglob("*"))
        out = cli("exec-submit", "--pool", str(pool), "--archive", run.run_id, str(small / "big.tar.gz"))
        assert out.returncode == 2, out.stdout + out.stderr
        assert "cannot write the archive" in out.stderr and "back in place, unchanged" in out.stderr
        assert "Traceback" not in out.stderr
        assert sorted(str(p.relative_to(run.root)) for p in Path(run.root).rglob("*")) == before
        assert os.listdir(small) == []  # no partial archive, no temp file
        assert _pool_runs(pool) == [run.run_id] and not [n for n in os.listdir(pool) if n.startswith(".")]
    finally:
        subprocess.run(["umount", str(small)], capture_output=True)
