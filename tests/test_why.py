"""``exec-status POOL RUN --why JOB``: every sentence built from a real run directory (jobs
submitted, claimed and finished with the library, fake worker heartbeat files of chosen
capacity, tags and age), its --json fields, the unknown-job error, and the warnings of
``exec-status --wait`` from a real process."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from executioner import RunLayout
from executioner.errors import UnknownJob
from executioner.protocol import fsio, store
from executioner.views.advice import Advisor
from executioner.views.why import explain

from .conftest import cli, submit, work

pytestmark = pytest.mark.timeout(60)


def heartbeat(pool: Path, worker: str, *, host: str = "node1", age: float = 0.0, slots: int = 4,
              capacity: dict[str, Any] | None = None, runs: list[str] | None = None, pid: int = 1,
              pid_start: float = 0.0, old: bool = False) -> Path:
    """A worker's heartbeat file as exec-worker writes it, its last beat ``age`` seconds ago;
    ``old``: written before placement (no capacity)."""
    record: dict[str, Any] = {"worker": worker, "host": host, "pid": pid, "pid_start": pid_start,
                              "started": time.time() - age, "heartbeat": 10.0, "stale_after": 60.0,
                              "runs": runs, "slots": slots}
    if not old:
        record["capacity"] = {"cpus": 4, "gpus": [], "mem_gb": 16.0, "resources": {}, "tags": [], **(capacity or {})}
    path = pool / "workers" / f"{worker}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    stamp = time.time() - age
    os.utime(path, (stamp, stamp))
    return path


def this_host_worker(pool: Path, worker: str, **kw: Any) -> None:
    """A live worker of this host: this very process (alive), so its claims hold."""
    me = psutil.Process()
    heartbeat(pool, worker, host=fsio.HOST, pid=me.pid, pid_start=me.create_time(), **kw)


def hold(run: RunLayout, job: str, worker: str = "test-holder", ago: float = 0.0) -> store.Claim:
    """``job`` claimed by ``worker`` (this process) ``ago`` seconds ago, its lock written."""
    claim = store.claim(run, job, store.Owner.current(worker))
    assert claim is not None
    claim = dataclasses.replace(claim, claimed_at=time.time() - ago)
    store.write_lock(claim)
    return claim


def texts(data: dict[str, Any]) -> list[str]:
    return [c["text"] for c in data["causes"]]


def kinds(data: dict[str, Any]) -> list[str]:
    return [c["kind"] for c in data["causes"]]


def test_waiting_for_a_running_job_and_the_running_job_itself(pool: Path, make_workflow: Any) -> None:
    run = submit(pool, make_workflow([{"id": "prepare", "command": "true"},
                                      {"id": "train", "command": "true", "dependencies": ["prepare"]}]))
    hold(run, "prepare", ago=180)
    data = explain(run, "train")
    assert data["state"] == "waiting"
    assert texts(data) == [f"waiting for `prepare` (running on {fsio.HOST} for 3 min)"]
    assert data["causes"][0]["job"] == "prepare" and data["causes"][0]["state"] == "running"
    running = explain(run, "prepare")
    assert running["state"] == "running"
    text = texts(running)[0]
    assert re.fullmatch(rf"running on {re.escape(fsio.HOST)} \(worker test-holder, pid {os.getpid()}\) since "
                        r"\d\d:\d\d:\d\d \(3 min\), try 1", text), text


def test_blocked_by_a_failed_job_and_the_failure_with_its_stderr(pool: Path, make_workflow: Any) -> None:
    run = submit(pool, make_workflow([{"id": "extract", "command": "echo 'no such table' >&2; exit 1"},
                                      {"id": "load", "command": "true", "dependencies": ["extract"]},
                                      {"id": "report", "command": "true", "dependencies": ["load"]}]))
    work(pool, run)
    assert texts(explain(run, "load")) == ["blocked by `extract` which failed (exit 1)"]
    assert explain(run, "report")["state"] == "blocked"
    assert texts(explain(run, "report")) == ["blocked by `extract` which failed (exit 1)"]
    failed = explain(run, "extract")
    assert failed["state"] == "failed"
    assert texts(failed)[0].endswith("stderr: no such table"), texts(failed)
    assert failed["causes"][0]["exit_code"] == 1


def test_a_retry_waiting_out_its_delay(pool: Path, make_workflow: Any) -> None:
    run = submit(pool, make_workflow([{"id": "flaky", "command": "exit 1", "max_retries": 3, "retry_delay": 600}]))
    work(pool, run, max_jobs=1)
    heartbeat(pool, "w1")  # it fits this worker, but not before its delay
    data = explain(run, "flaky")
    assert kinds(data) == ["retry"], data
    assert data["state"] == "queued"
    assert re.fullmatch(r"retry 1 of 3 not before \d\d:\d\d:\d\d", texts(data)[0]), texts(data)
    assert data["causes"][0]["not_before"] > time.time() + 500


def test_held_by_failed_only(pool: Path, make_workflow: Any) -> None:
    wf = make_workflow([{"id": "bad", "command": "exit 3"},
                        {"id": "after", "command": "true", "dependencies": ["bad"]},
                        {"id": "later", "command": "true", "dependencies": ["after"]}])
    run = submit(pool, wf)
    work(pool, run)
    out = cli("exec-submit", "--pool", str(pool), "--resume", run.run_id, "--failed-only")
    assert out.returncode == 0, out.stderr
    data = explain(run, "after")
    assert data["state"] == "held"
    assert texts(data) == [f"held by `--failed-only`: a plain `exec-submit --resume {run.run_id}` runs it"]
    assert explain(run, "later")["state"] == "held"  # --failed-only holds every job that never ran


def test_needs_more_than_any_live_worker_declared_and_a_tag_none_has(pool: Path, make_workflow: Any) -> None:
    run = submit(pool, make_workflow([{"id": "train", "command": "true", "resources": {"gpus": 2}},
                                      {"id": "fast", "command": "true", "tags": ["a100"]}]))
    heartbeat(pool, "w1", capacity={"gpus": ["0"]})
    heartbeat(pool, "w2", capacity={"gpus": ["0", "1", "2"]}, age=3600)  # dead: it counts for nothing
    data = explain(run, "train")
    assert data["state"] == "queued"
    assert texts(data) == ["needs 2 GPUs and no live worker has declared more than 1"]
    assert data["causes"][0] == {"kind": "needs", "resource": "gpus", "needs": 2, "most": 1,
                                 "text": "needs 2 GPUs and no live worker has declared more than 1"}
    assert texts(explain(run, "fast")) == ["needs tag `a100`, which no live worker has"]


def test_a_worker_file_without_capacity_is_unknown_not_zero(pool: Path, make_workflow: Any) -> None:
    run = submit(pool, make_workflow([{"id": "train", "command": "true", "resources": {"gpus": 2}}]))
    heartbeat(pool, "old", old=True)
    data = explain(run, "train")
    assert kinds(data) == ["fits"], data
    assert texts(data) == ["queued; fits worker old on node1; should start within a poll"]


def test_a_full_limit_names_the_jobs_holding_it(pool: Path, make_workflow: Any) -> None:
    jobs = [{"id": f"dl{i}", "command": "true", "limit": "download"} for i in range(3)]
    run = submit(pool, make_workflow(jobs, limits={"download": 2}))
    heartbeat(pool, "w1")
    root = Path(run.root) / "limits" / "download"
    assert sorted(os.listdir(root / "free")) == ["0", "1"]  # the submit made the slots
    assert "limit" not in kinds(explain(run, "dl2"))  # both free
    tokens = [hold(run, job).token for job in ("dl0", "dl1")]
    (root / "free" / "0").rename(root / "held" / f"0@{tokens[0]}")  # taken as a worker takes it
    assert "limit" not in kinds(explain(run, "dl2"))  # 1 of 2 held
    (root / "free" / "1").rename(root / "held" / f"1@{tokens[1]}")
    data = explain(run, "dl2")
    assert texts(data) == ["limit `download` is full (2/2: jobs dl0, dl1)"]
    assert data["causes"][0]["jobs"] == ["dl0", "dl1"] and data["causes"][0]["size"] == 2
    (root / "held" / f"1@{tokens[1]}").rename(root / "free" / "1")  # one given back
    assert "limit" not in kinds(explain(run, "dl2"))
    shutil.rmtree(root.parent)  # a run made before limits were enforced: workers hold its jobs back
    assert texts(explain(run, "dl2")) == [f"limit `download` has no slots yet (the run was made before limits were "
                                          f"enforced): `exec-submit --resume {run.run_id}` makes them"]


def test_queued_behind_jobs_of_higher_priority(pool: Path, make_workflow: Any) -> None:
    jobs = [{"id": f"urgent{i}", "command": "true", "priority": 5} for i in range(3)]
    run = submit(pool, make_workflow(jobs + [{"id": "later", "command": "true"}]))
    heartbeat(pool, "w1")
    data = explain(run, "later")
    assert texts(data)[0] == "queued behind 3 jobs of higher priority"
    assert data["causes"][0]["jobs"] == 3
    assert "priority" not in kinds(explain(run, "urgent0"))


def test_queued_behind_a_run_of_higher_priority(pool: Path, make_workflow: Any) -> None:
    from executioner import PoolLayout, create_run, load_workflow
    from executioner.coordinator.plan import Options

    urgent = make_workflow([{"id": f"u{i}", "command": "true"} for i in range(2)], name="urgent")
    create_run(PoolLayout(str(pool)), load_workflow(str(urgent)), Options(priority=5))
    run = submit(pool, make_workflow([{"id": "mine", "command": "true"}]))
    heartbeat(pool, "w1")
    assert texts(explain(run, "mine"))[0] == "queued behind 2 jobs of higher priority"


def test_waiting_with_its_dependencies_done_until_a_sweep(pool: Path, make_workflow: Any) -> None:
    run = submit(pool, make_workflow([{"id": "a", "command": "true"},
                                      {"id": "b", "command": "true", "dependencies": ["a"]}]))
    claim = hold(run, "a")
    assert store.finish(claim, claim.record, "done")  # its worker died before promoting b
    data = explain(run, "b")
    assert data["state"] == "waiting"
    assert texts(data) == ["its dependencies are done: a worker's sweep queues it soon"]


def test_no_live_worker_at_all_or_none_serving_this_run(pool: Path, make_workflow: Any) -> None:
    run = submit(pool, make_workflow([{"id": "a", "command": "true"}]))
    start = f"start `exec-worker --pool {shlex.quote(str(pool))}`"
    assert texts(explain(run, "a")) == [f"no live worker at all: {start}"]
    heartbeat(pool, "gone", age=3600)
    assert texts(explain(run, "a")) == [f"no live worker at all (the last heartbeat, of gone on node1, is 60 min "
                                        f"old): {start}"]
    heartbeat(pool, "elsewhere", runs=["other-0001"])
    data = explain(run, "a")
    assert texts(data) == ["no live worker serves this run: workers limited to other runs (other-0001)"]
    assert data["causes"][0]["kind"] == "no_worker"


def test_every_live_worker_busy_then_one_fits(pool: Path, make_workflow: Any) -> None:
    run = submit(pool, make_workflow([{"id": "long", "command": "true"}, {"id": "next", "command": "true"}]))
    this_host_worker(pool, "w1", slots=1, capacity={"cpus": 1})
    hold(run, "long", worker="w1")
    data = explain(run, "next")
    assert texts(data) == [f"live workers exist but every one is busy: w1 on {fsio.HOST} runs 1/1 (free: "
                           "16 GB of memory)"], texts(data)
    assert data["causes"][0]["workers"][0]["running"] == 1
    heartbeat(pool, "w2", capacity={"cpus": 8})
    assert texts(explain(run, "next")) == ["queued; fits worker w2 on node1; should start within a poll"]


def test_a_running_job_whose_worker_looks_gone(pool: Path, make_workflow: Any) -> None:
    run = submit(pool, make_workflow([{"id": "a", "command": "true"}]))
    claim = store.claim(run, "a", store.Owner("w9", "node9", 4242, 0.0))
    assert claim is not None
    store.write_lock(claim)
    heartbeat(pool, "w9", host="node9", age=600)
    data = explain(run, "a")
    assert kinds(data) == ["running", "worker_gone"]
    assert texts(data)[1] == "its worker looks gone (no heartbeat for 10 min): a reaper requeues it"
    heartbeat(pool, "w9", host="node9")
    assert kinds(explain(run, "a")) == ["running"]


def test_hostile_worker_files_are_passed_over(pool: Path, make_workflow: Any) -> None:
    run = submit(pool, make_workflow([{"id": "train", "command": "true", "resources": {"gpus": 2}}]))
    workers = pool / "workers"
    heartbeat(pool, "w1", capacity={"gpus": 1, "resources": {"x": -1, "y": "z"}})  # a count of GPUs
    (workers / "torn.json").write_text('{"host": "node2", "capa')
    (workers / "list.json").write_text("[1, 2]")
    (workers / "link.json").symlink_to(workers / "w1.json")
    os.mkfifo(workers / "fifo.json")
    assert texts(explain(run, "train")) == ["needs 2 GPUs and no live worker has declared more than 1"]
    assert len(Advisor(run).check()) == 1
    heartbeat(pool, "w2", capacity={"cpus": "many", "tags": "a100"})  # not of its shape: unknown, may fit
    assert texts(explain(run, "train")) == ["queued; fits worker w2 on node1; should start within a poll"]
    assert Advisor(run).check() == []


def test_waiting_for_an_array(pool: Path, make_workflow: Any) -> None:
    run = submit(pool, make_workflow([{"id": "sim", "array": 4, "chunk": 2, "command": "true"},
                                      {"id": "post", "command": "true", "dependencies": ["sim"]}]))
    hold(run, "sim.0-1")
    data = explain(run, "post")
    assert texts(data) == ["waiting for `sim` (0 of 4 tasks done)"]
    task = explain(run, "sim:1")
    assert task["state"] == "running" and task["unit"] == "sim.0-1"
    assert texts(task)[0].startswith(f"in chunk sim.0-1, running on {fsio.HOST} (worker test-holder")


def test_a_job_claimed_between_the_listing_and_its_read_is_answered_where_it_went(
        pool: Path, make_workflow: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The RACE in views.why.explain: the listing saw `a` queued; a worker claims it before
    its file is read. The answer is read again from the new listing: running, not an error."""
    import executioner.views.why as why

    run = submit(pool, make_workflow([{"id": "a", "command": "true"}]))
    real = why.read_job
    moved: list[str] = []

    def claimed_first(path: str, unit: str) -> Any:
        if not moved:
            moved.append(path)
            hold(run, "a")
        return real(path, unit)

    monkeypatch.setattr(why, "read_job", claimed_first)
    data = explain(run, "a")
    assert moved and os.sep + "queued" + os.sep in moved[0]
    assert data["state"] == "running" and kinds(data) == ["running"]


