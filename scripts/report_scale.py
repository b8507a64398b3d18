#!/usr/bin/env python3
"""How long ``exec-status POOL RUN --report`` takes, and how big the page is, for big runs.

Each run is submitted with exec-submit, then *finished synthetically*: every job or chunk
file is given tries (40 hosts, 2 workers each, over an hour; 1 % of jobs or chunks retried
after a failed first try, 0.1 % failed for good with a stderr log) and moved to done/ or
failed/, as a worker would have left it, without running anything (a million ``true`` tasks
would take hours here and say nothing about the report). Then ``exec-status POOL RUN
--report`` runs as a fresh process: wall seconds, CPU seconds, peak memory, the page's size.

    python scripts/report_scale.py [--jobs 1000,10000] [--tasks 100000,1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from executioner.protocol import fsio  # noqa: E402
from executioner.protocol.layout import RunLayout  # noqa: E402


def timed(cmd: list[str]) -> tuple[float, float, float, str]:
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE)
    assert p.stdout is not None
    out = p.stdout.read().decode()
    _, status, usage = os.wait4(p.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{cmd} failed")
    return time.perf_counter() - t, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, out


def finish(run: RunLayout, rng: random.Random) -> None:
    """Give every unit tries and move it to done/ (or failed/): see the module docstring."""
    t0 = time.time() - 3600
    units = [(s, n) for s in ("waiting", "queued") for n in os.listdir(run.state_dir(s)) if n.endswith(".json")]
    for i, (state, name) in enumerate(units):
        path = os.path.join(run.state_dir(state), name)
        with open(path, "rb") as f:
            record = json.loads(f.read())
        unit = name[:-5]
        host = rng.randrange(40)
        start = t0 + 3600 * i / len(units)
        lo, hi = record.get("tasks") or (None, None)
        tries = []
        fate = rng.random()
        n_tries = 2 if fate < 0.011 else 1
        for k in range(1, n_tries + 1):
            duration = rng.uniform(0.5, 5.0)
            failed = k < n_tries or fate < 0.001
            t = {"attempt": 1, "try": k, "start": start, "end": start + duration, "duration": duration,
                 "status": "failed" if failed else "done", "exit_code": 1 if failed else 0,
                 "reason": "exit code 1" if failed else None, "host": f"node{host:02d}",
                 "worker": f"node{host:02d}-{1000 + host * 2 + k % 2}-abcd", "signal": None,
                 "stdout": f"logs/{unit}.{k}.out", "stderr": f"logs/{unit}.{k}.err"}
            if lo is not None:
                n = hi - lo + 1
                t["status"] = "done"
                t["results"] = {"first": lo, "status": ["failed" if failed and j == 0 else "done" for j in range(n)],
                                "exit": [1 if failed and j == 0 else 0 for j in range(n)],
                                "signal": [None] * n, "start": [start + duration * j / n for j in range(n)],
                                "duration": [round(duration / n, 6)] * n, "reason": [None] * n,
                                "out": [[0, 0]] * n, "err": [[0, 0]] * n}
            if failed:
                fsio.atomic_write(os.path.join(run.root, t["stderr"]), b"something went wrong\n" * 50)
            tries.append(t)
            start += duration
        record["tries"] = tries
        to = "failed" if fate < 0.001 and lo is None else "done"
        fsio.atomic_write(run.job(unit, to), json.dumps(record).encode())
        os.unlink(path)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", default="1000,10000", help="runs of N plain jobs (prep, N-2 sims, final)")
    p.add_argument("--tasks", default="100000,1000000", help="runs of one array of N tasks after a job")
    a = p.parse_args()
    bin_dir = os.path.dirname(sys.executable)
    rng = random.Random(13)
    print(f"{'run':>22}  {'units':>6}  {'report':>26}  {'page':>8}")
    sizes = [("jobs", int(x)) for x in a.jobs.split(",") if x] + [("tasks", int(x)) for x in a.tasks.split(",") if x]
    for kind, n in sizes:
        with tempfile.TemporaryDirectory(prefix="exec-report-scale-") as tmp:
            wf = os.path.join(tmp, "wf.yaml")
            with open(wf, "w") as f:
                f.write("name: big\njobs:\n  - {id: prep, command: 'true'}\n")
                if kind == "jobs":
                    for i in range(n - 2):
                        f.write(f"  - {{id: sim-{i:05d}, command: 'true', dependencies: [prep]}}\n")
                    f.write("  - id: final\n    command: 'true'\n    dependencies: [sims]\n")
                    f.write(f"    # {n - 2} sims\n")
                else:
                    f.write(f"  - {{id: sim, array: {n}, command: 'true', dependencies: [prep]}}\n")
            if kind == "jobs":  # final after every sim
                text = open(wf).read().replace("dependencies: [sims]", "dependencies: [" + ", ".join(
                    f"sim-{i:05d}" for i in range(n - 2)) + "]")
                open(wf, "w").write(text)
            pool = os.path.join(tmp, "pool")
            subprocess.run([os.path.join(bin_dir, "exec-submit"), wf, "--pool", pool], check=True,
                           stdout=subprocess.DEVNULL)
            run = RunLayout(os.path.join(pool, "big-0001"))
            finish(run, rng)
            units = sum(len(os.listdir(run.state_dir(s))) for s in ("done", "failed"))
            page = os.path.join(tmp, "report.html")
            wall, cpu, rss, _ = timed([os.path.join(bin_dir, "exec-status"), pool, "big-0001", "--report", page])
            print(f"{n:>15,} {kind:>6}  {units:>6}  {wall:6.2f}s ({cpu:5.2f}) {rss:5.0f}MB  "
                  f"{os.path.getsize(page) / 1e6:6.1f}MB", flush=True)
    print("(report: wall seconds, (CPU seconds), peak RSS of exec-status --report; page: the HTML file's size)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
