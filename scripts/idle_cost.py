#!/usr/bin/env python3
"""Filesystem operations per second of an idle worker, counted with strace.

    python scripts/idle_cost.py [--runs 3] [--seconds 40] [--warmup 15]

Makes a pool with RUNS finished runs, starts `exec-worker --pool` under strace, waits
WARMUP seconds for it to settle into steady idle, then counts the system calls on pool
paths during the remaining seconds: name lookups, creations/renames/unlinks/touches, and
directory listings (one per opened directory). Needs `strace`.
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

MUTATING = ("rename", "unlink", "mkdir", "rmdir", "utimensat", "link", "symlink", "chmod")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--seconds", type=float, default=40.0)
    p.add_argument("--warmup", type=float, default=15.0)
    a = p.parse_args()
    bin_dir = os.path.dirname(sys.executable)
    with tempfile.TemporaryDirectory(prefix="exec-idle-") as tmp:
        pool = os.path.join(tmp, "pool")
        wf = os.path.join(tmp, "one.yaml")
        with open(wf, "w") as f:
            f.write("jobs: [{id: a, command: 'true'}]\n")
        for _ in range(a.runs):
            subprocess.run([os.path.join(bin_dir, "exec-submit"), wf, "--pool", pool], check=True,
                           stdout=subprocess.DEVNULL)
        subprocess.run([os.path.join(bin_dir, "exec-worker"), "--pool", pool, "--exit-when-idle", "0.5", "-q"],
                       check=True)
        log = os.path.join(tmp, "strace")
        start = time.time()
        subprocess.run(["strace", "-f", "-qq", "-ttt", "-y", "-e", "trace=%file,getdents64", "-o", log,
                        "timeout", "-s", "TERM", str(a.seconds),
                        os.path.join(bin_dir, "exec-worker"), "--pool", pool, "-q"], check=False)
        counts: collections.Counter[str] = collections.Counter()
        line_re = re.compile(r"^\d+\s+([\d.]+)\s+(\w+)\((.*)")
        with open(log, errors="replace") as f:
            for line in f:
                m = line_re.match(line)
                if not m or float(m.group(1)) < start + a.warmup:
                    continue
                _, name, args = m.groups()
                if pool not in args or name == "getdents64" or '"", ' in args:
                    continue
                if "O_DIRECTORY" in args:
                    counts["listing"] += 1
                elif name.startswith(MUTATING) or "O_CREAT" in args:
                    counts["mutating"] += 1
                else:
                    counts["lookup"] += 1
    window = a.seconds - a.warmup
    total = sum(counts.values())
    print(f"idle worker, pool of {a.runs} finished runs, {window:.0f} s after {a.warmup:.0f} s of warm-up:")
    print(f"  listings {counts['listing'] / window:.2f}/s, lookups {counts['lookup'] / window:.2f}/s, "
          f"mutating {counts['mutating'] / window:.2f}/s, total {total / window:.2f}/s   (target about 1/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
