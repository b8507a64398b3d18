"""The coordinator lock: one change to a run at a time, across processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from executioner.coord import coordinating
from executioner.errors import RunBusy

from .conftest import submit


def test_a_second_coordinator_fails_at_once_naming_the_first(pool: Path, make_workflow) -> None:
    run = submit(pool, make_workflow([{"id": "a", "command": "true"}]))
    with coordinating(run, "resume"):
        with pytest.raises(RunBusy) as info:
            with coordinating(run, "rollback"):
                pass
    message = str(info.value)
    assert f"run {run.run_id} is being changed by" in message and f"pid {os.getpid()}" in message
    assert "(resume)" in message
    assert not os.path.exists(run.coordinator_lock) and not os.path.exists(run.coordinator_info)
    with coordinating(run, "again"):  # released: free again
        pass


def test_a_dead_holders_lock_is_broken(pool: Path, make_workflow) -> None:
    run = submit(pool, make_workflow([{"id": "a", "command": "true"}]))
    code = ("import os, sys\nfrom executioner import RunLayout\nfrom executioner.coord import coordinating\n"
            "with coordinating(RunLayout(sys.argv[1]), 'crash'):\n    os._exit(9)\n")
    assert subprocess.run([sys.executable, "-c", code, run.root]).returncode == 9
    assert os.path.exists(run.coordinator_lock)  # left behind by the dead process
    with coordinating(run, "resume"):
        pass
