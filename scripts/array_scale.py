#!/usr/bin/env python3
"""Submit and status at scale for task arrays: one array of N `true` tasks (default 100,000
and 1,000,000), submitted with exec-submit, then exec-status POOL, POOL RUN, POOL RUN --json,
each a fresh process as a user runs it; wall time, peak memory (max RSS) and files made.

    python scripts/array_scale.py [--tasks 100000,1000000]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time


def timed(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and the child's peak RSS in MB (each command is a fresh process)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return wall, max(after, before) / 1024  # ru_maxrss is the largest of any child so far


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", default="100000,1000000")
    a = p.parse_args()
    bin_dir = os.path.dirname(sys.executable)
    print(f"{'tasks':>9}  {'files':>6}  {'submit':>15}  {'POOL':>15}  {'POOL RUN':>15}  {'POOL RUN --json':>15}")
    for n in (int(x) for x in a.tasks.split(",")):
        with tempfile.TemporaryDirectory(prefix="exec-scale-") as tmp:
            wf = os.path.join(tmp, "wf.yaml")
            with open(wf, "w") as f:
                f.write(f"name: sweep\njobs:\n  - {{id: t, array: {n}, command: 'true'}}\n")
            pool = os.path.join(tmp, "pool")
            cells = [timed([os.path.join(bin_dir, "exec-submit"), wf, "--pool", pool])]
            files = sum(len(fs) for _, _, fs in os.walk(pool))
            status = os.path.join(bin_dir, "exec-status")
            for args in ([pool], [pool, "sweep-0001"], [pool, "sweep-0001", "--json"]):
                cells.append(timed([status, *args]))
            shown = "  ".join(f"{w:6.2f}s {m:5.0f}MB" for w, m in cells)
            print(f"{n:>9}  {files:>6}  {shown}")
    print("(MB: the largest peak RSS of any command so far in this run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
