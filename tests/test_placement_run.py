"""Placement at run time: capacity, packing, GPU binding, priorities, the starvation guard
and tags, with real worker processes where concurrency matters. Each job appends one line
to a ledger (a single small O_APPEND write: lines never interleave) with what it was given
and when it started and ended; the assertions read the ledger as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from executioner import PoolLayout, Worker, create_run, load_workflow
from executioner.execution.capacity import Capacity, declare, detect

from .conftest import cli, files

# start time, end time, then the job id and whatever variables the job reports
RECORD = ("python3 -c \"import os,sys,time; s=time.time(); time.sleep(float(sys.argv[1])); "
          "v=[os.environ.get(n) or '-' for n in sys.argv[3:]]; "
          "fd=os.open(sys.argv[2], os.O_WRONLY|os.O_APPEND|os.O_CREAT); "
          "os.write(fd, (' '.join([repr(s), repr(time.time()), os.environ['EXEC_JOB_ID'], *v])+chr(10)).encode())\"")


def job(jid: str, ledger: Path, sleep: float, *names: str, **keys: Any) -> dict[str, Any]:
    return {"id": jid, "command": f"{RECORD} {sleep} '{ledger}' {' '.join(names)}", **keys}


def submit(pool: Path, tmp_path: Path, jobs: list[dict[str, Any]], name: str = "wf", **top: Any):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "jobs": jobs, **top}, sort_keys=False))
    return create_run(PoolLayout(str(pool)), load_workflow(str(path)))


def read_ledger(ledger: Path) -> list[tuple[float, float, str, list[str]]]:
    out = []
    for line in ledger.read_text().splitlines():
        start, end, jid, *rest = line.split()
        out.append((float(start), float(end), jid, rest))
    return out


def overlapping(rows: list[tuple[float, float, str, list[str]]]) -> list[list[tuple[float, float, str, list[str]]]]:
    """For each row, the rows running while it started (itself included)."""
    return [[r for r in rows if r[0] <= row[0] < r[1]] for row in rows]


def worker_process(pool: Path, *flags: str) -> subprocess.Popen[str]:
    code = "import sys; from executioner.cli import worker_main; sys.exit(worker_main(sys.argv[1:]))"
    return subprocess.Popen([sys.executable, "-c", code, "--pool", str(pool), "--exit-when-idle", "1",
                             "--heartbeat", "1", "--stale-after", "5", "-q", *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def in_process(pool: Path, capacity: Capacity, slots: int, **kw: Any) -> Worker:
    worker = Worker(str(pool), slots=slots, exit_when_idle=0.5, poll_min=0.02, poll_max=0.2, sweep_every=0.1,
                    capacity=capacity, **kw)
    worker.run()
    return worker


# ---- capacity ---------------------------------------------------------------------------
def test_capacity_from_a_slurm_allocation() -> None:
    found = detect({"SLURM_CPUS_ON_NODE": "6", "SLURM_JOB_GPUS": "1,3", "SLURM_MEM_PER_NODE": "4096"})
    assert (found.cpus, found.gpus, found.mem_gb) == (6, ("1", "3"), 4.0)
    found = detect({"SLURM_JOB_CPUS_PER_NODE": "8(x2)", "CUDA_VISIBLE_DEVICES": "0",
                    "SLURM_MEM_PER_CPU": "1024"})
    assert (found.cpus, found.gpus, found.mem_gb) == (8, ("0",), 8.0)


def test_capacity_elsewhere_and_declared() -> None:
    found = detect({})
    assert found.cpus == len(os.sched_getaffinity(0)) and found.mem_gb > 0
    c = declare(cpus=8, gpus="0,1,2,3", mem_gb=16, resources=["licenses=2"], tags="a100,big", env={})
    assert (c.cpus, c.gpus, c.mem_gb, dict(c.custom), c.tags) == (8, ("0", "1", "2", "3"), 16, {"licenses": 2.0},
                                                                  frozenset({"a100", "big"}))
    assert declare(gpus="2", env={}).gpus == ("0", "1")  # a count
    assert declare(slots=64, env={}).cpus >= 64  # -j alone keeps its meaning


@pytest.mark.parametrize("flags,expected", [
    (["--cpus", "0"], "--cpus"), (["--gpus", "0,x y"], "--gpus"), (["--resource", "licenses"], "--resource"),
    (["--resource", "cpus=2"], "--resource"), (["--tags", "a b"], "--tags"), (["--mem-gb", "-1"], "--mem-gb"),
])
def test_bad_capacity_flags_are_one_line(tmp_path: Path, flags: list[str], expected: str) -> None:
    (tmp_path / "pool").mkdir()
    out = cli("exec-worker", "--pool", str(tmp_path / "pool"), *flags)
    assert out.returncode == 2 and expected in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


# ---- CPUs -------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_cpu_packing_and_a_whole_worker_job(pool: Path, tmp_path: Path) -> None:
    """64 one-CPU jobs on --cpus 8 run at most 8 at a time; an 8-CPU job runs alone."""
    ledger = tmp_path / "ledger"
    jobs = [job(f"s{i:02d}", ledger, 0.15) for i in range(64)]
    jobs.insert(20, job("big", ledger, 0.3, resources={"cpus": 8}))
    run = submit(pool, tmp_path, jobs)
    proc = worker_process(pool, "--cpus", "8", "--run", run.run_id)
    _, err = proc.communicate(timeout=55)
    assert proc.returncode == 0, err
    rows = read_ledger(ledger)
    assert len(rows) == 65 and len(files(run, "done")) == 65
    at_once = [len(o) for o in overlapping(rows)]
    assert max(at_once) <= 8
    assert max(at_once) >= 4  # they did run side by side (a 2-core machine under load: not always 8)
    big = next(r for r in rows if r[2] == "big")
    assert [r[2] for r in rows if r[0] < big[1] and big[0] < r[1]] == ["big"]  # nothing beside it


@pytest.mark.timeout(60)
def test_array_tasks_take_per_task_cpus(pool: Path, tmp_path: Path) -> None:
    """A chunk's tasks each take the chunk's per-task CPUs: on --cpus 8, 2-CPU tasks run 4 at once."""
    ledger = tmp_path / "ledger"
    jobs = [{"id": "sweep", "command": f"{RECORD} 0.2 '{ledger}' OMP_NUM_THREADS", "array": 16, "chunk": 16,
             "resources": {"cpus": 2}}]
    run = submit(pool, tmp_path, jobs)
    w = in_process(pool, Capacity(cpus=8), slots=8)
    assert w.finished == 16
    rows = read_ledger(ledger)
    assert len(rows) == 16 and {r[3][0] for r in rows} == {"2"}
    at_once = [len(o) for o in overlapping(rows)]
    assert max(at_once) <= 4 and max(at_once) >= 2
    assert files(run, "done")


# ---- GPUs -------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_gpu_ids_never_shared(pool: Path, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    gpu_vars = ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "EXEC_RESOURCES")
    jobs = [job(f"g{i:02d}", ledger, 0.2, *gpu_vars, resources={"gpus": 1 + i % 2}) for i in range(16)]
    jobs += [job(f"c{i}", ledger, 0.2, *gpu_vars) for i in range(4)]  # asks no GPU: sees none
    run = submit(pool, tmp_path, jobs)
    proc = worker_process(pool, "--cpus", "8", "--gpus", "0,1,2,3", "--run", run.run_id)
    beat = None
    deadline = time.monotonic() + 20
    while beat is None and time.monotonic() < deadline:  # what a live worker declares
        for path in (pool / "workers").glob("*.json"):
            try:
                beat = json.loads(path.read_text())
            except ValueError:
                pass
        time.sleep(0.05)
    _, err = proc.communicate(timeout=55)
    assert proc.returncode == 0, err
    assert beat is not None and beat["capacity"]["gpus"] == ["0", "1", "2", "3"] and beat["capacity"]["cpus"] == 8
    rows = read_ledger(ledger)
    assert len(rows) == 20
    for start, end, jid, (cuda, rocr, hip, resources) in rows:
        assert cuda == rocr == hip
        ids = [] if cuda == "-" else cuda.split(",")
        assert len(ids) == (0 if jid.startswith("c") else 1 + int(jid[1:]) % 2), (jid, cuda)
        assert json.loads(resources).get("gpus", []) == ids
    for group in overlapping(rows):
        held = [g for r in group for g in (r[3][0].split(",") if r[3][0] != "-" else [])]
        assert len(held) == len(set(held)), group  # no id held by two running jobs at once
    record = json.loads(Path(run.job("g01", "done")).read_text())
    assert len(record["tries"][-1]["resources"]["gpus"]) == 2  # the assignment, in the try


@pytest.mark.timeout(60)
def test_a_job_no_worker_can_hold_stays_queued(pool: Path, tmp_path: Path) -> None:
    run = submit(pool, tmp_path, [{"id": "huge", "command": "true", "resources": {"gpus": 2}},
                                  {"id": "small", "command": "true"}])
    w = in_process(pool, Capacity(cpus=2, gpus=("0",)), slots=2)
    assert w.finished == 1
    assert files(run, "queued") == ["huge.json"] and files(run, "done") == ["small.json"]


# ---- binding ----------------------------------------------------------------------------
@pytest.mark.timeout(60)
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to pin to")
def test_bind_pins_jobs_to_distinct_cores(pool: Path, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    affinity = "python3 -c \"import os; print(sorted(os.sched_getaffinity(0)))\" > \"$EXEC_JOB_ID.cores\"; "
    jobs = [{"id": f"b{i}", "command": affinity + f"{RECORD} 0.3 '{ledger}' OMP_NUM_THREADS"} for i in range(6)]
    run = submit(pool, tmp_path, jobs, workdir=str(tmp_path))
    cores = sorted(os.sched_getaffinity(0))[:2]
    w = in_process(pool, Capacity(cpus=2, cores=tuple(cores)), slots=2, bind=True)
    assert w.finished == 6
    seen = {i: json.loads((tmp_path / f"b{i}.cores").read_text()) for i in range(6)}
    assert all(len(c) == 1 and c[0] in cores for c in seen.values())
    rows = read_ledger(ledger)
    for group in overlapping(rows):
        ids = [seen[int(r[2][1:])][0] for r in group]
        assert len(ids) == len(set(ids))  # two jobs at once are on two different cores
    assert sorted(os.sched_getaffinity(0)) == sorted(os.sched_getaffinity(0))  # ours untouched
    record = json.loads(Path(run.job("b0", "done")).read_text())
    assert len(record["tries"][-1]["resources"]["cores"]) == 1


# ---- priorities -------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_higher_priority_first_within_and_across_runs(pool: Path, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    first = submit(pool, tmp_path, [job(f"p{p}", ledger, 0, priority=p) for p in (0, 5, -3, 10, 1)], name="a")
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump({"name": "b", "jobs": [job("urgent", ledger, 0)]}))
    out = cli("exec-submit", str(path), "--pool", str(pool), "--priority", "1")
    assert out.returncode == 0, out.stderr
    in_process(pool, Capacity(cpus=1), slots=1)
    order = [r[2] for r in read_ledger(ledger)]
    assert order == ["urgent", "p10", "p5", "p1", "p0", "p-3"], order
    assert len(files(first, "done")) == 5


# ---- the starvation guard ---------------------------------------------------------------
def starving(pool: Path, tmp_path: Path, reserve_after: float) -> list[str]:
    """40 small jobs and one big one on a 4-CPU worker; the order in which they started."""
    ledger = tmp_path / "ledger"
    # staggered, so that the four CPUs are rarely all free at once before the stream ends
    jobs = [job(f"s{i:02d}", ledger, 0.1 + (i % 5) * 0.08) for i in range(40)]
    jobs.append(job("big", ledger, 0.1, resources={"cpus": 4}))
    submit(pool, tmp_path, jobs)
    in_process(pool, Capacity(cpus=4), slots=4, reserve_after=reserve_after)
    return [r[2] for r in sorted(read_ledger(ledger))]


@pytest.mark.timeout(60)
def test_without_a_reservation_the_big_job_waits_for_every_small_one(pool: Path, tmp_path: Path) -> None:
    order = starving(pool, tmp_path, reserve_after=1e9)  # what the guard prevents
    assert order.index("big") >= len(order) - 5, order


@pytest.mark.timeout(60)
def test_a_big_job_is_reserved_room_and_runs_before_the_stream_ends(pool: Path, tmp_path: Path) -> None:
    order = starving(pool, tmp_path, reserve_after=0.3)
    assert "big" in order and order.index("big") < len(order) - 10, " ".join(order)


# ---- tags -------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_only_a_worker_with_every_tag_takes_a_tagged_job(pool: Path, tmp_path: Path) -> None:
    run = submit(pool, tmp_path, [{"id": "gpu", "command": "true", "tags": ["a100", "fast"]},
                                  {"id": "any", "command": "true"}])
    in_process(pool, Capacity(cpus=1, tags=frozenset({"a100"})), slots=1)
    assert files(run, "queued") == ["gpu.json"] and files(run, "done") == ["any.json"]
    in_process(pool, Capacity(cpus=1, tags=frozenset({"a100", "fast", "x"})), slots=1)
    assert files(run, "done") == ["any.json", "gpu.json"]


# ---- races ------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_a_stale_index_is_corrected_by_the_job_file(pool: Path, tmp_path: Path) -> None:
    """RACE: a resume changed a job's needs after we read run.json: the claimed file's spec
    has the last word; a job that no longer fits is put back untouched, not run."""
    run = submit(pool, tmp_path, [{"id": "grew", "command": "touch ran", "resources": {"cpus": 16}},
                                  {"id": "ok", "command": "true"}], workdir=str(tmp_path))
    record = json.loads(Path(run.record).read_text())
    record["placement"] = {}  # the index as it was before the job grew
    Path(run.record).write_text(json.dumps(record))
    w = in_process(pool, Capacity(cpus=8), slots=2)
    assert w.finished == 1 and not (tmp_path / "ran").exists()
    assert files(run, "queued") == ["grew.json"] and files(run, "running") == []
    assert json.loads(Path(run.job("grew", "queued")).read_text())["tries"] == []  # untouched


@pytest.mark.timeout(60)
def test_a_reserved_job_taken_elsewhere_ends_the_reservation(pool: Path, tmp_path: Path) -> None:
    """RACE: the job we reserved room for is taken by another worker: we go back to the others."""
    ledger = tmp_path / "ledger"
    jobs = [job("long", ledger, 3.0, priority=5), job("big", ledger, 0, resources={"cpus": 2}, priority=4)]
    jobs += [job(f"s{i}", ledger, 0) for i in range(4)]
    run = submit(pool, tmp_path, jobs)
    worker = Worker(str(pool), slots=2, exit_when_idle=0.5, poll_min=0.02, poll_max=0.2, sweep_every=0.1,
                    capacity=Capacity(cpus=2), reserve_after=0.0)
    import threading
    t = threading.Thread(target=worker.run)
    t.start()
    deadline = time.monotonic() + 20
    while worker._reserved is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert worker._reserved == (run.run_id, "big")  # "long" runs; "big" waits for the whole worker
    os.rename(run.job("big", "queued"), run.job("big", "failed"))  # as if another worker took it
    t.join(timeout=40)
    rows = {r[2]: r for r in read_ledger(ledger)}
    assert {f"s{i}" for i in range(4)} <= set(rows)
    assert all(rows[f"s{i}"][0] < rows["long"][1] for i in range(4))  # beside "long", not after it


@pytest.mark.timeout(60)
def test_array_tasks_get_gpus_of_their_own(pool: Path, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    jobs = [{"id": "sweep", "command": f"{RECORD} 0.2 '{ledger}' CUDA_VISIBLE_DEVICES", "array": 12, "chunk": 12,
             "resources": {"gpus": 1}}]
    run = submit(pool, tmp_path, jobs)
    w = in_process(pool, Capacity(cpus=8, gpus=("0", "1", "2")), slots=8)
    assert w.finished == 12 and files(run, "done")
    rows = read_ledger(ledger)
    assert {r[3][0] for r in rows} <= {"0", "1", "2"}
    for group in overlapping(rows):
        ids = [r[3][0] for r in group]
        assert len(ids) == len(set(ids)) and len(ids) <= 3
    assert max(len(g) for g in overlapping(rows)) >= 2


@pytest.mark.timeout(60)
def test_thread_counts_only_for_jobs_that_declare_cpus(pool: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Every plain job got OMP_NUM_THREADS=1: a multi-threaded job that asks for nothing was
    made single-threaded on a big node. Only a job declaring cpus gets its thread counts."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    ledger = tmp_path / "ledger"
    submit(pool, tmp_path, [job("plain", ledger, 0, "OMP_NUM_THREADS", "MKL_NUM_THREADS"),
                            job("four", ledger, 0, "OMP_NUM_THREADS", "MKL_NUM_THREADS", resources={"cpus": 4}),
                            job("sweep", ledger, 0, "OMP_NUM_THREADS", array=2)])
    in_process(pool, Capacity(cpus=8), slots=2)
    seen = {r[2]: r[3] for r in read_ledger(ledger)}
    assert seen == {"plain": ["-", "-"], "four": ["4", "4"], "sweep": ["-"]}, seen
