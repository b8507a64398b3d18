#!/usr/bin/env python3
"""What the worker itself spends per plain job (its own CPU time, commands excluded), so
that a change to the claim path can be compared before and after with less noise than wall
time on a shared machine gives. Runs N jobs of `true` through one in-process worker.

    python scripts/placement_cost.py [--jobs 2000] [-j 2] [--rounds 3]

Run it with each tree's Python (its own venv, or PYTHONPATH=<tree>) on the same machine;
it prints the median of the rounds.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time

import orjson


def one_round(n: int, slots: int) -> tuple[float, float]:
    from executioner import PoolLayout, Worker, create_run, load_workflow

    with tempfile.TemporaryDirectory() as tmp:
        wf = os.path.join(tmp, "cost.json")
        with open(wf, "wb") as f:
            f.write(orjson.dumps({"name": "cost", "jobs": [{"id": f"j{i:05d}", "command": "true"}
                                                           for i in range(n)]}))
        pool = os.path.join(tmp, "pool")
        create_run(PoolLayout(pool), load_workflow(wf))
        before = resource.getrusage(resource.RUSAGE_SELF)
        t = time.perf_counter()
        worker = Worker(pool, slots=slots, exit_when_idle=0.2, poll_min=0.02, poll_max=0.2)
        done = worker.run()
        wall = time.perf_counter() - t
        after = resource.getrusage(resource.RUSAGE_SELF)
        if done != n:
            raise SystemExit(f"only {done} of {n} jobs done")
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        return wall, cpu


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=2000)
    p.add_argument("-j", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    rounds = [one_round(a.jobs, a.j) for _ in range(a.rounds)]
    wall = statistics.median(r[0] for r in rounds)
    cpu = statistics.median(r[1] for r in rounds)
    print(f"{a.jobs} jobs, -j {a.j}, median of {a.rounds}: wall {wall:.2f} s, worker CPU {cpu:.2f} s "
          f"({1e3 * cpu / a.jobs:.3f} ms a job)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
