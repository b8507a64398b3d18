"""An adversarial review of placement (issue 12's core): a hostile user, hostile files and a
hostile environment. Each test pins one problem found (see the commit naming it); each failed
on the code before its fix."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from executioner import Worker
from executioner.execution.capacity import Capacity, Ledger, detect

from .conftest import cli, files
from .test_hostile_records import _set, assert_rebuilt, reasons, three_jobs, work
from .test_placement_run import RECORD, job, overlapping, read_ledger, submit


def wait_for(predicate: Any, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


# ---- a resume while workers run ---------------------------------------------------------
@pytest.mark.timeout(60)
@pytest.mark.parametrize("before,after", [
    pytest.param({"resources": {"cpus": 2}}, {"resources": {"cpus": 1}}, id="fewer-cpus"),
    pytest.param({"tags": ["a100"]}, {}, id="tag-dropped"),
])
def test_a_resume_that_makes_a_job_fit_lets_a_running_worker_take_it(
        pool: Path, tmp_path: Path, before: dict[str, Any], after: dict[str, Any]) -> None:
    """A job this worker could never hold is left for another; a resume that makes it fit
    (fewer CPUs, a tag dropped) must reach the workers already running, not only new ones."""
    workflow = tmp_path / "wf.yaml"
    import yaml
    workflow.write_text(yaml.safe_dump({"name": "wf", "jobs": [{"id": "j", "command": "true", **before}]}))
    out = cli("exec-submit", str(workflow), "--pool", str(pool))
    assert out.returncode == 0, out.stderr
    run_id = out.stdout.split()[0]
    worker = Worker(str(pool), slots=1, poll_min=0.02, poll_max=0.2, sweep_every=0.1, dormant_every=0.5,
                    capacity=Capacity(cpus=1))
    t = threading.Thread(target=worker.run, daemon=True)
    t.start()
    try:
        assert wait_for(lambda: (run_id, "j") in worker._wont_fit)  # "left for another worker"
        workflow.write_text(yaml.safe_dump({"name": "wf", "jobs": [{"id": "j", "command": "true", **after}]}))
        out = cli("exec-submit", str(workflow), "--pool", str(pool), "--resume", run_id)
        assert out.returncode == 0, out.stderr
        done = pool / run_id / "done" / "j.json"
        assert wait_for(done.exists, 15), "the running worker never took the job the resume made fit"
    finally:
        worker.stop_claiming()
        worker._abort.set()
        t.join(timeout=20)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("key,value", [("resources", {"cpus": 2}), ("tags", ["a100"]), ("priority", 5)])
def test_a_resume_sees_a_placement_key_removed(pool: Path, make_workflow, key: str, value: Any) -> None:
    """A job file stores resources, priority and tags only when not the default; the resume's
    diff walked the new spec's keys only, so removing one (back to the default) was 'nothing
    to do' and the queued job kept its tag or its CPUs for ever."""
    path = make_workflow([{"id": "j", "command": "true", key: value}])
    out = cli("exec-submit", str(path), "--pool", str(pool))
    assert out.returncode == 0, out.stderr
    run_id = out.stdout.split()[0]
    make_workflow([{"id": "j", "command": "true"}])
    out = cli("exec-submit", str(path), "--pool", str(pool), "--resume", run_id)
    assert out.returncode == 0 and f"j: {key}: " in out.stderr + out.stdout, out.stdout + out.stderr
    record = json.loads((pool / run_id / "queued" / "j.json").read_text())
    assert key not in record["spec"]
    assert "placement" not in json.loads((pool / run_id / "run.json").read_text())


# ---- crafted job files and indexes ------------------------------------------------------
@pytest.mark.timeout(60)
@pytest.mark.parametrize("resources", [
    pytest.param({"cpus": "8"}, id="cpus-text"),
    pytest.param({"cpus": -3}, id="cpus-negative"),
    pytest.param({"gpus": True}, id="gpus-bool"),
    pytest.param({"mem_gb": [1]}, id="mem-list"),
])
def test_a_job_file_with_unusable_resources_is_quarantined_not_an_internal_error(
        pool: Path, make_workflow, resources: dict[str, Any]) -> None:
    """spec.resources of a job file is read by the ledger: a text, a negative (which would
    *add* room: overcommit), a bool or a list must be refused like any record of the wrong
    shape (quarantined with a reason, rebuilt from the workflow), never an internal error."""
    run = three_jobs(pool, make_workflow)
    _set(run.job("b", "queued"), **{"spec.resources": resources})
    work(pool, run, slots=1)
    assert_rebuilt(run, "b")
    why = reasons(run)
    assert "b@" in why and "resources" in why and "internal error" not in why


