"""Real worker processes racing on one run: every job executed once and done once."""

from __future__ import annotations

import collections
import subprocess
import sys
from pathlib import Path

import yaml

from executioner import run_status

from .conftest import files, submit


def test_four_worker_processes_run_500_jobs_exactly_once(pool: Path, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    jobs = [{"id": f"j{i:03d}", "command": f"echo j{i:03d} >> '{ledger}'"} for i in range(500)]
    # a few dependencies, so promotion races between processes too
    for i in range(100, 500, 7):
        jobs[i]["dependencies"] = [f"j{i - 100:03d}", f"j{i - 99:03d}"]
    wf = tmp_path / "many.yaml"
    wf.write_text(yaml.safe_dump({"jobs": jobs}))
    run = submit(pool, wf)
    start = tmp_path / "go"
    code = ("import os, sys, time\n"
            "from executioner import Worker\n"
            f"while not os.path.exists({str(start)!r}): time.sleep(0.01)\n"
            f"Worker(sys.argv[1], run_ids=[sys.argv[2]], slots=2, exit_when_idle=1.0, poll_min=0.02,"
            f" poll_max=0.2, sweep_every=0.2).run()\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(pool), run.run_id]) for _ in range(4)]
    start.write_text("")  # the barrier: all four start claiming together
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    counts = collections.Counter(ledger.read_text().split())
    assert len(counts) == 500 and set(counts.values()) == {1}
    assert len(files(run, "done")) == 500
    for state in ("waiting", "queued", "running", "failed"):
        assert files(run, state) == [], state
    assert run_status(run)["state"] == "done"


def test_racing_submits_get_distinct_run_ids(pool: Path, tmp_path: Path) -> None:
    wf = tmp_path / "race.yaml"
    wf.write_text("jobs: [{id: a, command: 'true'}]\n")
    start = tmp_path / "go"
    code = ("import os, sys, time\n"
            "from executioner import PoolLayout, create_run, load_workflow\n"
            f"while not os.path.exists({str(start)!r}): time.sleep(0.005)\n"
            "for _ in range(5):\n"
            "    print(create_run(PoolLayout(sys.argv[1]), load_workflow(sys.argv[2])).run_id)\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(pool), str(wf)], stdout=subprocess.PIPE, text=True)
             for _ in range(4)]
    start.write_text("")
    ids = [line for p in procs for line in p.communicate(timeout=60)[0].split()]
    assert len(ids) == 20 and len(set(ids)) == 20
    assert sorted(ids) == [f"race-{n:04d}" for n in range(1, 21)]
