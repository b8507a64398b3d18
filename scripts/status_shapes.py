#!/usr/bin/env python3
"""How long ``exec-status`` takes on every DAG shape, at 1,000 and 100,000 jobs.

Each shape is a run of its own pool, built through the library (a JSON workflow, one
``create_run``), whose first job then fails, so that everything downstream of it is
``blocked`` (the graph walk's worst case). Each command runs as a user runs it (a fresh
interpreter, output to a pipe that is read to the end) and the best of ``--repeat`` is shown:

    python scripts/status_shapes.py [--sizes 1000,100000] [--shapes ladder,chain,...] [--repeat 3]

Shapes: ``ladder`` (layers of 2, each job depending on both of the layer before), ``chain``,
``fan-in`` (n-1 independent jobs and one that needs them all), ``fan-out`` (one root and n-1
jobs that need it), ``grid`` (a diamond grid: each job needs its left and upper neighbours).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from executioner import PoolLayout, RunLayout, create_run, load_workflow  # noqa: E402
from executioner.protocol import store  # noqa: E402

SHAPES = ("ladder", "chain", "fan-in", "fan-out", "grid")


def _grid_sides(n: int) -> tuple[int, int]:
    rows = next(r for r in range(math.isqrt(n), 0, -1) if n % r == 0)
    return rows, n // rows


def shape_jobs(shape: str, n: int) -> tuple[list[dict[str, Any]], str]:
    """The jobs of ``shape`` with ``n`` jobs, and the first job (the one that fails)."""
    def job(i: str, deps: list[str]) -> dict[str, Any]:
        return {"id": i, "command": "true", "dependencies": deps}

    if shape == "ladder":  # n even: n/2 layers of 2
        names = [(f"l{k}a", f"l{k}b") for k in range(n // 2)]
        return [job(x, list(names[k - 1]) if k else []) for k, pair in enumerate(names) for x in pair], "l0a"
    if shape == "chain":
        return [job(f"j{i}", [f"j{i - 1}"] if i else []) for i in range(n)], "j0"
    if shape == "fan-in":
        return [job(f"j{i}", []) for i in range(n - 1)] + [job("sink", [f"j{i}" for i in range(n - 1)])], "j0"
    if shape == "fan-out":
        return [job("root", [])] + [job(f"j{i}", ["root"]) for i in range(n - 1)], "root"
    if shape == "grid":
        rows, cols = _grid_sides(n)
        return [job(f"g{r}x{c}", ([f"g{r - 1}x{c}"] if r else []) + ([f"g{r}x{c - 1}"] if c else []))
                for r in range(rows) for c in range(cols)], "g0x0"
    raise ValueError(f"unknown shape {shape!r}")


def expected_counts(shape: str, n: int) -> dict[str, int]:
    """What exec-status must count once the first job has failed."""
    counts = {"waiting": 0, "queued": 0, "running": 0, "done": 0, "failed": 1, "blocked": n - 1}
    if shape == "ladder":  # the other job of the first layer is still queued
        counts.update(queued=1, blocked=n - 2)
    elif shape == "fan-in":  # every other source is queued; only the sink is blocked
        counts.update(queued=n - 2, blocked=1)
    return counts


def build(pool: str, shape: str, n: int) -> RunLayout:
    """A run of ``shape`` in ``pool`` whose first job has failed."""
    jobs, first = shape_jobs(shape, n)
    path = os.path.join(os.path.dirname(pool), f"{shape}-{n}.json")
    with open(path, "w") as f:
        json.dump({"name": shape, "jobs": jobs}, f)
    run = create_run(PoolLayout(pool), load_workflow(path))
    claim = store.claim(run, first, store.Owner.current("status-shapes"))
    assert claim is not None and store.finish(claim, dict(claim.record, reason="exit code 1"), "failed")
    return run


def timed(*args: str) -> float:
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "executioner", "status", *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    seconds = time.perf_counter() - start
    if out.returncode != 0:
        sys.exit(f"exec-status {' '.join(args)} failed: {out.stderr.decode()}")
    return seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1000,100000")
    p.add_argument("--shapes", default=",".join(SHAPES))
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    cases = ("POOL", "POOL --json", "POOL RUN", "POOL RUN --json")
    print(f"{'shape':<8} {'jobs':>7}  {'build':>7}  " + "  ".join(f"{c:>15}" for c in cases))
    for n in (int(s) for s in a.sizes.split(",")):
        for shape in a.shapes.split(","):
            with tempfile.TemporaryDirectory() as tmp:
                pool = os.path.join(tmp, "pool")
                start = time.perf_counter()
                run = build(pool, shape, n)
                built = time.perf_counter() - start
                times = []
                for args in ([pool], [pool, "--json"], [pool, run.run_id], [pool, run.run_id, "--json"]):
                    times.append(min(timed(*args) for _ in range(a.repeat)))
            print(f"{shape:<8} {n:>7}  {built:6.1f}s  " + "  ".join(f"{t:14.2f}s" for t in times), flush=True)


if __name__ == "__main__":
    main()