@pytest.mark.timeout(60)
@pytest.mark.parametrize("index", [
    pytest.param({"neg": {"needs": {"cpus": -7}}}, id="negative"),
    pytest.param({"neg": {"needs": {"cpus": "x"}}}, id="text"),
    pytest.param({"neg": {"needs": [1, 2]}}, id="list"),
    pytest.param({"neg": {"needs": {"cpus": True}}}, id="bool"),
    pytest.param({"neg": {"needs": {"cpus": 1e308}}}, id="huge"),
    pytest.param({"neg": {"tags": "a100"}}, id="tags-text"),
])
def test_a_crafted_placement_index_neither_overcommits_nor_breaks_the_worker(
        pool: Path, tmp_path: Path, index: dict[str, Any]) -> None:
    """run.json's placement index is a hint (the job file has the last word): an entry of the
    wrong shape or sign must not give the worker room it has not (a negative need took
    room *back*: every slot could start a job), nor raise in the claim walk, nor keep a job
    that fits from running."""
    ledger = tmp_path / "ledger"
    run = submit(pool, tmp_path, [job("neg", ledger, 0.3)] + [job(f"s{i}", ledger, 0.3) for i in range(3)])
    record = json.loads(Path(run.record).read_text())
    record["placement"] = index
    Path(run.record).write_text(json.dumps(record))
    worker = Worker(str(pool), slots=4, exit_when_idle=0.5, poll_min=0.02, poll_max=0.2, sweep_every=0.1,
                    capacity=Capacity(cpus=1))
    worker._record(run.run_id)
    held = worker._place(run.run_id, "neg")  # what the claim walk takes before the claim's rename
    assert worker.ledger.free()["cpus"] <= 1
    if held is not None:
        worker.ledger.give(held)
    errors: list[str] = []
    import logging

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.ERROR:
                errors.append(record.getMessage())

    handler = Catch()
    logging.getLogger("executioner").addHandler(handler)
    try:
        worker.run()
    finally:
        logging.getLogger("executioner").removeHandler(handler)
    assert errors == []
    assert len(files(run, "done")) == 4
    assert max(len(o) for o in overlapping(read_ledger(ledger))) == 1  # one CPU: one job at a time


def test_an_assignment_given_back_twice_frees_its_room_once() -> None:
    """The claim walk's error path gave back what _check_needs had already given back: the
    ledger then counted more free CPUs and GPUs than the worker has (two jobs on one GPU's
    count, one of them with no id). A second give of one assignment is a no-op."""
    ledger = Ledger(Capacity(cpus=2, gpus=("0",)))
    held = ledger.take({"cpus": 1, "gpus": 1})
    assert held is not None and held.gpus == ("0",)
    ledger.give(held)
    ledger.give(held)
    assert ledger.free() == {"cpus": 2, "gpus": 1, "mem_gb": 0.0}
    first, second = ledger.take({"cpus": 1, "gpus": 1}), ledger.take({"cpus": 1, "gpus": 1})
    assert first is not None and first.gpus == ("0",) and second is None


# ---- Slurm elements: what Slurm placed --------------------------------------------------
@pytest.mark.timeout(60)
def test_a_slurm_element_runs_tasks_with_custom_resources_side_by_side(pool: Path, tmp_path: Path) -> None:
    """A worker of the Slurm backend ignores custom resources and tags (Slurm placed the
    job): the chunk's first task ignored them, but every further runner asked the ledger for
    them, found none, and the chunk's tasks ran one at a time in a 4-CPU element."""
    ledger = tmp_path / "ledger"
    jobs = [{"id": "sweep", "command": f"{RECORD} 0.4 '{ledger}'", "array": 8, "chunk": 8,
             "resources": {"cpus": 1, "licenses": 1}}]
    run = submit(pool, tmp_path, jobs)
    record = json.loads(Path(run.record).read_text())
    record["backend"] = "slurm"
    Path(run.record).write_text(json.dumps(record))
    worker = Worker(str(pool), slots=4, exit_when_idle=0.5, poll_min=0.02, poll_max=0.2, sweep_every=0.1,
                    capacity=Capacity(cpus=4), slurm_dag=True)
    worker.run()
    rows = read_ledger(ledger)
    assert len(rows) == 8 and files(run, "done")
    assert max(len(o) for o in overlapping(rows)) >= 2, "the element's tasks ran one at a time"


