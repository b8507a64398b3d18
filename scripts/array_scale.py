#!/usr/bin/env python3
"""Submit and status at scale for task arrays: one array of N `true` tasks (default 100,000
and 1,000,000), submitted with exec-submit, then exec-status POOL, POOL RUN, POOL RUN --json,
each a fresh process as a user runs it; wall time, CPU time (user + system), peak memory
(max RSS of that process) and files made.

    python scripts/array_scale.py [--tasks 100000,1000000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time


def timed(cmd: list[str]) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds and peak RSS in MB of ``cmd``, run as a fresh process."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE)
    assert p.stdout is not None
    while p.stdout.read(1 << 20):
        pass
    _, status, usage = os.wait4(p.pid, 0)  # the child's own figures (Popen.wait would lose them)
    p.returncode = os.waitstatus_to_exitcode(status)
    p.stdout.close()
    if p.returncode != 0:
        raise subprocess.CalledProcessError(p.returncode, cmd)
    return time.perf_counter() - t, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", default="100000,1000000")
    a = p.parse_args()
    bin_dir = os.path.dirname(sys.executable)
    print(f"{'tasks':>9}  {'files':>6}  " + "  ".join(f"{c:>21}" for c in ("submit", "POOL", "POOL RUN",
                                                                         "POOL RUN --json")))
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
            shown = "  ".join(f"{w:5.2f}s ({c:5.2f}) {m:4.0f}MB" for w, c, m in cells)
            print(f"{n:>9}  {files:>6}  {shown}", flush=True)
    print("(a cell: wall seconds, (CPU seconds), and the peak RSS of that command)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
