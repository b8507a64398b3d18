"""exec-status while a change is staged in .coord/: in progress (who, doing what), or interrupted."""

from __future__ import annotations

import getpass
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from executioner.protocol import fsio
from executioner.coordinator.coord import COORD_STALE, shared_watch, watch_key

from .conftest import cli, submit, work
from .test_resume_races import PAUSED, _wait_for


def chain_done(pool: Path, make_workflow):
    jobs = [{"id": f"j{i}", "command": "true", **({"dependencies": [f"j{i - 1}"]} if i else {})} for i in range(4)]
    run = submit(pool, make_workflow(jobs))
    work(pool, run)
    return run


def shown(run) -> dict:
    out = cli("exec-status", run.root, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.timeout(90)
def test_a_stopped_rollback_is_shown_in_progress_then_interrupted(pool: Path, make_workflow, tmp_path: Path) -> None:
    run = chain_done(pool, make_workflow)
    go = str(tmp_path / "go")
    proc = subprocess.Popen([sys.executable, "-c", PAUSED, "A", go, "--pool", str(pool), "--resume", run.run_id,
                             "--rollback-to", "j1"], stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(go + ".A.grabbed")
        os.kill(proc.pid, signal.SIGSTOP)
        reason = shown(run)["reason"]
        want = (rf"a resume of this run is in progress \({re.escape(getpass.getuser())}@{re.escape(fsio.HOST)} "
                rf"pid {proc.pid}, rollback, since \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d; the process is stopped\): "
                r"3 jobs are staged in \.coord/$")
        assert re.match(want, reason), reason
        pool_view = json.loads(cli("exec-status", str(pool), "--json").stdout)
        assert pool_view["runs"][0]["reason"] == reason
        # This host has watched its lock stand still for COORD_STALE: it is abandoned now.
        watch = shared_watch(run)
        watch.still_for(watch_key(run), os.stat(run.coordinator_lock).st_mtime, time.monotonic() - COORD_STALE - 1)
        watch.save(force=True)
        assert shown(run)["reason"] == (
            f"a resume of this run was interrupted: 3 jobs are waiting in {run.staging_root}, unseen by workers; "
            f"run `exec-submit --resume {run.run_id}` to finish or undo it")
        os.kill(proc.pid, signal.SIGCONT)
        Path(go + ".A").touch()
        assert proc.wait(30) == 0, proc.stderr.read()  # type: ignore[union-attr]
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
    assert "reason" not in shown(run)


@pytest.mark.timeout(60)
def test_a_live_coordinator_named_by_its_lock_is_shown_in_progress(pool: Path, make_workflow) -> None:
    run = chain_done(pool, make_workflow)
    code = ("import os, sys\nimport executioner.coordinator.change as c\nc._stage = lambda *a: os._exit(9)\n"
            "from executioner.cli import submit_main\nsys.exit(submit_main(sys.argv[1:]))\n")
    assert subprocess.run([sys.executable, "-c", code, "--pool", str(pool), "--resume", run.run_id,
                           "--rollback-to", "j2"]).returncode == 9
    assert shown(run)["reason"].startswith("a resume of this run was interrupted: 2 jobs are waiting in ")
    # The lock now names a live process (this test's): in progress, not interrupted.
    fsio.atomic_write_json(run.coordinator_info, {"user": "ann", "host": fsio.HOST, "pid": os.getpid(),
                                                  "action": "from-job", "since": 0})
    reason = shown(run)["reason"]
    assert re.match(rf"a resume of this run is in progress \(ann@{re.escape(fsio.HOST)} pid {os.getpid()}, from-job, "
                    r"since [-0-9: ]+\): 2 jobs are staged in \.coord/$", reason), reason