def test_a_task_waiting_for_its_own_upstream_task(pool: Path, make_workflow: Any) -> None:
    run = submit(pool, make_workflow([
        {"id": "sim", "array": {"start": 10, "stop": 50, "step": 10}, "chunk": 2, "command": "true"},
        {"id": "post", "array": {"start": 10, "stop": 50, "step": 10}, "chunk": 2, "command": "true",
         "dependencies": ["sim:{index}"]}]))
    hold(run, "sim.2-3")
    data = explain(run, "post:40")
    assert data["unit"] == "post.2-3" and data["state"] == "waiting"
    assert texts(data) == ["waiting for tasks `sim:30` to `sim:40` (`sim` running: 0 of 4 tasks done)"]


def test_done_and_skipped(pool: Path, make_workflow: Any) -> None:
    run = submit(pool, make_workflow([{"id": "a", "command": "true"}]))
    work(pool, run)
    data = explain(run, "a")
    assert data["state"] == "done"
    assert re.fullmatch(rf"done \(try 1 on {re.escape(fsio.HOST)}, exit 0, ended \d\d:\d\d:\d\d\)", texts(data)[0])


def test_a_task_and_a_chunk_of_an_array(pool: Path, make_workflow: Any) -> None:
    run = submit(pool, make_workflow([{"id": "sim", "array": 8, "chunk": 4, "command": "true",
                                       "resources": {"gpus": 2}}]))
    heartbeat(pool, "w1", capacity={"gpus": ["0"]})
    data = explain(run, "sim:5")
    assert data["unit"] == "sim.4-7" and data["state"] == "queued"
    assert texts(data) == ["needs 2 GPUs and no live worker has declared more than 1"]
    assert explain(run, "sim.0-3")["causes"] == data["causes"]
    whole = explain(run, "sim")
    assert kinds(whole) == ["array", "needs"] and texts(whole)[0] == "array `sim` of 8 tasks: queued 8"
    os.unlink(os.path.join(run.state_dir("queued"), "sim.4-7.json"))  # deleted by hand
    lost = explain(run, "sim:5")
    assert lost["state"] == "lost" and kinds(lost) == ["lost"]


