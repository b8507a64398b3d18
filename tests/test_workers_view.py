"""exec-status POOL --workers: every worker seen in the pool (host, pid, runs, what it holds,
capacity, last heartbeat, alive or dead); a day-old dead heartbeat is tidied away; a worker's
log says how every try it ends ended."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from executioner import PoolLayout
from executioner.liveness.clock import storage_now
from executioner.liveness.tidy import tidy_workers_dir
from executioner.liveness.watch import Watch
from executioner.protocol.fsio import HOST, atomic_write_json

from .conftest import cli, submit
from .test_faults import WORKER, fake_remote_claim, start_worker, wait_for


def test_workers_lists_live_and_dead_workers_with_what_they_hold(pool: Path, make_workflow) -> None:
    run = submit(pool, make_workflow([{"id": "a", "command": "sleep 30"}, {"id": "b", "command": "true"}]))
    layout = PoolLayout(str(pool))
    fake_remote_claim(pool, run, "b", worker="far-1-abcd", host="far-away-host")
    os.utime(layout.heartbeat("far-1-abcd"), (storage_now(layout) - 600,) * 2)  # stood still 10 min: dead
    atomic_write_json(layout.heartbeat("old-2-ffff"), {"worker": "old-2-ffff", "host": "h2", "pid": 5,
                                                      "pid_start": 1.0, "runs": ["other-0001"]})  # no capacity: old
    proc = start_worker(pool, "--cpus", "2", "--tags", "big,fast", "--heartbeat", "1", "--stale-after", "5")
    try:
        wait_for(lambda: any(n.startswith("a@") for n in os.listdir(run.state_dir("running"))))
        out = cli("exec-status", str(pool), "--workers", "--json")
        assert out.returncode == 0, out.stderr
        rows = {w["worker"]: w for w in json.loads(out.stdout)["workers"]}
        live = next(w for w in rows.values() if w["pid"] == proc.pid)
        assert live["host"] == HOST and live["alive"] is True and live["runs"] is None
        assert live["capacity"]["cpus"] == 2 and live["capacity"]["tags"] == ["big", "fast"]
        assert live["holds"] == [{"run": run.run_id, "job": "a", "try": 1}]
        assert 0 <= live["last_beat"] < 5
        far = rows["far-1-abcd"]
        assert far["alive"] is False and far["last_beat"] >= 599 and "no heartbeat for" in far["why"]
        assert far["holds"] == [{"run": run.run_id, "job": "b", "try": 1}]
        old = rows["old-2-ffff"]
        assert old["capacity"] is None and old["runs"] == ["other-0001"]
        text = cli("exec-status", str(pool), "--workers")
        assert text.returncode == 0, text.stderr
        line = next(x for x in text.stdout.splitlines() if str(proc.pid) in x)
        assert "alive" in line and f"{run.run_id}/a (try 1)" in line and "2 cpus" in line and "tags big,fast" in line
        far_line = next(x for x in text.stdout.splitlines() if "far-1-abcd" in x)
        assert "dead" in far_line and "far-away-host" in far_line
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def test_dead_heartbeats_older_than_a_day_are_left_out_unless_all(pool: Path) -> None:
    """The view writes nothing (a read-only pool works): workers' tidy removes dead heartbeats
    (see executioner.liveness.tidy); until one runs, a day-old dead one is only hidden."""
    layout = PoolLayout(str(pool))
    os.makedirs(layout.workers_dir)
    now = storage_now(layout)
    for name, age in (("gone-1", 2 * 86400), ("recent-1", 3600)):
        atomic_write_json(layout.heartbeat(name), {"worker": name, "host": "far-away-host", "pid": 1,
                                                   "pid_start": 1.0, "heartbeat": 10})
        os.utime(layout.heartbeat(name), (now - age, now - age))
    out = cli("exec-status", str(pool), "--workers", "--json")
    assert [w["worker"] for w in json.loads(out.stdout)["workers"]] == ["recent-1"]
    text = cli("exec-status", str(pool), "--workers").stdout
    assert "recent-1" in text and "gone-1" not in text and "1 dead worker last seen more than a day ago" in text
    out = cli("exec-status", str(pool), "--workers", "--json", "--all")
    assert [w["worker"] for w in json.loads(out.stdout)["workers"]] == ["gone-1", "recent-1"]
    assert sorted(n for n in os.listdir(layout.workers_dir) if not n.startswith(".")) == ["gone-1.json", "recent-1.json"]
    # a worker's tidy removes both: they have stood still for an hour as watched
    watch = Watch()
    assert tidy_workers_dir(layout, watch, mono=0.0, now=now) == []
    assert sorted(tidy_workers_dir(layout, watch, mono=3601.0, now=now)) == ["gone-1.json", "recent-1.json"]


def test_workers_of_an_empty_pool_and_bad_flags(pool: Path, make_workflow) -> None:
    submit(pool, make_workflow([{"id": "a", "command": "true"}]))
    out = cli("exec-status", str(pool), "--workers")
    assert out.returncode == 0 and "no worker" in out.stdout
    out = cli("exec-status", str(pool), "--workers", "--joblog")
    assert out.returncode == 2 and "--workers" in out.stderr
    out = cli("exec-status", str(pool / "nosuch"), "--workers")
    assert out.returncode == 2 and "Traceback" not in out.stderr


def test_a_workers_log_says_how_every_try_it_ends_ended(pool: Path, make_workflow) -> None:
    run = submit(pool, make_workflow([
        {"id": "ok", "command": "true"},
        {"id": "twice", "command": "exit 3", "max_retries": 1},
        {"id": "slow", "command": "sleep 30"}]))
    proc = subprocess.Popen([sys.executable, "-c", WORKER, "--pool", str(pool), "-j", "3", "--heartbeat", "1",
                             "--stale-after", "5"], stderr=subprocess.PIPE)
    wait_for(lambda: os.listdir(run.state_dir("failed")) == ["twice.json"]
             and any(n.startswith("slow@") for n in os.listdir(run.state_dir("running"))), timeout=30)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    lines = err.decode().splitlines()

    def said(*words: str) -> bool:
        return any(all(w in line for w in words) for line in lines)
    assert said("completed ok of run", "try 1"), lines
    assert said("failed twice of run", "try 1", "exit code 3", "retry"), lines
    assert said("failed twice of run", "try 2", "exit code 3", "retries"), lines
    assert said("preempted slow of run", "try 1", "queued"), lines
