"""POOL/workers/ holds no litter: probes go when their process exits, a tidy removes the rest."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from executioner import PoolLayout

from executioner.protocol import fsio
from executioner.liveness.clock import StorageClock, storage_now
from executioner.protocol.fsio import HOST, atomic_write_json
from executioner.liveness.tidy import Tidy, tidy_workers_dir
from executioner.liveness.watch import Watch

from .conftest import submit
from .test_faults import start_worker, wait_for


def probes(pool: Path) -> list[str]:
    return sorted(n for n in os.listdir(pool / "workers") if n.startswith(".probe-"))


def heartbeats(pool: Path) -> list[str]:
    return sorted(n for n in os.listdir(pool / "workers") if n.endswith(".json") and not n.startswith("."))


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def aged(path: Path, seconds: float, now: float) -> Path:
    path.touch()
    os.utime(path, (now - seconds, now - seconds))
    return path


@pytest.mark.timeout(180)
def test_many_short_lived_workers_leave_no_probe_and_no_heartbeat(pool: Path, make_workflow) -> None:
    run = submit(pool, make_workflow([{"id": "a", "command": "true"}]))
    # A finished run: each worker below looks at it, and reads the storage clock.
    assert start_worker(pool, "--exit-when-idle", "0.2").wait(timeout=60) == 0
    assert os.listdir(run.state_dir("done")) == ["a.json"]
    for batch in range(10):
        procs = [start_worker(pool, "--exit-when-idle", "0.2") for _ in range(5)]
        for proc in procs:
            assert proc.wait(timeout=60) == 0
    assert probes(pool) == [] and heartbeats(pool) == []
    # What a process that cannot run its exit handlers (killed, os._exit) leaves, a tidy removes.
    code = ("import os, sys; from executioner import PoolLayout; from executioner.liveness.clock import storage_now; "
            "storage_now(PoolLayout(sys.argv[1])); os._exit(0)")
    subprocess.run([sys.executable, "-c", code, str(pool)], check=True, timeout=60)
    [left] = probes(pool)
    layout = PoolLayout(str(pool))
    assert tidy_workers_dir(layout, Watch(), mono=0.0, now=storage_now(layout)) == [left]
    assert probes(pool) == [os.path.basename(layout.probe(HOST, os.getpid()))]  # ours, while we live


@pytest.mark.timeout(60)
def test_tidy_removes_the_heartbeats_of_killed_workers_and_keeps_live_ones(pool: Path, make_workflow) -> None:
    submit(pool, make_workflow([{"id": "a", "command": "true"}]))
    procs = [start_worker(pool, "--heartbeat", "0.5", "--stale-after", "3") for _ in range(3)]
    killed, survivor = procs[:2], procs[2]
    try:
        wait_for(lambda: len(heartbeats(pool)) == 3)
        for proc in killed:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        assert len(heartbeats(pool)) == 3  # what kill -9 leaves behind
        before = heartbeats(pool)
        [live] = [n for n in before if f"-{survivor.pid}-" in n]
        layout = PoolLayout(str(pool))
        removed = tidy_workers_dir(layout, Watch(), mono=0.0, now=storage_now(layout))
        assert sorted(n for n in removed if n.endswith(".json")) == sorted(set(before) - {live})
        assert heartbeats(pool) == [live]
        assert not [n for n in probes(pool) if n.endswith(tuple(f"-{p.pid}" for p in killed))]
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def test_other_hosts_heartbeats_are_removed_only_after_standing_still_for_an_hour_as_watched(pool: Path) -> None:
    layout = PoolLayout(str(pool))
    os.makedirs(layout.workers_dir)
    now = storage_now(layout)
    for name, beat in (("far-1", 10), ("far-2", 10), ("slow-1", 7200)):
        atomic_write_json(layout.heartbeat(name), {"worker": name, "host": "far-away-host", "pid": 1,
                                                   "pid_start": 1.0, "heartbeat": beat})
        os.utime(layout.heartbeat(name), (1.0, 1.0))  # a clock decades behind: means nothing by itself
    watch = Watch.shared(layout.workers_dir)
    assert tidy_workers_dir(layout, watch, mono=0.0, now=now) == []
    os.utime(layout.heartbeat("far-2"), (2.0, 2.0))  # far-2 beat meanwhile
    assert tidy_workers_dir(layout, watch, mono=1800.0, now=now) == []
    assert tidy_workers_dir(layout, watch, mono=3599.0, now=now) == []
    watch.save(3599.0, force=True)
    # a later process of this host goes on with the same observations
    assert tidy_workers_dir(layout, Watch.shared(layout.workers_dir), mono=3601.0, now=now) == ["far-1.json"]
    assert heartbeats(pool) == ["far-2.json", "slow-1.json"]
    assert tidy_workers_dir(layout, Watch.shared(layout.workers_dir), mono=5401.0, now=now) == ["far-2.json"]


def test_probes_watch_files_and_temp_files_are_removed_by_owner_and_age(pool: Path) -> None:
    layout = PoolLayout(str(pool))
    workers = pool / "workers"
    workers.mkdir(parents=True)
    now = storage_now(layout)
    watch = Watch.shared(layout.workers_dir)
    watch.still_for("x", 1.0, 0.0)
    watch.save(0.0, force=True)
    gone = dead_pid()
    litter = [aged(workers / ".probe-far-away-host-12", 3700, now),
              aged(workers / f".probe-{HOST}-{gone}", 5, now),
              aged(workers / ".watch-far-away-host-0123456789abcdef.json", 2 * 86400, now),
              aged(workers / f".watch-{HOST}-earlierboot0000.json", 2 * 86400, now),
              aged(workers / f".tmp-{HOST}-{gone}-abcd", 5, now),
              aged(workers / ".tmp-far-away-host-7-abcd", 4000, now)]
    kept = [aged(workers / ".probe-far-away-host-13", 10, now),
            aged(workers / ".watch-far-away-host-fedcba9876543210.json", 3600, now),
            aged(workers / ".tmp-far-away-host-8-abcd", 10, now)]
    assert watch.path is not None
    os.utime(watch.path, (now - 3 * 86400, now - 3 * 86400))  # ours: kept however old
    removed = tidy_workers_dir(layout, watch, mono=0.0, now=now)
    assert sorted(removed) == sorted(p.name for p in litter)
    assert all(p.exists() for p in kept) and os.path.exists(watch.path)
    assert probes(pool) == sorted([".probe-far-away-host-13", os.path.basename(layout.probe(HOST, os.getpid()))])


def test_tidy_runs_at_most_every_few_minutes_and_reads_the_clock_only_then(pool: Path) -> None:
    layout = PoolLayout(str(pool))
    os.makedirs(layout.workers_dir)
    reads: list[float] = []

    def now() -> float:
        reads.append(1.0)
        return storage_now(layout)

    tidy = Tidy(layout, every=300)
    aged(pool / "workers" / ".probe-far-away-host-12", 3700, storage_now(layout))
    assert tidy.maybe(Watch(), 0.0, now) == [".probe-far-away-host-12"]
    aged(pool / "workers" / ".probe-far-away-host-14", 3700, storage_now(layout))
    assert tidy.maybe(Watch(), 299.0, now) == [] and len(reads) == 1
    assert tidy.maybe(Watch(), 300.0, now) == [".probe-far-away-host-14"] and len(reads) == 2


def test_storage_clock_reads_the_probe_once_a_minute(pool: Path, monkeypatch) -> None:
    import executioner.liveness.clock as clock

    layout = PoolLayout(str(pool))
    touches: list[float] = []
    wall, mono = [1000.0], [0.0]

    def fake_storage_now(p: PoolLayout) -> float:
        touches.append(wall[0])
        return wall[0] + 3600.0  # the storage's clock is an hour ahead of ours

    monkeypatch.setattr(clock, "storage_now", fake_storage_now)
    c = StorageClock(layout, wall=lambda: wall[0], mono=lambda: mono[0])
    assert c.now() == 4600.0
    for step in range(59):
        wall[0] += 1.0
        mono[0] += 1.0
        assert c.now() == wall[0] + 3600.0
    assert len(touches) == 1
    wall[0] += 1.0
    mono[0] += 1.0
    assert c.now() == wall[0] + 3600.0 and len(touches) == 2


def test_storage_clock_agrees_with_the_probe(pool: Path) -> None:
    layout = PoolLayout(str(pool))
    c = StorageClock(layout)
    assert abs(c.now() - storage_now(layout)) < 1.0
    assert abs(c.now() - time.time()) < 5.0  # a local disk: the storage's clock is ours
    os.unlink(layout.probe(fsio.HOST, os.getpid()))  # a tidy removed it: made again
    assert abs(storage_now(layout) - time.time()) < 5.0
