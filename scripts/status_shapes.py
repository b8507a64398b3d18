#!/usr/bin/env python3
"""Plain jobs at scale: how long ``exec-submit`` and ``exec-status`` take on every DAG shape.

Each shape is a workflow of distinct jobs (YAML or JSON, ``--format``), checked and planned
with ``exec-submit --dry-run``, submitted with ``exec-submit`` into a pool of its own; its
first job then fails (through the library), so that everything downstream of it is
``blocked`` (the graph walk's worst case), and ``exec-status`` is timed on the pool and on
the run. Each command runs as a user runs it (a fresh interpreter, output to a pipe that is
read to the end); a cell is the best of ``--repeat`` runs: its wall time, its CPU time
(user + system: what the command costs whatever else the machine is doing) and its peak
memory (max RSS of the process):

    python scripts/status_shapes.py [--sizes 1000,100000] [--shapes ladder,chain,...] [--repeat 3]
                                    [--format yaml|json] [--views "POOL RUN --all;POOL RUN --attempts"]

``--views`` picks the ``exec-status`` cells (``;``-separated, POOL and RUN stand for the pool and
the run; ``JOB`` for the job that failed, ``LAST`` for the last job); by default: the pool,
the run view (a summary above 200 rows), ``--all``, ``--json``, ``--attempts`` and ``--job``.

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
VIEWS = ("POOL", "POOL --json", "POOL RUN", "POOL RUN --all", "POOL RUN --json", "POOL RUN --attempts",
         "POOL RUN --job JOB")


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


def write_workflow(path: str, shape: str, n: int) -> str:
    """The workflow file of ``shape`` (JSON if ``path`` ends in .json, else block-style YAML,
    as a person writes it); returns the first job's id."""
    jobs, first = shape_jobs(shape, n)
    with open(path, "w") as f:
        if path.endswith(".json"):
            json.dump({"name": shape, "jobs": jobs}, f)
        else:
            f.write(f"name: {shape}\njobs:\n")
            for j in jobs:
                f.write(f"  - id: {j['id']}\n    command: 'true'\n    dependencies: [{', '.join(j['dependencies'])}]\n")
    return first


def build(pool: str, shape: str, n: int) -> RunLayout:
    """A run of ``shape`` in ``pool``, made through the library, whose first job has failed."""
    path = os.path.join(os.path.dirname(pool), f"{shape}-{n}.json")
    first = write_workflow(path, shape, n)
    run = create_run(PoolLayout(pool), load_workflow(path))
    fail_first(run, first)
    return run


def fail_first(run: RunLayout, first: str) -> None:
    claim = store.claim(run, first, store.Owner.current("status-shapes"))
    assert claim is not None and store.finish(claim, dict(claim.record, reason="exit code 1"), "failed")


def timed(command: str, *args: str) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds and peak RSS in MB of ``exec-<command> ARGS`` run as a
    fresh process."""
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        p = subprocess.Popen([sys.executable, "-m", "executioner", command, *args], stdout=subprocess.PIPE,
                             stderr=err)
        assert p.stdout is not None
        while p.stdout.read(1 << 20):
            pass
        _, status, usage = os.wait4(p.pid, 0)  # the child's own peak RSS (Popen.wait would lose it)
        p.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - start
        p.stdout.close()
        if p.returncode != 0:
            err.seek(0)
            sys.exit(f"exec-{command} {' '.join(args)} failed: {err.read().decode()}")
    return seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def best(repeat: int, command: str, *args: str) -> tuple[float, float, float]:
    return min(timed(command, *args) for _ in range(repeat))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1000,100000")
    p.add_argument("--shapes", default=",".join(SHAPES))
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--format", choices=("yaml", "json"), default="yaml")
    p.add_argument("--views", default=";".join(VIEWS))
    a = p.parse_args()
    views = [v.split() for v in a.views.split(";") if v.strip()]
    cases = ("submit --dry-run", "submit", *(" ".join(v) for v in views))
    print(f"{'shape':<8} {'jobs':>7}  " + "  ".join(f"{c:>22}" for c in cases))
    for n in (int(s) for s in a.sizes.split(",")):
        for shape in a.shapes.split(","):
            with tempfile.TemporaryDirectory() as tmp:
                pool = os.path.join(tmp, "pool")
                wf = os.path.join(tmp, f"{shape}.{a.format}")
                first = write_workflow(wf, shape, n)
                cells = [best(a.repeat, "submit", wf, "--pool", pool, "--dry-run"),
                         timed("submit", wf, "--pool", pool)]
                run = RunLayout(os.path.join(pool, f"{shape}-0001"))
                fail_first(run, first)
                last = shape_jobs(shape, n)[0][-1]["id"]
                names = {"POOL": pool, "RUN": run.run_id, "JOB": first, "LAST": last}
                for view in views:
                    cells.append(best(a.repeat, "status", *(names.get(w, w) for w in view)))
            print(f"{shape:<8} {n:>7}  " + "  ".join(f"{t:5.2f}s ({c:5.2f}) {m:4.0f}MB" for t, c, m in cells),
                  flush=True)
    print("(a cell: wall seconds, (CPU seconds), and the peak RSS of that command)")


if __name__ == "__main__":
    main()
