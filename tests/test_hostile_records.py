"""Issue 10, the read side: files in a run that a reader cannot use.

A job file nobody can read (EACCES), a valid-JSON record of the wrong shape, a huge sparse
file, a run.json of the wrong shape, and their siblings (attempt records, claim locks,
heartbeat files, coordinator.json). Whatever a worker cannot use is quarantined with the
reason; a view shows it (or the run as ``corrupt``) instead of a traceback; one bad record
never stops a pass over the others.

EACCES, as root: mode 000 does not stop root, whose CAP_DAC_OVERRIDE and
CAP_DAC_READ_SEARCH skip the permission bits. The commands are therefore run as a
subprocess whose capability bounding set lacks both (``setpriv --bounding-set``): still
uid 0, but held to the mode bits like any user. In-process (Worker, Reaper), EACCES is
simulated by making ``os.open`` of that one file raise PermissionError.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from executioner import PoolLayout, RunLayout
from executioner.liveness.reap import Reaper
from executioner.protocol import fsio, store

from .conftest import cli, files, submit, work

PEEK = {"exec-submit": "submit_main", "exec-worker": "worker_main", "exec-status": "status_main"}


def cli_held_to_modes(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """A command run so that file modes bind it (see the module docstring)."""
    prog, *rest = args
    code = f"import sys; from executioner.cli import {PEEK[prog]}; sys.exit({PEEK[prog]}(sys.argv[1:]))"
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: mode 000 cannot be made to bind")
        prefix = [setpriv, "--bounding-set=-dac_override,-dac_read_search"]
    return subprocess.run([*prefix, sys.executable, "-c", code, *rest], capture_output=True, text=True,
                          timeout=timeout)


def unreadable(monkeypatch: pytest.MonkeyPatch, *paths: str) -> None:
    """In-process: opening any of ``paths`` fails with EACCES, as a mode-000 file does for a user."""
    real = os.open
    blocked = {os.path.abspath(p) for p in paths}

    def guarded(path: Any, flags: int, *a: Any, **kw: Any) -> int:
        if isinstance(path, str) and os.path.abspath(path) in blocked:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        return real(path, flags, *a, **kw)

    monkeypatch.setattr(os, "open", guarded)


def reasons(run) -> str:
    q = Path(run.quarantine_dir)
    return "".join(p.read_text() for p in sorted(q.glob("*.reason"))) if q.exists() else ""


def three_jobs(pool: Path, make_workflow, name: str = "wf"):
    return submit(pool, make_workflow([{"id": j, "command": "true"} for j in ("a", "b", "c")], name=name))


def no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, result.stderr


def claim_for(run, job_id: str, worker: str = "gone-worker") -> store.Claim:
    claim = store.claim(run, job_id, store.Owner("w-" + worker, "elsewhere", 999999, 1.0))
    assert claim is not None
    store.write_lock(claim)
    return claim


# ---- records of the wrong shape ----------------------------------------------------------
def _set(path: str, **changes: Any) -> None:
    record = json.loads(Path(path).read_text())
    for key, value in changes.items():
        if "." in key:
            outer, inner = key.split(".")
            record[outer][inner] = value
        else:
            record[key] = value
    Path(path).write_text(json.dumps(record))


def assert_rebuilt(run: RunLayout, job: str) -> None:
    """The quarantined job was rebuilt from the workflow by the worker (which waits for that
    before an idle exit) and ran once, its first try ``lost`` naming the quarantine."""
    assert files(run, "done") == ["a.json", "b.json", "c.json"] and files(run, "running") == []
    lost, done = json.loads(Path(run.job(job, "done")).read_text())["tries"]
    assert lost["status"] == "lost" and "quarantined" in lost["reason"] and done["status"] == "done"


WRONG_SHAPES = [
    pytest.param({"tries": [None]}, "tries", id="tries-null"),
    pytest.param({"tries": [{"status": 5}]}, "tries", id="try-status-int"),
    pytest.param({"tries": [{"status": "failed", "start": "yesterday"}]}, "tries", id="try-start-text"),
    pytest.param({"tries": [{"status": "failed", "stdout": 7}]}, "tries", id="try-stdout-int"),
    pytest.param({"spec.command": 5}, "command", id="command-int"),
    pytest.param({"spec.env": "PATH=/x"}, "env", id="env-text"),
    pytest.param({"spec.timeout": "1h"}, "timeout", id="timeout-text"),
    pytest.param({"spec.retry_on_status": "failed"}, "retry_on_status", id="retry-on-status-text"),
    pytest.param({"spec.outputs": [1]}, "outputs", id="outputs-int"),
    pytest.param({"dependencies": [1]}, "dependencies", id="dependency-int"),
    pytest.param({"dependents": "c"}, "dependents", id="dependents-text"),
    pytest.param({"attempt": "one"}, "attempt", id="attempt-text"),
    pytest.param({"not_before": "soon"}, "not_before", id="not-before-text"),
    pytest.param({"skipped": "yes"}, "skipped", id="skipped-text"),
    pytest.param({"held": "no"}, "held", id="held-text"),
    pytest.param({"slurm": "123"}, "slurm", id="slurm-text"),
]


@pytest.mark.parametrize("changes,key", WRONG_SHAPES)
def test_a_queued_record_of_the_wrong_shape_is_quarantined_not_an_internal_error(
        pool: Path, make_workflow, changes: dict[str, Any], key: str) -> None:
    run = three_jobs(pool, make_workflow)
    _set(run.job("b", "queued"), **changes)
    work(pool, run, slots=1)
    assert_rebuilt(run, "b")
    assert files(run, "failed") == [] and files(run, "queued") == [], "no internal error, no failed job"
    why = reasons(run)
    assert "b@" in why and key in why and "internal error" not in why


@pytest.mark.parametrize("changes,key", WRONG_SHAPES)
def test_exec_status_shows_a_record_of_the_wrong_shape_without_a_traceback(
        pool: Path, make_workflow, changes: dict[str, Any], key: str) -> None:
    run = three_jobs(pool, make_workflow)
    work(pool, run, slots=1)
    _set(run.job("b", "done"), **changes)
    for args in ((str(pool),), (str(pool), run.run_id), (str(pool), run.run_id, "--attempts"),
                 (str(pool), run.run_id, "--json")):
        result = cli("exec-status", *args)
        no_traceback(result)
        assert result.returncode == 0, result.stderr
    rows = {j["id"]: j for j in json.loads(cli("exec-status", run.root, "--json").stdout)["jobs"]}
    assert rows["a"]["state"] == "done" and rows["b"]["reason"] and key in rows["b"]["reason"]
    job = cli("exec-status", str(pool), run.run_id, "--job", "b")
    no_traceback(job)
    assert job.returncode == 2 and len(job.stderr.splitlines()) == 1 and key in job.stderr


@pytest.mark.parametrize("changes,key", WRONG_SHAPES[:6])
def test_a_claim_of_the_wrong_shape_never_stops_the_reaper(pool: Path, make_workflow, changes, key) -> None:
    """A dead worker's two claims: one record of the wrong shape. The good one is requeued,
    the bad one quarantined once it has stood still for stale_after; no pass raises."""
    run = three_jobs(pool, make_workflow)
    bad, _ = claim_for(run, "a"), claim_for(run, "b")
    _set(bad.path, **changes)
    reaper = Reaper(PoolLayout(str(pool)), stale_after=60)
    assert reaper.reap(run, mono=0) == []
    assert reaper.reap(run, mono=61) == ["b"]
    assert files(run, "queued") == ["b.json", "c.json"] and files(run, "running") == []
    assert "a@" in reasons(run) and key in reasons(run)


def test_a_promotion_skips_a_waiting_record_of_the_wrong_shape(pool: Path, make_workflow) -> None:
    run = submit(pool, make_workflow([{"id": "a", "command": "true"},
                                      {"id": "b", "command": "true", "dependencies": ["a"]},
                                      {"id": "c", "command": "true", "dependencies": ["a"]}]))
    _set(run.job("b", "waiting"), dependencies=[None])
    work(pool, run, slots=1)
    assert_rebuilt(run, "b")
    assert "dependencies" in reasons(run)


# ---- files nobody may read (EACCES) -------------------------------------------------------
def test_an_unreadable_queued_job_is_quarantined_and_the_rest_runs(pool: Path, make_workflow, monkeypatch) -> None:
    run = three_jobs(pool, make_workflow)
    # the claim renames it into running/<b>@<token>.json: block every path of job b
    real = os.open

    def guarded(path: Any, flags: int, *a: Any, **kw: Any) -> int:
        if isinstance(path, str) and os.path.basename(path).startswith("b@") and not flags & os.O_CREAT:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        return real(path, flags, *a, **kw)

    monkeypatch.setattr(os, "open", guarded)
    work(pool, run, slots=1)
    assert files(run, "running") == [] and "b@" in reasons(run) and "Permission denied" in reasons(run)
    # every rebuilt b is refused again (the name stays unreadable): after max_lost (3)
    # quarantines it fails for good instead of being rebuilt for ever, and the rest ran
    assert files(run, "done") == ["a.json", "c.json"] and files(run, "failed") == ["b.json"]
    failed = json.loads(Path(run.job("b", "failed")).read_text())
    assert failed["reason"].startswith("its file was quarantined 3 times (max_lost 3)"), failed["reason"]


def test_an_unreadable_claim_is_quarantined_and_the_other_claims_requeued(
        pool: Path, make_workflow, monkeypatch) -> None:
    run = three_jobs(pool, make_workflow)
    bad, _ = claim_for(run, "a"), claim_for(run, "b")
    unreadable(monkeypatch, bad.path)
    reaper = Reaper(PoolLayout(str(pool)), stale_after=60)
    assert reaper.reap(run, mono=0) == []
    assert reaper.reap(run, mono=61) == ["b"]
    monkeypatch.undo()
    assert files(run, "running") == [] and "a@" in reasons(run) and "Permission denied" in reasons(run)


def test_exec_worker_quarantines_a_mode_000_job_file(pool: Path, make_workflow) -> None:
    run = three_jobs(pool, make_workflow)
    os.chmod(run.job("b", "queued"), 0)
    result = cli_held_to_modes("exec-worker", "--pool", str(pool), "--exit-when-idle", "3", "-q")
    no_traceback(result)
    assert result.returncode == 0, result.stderr
    assert files(run, "running") == [] and "Permission denied" in reasons(run)
    # then, missing from every folder, it is rebuilt from the workflow with a lost try saying why
    assert files(run, "done") == ["a.json", "b.json", "c.json"]
    first = json.loads(Path(run.job("b", "done")).read_text())["tries"][0]
    assert first["status"] == "lost" and "Permission denied" in first["reason"]


def test_exec_status_shows_a_mode_000_job_file(pool: Path, make_workflow) -> None:
    run = three_jobs(pool, make_workflow)
    os.chmod(run.job("b", "queued"), 0)
    result = cli_held_to_modes("exec-status", run.root, "--json")
    no_traceback(result)
    rows = {j["id"]: j for j in json.loads(result.stdout)["jobs"]}
    assert rows["b"]["state"] == "queued" and "Permission denied" in rows["b"]["reason"]


# ---- huge files -----------------------------------------------------------------------------
def _sparse(path: str, size: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(size)


def test_a_huge_sparse_job_file_is_refused_unread(pool: Path, make_workflow, monkeypatch) -> None:
    """3 GB (sparse: no disk used) in queued/, and a 20 MB one in done/ (over the job
    record cap, under the general one): nothing reads them whole."""
    run = three_jobs(pool, make_workflow)
    work(pool, run, slots=1)
    for j in ("a", "b"):
        os.rename(run.job(j, "done"), run.job(j, "queued"))
    _sparse(run.job("b", "queued"), 3 << 30)
    _sparse(run.job("c", "done"), 20 << 20)
    reads = []
    real_read = os.read

    def counted(fd: int, n: int) -> bytes:
        if os.fstat(fd).st_size > 16 << 20:
            reads.append(n)
        return real_read(fd, n)

    monkeypatch.setattr(os, "read", counted)
    start = time.monotonic()
    status = cli("exec-status", run.root, "--json")
    no_traceback(status)
    rows = {j["id"]: j for j in json.loads(status.stdout)["jobs"]}
    assert "too large" in rows["b"]["reason"] and "too large" in rows["c"]["reason"]
    from executioner.protocol.scrub import Scrubber

    work(pool, run, slots=1)
    Scrubber().scrub(run, time.time())
    assert time.monotonic() - start < 30
    assert reads == [], "the big files were read"
    assert files(run, "done") == ["a.json", "b.json"] and files(run, "queued") == []  # b rebuilt
    assert reasons(run).count("too large") == 2


# ---- run.json of the wrong shape ---------------------------------------------------------------
RUN_SHAPES = [
    pytest.param("[1, 2]", id="list"),
    pytest.param({"workdir": 5}, id="workdir-int"),
    pytest.param({"env": "PATH=/x"}, id="env-text"),
    pytest.param({"jobs": "many"}, id="jobs-text"),
    pytest.param({"backend": 5}, id="backend-int"),
    pytest.param({"attempt": [1]}, id="attempt-list"),
    pytest.param({"name": {"x": 1}}, id="name-dict"),
]


def _break_run_record(run, shape: Any) -> None:
    if isinstance(shape, str):
        Path(run.record).write_text(shape)
    else:
        _set(run.record, **shape)


@pytest.mark.parametrize("shape", RUN_SHAPES)
def test_a_run_record_of_the_wrong_shape_shows_as_corrupt(pool: Path, make_workflow, shape) -> None:
    bad = three_jobs(pool, make_workflow, name="bad")
    good = three_jobs(pool, make_workflow, name="good")
    _break_run_record(bad, shape)
    work(pool)
    assert files(good, "done") == ["a.json", "b.json", "c.json"] and files(bad, "queued") == [
        "a.json", "b.json", "c.json"]
    pool_view = cli("exec-status", str(pool), "--json")
    no_traceback(pool_view)
    runs = {r["run_id"]: r for r in json.loads(pool_view.stdout)["runs"]}
    assert runs[bad.run_id]["state"] == "corrupt" and "run.json" in runs[bad.run_id]["reason"]
    assert runs[good.run_id]["state"] == "done"
    for args in ((str(pool),), (bad.root,), (bad.root, "--json"), (str(pool), bad.run_id, "--attempts")):
        result = cli("exec-status", *args)
        no_traceback(result)
        assert result.returncode in (0, 2), result.stderr
    assert "corrupt" in cli("exec-status", bad.root).stdout


@pytest.mark.parametrize("shape", RUN_SHAPES)
def test_resume_of_a_run_whose_run_record_is_corrupt_says_so(pool: Path, make_workflow, shape) -> None:
    run = three_jobs(pool, make_workflow)
    _break_run_record(run, shape)
    before = sorted(os.listdir(run.root))
    for extra in (("--dry-run",), ()):
        result = cli("exec-submit", "--pool", str(pool), "--resume", run.run_id, *extra)
        no_traceback(result)
        assert result.returncode == 2, result.stderr
        [line] = result.stderr.splitlines()
        assert "run.json" in line and "corrupt" in line
    assert sorted(os.listdir(run.root)) == before


def test_a_reaper_pass_goes_on_past_a_run_whose_record_is_corrupt(pool: Path, make_workflow) -> None:
    """A claim that must fail (max_lost reached) in a run whose run.json is of the wrong shape."""
    run = submit(pool, make_workflow([{"id": "a", "command": "true", "max_lost": 1}, {"id": "b", "command": "true"}]))
    claim_for(run, "a"), claim_for(run, "b")
    _set(run.record, backend=["slurm"])
    reaper = Reaper(PoolLayout(str(pool)), stale_after=60)
    assert reaper.reap(run, mono=0) == []
    assert sorted(reaper.reap(run, mono=61)) == ["a", "b"]
    assert files(run, "failed") == ["a.json"] and files(run, "queued") == ["b.json"]


# ---- siblings ---------------------------------------------------------------------------------
@pytest.mark.parametrize("lock", [
    pytest.param([1, 2], id="list"),
    pytest.param({"pid": "x", "host": 5, "try": "one", "worker": ["w"]}, id="wrong-types"),
    # RACE: a lock is written in place after its O_EXCL creation (store.write_lock): a reader
    # can find it empty or torn, and must take it for no lock yet
    pytest.param("", id="empty-being-written"),
    pytest.param('{"job": "a", "try": 1, "tok', id="torn-being-written"),
])
def test_a_claim_lock_of_the_wrong_shape_is_judged_as_never_locked(pool: Path, make_workflow, lock) -> None:
    run = three_jobs(pool, make_workflow)
    bad, _ = claim_for(run, "a"), claim_for(run, "b")
    if isinstance(lock, str):
        Path(bad.lock).write_text(lock)
    else:
        content = lock if isinstance(lock, list) else {**json.loads(Path(bad.lock).read_text()), **lock}
        Path(bad.lock).write_text(json.dumps(content))
    reaper = Reaper(PoolLayout(str(pool)), stale_after=60)
    assert reaper.reap(run, mono=0) == []
    assert sorted(reaper.reap(run, mono=61)) == ["a", "b"]
    assert files(run, "running") == [] and files(run, "queued") == ["a.json", "b.json", "c.json"]
    status = cli("exec-status", run.root)
    no_traceback(status)


@pytest.mark.parametrize("record", [
    pytest.param([1], id="list"),
    pytest.param({"attempt": "one", "plan": "x", "flags": [1], "changes": 5, "time": "noon"}, id="wrong-types"),
    pytest.param({"plan": [None, 5, {"job": 1}], "workflow_copy": 7}, id="wrong-plan"),
    pytest.param({"flags": {"from_job": 5, "rollback_to": [1]}}, id="wrong-flags"),
    pytest.param({"time": 1e300}, id="time-out-of-range"),
])
def test_an_attempt_record_of_the_wrong_shape(pool: Path, make_workflow, record) -> None:
    run = three_jobs(pool, make_workflow)
    path = Path(run.attempt_record(1))
    content = record if isinstance(record, list) else {**json.loads(path.read_text()), **record}
    path.write_text(json.dumps(content))
    for args in ((run.root,), (run.root, "--attempts"), (run.root, "--job", "a")):
        result = cli("exec-status", *args)
        no_traceback(result)
        assert result.returncode == 0, result.stderr
    dry = cli("exec-submit", "--pool", str(pool), "--resume", run.run_id, "--dry-run")
    no_traceback(dry)
    assert dry.returncode in (0, 2), dry.stderr
    assert len(dry.stderr.splitlines()) <= 1
    work(pool, run, slots=1)
    assert files(run, "done") == ["a.json", "b.json", "c.json"]


@pytest.mark.parametrize("info", [
    pytest.param([1], id="list"),
    pytest.param({"pid": "x", "host": 5, "since": "noon", "user": ["u"], "action": 3, "pid_start": "y"},
                 id="wrong-types"),
])
def test_a_coordinator_record_of_the_wrong_shape(pool: Path, make_workflow, info) -> None:
    run = three_jobs(pool, make_workflow)
    Path(run.coordinator_lock).write_text("")
    Path(run.coordinator_info).write_text(json.dumps(info))
    os.makedirs(run.staging("x"))  # something staged: status describes the holder
    os.rename(run.job("a", "queued"), run.staged("x", "a", "queued"))
    for args in ((str(pool),), (run.root,), (run.root, "--attempts")):
        result = cli("exec-status", *args)
        no_traceback(result)
        assert result.returncode == 0, result.stderr
    resume = cli("exec-submit", "--pool", str(pool), "--resume", run.run_id, "--dry-run")
    no_traceback(resume)


@pytest.mark.parametrize("beat", [
    pytest.param([1], id="list"),
    pytest.param({"stale_after": "x", "heartbeat": [1], "pid": "p", "host": 5, "pid_start": "s"}, id="wrong-types"),
])
def test_a_heartbeat_file_of_the_wrong_shape(pool: Path, make_workflow, beat) -> None:
    run = three_jobs(pool, make_workflow)
    claim_for(run, "a", worker="odd")
    fsio.atomic_write_json(PoolLayout(str(pool)).heartbeat("w-odd"), beat)
    reaper = Reaper(PoolLayout(str(pool)), stale_after=60)
    assert reaper.reap(run, mono=0) == []
    assert reaper.reap(run, mono=61) == ["a"]
    from executioner.liveness.tidy import tidy_workers_dir
    from executioner.liveness.watch import Watch

    tidy_workers_dir(PoolLayout(str(pool)), Watch(), 0.0, time.time(), 60.0, {})


def test_a_damaged_workflow_copy_makes_resume_say_so(pool: Path, make_workflow) -> None:
    run = three_jobs(pool, make_workflow)
    for path in Path(run.root).rglob("*.yaml"):
        path.write_bytes(b"jobs: [unclosed\n")
    result = cli("exec-submit", "--pool", str(pool), "--resume", run.run_id, "--dry-run")
    no_traceback(result)
    assert result.returncode == 2 and "yaml" in result.stderr.lower()


# ---- one bad entry never stops a pass ------------------------------------------------------------
def _refuse_renames_of(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    real = os.rename

    def rename(src: Any, dst: Any) -> None:
        if os.path.basename(str(src)) == name and "quarantine" in str(dst):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), src)
        real(src, dst)

    monkeypatch.setattr(os, "rename", rename)


def test_a_sweep_goes_on_past_a_file_it_cannot_quarantine(pool: Path, make_workflow, monkeypatch) -> None:
    run = submit(pool, make_workflow([{"id": "a", "command": "true"},
                                      {"id": "b", "command": "true", "dependencies": ["a"]},
                                      {"id": "c", "command": "true", "dependencies": ["a"]},
                                      {"id": "d", "command": "true", "dependencies": ["a"]}]))
    os.rename(run.job("a", "queued"), run.job("a", "done"))
    _set(run.job("b", "waiting"), tries=[None])
    _set(run.job("c", "waiting"), tries=[None])
    _refuse_renames_of(monkeypatch, "b.json")
    assert store.sweep(run) == ["d"]
    assert files(run, "waiting") == ["b.json"] and "c.json" in reasons(run).replace("waiting/", "")


def test_a_scrub_goes_on_past_a_file_it_cannot_quarantine(pool: Path, make_workflow, monkeypatch) -> None:
    from executioner.protocol.scrub import Scrubber

    run = three_jobs(pool, make_workflow)
    work(pool, run, slots=1)
    _set(run.job("a", "done"), tries=[None])
    _set(run.job("b", "done"), tries=[None])
    _refuse_renames_of(monkeypatch, "a.json")
    assert [os.path.basename(p) for p in Scrubber().scrub(run, time.time())] == ["b.json"]
    assert files(run, "done") == ["a.json", "c.json"]


def test_the_pool_view_goes_on_past_a_run_it_cannot_read(pool: Path, make_workflow) -> None:
    bad = three_jobs(pool, make_workflow, name="bad")
    good = three_jobs(pool, make_workflow, name="good")
    shutil.rmtree(bad.state_dir("running"))
    result = cli("exec-status", str(pool), "--json")
    no_traceback(result)
    assert result.returncode == 0, result.stderr
    runs = {r["run_id"]: r for r in json.loads(result.stdout)["runs"]}
    assert runs[bad.run_id]["state"] == "corrupt" and "state folders" in runs[bad.run_id]["reason"]
    assert runs[good.run_id]["state"] == "running"


def test_a_mode_000_run_record_shows_the_run_as_corrupt(pool: Path, make_workflow) -> None:
    bad = three_jobs(pool, make_workflow, name="bad")
    good = three_jobs(pool, make_workflow, name="good")
    os.chmod(bad.record, 0)
    result = cli_held_to_modes("exec-status", str(pool), "--json")
    no_traceback(result)
    runs = {r["run_id"]: r for r in json.loads(result.stdout)["runs"]}
    assert runs[bad.run_id]["state"] == "corrupt" and "Permission denied" in runs[bad.run_id]["reason"]
    assert runs[good.run_id]["state"] == "running"
    resume = cli_held_to_modes("exec-submit", "--pool", str(pool), "--resume", bad.run_id, "--dry-run")
    no_traceback(resume)
    assert resume.returncode == 2 and "Permission denied" in resume.stderr and len(resume.stderr.splitlines()) == 1


@pytest.mark.parametrize("command", [
    pytest.param("true " + "x" * 1_100_000, id="string"),
    pytest.param(["true", *["x" * 900_000] * 5], id="list"),
])
def test_a_command_no_job_record_could_hold_is_refused_at_submit(pool: Path, tmp_path: Path, command) -> None:
    """A job record is capped at 16 MB when read; a command that would make one that large
    (Linux runs no argument past 128 kB anyway) is refused at submit, not quarantined later,
    rebuilt and quarantined again in a loop."""
    wf = tmp_path / "big.json"
    wf.write_text(json.dumps({"name": "big", "jobs": [{"id": "a", "command": command}]}))
    result = cli("exec-submit", "--pool", str(pool), str(wf))
    no_traceback(result)
    assert result.returncode == 2 and not pool.exists()
    [line] = result.stderr.splitlines()
    assert "job 'a'" in line and "key 'command'" in line and "at most" in line


def test_a_resume_names_why_a_job_file_cannot_be_used(pool: Path, make_workflow) -> None:
    run = three_jobs(pool, make_workflow)
    _set(run.job("b", "queued"), tries=[None])
    result = cli("exec-submit", "--pool", str(pool), "--resume", run.run_id, "--dry-run")
    no_traceback(result)
    assert result.returncode == 3  # refused, as for any unreadable job file
    assert "unreadable: b (tries[0] is None, not an object)" in result.stdout
