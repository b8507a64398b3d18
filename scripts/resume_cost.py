#!/usr/bin/env python3
"""What a resume costs on a big run: N jobs (one root, N-1 depending on it), all done, then
`--dry-run`, a plain resume (nothing to do), and `--rollback-to root` (everything again).

    python scripts/resume_cost.py [--jobs 5000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import yaml

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from executioner import PoolLayout, Worker, create_run, load_workflow  # noqa: E402


def timed(*args: str) -> float:
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", "import sys; from executioner.cli import submit_main; "
                          "sys.exit(submit_main(sys.argv[1:]))", *args], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"failed: {' '.join(args)}\n{out.stderr}")
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--jobs", type=int, default=5000)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wf = os.path.join(tmp, "big.yaml")
        jobs = [{"id": "root", "command": "true"}]
        jobs += [{"id": f"j{i:05d}", "command": "true", "dependencies": ["root"]} for i in range(a.jobs - 1)]
        with open(wf, "w") as f:
            yaml.safe_dump({"name": "big", "jobs": jobs}, f)
        pool = os.path.join(tmp, "pool")
        run = create_run(PoolLayout(pool), load_workflow(wf))
        Worker(pool, slots=2, exit_when_idle=0.5, poll_min=0.02, poll_max=0.2).run()
        assert len(os.listdir(run.state_dir("done"))) == a.jobs
        dry = timed("--pool", pool, "--resume", run.run_id, "--rollback-to", "root", "--dry-run")
        plain = timed("--pool", pool, "--resume", run.run_id)
        rollback = timed("--pool", pool, "--resume", run.run_id, "--rollback-to", "root")
        assert len(os.listdir(run.state_dir("queued"))) == 1
        assert len(os.listdir(run.state_dir("waiting"))) == a.jobs - 1
    print(f"{a.jobs} jobs, all done:")
    print(f"  --rollback-to root --dry-run   {dry:6.2f} s   (plans {a.jobs} jobs, writes nothing)")
    print(f"  plain resume (nothing to do)   {plain:6.2f} s   (plans once, writes nothing)")
    print(f"  --rollback-to root             {rollback:6.2f} s   (grabs, restages and places {a.jobs} jobs)")


if __name__ == "__main__":
    main()
