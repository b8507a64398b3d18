#!/usr/bin/env python3
"""Throughput benchmark: N jobs running `true` with 2 local workers, against xargs -P2 and
GNU parallel -j2 on the same commands in the same run, plus filesystem metadata operations
per job in the pool directory (counted with strace on a smaller run). With --array, one
task array of N tasks instead of N jobs.

    python scripts/bench.py [--jobs 10000] [--workers 2] [--strace-jobs N] [--array] [--ops-only] [--sshfs]

Needs `parallel` and `strace` (Debian packages of those names). Prints a table; the
README quotes its latest output.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import orjson

MUTATING = {"rename", "renameat", "renameat2", "unlink", "unlinkat", "mkdir", "mkdirat", "rmdir",
            "utimensat", "utime", "utimes", "link", "linkat", "symlink", "symlinkat", "chmod", "fchmodat"}


ARRAY = False


def workflow(path: str, n: int, workdir: str) -> None:
    jobs = ([{"id": "t", "array": n, "command": "true"}] if ARRAY
            else [{"id": f"j{i:05d}", "command": "true"} for i in range(n)])
    with open(path, "wb") as f:
        f.write(orjson.dumps({"name": "bench", "workdir": workdir, "jobs": jobs}))


def timed(cmd: list[str], **kw) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, **kw)
    return time.perf_counter() - t


def run_ours(tmp: str, n: int, workers: int, strace_log: str | None = None,
             mounts: list[str] | None = None) -> float:
    """Submit and run; ``mounts``: the pool lives on these mounts of one shared directory
    (worker i works through mount i mod len), instead of in ``tmp``."""
    name = f"pool-{n}-{time.time_ns()}"
    roots = mounts or [tmp]
    pool = os.path.join(roots[0], name)
    wf = os.path.join(tmp, f"bench-{n}.json")
    workflow(wf, n, tmp)
    bin_dir = os.path.dirname(sys.executable)
    submit = [os.path.join(bin_dir, "exec-submit"), wf, "--pool", pool]

    def worker(i: int) -> list[str]:
        return [os.path.join(bin_dir, "exec-worker"), "--pool", os.path.join(roots[i % len(roots)], name),
                "--exit-when-idle", "0.2", "-q", "-j", "1"]  # one job at a time per worker, as before -j defaulted to the CPUs
    prefix = ["strace", "-f", "-qq", "-y", "-e", "trace=%file,getdents64", "-o", strace_log] if strace_log else []
    t = time.perf_counter()
    t_wall = time.time()
    if strace_log:
        subprocess.run(prefix[:-1] + [strace_log + ".submit"] + submit, check=True, stdout=subprocess.DEVNULL)
    else:
        subprocess.run(submit, check=True, stdout=subprocess.DEVNULL)
    procs = [subprocess.Popen(prefix[:-1] + [f"{strace_log}.w{i}"] + worker(i) if strace_log else worker(i))
             for i in range(workers)]
    for p in procs:
        if p.wait() != 0:
            raise SystemExit("a worker failed")
    elapsed = time.perf_counter() - t
    status = subprocess.run([os.path.join(bin_dir, "exec-status"), pool, "bench-0001", "--json"], check=True,
                            capture_output=True)
    done = orjson.loads(status.stdout)["counts"]["done"]
    if done != n:
        raise SystemExit(f"only {done} of {n} jobs done")
    if mounts:
        LAST_END[0] = last_end(os.path.join(pool, "bench-0001", "done")) - t_wall
    return elapsed if not strace_log else pool


LAST_END = [float("nan")]


def last_end(done: str) -> float:
    """When the last try of the run ended (wall clock), from its done/ files."""
    ends = [0.0]
    for name in os.listdir(done):
        with open(os.path.join(done, name), "rb") as f:
            tries = orjson.loads(f.read()).get("tries") or [{}]
        ends.append(tries[-1].get("end") or 0.0)
    return max(ends)


def sshfs_run(tmp: str, n: int, workers: int) -> float:
    """run_ours with the pool on the two mounts of scripts/sshfs-local.sh (started here, and
    stopped, unless $EXEC_SSHFS_DIR names running ones)."""
    here = os.path.dirname(os.path.abspath(__file__))
    base = os.environ.get("EXEC_SSHFS_DIR")
    started = base is None
    if started:
        out = subprocess.run(["bash", os.path.join(here, "sshfs-local.sh"), "start"], check=True,
                             capture_output=True, text=True).stdout
        base = out.strip().rpartition("=")[2]
    try:
        return run_ours(tmp, n, workers, mounts=[os.path.join(base, "mnt1"), os.path.join(base, "mnt2")])
    finally:
        if started:
            subprocess.run(["bash", os.path.join(here, "sshfs-local.sh"), "stop", base], check=False)


def count_ops(logs: list[str], pool: str) -> collections.Counter[str]:
    counts: collections.Counter[str] = collections.Counter()
    call = re.compile(r"^\d+\s+(\w+)\((.*)")
    for path in logs:
        with open(path, errors="replace") as f:
            for line in f:
                m = call.match(line)
                if not m:
                    continue
                name, args = m.groups()
                if pool not in args or '"", ' in args:
                    continue  # not the pool, or fd-based (fstat of an open file: no name lookup)
                if name == "getdents64":
                    counts["listing"] += 1
                    continue
                if "= -1 ENOENT" in args:
                    counts["lost race"] += 1
                elif name in MUTATING or (name.startswith("open") and "O_CREAT" in args):
                    counts["mutating"] += 1
                else:
                    counts["lookup"] += 1
    return counts


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=10000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--strace-jobs", type=int, default=None,
                   help="size of the run counted under strace (default: 2000 jobs, or --jobs tasks with --array)")
    p.add_argument("--ops-only", action="store_true", help="count filesystem operations only (no timing)")
    p.add_argument("--sshfs", action="store_true",
                   help="also run with the pool on two sshfs mounts of one directory over loopback (a network "
                        "filesystem with per-operation latency; scripts/sshfs-local.sh, or $EXEC_SSHFS_DIR), "
                        "one worker on each")
    p.add_argument("--array", action="store_true", help="one task array of N tasks instead of N jobs")
    a = p.parse_args()
    global ARRAY
    ARRAY = a.array
    if a.strace_jobs is None:
        a.strace_jobs = a.jobs if a.array else 2000
    for tool in ("parallel", "xargs", "strace"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: apt-get install {tool}")
    with tempfile.TemporaryDirectory(prefix="exec-bench-") as tmp:
        cmds = os.path.join(tmp, "commands")
        with open(cmds, "w") as f:
            f.write("true\n" * a.jobs)
        t_xargs = t_parallel = t_ours = float("nan")
        if not a.ops_only:
            with open(cmds) as f:
                t_xargs = timed(["xargs", "-P", str(a.workers), "-d", "\n", "-n", "1", "sh", "-c"], stdin=f)
            with open(cmds) as f:
                t_parallel = timed(["parallel", "--will-cite", "-j", str(a.workers)], stdin=f)
            t_ours = run_ours(tmp, a.jobs, a.workers)
        t_sshfs = sshfs_run(tmp, a.jobs, a.workers) if a.sshfs else None
        pool = run_ours(tmp, a.strace_jobs, a.workers, strace_log=os.path.join(tmp, "strace"))
        logs = [os.path.join(tmp, n) for n in os.listdir(tmp) if n.startswith("strace.")]
        ops = count_ops([x for x in logs if not x.endswith(".submit")], pool)
        submit_ops = count_ops([x for x in logs if x.endswith(".submit")], pool)
    n = a.strace_jobs
    what = "tasks of one array" if a.array else "jobs"
    print(f"{a.jobs} {what} running `true`, {a.workers} workers, {os.cpu_count()} cores")
    print(f"  xargs -P{a.workers}      {t_xargs:7.2f} s")
    print(f"  parallel -j{a.workers}   {t_parallel:7.2f} s")
    print(f"  executioner     {t_ours:7.2f} s   (submit + workers until they exit)")
    if t_sshfs is not None:
        print(f"  executioner     {t_sshfs:7.2f} s   (the same, the pool on sshfs over loopback, a worker per mount;")
        print(f"                  {LAST_END[0]:7.2f} s   until the last task ended: a worker waits to see no claim left, "
              "through its mount's directory cache)")
    print(f"  ratio vs GNU parallel {t_ours / t_parallel:5.2f}   (target <= {0.3 if a.array else 0.5})")
    print(f"  ratio vs xargs        {t_ours / t_xargs:5.2f}   (target <= 1.5)")
    print(f"metadata operations per job in the pool ({n} jobs under strace):")
    print(f"  workers: mutating {ops['mutating'] / n:.2f}, lookups {ops['lookup'] / n:.2f}, "
          f"listings {ops['listing'] / n:.2f}, lost races {ops['lost race'] / n:.2f}, "
          f"total {sum(ops.values()) / n:.2f}   (target <= {0.5 if a.array else 10})")
    print(f"  submit:  mutating {submit_ops['mutating'] / n:.2f}, lookups {submit_ops['lookup'] / n:.2f}, "
          f"listings {submit_ops['listing'] / n:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
