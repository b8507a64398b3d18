#!/usr/bin/env python3
"""How fast work reaches Slurm with the Slurm-DAG backend: an array against plain jobs.

    SLURM_CONF=... python scripts/slurm_array_bench.py [--tasks 10000] [--jobs 303] [--run 1000]

1. ``exec-submit --backend slurm`` of one array of ``--tasks`` tasks, timed as a user runs it
   (a fresh interpreter, from start to exit: the run created, every sbatch made, the ids
   written into the chunk files, the elements released), with the ``sbatch`` calls counted
   by a shim first on PATH. The elements are submitted with ``begin=now+600`` so that nothing
   runs, then cancelled.
2. The same for ``--jobs`` plain jobs (one sbatch each, through submitit).
3. With ``--run N``: an array of N tasks of ``true`` and N plain jobs of ``true`` run to the
   end, timed from the submit to the run's ``done`` (needs a cluster with room: the local
   one of scripts/slurm-local.sh runs 8 Slurm jobs at once).

Needs a cluster (scripts/slurm-local.sh start); prints one line per measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml


def submit(pool: Path, workflow: Path, shim: Path, counter: Path, *flags: str) -> tuple[float, int, str]:
    """(seconds, sbatch calls, run directory) of one exec-submit."""
    counter.write_text("")
    env = {**os.environ, "PATH": f"{shim}:{os.environ['PATH']}", "EXEC_BENCH_COUNTER": str(counter)}
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "executioner", "submit", str(workflow), "--pool", str(pool),
                          "--backend", "slurm", *flags], capture_output=True, text=True, env=env, timeout=1800)
    took = time.perf_counter() - start
    if out.returncode != 0:
        sys.exit(f"exec-submit failed: {out.stderr.strip()}")
    return took, len(counter.read_text().splitlines()), out.stdout.split(" ", 1)[1].strip()


def cancel(run_dir: str) -> None:
    ids = [i for kind in json.loads(Path(run_dir, "slurm.json").read_text()).values() for i in kind]
    for at in range(0, len(ids), 500):
        subprocess.run(["scancel", *ids[at:at + 500]], capture_output=True, timeout=120)


def wait_done(run_dir: str, limit: float) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < limit:
        out = subprocess.run([sys.executable, "-m", "executioner", "status", run_dir, "--json"],
                             capture_output=True, text=True, timeout=120)
        state = json.loads(out.stdout)["state"] if out.returncode == 0 else "?"
        if state in ("done", "failed"):
            return time.perf_counter() - start
        time.sleep(1.0)
    return float("nan")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=10000)
    p.add_argument("--jobs", type=int, default=303, help="plain jobs to submit (0: none)")
    p.add_argument("--run", type=int, default=0, metavar="N", help="also run N tasks / N jobs of `true` to the end")
    p.add_argument("--array-only", action="store_true", help="with --run: run the array only, not the plain jobs")
    a = p.parse_args()
    if not shutil.which("sbatch") or not os.environ.get("SLURM_CONF"):
        sys.exit("needs a Slurm cluster: scripts/slurm-local.sh start, and export what it prints")
    root = Path(tempfile.mkdtemp(prefix="exec-slurm-bench-"))
    shim, counter, pool = root / "shim", root / "sbatch-calls", root / "pool"
    shim.mkdir()
    real = shutil.which("sbatch")
    (shim / "sbatch").write_text(f'#!/bin/sh\necho x >> "$EXEC_BENCH_COUNTER"\nexec {real} "$@"\n')
    (shim / "sbatch").chmod(stat.S_IRWXU)
    later = {"slurm": {"additional_parameters": {"begin": "now+600"}}}

    def workflow(name: str, jobs: list[dict[str, object]]) -> Path:
        path = root / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"name": name, "jobs": jobs}, sort_keys=False))
        return path

    print(f"{'what':34} {'sbatch':>7} {'to Slurm':>9}")
    took, calls, run_dir = submit(pool, workflow("array", [{"id": "sweep", "command": "true", "array": a.tasks,
                                                            **later}]), shim, counter)
    chunks = len(os.listdir(Path(run_dir, "queued")))
    cancel(run_dir)
    print(f"{f'array of {a.tasks} tasks ({chunks} elements)':34} {calls:7d} {took:8.2f}s")
    if a.jobs:
        took, calls, run_dir = submit(pool, workflow("jobs", [{"id": f"j{i:05d}", "command": "true", **later}
                                                              for i in range(a.jobs)]), shim, counter)
        cancel(run_dir)
        print(f"{f'{a.jobs} plain jobs':34} {calls:7d} {took:8.2f}s")
    if a.run:
        took, calls, run_dir = submit(pool, workflow("run-array", [{"id": "sweep", "command": "true",
                                                                    "array": a.run}]), shim, counter)
        ran = wait_done(run_dir, 3600)
        print(f"{f'array of {a.run} tasks, run to the end':34} {calls:7d} {took:8.2f}s   done after {took + ran:.1f} s")
    if a.run and not a.array_only:
        took, calls, run_dir = submit(pool, workflow("run-jobs", [{"id": f"j{i:05d}", "command": "true"}
                                                                  for i in range(a.run)]), shim, counter)
        ran = wait_done(run_dir, 3600)
        print(f"{f'{a.run} plain jobs, run to the end':34} {calls:7d} {took:8.2f}s   done after {took + ran:.1f} s")
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