# ---- odd environments -------------------------------------------------------------------
@pytest.mark.parametrize("value,expected", [
    ("-1", ()),  # the common idiom to hide every GPU (CUDA stops at the first invalid id)
    ("0,-1,1", ("0",)),
    ("0,,1", ("0", "1")),
    ("", ()),
    ("GPU-8f2a,GPU-77c1", ("GPU-8f2a", "GPU-77c1")),
])
def test_cuda_visible_devices_as_cuda_reads_it(value: str, expected: tuple[str, ...]) -> None:
    assert detect({"CUDA_VISIBLE_DEVICES": value}).gpus == expected


# ---- the starvation guard ---------------------------------------------------------------
@pytest.mark.timeout(60)
def test_a_reserved_job_whose_file_needs_more_than_the_worker_has_does_not_stall_it(
        pool: Path, tmp_path: Path) -> None:
    """The index says the job fits (2 CPUs), its file says 16 (hand-edited, or a resume
    since): reserved for lack of room, claimed once room came, put back by the file's check
    and reserved still: the worker claimed and released it for ever and started nothing
    else. The file's verdict ('never here') must end the reservation and the re-claims."""
    ledger = tmp_path / "ledger"
    jobs = [job("long", ledger, 1.0, priority=5), job("grew", ledger, 0, resources={"cpus": 16}, priority=4)]
    jobs += [job(f"s{i}", ledger, 0) for i in range(4)]
    run = submit(pool, tmp_path, jobs)
    record = json.loads(Path(run.record).read_text())
    record["placement"]["grew"]["needs"] = {"cpus": 2}  # the index as it was before the job grew
    Path(run.record).write_text(json.dumps(record))
    from executioner.protocol import store
    claims: list[str] = []
    real = store.claim

    def counting(run_: Any, job_id: str, *a: Any, **kw: Any) -> Any:
        claims.append(job_id)
        return real(run_, job_id, *a, **kw)

    store.claim = counting  # type: ignore[assignment]
    try:
        worker = Worker(str(pool), slots=2, exit_when_idle=1.0, poll_min=0.02, poll_max=0.2, sweep_every=0.1,
                        capacity=Capacity(cpus=2), reserve_after=0.0)
        worker.run()
    finally:
        store.claim = real  # type: ignore[assignment]
    assert sorted(files(run, "done")) == ["long.json"] + [f"s{i}.json" for i in range(4)]
    assert files(run, "queued") == ["grew.json"]
    assert claims.count("grew") <= 2, f"claimed and put back {claims.count('grew')} times"


@pytest.mark.timeout(60)
def test_a_reserved_job_waits_for_one_task_of_a_chunk_not_the_whole_chunk(pool: Path, tmp_path: Path) -> None:
    """Once a big job is reserved, a chunk's borrowed runners stopped at their task's end,
    but the runner on the slot that claimed the chunk went on through every task left: the
    big job waited for the whole chunk (40 tasks here) with the rest of the worker idle.
    The chunk stops at its current task; its tasks not started go back to queued/."""
    ledger = tmp_path / "ledger"
    jobs = [job("short", ledger, 0.3, priority=10),
            {"id": "sweep", "command": f"{RECORD} 0.1 '{ledger}'", "array": 40, "chunk": 40, "priority": 5},
            job("big", ledger, 0, resources={"cpus": 2}, priority=1)]
    run = submit(pool, tmp_path, jobs)
    worker = Worker(str(pool), slots=2, exit_when_idle=1.0, poll_min=0.02, poll_max=0.2, sweep_every=0.1,
                    capacity=Capacity(cpus=2), reserve_after=0.0)
    worker.run()
    rows = read_ledger(ledger)
    assert len(rows) == 42 and files(run, "queued") == [] and files(run, "failed") == []
    big = next(r for r in rows if r[2] == "big")
    tasks_after = [r for r in rows if r[2] == "sweep" and r[0] >= big[1]]
    assert len(tasks_after) >= 20, "the big job waited for the whole chunk"


# ---- validation -------------------------------------------------------------------------
@pytest.mark.timeout(60)
@pytest.mark.parametrize("name,meant", [("Cpus", "cpus"), ("gpu", "gpus"), ("CPU", "cpus"), ("memory_gb", "mem_gb"),
                                        ("mem", "mem_gb"), ("memory", "mem_gb")])
def test_a_misspelt_builtin_resource_is_refused_not_a_custom_one(pool: Path, make_workflow, name: str,
                                                                  meant: str) -> None:
    """Any name is a custom resource, so `gpu: 1` asked for a resource no worker declares
    (`--resource` never names gpus): the job sat in queued/ for ever, each worker leaving it
    for another. A name that is a built-in's case or plural away is a typo: one line, exit 2."""
    path = make_workflow([{"id": "a", "command": "true", "resources": {name: 1}}])
    out = cli("exec-submit", str(path), "--pool", str(pool))
    assert out.returncode == 2 and f"did you mean '{meant}'" in out.stderr, out.stdout + out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and not pool.exists()
    ok = make_workflow([{"id": "a", "command": "true", "resources": {"licenses": 1, "tpus": 2}}])
    assert cli("exec-submit", str(ok), "--pool", str(pool), "--dry-run").returncode == 0


