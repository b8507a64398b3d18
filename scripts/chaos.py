#!/usr/bin/env python3
"""Chaos check: workers killed and frozen at random while they run a workflow.

    python scripts/chaos.py [--workers 8] [--jobs 2000] [--mounts DIR,DIR] [--seed N]

N worker processes run M short jobs (each appends "<job> <try>" to a ledger). Every
~0.5 s a killer picks a random worker and either SIGKILLs it (and starts a new one) or
SIGSTOPs it and sends SIGCONT later, sometimes after more than --stale-after, so that
its claims were requeued meanwhile and it wakes up as a "dead" worker. At the end it
checks and prints: every job in done/, each exactly once and in no other folder;
nothing in running/ or quarantine/; each done job recorded as completed by one try;
and how many times jobs were executed (a requeued job may run again; only one run
completes it). Exit code 0 when every check holds.

--commit-pause S[:F]: workers pause S seconds inside a fraction F of their commits (between
the fence rename into their private folder and the final rename out of it; the test hook
EXEC_TEST_COMMIT_PAUSE), and half of the blows are aimed at a worker caught inside one, so
that kills and freezes land in the middle of commits. --commit-pause 0 turns it off.

--mounts: the pool directory as seen through several mounts of the same filesystem
(for example two sshfs mounts); workers are spread over them round-robin.

--array: one task array of --jobs tasks (chunks of --chunk) instead of separate jobs; the
checks are per task: every task in exactly one done chunk file, completed by one try.
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

import orjson


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--jobs", type=int, default=2000)
    p.add_argument("--slots", type=int, default=2, help="jobs per worker at once")
    p.add_argument("--job-seconds", type=float, default=0.3, help="mean length of a job")
    p.add_argument("--heartbeat", type=float, default=0.5)
    p.add_argument("--stale-after", type=float, default=3.0)
    p.add_argument("--every", type=float, default=0.5, help="seconds between two blows")
    p.add_argument("--deadline", type=float, default=600, help="give up after this many seconds")
    p.add_argument("--mounts", help="comma-separated views of the pool directory (default: a temp dir)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--array", action="store_true", help="one task array instead of separate jobs")
    p.add_argument("--chunk", type=int, default=8, help="tasks per chunk with --array")
    p.add_argument("--commit-pause", default="0.3:0.15", metavar="S[:F]",
                   help="pause S s inside a fraction F of commits, and aim blows there (default 0.3:0.15)")
    a = p.parse_args(argv)
    rng = random.Random(a.seed)
    tmp = tempfile.mkdtemp(prefix="exec-chaos-")
    views = a.mounts.split(",") if a.mounts else [os.path.join(tmp, "pool")]
    ledger = os.path.join(tmp, "ledger")
    bin_dir = os.path.dirname(sys.executable)
    wf = os.path.join(tmp, "chaos.json")
    with open(wf, "wb") as f:
        # every tenth job fails its first try and is retried after 0.2 s (the retry path)
        if a.array:  # every tenth task fails its first try; tasks vary in length by their index
            jobs = [{"id": "t", "array": a.jobs, "chunk": a.chunk, "max_lost": 1000, "max_retries": 3,
                     "retry_delay": 0.2,
                     "command": f"echo $EXEC_TASK_ID $EXEC_TRY >> {ledger}; "
                                f"sleep $(( {{index}} % 7 * {int(a.job_seconds * 1000 / 3)} ))e-3; "
                                f"[ $(( {{index}} % 10 )) != 0 ] || [ $EXEC_TRY -ge 2 ] || "
                                f"grep -q \"^$EXEC_TASK_ID \" {ledger}.failed || "
                                f"{{ echo $EXEC_TASK_ID >> {ledger}.failed; exit 3; }}"}]
        else:
            jobs = [{"id": f"j{i:05d}", "max_lost": 1000, "max_retries": 3, "retry_delay": 0.2,
                     "command": f"echo $EXEC_JOB_ID $EXEC_TRY >> {ledger}; sleep {rng.uniform(0, 2 * a.job_seconds):.2f}"
                                + ("; [ $EXEC_TRY -ge 2 ] || exit 3" if i % 10 == 0 else "")}
                    for i in range(a.jobs)]
        f.write(orjson.dumps({"name": "chaos", "workdir": tmp, "jobs": jobs}))
    out = subprocess.run([os.path.join(bin_dir, "exec-submit"), wf, "--pool", views[0]], check=True,
                         capture_output=True, text=True).stdout
    run_id, run_dir = out.split(" ", 1)
    run_dir = run_dir.strip()

    logs = os.path.join(tmp, "worker-logs")
    os.makedirs(logs)

    env = dict(os.environ)
    if a.commit_pause not in ("0", ""):
        env["EXEC_TEST_COMMIT_PAUSE"] = a.commit_pause

    def start(i: int) -> subprocess.Popen[bytes]:
        # every worker's log (INFO: one "completed" line per completion) is kept for the check
        with open(os.path.join(logs, f"{i}.log"), "ab") as log:
            return subprocess.Popen([os.path.join(bin_dir, "exec-worker"), "--pool", views[i % len(views)],
                                     "--run", run_id, "-j", str(a.slots), "--heartbeat", str(a.heartbeat),
                                     "--stale-after", str(a.stale_after)], stderr=log, env=env)

    running_dir = os.path.join(run_dir, "running")

    def committing() -> list[int]:
        """Workers caught inside a commit: their pid names a private folder in running/."""
        try:
            names = [n for n in os.listdir(running_dir) if "+" in n]
        except FileNotFoundError:
            return []
        pids = {n.split("+", 1)[1].split("-")[2] for n in names}
        return [i for i, w in enumerate(workers) if str(w.pid) in pids]

    workers = [start(i) for i in range(a.workers)]
    frozen: dict[int, float] = {}  # worker index -> when to SIGCONT
    blows = collections.Counter()
    began = time.monotonic()
    try:
        while finished(run_dir, a.array) < a.jobs:
            if time.monotonic() - began > a.deadline:
                print(f"deadline of {a.deadline:.0f} s passed", file=sys.stderr)
                break
            time.sleep(a.every * rng.uniform(0.5, 1.5))
            now = time.monotonic()
            for i, when in list(frozen.items()):
                if now >= when:
                    workers[i].send_signal(signal.SIGCONT)
                    del frozen[i]
            inside = [i for i in committing() if i not in frozen] if rng.random() < 0.5 else []
            i = rng.choice(inside) if inside else rng.randrange(len(workers))
            if i in frozen:
                continue
            where = " inside a commit" if inside else ""
            if rng.random() < 0.5:
                workers[i].send_signal(signal.SIGKILL)
                workers[i].wait()
                workers[i] = start(i)
                blows["SIGKILL" + where] += 1
            else:
                workers[i].send_signal(signal.SIGSTOP)
                long = rng.random() < 0.3
                frozen[i] = now + (rng.uniform(a.stale_after + 1, 2 * a.stale_after + 2) if long
                                   else rng.uniform(0.1, a.stale_after / 2))
                blows[("SIGSTOP past stale-after" if long else "SIGSTOP") + where] += 1
        # Every job is done; give the workers a moment to clear what killed committers left
        # (empty private folders), as they would in a run that goes on.
        settle = time.monotonic() + 4 * a.stale_after + 5
        while time.monotonic() < settle and os.listdir(os.path.join(run_dir, "running")):
            for i in list(frozen):
                workers[i].send_signal(signal.SIGCONT)
                del frozen[i]
            time.sleep(0.2)
    finally:
        for i in list(frozen):
            workers[i].send_signal(signal.SIGCONT)
        for w in workers:
            w.send_signal(signal.SIGTERM)
        for w in workers:
            try:
                w.wait(timeout=30)
            except subprocess.TimeoutExpired:
                w.kill()
    elapsed = time.monotonic() - began
    if a.array:
        return report_array(run_dir, a.jobs, ledger, blows, elapsed, a.workers, len(views))
    return report(run_dir, a.jobs, ledger, logs, blows, elapsed, a.workers, len(views))


def listed(run_dir: str, state: str) -> list[str]:
    """The files of one folder of the run (no temp or hidden files); none if it is missing."""
    try:
        return [n for n in os.listdir(os.path.join(run_dir, state)) if not n.startswith(".")]
    except FileNotFoundError:
        return []


def finished(run_dir: str, array: bool) -> int:
    """Jobs (or, with --array, tasks) in done/."""
    names = [n for n in os.listdir(os.path.join(run_dir, "done")) if n.endswith(".json")]
    if not array:
        return len(names)
    total = 0
    for n in names:
        lo, _, hi = n[len("t."):-len(".json")].partition("-")
        total += int(hi or lo) - int(lo) + 1
    return total


def report_array(run_dir: str, tasks: int, ledger: str, blows: collections.Counter[str], elapsed: float,
                 workers: int, views: int) -> int:
    """The checks per task (see the module docstring)."""
    def names(state: str) -> list[str]:
        return listed(run_dir, state)

    covered: collections.Counter[int] = collections.Counter()
    completed: collections.Counter[int] = collections.Counter()
    torn = 0
    done = names("done")
    for name in done:
        try:
            with open(os.path.join(run_dir, "done", name), "rb") as f:
                record = orjson.loads(f.read())
            lo, hi = record["tasks"]
        except (ValueError, KeyError, TypeError):
            torn += 1
            continue
        for p in range(lo, hi + 1):
            covered[p] += 1
        for t in record["tries"]:
            r = t.get("results") or {}
            for i, status in enumerate(r.get("status") or []):
                if status == "done":
                    completed[r["first"] + i] += 1
    others = {s: names(s) for s in ("waiting", "queued", "running", "failed", "quarantine")}
    executions: collections.Counter[str] = collections.Counter()
    with open(ledger) as f:
        for line in f:
            executions[line.split()[0]] += 1
    checks = {
        f"every task in exactly one done chunk file ({sum(covered.values())} of {tasks}, {len(done)} files)":
            sorted(covered) == list(range(tasks)) and set(covered.values()) == {1},
        "nothing left in waiting/ queued/ running/ (claims or private folders) failed/":
            not any(others[s] for s in others if s != "quarantine"),
        "nothing in quarantine/ (0 records quarantined)": not others["quarantine"],
        f"no torn record ({torn} torn)": torn == 0,
        "every task executed at least once": all(executions[f"t:{i}"] >= 1 for i in range(tasks)),
        "no task recorded as completed by two tries": max(completed.values(), default=0) <= 1,
    }
    hist = collections.Counter(executions.values())
    print(f"chaos: {workers} workers over {views} view(s) of the pool, an array of {tasks} tasks, {elapsed:.0f} s")
    print("  blows: " + ", ".join(f"{k} {v}" for k, v in sorted(blows.items())))
    print("  executions per task: " + ", ".join(f"{k}x {v} tasks" for k, v in sorted(hist.items())))
    for name, ok in checks.items():
        print(f"  {'ok  ' if ok else 'FAIL'} {name}")
    if any(others.values()):
        print("  left: " + ", ".join(f"{s}: {len(v)} ({' '.join(sorted(v)[:5])})" for s, v in others.items() if v))
    return 0 if all(checks.values()) else 1


def report(run_dir: str, jobs: int, ledger: str, logs: str, blows: collections.Counter[str], elapsed: float,
           workers: int, views: int) -> int:
    def names(state: str) -> list[str]:
        return listed(run_dir, state)

    done = [n[:-5] for n in names("done")]
    others = {s: names(s) for s in ("waiting", "queued", "running", "failed", "quarantine")}
    executions = collections.Counter()
    with open(ledger) as f:
        for line in f:
            executions[line.split()[0]] += 1
    completed_by = collections.Counter()
    unrecorded = torn = 0
    for job in done:
        try:
            with open(os.path.join(run_dir, "done", job + ".json"), "rb") as f:
                record = orjson.loads(f.read())
            tries = record["tries"]
            assert record["id"] == job and isinstance(tries, list)
        except (ValueError, KeyError, TypeError, AssertionError):
            torn += 1
            continue
        n = sum(1 for t in tries if t["status"] == "done")
        completed_by[n] += 1
        unrecorded += n == 0
    # Each successful completion is logged by its worker; a second completion of a job
    # would overwrite done/J.json and be invisible there, but not here.
    completions = collections.Counter()
    recovered = 0
    for name in os.listdir(logs):
        with open(os.path.join(logs, name), errors="replace") as f:
            for line in f:
                if " completed " in line:
                    completions[line.split(" completed ", 1)[1].split()[0]] += 1
                recovered += "stood still" in line and " placed in " in line
    checks = {
        f"every job in done/ ({len(done)} of {jobs})": len(done) == jobs and len(set(done)) == jobs,
        "nothing left in waiting/ queued/ running/ (claims or private folders) failed/":
            not any(others[s] for s in others if s != "quarantine"),
        "nothing in quarantine/ (0 records quarantined)": not others["quarantine"],
        f"no torn record ({torn} torn)": torn == 0,
        "every job executed at least once": all(executions[f"j{i:05d}"] >= 1 for i in range(jobs)),
        "no job recorded as completed by two tries": completed_by.keys() <= {0, 1},
        f"no job completed twice ({sum(completions.values())} completions logged)":
            max(completions.values(), default=0) <= 1,
    }
    hist = collections.Counter(executions.values())
    print(f"chaos: {workers} workers over {views} view(s) of the pool, {jobs} jobs, {elapsed:.0f} s")
    print("  blows: " + ", ".join(f"{k} {v}" for k, v in sorted(blows.items())))
    print("  executions per job: " + ", ".join(f"{k}x {v} jobs" for k, v in sorted(hist.items())))
    print(f"  private folders of stalled commits recovered by other workers: {recovered}")
    if unrecorded:
        print(f"  {unrecorded} done job(s) without the final try's record (worker killed between its two "
              f"completion renames)")
    for name, ok in checks.items():
        print(f"  {'ok  ' if ok else 'FAIL'} {name}")
    if any(others.values()):
        print("  left: " + ", ".join(f"{s}: {len(v)} ({' '.join(sorted(v)[:5])})" for s, v in others.items() if v))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
