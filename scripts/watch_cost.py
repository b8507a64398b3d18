#!/usr/bin/env python3
"""What `exec-status --watch` costs: the time of one look (a refresh after the run changed,
and one when nothing changed) at a run of N plain jobs and at an array of M tasks, and the
filesystem operations per second of an idle view, counted with strace as
scripts/idle_cost.py counts them for an idle worker.

    python scripts/watch_cost.py [--jobs 10000] [--tasks 1000000] [--seconds 40] [--warmup 15]

The runs are submitted, not run: half of each is moved to done/ by renames (a chunk's
tasks with it), so the counts, the failures and the running part are all non-trivial.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
import time

from executioner.protocol.layout import PoolLayout
from executioner.views.looking import Looker


def submit(tmp: str, pool: str, name: str, body: str) -> None:
    wf = os.path.join(tmp, f"{name}.yaml")
    with open(wf, "w") as f:
        f.write(f"name: {name}\njobs:\n{body}")
    subprocess.run([os.path.join(os.path.dirname(sys.executable), "exec-submit"), wf, "--pool", pool], check=True,
                   stdout=subprocess.DEVNULL)


def half_done(run_root: str) -> None:
    queued, done = os.path.join(run_root, "queued"), os.path.join(run_root, "done")
    names = sorted(os.listdir(queued))
    for n in names[: len(names) // 2]:
        os.rename(os.path.join(queued, n), os.path.join(done, n))


def time_looks(pool: str, run_id: str) -> tuple[float, float]:
    layout = PoolLayout(pool)
    looker = Looker(layout, layout.run(run_id))
    t = time.perf_counter()
    looker.look()
    first = time.perf_counter() - t
    os.utime(os.path.join(pool, run_id, "queued"))  # a change: the folders are listed again
    t = time.perf_counter()
    looker.look()
    changed = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(10):
        looker.look()
    idle = (time.perf_counter() - t) / 10
    return first, changed, idle  # type: ignore[return-value]


def idle_ops(pool: str, run_id: str, seconds: float, warmup: float, tmp: str) -> collections.Counter[str]:
    log = os.path.join(tmp, "strace")
    code = "import sys; from executioner.cli import status_main; sys.exit(status_main(sys.argv[1:]))"
    start = time.time()
    subprocess.run(["strace", "-f", "-qq", "-ttt", "-y", "-e", "trace=%file,getdents64", "-o", log,
                    "timeout", "-s", "INT", str(seconds), sys.executable, "-c", code, pool, run_id, "--watch"],
                   stdout=subprocess.DEVNULL, check=False)
    counts: collections.Counter[str] = collections.Counter()
    line_re = re.compile(r"^\d+\s+([\d.]+)\s+(\w+)\((.*)")
    with open(log, errors="replace") as f:
        for line in f:
            m = line_re.match(line)
            if not m or float(m.group(1)) < start + warmup:
                continue
            _, name, args = m.groups()
            if pool not in args or name == "getdents64" or '"", ' in args:
                continue
            counts["listing" if "O_DIRECTORY" in args else "mutating" if name.startswith(
                ("rename", "unlink", "mkdir", "utimensat")) or "O_CREAT" in args else "lookup"] += 1
    return counts


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=10000)
    p.add_argument("--tasks", type=int, default=1000000)
    p.add_argument("--seconds", type=float, default=40.0)
    p.add_argument("--warmup", type=float, default=15.0)
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="exec-watch-") as tmp:
        pool = os.path.join(tmp, "pool")
        submit(tmp, pool, "plain", "".join(f"  - {{id: j{i}, command: 'true'}}\n" for i in range(a.jobs)))
        submit(tmp, pool, "sweep", f"  - {{id: t, array: {a.tasks}, command: 'true'}}\n")
        plain, sweep = PoolLayout(pool).run_ids()  # run numbers count across the pool
        for run_id in (plain, sweep):
            half_done(os.path.join(pool, run_id))
            first, changed, idle = time_looks(pool, run_id)
            print(f"{run_id}: first look {first:.3f} s, a look after a change {changed:.3f} s, "
                  f"an idle look {idle * 1000:.2f} ms")
        if a.seconds > 0:
            counts = idle_ops(pool, plain, a.seconds, a.warmup, tmp)
            window = a.seconds - a.warmup
            print(f"idle --watch (no worker), {window:.0f} s after {a.warmup:.0f} s: listings "
                  f"{counts['listing'] / window:.2f}/s, lookups {counts['lookup'] / window:.2f}/s, mutating "
                  f"{counts['mutating'] / window:.2f}/s, total {sum(counts.values()) / window:.2f}/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