def test_json_and_text_from_the_command(pool: Path, make_workflow: Any) -> None:
    run = submit(pool, make_workflow([{"id": "train", "command": "true", "resources": {"gpus": 2}}]))
    heartbeat(pool, "w1", capacity={"gpus": ["0"]})
    out = cli("exec-status", str(pool), run.run_id, "--why", "train", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data == {"run_id": run.run_id, "job": "train", "unit": "train", "state": "queued",
                    "causes": [{"kind": "needs", "resource": "gpus", "needs": 2, "most": 1,
                                "text": "needs 2 GPUs and no live worker has declared more than 1"}]}
    out = cli("exec-status", run.root, "--why", "train")
    assert out.returncode == 0, out.stderr
    assert out.stdout == (f"{run.run_id} train: queued\n"
                          "  needs 2 GPUs and no live worker has declared more than 1\n")


def test_an_unknown_job_is_one_line_with_the_closest_names(pool: Path, make_workflow: Any) -> None:
    run = submit(pool, make_workflow([{"id": "train", "command": "true"}, {"id": "trained", "command": "true"},
                                      {"id": "sim", "array": 3, "command": "true"}]))
    out = cli("exec-status", str(pool), run.run_id, "--why", "trian")
    assert out.returncode == 2
    assert out.stderr == (f"exec-status: error: run {run.run_id}: no job, task or chunk 'trian' "
                          "(closest: train, trained)\n")
    out = cli("exec-status", str(pool), run.run_id, "--why", "sim:7")
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "sim:0, sim:2" in out.stderr, out.stderr
    with pytest.raises(UnknownJob):
        explain(run, "sim.9")


def test_advisor_warns_once_per_job_and_after_a_minute_alone(pool: Path, make_workflow: Any) -> None:
    run = submit(pool, make_workflow([{"id": "train", "command": "true", "resources": {"gpus": 2}},
                                      {"id": "small", "command": "true"}]))
    advisor = Advisor(run)
    assert advisor.check(mono=0.0) == []  # no worker yet, for less than a minute
    assert advisor.check(mono=59.0) == []
    assert advisor.check(mono=61.0) == [f"{run.run_id}: warning: no live worker for 61 s: "
                                        f"start `exec-worker --pool {shlex.quote(str(pool))}`"]
    assert advisor.check(mono=200.0) == []  # once
    heartbeat(pool, "elsewhere", runs=["other-0001"])
    again = Advisor(run)
    assert again.check(mono=0.0) == []
    assert again.check(mono=60.0) == [f"{run.run_id}: warning: no live worker serves this run for 60 s: "
                                      "workers limited to other runs (other-0001)"]
    heartbeat(pool, "w1", capacity={"gpus": ["0"]})
    line = (f"{run.run_id}: warning: queued job `train` fits no live worker: "
            "needs 2 GPUs and no live worker has declared more than 1")
    assert advisor.check(mono=201.0) == [line]
    assert advisor.check(mono=202.0) == []


def test_advisor_says_a_reason_once_for_many_jobs_and_arrays(pool: Path, make_workflow: Any) -> None:
    jobs = [{"id": f"gpu{i}", "command": "true", "resources": {"gpus": 2}} for i in range(7)]
    jobs += [{"id": "sim", "array": 8, "chunk": 2, "command": "true", "tags": ["a100"]},
             # waiting, so no warning, though a queued plain job's name starts like a chunk's of it
             {"id": "big", "command": "true", "tags": ["a100"], "dependencies": ["gpu0"]},
             {"id": "big.1", "command": "true"}]
    run = submit(pool, make_workflow(jobs))
    heartbeat(pool, "w1", capacity={"gpus": ["0"]})
    assert sorted(Advisor(run).check()) == [
        f"{run.run_id}: warning: queued job `sim` fits no live worker: needs tag `a100`, which no live worker has",
        f"{run.run_id}: warning: queued jobs `gpu0`, `gpu1`, `gpu2`, `gpu3`, `gpu4` and 2 more fit no live worker: "
        "needs 2 GPUs and no live worker has declared more than 1"]


def test_advisor_reads_no_job_file(pool: Path, make_workflow: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Cheap at 100,000 jobs: run.json, one listing of queued/ and the workers' files."""
    run = submit(pool, make_workflow([{"id": f"j{i}", "command": "true"} for i in range(50)]
                                     + [{"id": "train", "command": "true", "resources": {"gpus": 2}}]))
    heartbeat(pool, "w1")
    opened: list[str] = []
    real = os.open

    def spy(path: Any, *a: Any, **kw: Any) -> int:
        opened.append(os.fsdecode(path))
        return real(path, *a, **kw)

    monkeypatch.setattr(os, "open", spy)
    assert len(Advisor(run).check()) == 1
    assert not [p for p in opened if os.sep + "queued" + os.sep in p], opened


def _wait_process(pool: Path, run: RunLayout) -> subprocess.Popen[str]:
    code = "import sys; from executioner.cli import status_main; sys.exit(status_main(sys.argv[1:]))"
    return subprocess.Popen([sys.executable, "-c", code, str(pool), run.run_id, "--wait"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _lines_until(proc: subprocess.Popen[str], pattern: str, timeout: float = 30.0) -> list[str]:
    """Lines of the process's stderr until one matches ``pattern``: read from the pipe's fd
    itself (a buffered readline may hold a second line that select() then never reports)."""
    import selectors

    assert proc.stderr is not None
    fd = proc.stderr.fileno()
    sel = selectors.DefaultSelector()
    sel.register(fd, selectors.EVENT_READ)
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sel.select(timeout=max(0.0, deadline - time.monotonic())):
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            data += chunk
            lines = data.decode("utf-8", "replace").split("\n")[:-1]
            if any(re.search(pattern, x) for x in lines):
                return lines
    raise AssertionError(f"no line matching {pattern!r} in {data!r}")


def test_exec_status_wait_warns_of_a_job_no_worker_fits(pool: Path, make_workflow: Any) -> None:
    run = submit(pool, make_workflow([{"id": "train", "command": "true", "resources": {"gpus": 2}}]))
    heartbeat(pool, "w1", capacity={"gpus": ["0"]})
    proc = _wait_process(pool, run)
    try:
        lines = _lines_until(proc, "fits no live worker")
    finally:
        proc.kill()
        proc.wait()
    warned = [x for x in lines if "warning" in x]
    assert warned == [f"{run.run_id}: warning: queued job `train` fits no live worker: "
                      "needs 2 GPUs and no live worker has declared more than 1"]


def test_exec_status_wait_warns_when_no_worker_lived_for_a_minute(pool: Path, make_workflow: Any) -> None:
    run = submit(pool, make_workflow([{"id": "a", "command": "true"}]))
    heartbeat(pool, "gone", age=600)  # silent for 10 min, its patience 60 s: 9 min alone
    proc = _wait_process(pool, run)
    try:
        lines = _lines_until(proc, "no live worker for")
    finally:
        proc.kill()
        proc.wait()
    warned = [x for x in lines if "warning" in x]
    assert len(warned) == 1, lines
    # 9 min, or 10 on a machine so loaded that the process took half a minute to look
    assert re.fullmatch(rf"{run.run_id}: warning: no live worker for (9|10) min: start `exec-worker --pool "
                        rf"{re.escape(shlex.quote(str(pool)))}`", warned[0]), warned


def test_exec_submit_wait_warns_of_a_job_no_worker_fits(pool: Path, make_workflow: Any) -> None:
    wf = make_workflow([{"id": "train", "command": "true", "resources": {"gpus": 2}}])
    heartbeat(pool, "w1", capacity={"gpus": ["0"]})
    code = "import sys; from executioner.cli import submit_main; sys.exit(submit_main(sys.argv[1:]))"
    proc = subprocess.Popen([sys.executable, "-c", code, str(wf), "--pool", str(pool), "--wait"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = _lines_until(proc, "fits no live worker")
    finally:
        proc.kill()
        proc.wait()
    assert [x for x in lines if "warning" in x] == [
        "wf-0001: warning: queued job `train` fits no live worker: needs 2 GPUs and no live worker has "
        "declared more than 1"]


def test_exec_status_wait_ends_with_the_run(pool: Path, make_workflow: Any) -> None:
    run = submit(pool, make_workflow([{"id": "a", "command": "exit 2"}]))
    work(pool, run)
    out = cli("exec-status", str(pool), run.run_id, "--wait")
    assert out.returncode == 1, out.stderr
    assert out.stdout.strip().endswith(f"{run.run_id}: failed (done 0, failed 1, blocked 0)")
    assert "warning" not in out.stderr