# ---- a worker killed outright -----------------------------------------------------------
@pytest.mark.timeout(60)
def test_the_command_of_a_worker_killed_outright_is_killed_before_its_job_runs_again(
        pool: Path, tmp_path: Path) -> None:
    """A command runs in a session of its own, so SIGKILL to its worker leaves it running,
    holding its GPU ids; the same host's next worker requeued the job at once (its worker's
    pid is gone) and ran it again on the same GPU: two jobs on GPU 0, the job twice at once.
    The reaper on the dead worker's host kills what carries the claim's marker first."""
    import signal
    import subprocess
    import sys
    ledger = tmp_path / "ledger"
    code = ("import os,sys,time; w=lambda s: os.write(os.open(sys.argv[1], os.O_WRONLY|os.O_APPEND|os.O_CREAT), "
            "(s+' '+os.environ['CUDA_VISIBLE_DEVICES']+' '+str(os.getpid())+' '+repr(time.time())+chr(10)).encode()); "
            "w('start'); time.sleep(4); w('end')")
    run = submit(pool, tmp_path, [{"id": "g", "command": f"python3 -c \"{code}\" '{ledger}'", "resources": {"gpus": 1}}])
    worker = [sys.executable, "-c", "import sys; from executioner.cli import worker_main; sys.exit(worker_main())",
              "--pool", str(pool), "--gpus", "0,", "--heartbeat", "1", "--stale-after", "30", "-q"]
    first = subprocess.Popen(worker + ["--exit-when-idle", "30"])
    try:
        assert wait_for(lambda: ledger.exists() and ledger.read_text().count("start") == 1, 30)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    second = subprocess.run(worker + ["--exit-when-idle", "1"], timeout=50)
    assert second.returncode == 0
    lines = [line.split() for line in ledger.read_text().splitlines()]
    starts = [x for x in lines if x[0] == "start"]
    assert len(starts) == 2 and files(run, "done") == ["g.json"]
    orphan = starts[0][2]
    assert ["end", "0", orphan] not in [x[:3] for x in lines], "the dead worker's command ran on beside its rerun"


@pytest.mark.timeout(60)
def test_a_reserved_job_whose_retry_is_not_due_does_not_stall_the_worker(pool: Path, tmp_path: Path) -> None:
    """The reserved job, once room came, was claimed and put back (its retry is due in an
    hour): the reservation stayed, so the worker started nothing else for that hour."""
    ledger = tmp_path / "ledger"
    jobs = [job("long", ledger, 1.0, priority=5), job("big", ledger, 0, resources={"cpus": 2}, priority=4)]
    jobs += [job(f"s{i}", ledger, 0) for i in range(4)]
    run = submit(pool, tmp_path, jobs)
    _set(run.job("big", "queued"), not_before=time.time() + 3600, retry_delay_s=3600.0)
    worker = Worker(str(pool), slots=2, poll_min=0.02, poll_max=0.2, sweep_every=0.1,
                    capacity=Capacity(cpus=2), reserve_after=0.0)
    t = threading.Thread(target=worker.run, daemon=True)
    t.start()
    try:
        ran = wait_for(lambda: len(files(run, "done")) == 5, 20)
    finally:
        worker.stop_claiming()
        t.join(timeout=20)
    assert ran, f"done: {files(run, 'done')}"
    assert files(run, "queued") == ["big.json"]


def test_a_slurm_task_narrower_than_its_node_allocation_declares_its_own_cpus(monkeypatch) -> None:
    """`srun -n 4 --cpus-per-task 2 exec-worker`: each task sees SLURM_CPUS_ON_NODE=8 (the
    node's part of the allocation) but an affinity mask of its own 2 CPUs; each declared 8,
    and four workers ran 32 one-CPU jobs on 8 CPUs. A mask narrower than the machine wins."""
    from executioner.execution import capacity
    monkeypatch.setattr(capacity, "_affinity", lambda: (4, 5))
    monkeypatch.setattr(capacity.os, "cpu_count", lambda: 64)
    assert detect({"SLURM_CPUS_ON_NODE": "8"}).cpus == 2
    monkeypatch.setattr(capacity, "_affinity", lambda: tuple(range(64)))  # no mask: Slurm's count
    assert detect({"SLURM_CPUS_ON_NODE": "8"}).cpus == 8
