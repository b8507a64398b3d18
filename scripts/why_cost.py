#!/usr/bin/env python3
"""What ``exec-status --why`` and the ``--wait`` warnings cost on a big run: N queued jobs
(10 of them asking for 2 GPUs) and 20 live worker files of 1 GPU each. Times the Advisor's
check (the one ``--wait`` and a live view repeat) and ``--why`` for a job no worker fits
and for a plain one.

    python scripts/why_cost.py [--jobs 100000]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import orjson


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--jobs", type=int, default=100_000)
    n = p.parse_args().jobs
    from executioner import PoolLayout, create_run, load_workflow
    from executioner.views.advice import Advisor
    from executioner.views.why import explain

    with tempfile.TemporaryDirectory() as tmp:
        jobs = [{"id": f"j{i:06d}", "command": "true"} for i in range(n - 10)]
        jobs += [{"id": f"gpu{i}", "command": "true", "resources": {"gpus": 2}} for i in range(10)]
        wf = os.path.join(tmp, "big.json")
        with open(wf, "wb") as f:
            f.write(orjson.dumps({"name": "big", "jobs": jobs}))
        t = time.perf_counter()
        run = create_run(PoolLayout(os.path.join(tmp, "pool")), load_workflow(wf))
        print(f"submit {n} jobs: {time.perf_counter() - t:.1f} s", flush=True)
        workers = os.path.join(tmp, "pool", "workers")
        os.makedirs(workers, exist_ok=True)
        for i in range(20):
            with open(os.path.join(workers, f"w{i}.json"), "wb") as f:
                f.write(orjson.dumps({"host": "node1", "pid": 1, "pid_start": 0, "heartbeat": 10, "stale_after": 60,
                                      "runs": None, "slots": 4, "capacity": {"cpus": 4, "gpus": ["0"], "mem_gb": 16,
                                                                             "resources": {}, "tags": []}}))
        advisor = Advisor(run)
        for label in ("first", "again", "again"):
            t, c = time.perf_counter(), time.process_time()
            lines = advisor.check()
            print(f"Advisor.check ({label}): {time.perf_counter() - t:.3f} s wall, "
                  f"{time.process_time() - c:.3f} s CPU, {len(lines)} warning line(s)", flush=True)
        for job in ("gpu3", f"j{n // 2:06d}"):
            t, c = time.perf_counter(), time.process_time()
            data = explain(run, job)
            print(f"--why {job}: {time.perf_counter() - t:.3f} s wall, {time.process_time() - c:.3f} s CPU: "
                  f"{[x['text'] for x in data['causes']]}", flush=True)


if __name__ == "__main__":
    main()
