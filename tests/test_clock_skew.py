"""Workers whose clocks are an hour off (libfaketime) beside one with the right time."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from executioner.protocol.fsio import read_json

from .conftest import files, submit

WORKER = "import sys; from executioner.cli import worker_main; sys.exit(worker_main(sys.argv[1:]))"
LIBFAKETIME = next((p for p in glob.glob("/usr/lib/*/faketime/libfaketime.so.1") + glob.glob("/usr/lib/faketime/libfaketime.so.1")), None)
pytestmark = pytest.mark.skipif(LIBFAKETIME is None,
                                reason="needs libfaketime (Debian package faketime; .ci/run installs it)")


def worker(pool: Path, skew: str | None, host: str, *args: str) -> subprocess.Popen[bytes]:
    # A different host name for each: the same-host shortcut (pid gone) must not apply.
    cmd = [sys.executable, "-c", WORKER, "--pool", str(pool), "-q", "--heartbeat", "0.5",
           "--stale-after", "4", *args]
    env = {**os.environ, "EXEC_HOSTNAME": host}
    if skew:
        # Preloaded directly (the faketime command forks, so a signal would miss the worker).
        # A skewed node has a wrong wall clock and a working monotonic clock; libfaketime
        # would otherwise shift the monotonic clock too, and every timed wait in the
        # process (pthread) would then sleep an hour.
        env.update(LD_PRELOAD=str(LIBFAKETIME), FAKETIME=skew, FAKETIME_DONT_FAKE_MONOTONIC="1")
    return subprocess.Popen(cmd, env=env)


def claims_by_host(run) -> dict[str, str]:
    out = {}
    for name in os.listdir(run.state_dir("running")):
        job = name.split("@")[0]
        try:
            record = read_json(os.path.join(run.state_dir("running"), name))
            out[job] = read_json(run.claim_record(job, len(record["tries"]) + 1))["host"]
        except (OSError, ValueError):
            pass
    return out


def wait_until(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.timeout(120)
def test_skewed_workers_keep_their_jobs_and_a_killed_one_is_requeued_in_time(pool: Path, make_workflow) -> None:
    run = submit(pool, make_workflow([
        {"id": "ahead", "command": "sleep 12"},
        {"id": "behind", "command": "sleep 12"},
        {"id": "victim", "command": 'if [ "$EXEC_TRY" = 1 ]; then sleep 60; fi'},
    ]))
    ahead = worker(pool, "+1h", "host-ahead", "-j", "2")
    behind = worker(pool, "-1h", "host-behind")
    wait_until(lambda: len(claims_by_host(run)) == 3)
    # a worker with the right clock joins; it reaps the others' claims continuously
    honest = worker(pool, None, "host-honest", "--exit-when-idle", "1")
    hosts = claims_by_host(run)
    victim_host = hosts["victim"]
    killed = ahead if victim_host == "host-ahead" else behind
    time.sleep(5)  # longer than stale-after: live claims must survive it (not waiting for staleness)
    assert len(claims_by_host(run)) == 3, "a live claim of a skewed worker was requeued"
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    t = time.monotonic()
    wait_until(lambda: os.path.exists(run.job("victim", "queued")) or
               read_json_or_none(run.job("victim", "done")) is not None or "victim" not in claims_by_host(run))
    requeued_after = time.monotonic() - t
    assert requeued_after <= 4 + 0.5 + 3.0, requeued_after  # stale-after plus a beat, plus polling slack
    wait_until(lambda: len(files(run, "done")) == 3, timeout=60)
    for job in ("ahead", "behind"):
        statuses = [t["status"] for t in read_json(run.job(job, "done"))["tries"]]
        expected = ["lost", "done"] if hosts[job] == victim_host else ["done"]  # lost with the killed worker
        assert statuses == expected, (job, hosts, statuses)
    assert [t["status"] for t in read_json(run.job("victim", "done"))["tries"]] == ["lost", "done"]
    for p in (ahead, behind, honest):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=20)


def read_json_or_none(path: str):
    try:
        return read_json(path)
    except (OSError, ValueError):
        return None
