"""Task arrays run (issue 11): chunks claimed whole, tasks run on borrowed slots, pieces
placed by outcome, element-wise and whole-array dependencies, a chunk whose worker dies."""

from __future__ import annotations

import collections
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from executioner import PoolLayout, RunLayout, create_run, load_workflow, run_status

from .conftest import cli, files, work


def submit(pool: Path, tmp_path: Path, jobs: list[dict], **top) -> RunLayout:
    wf = tmp_path / "wf.yaml"
    wf.write_text(yaml.safe_dump({"name": "arr", "jobs": jobs, **top}, sort_keys=False))
    return create_run(PoolLayout(str(pool)), load_workflow(str(wf)))


def row(run: RunLayout, job: str) -> dict:
    return next(j for j in run_status(run)["jobs"] if j["id"] == job)


def test_a_sweep_runs_every_task_once_with_its_values(pool: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "inputs.txt").write_text("a b\nc;d\n\ne\n")
    run = submit(pool, tmp_path, [
        {"id": "sim", "command": f"echo \"$EXEC_TASK_ID $EXEC_PARAM_SEED {{seed}} {{temp}}\" > {out}/{{index}}.txt",
         "matrix": {"seed": [1, 2], "temp": [280, 300, 320]}, "outputs": [f"{out}/{{index}}.txt"], "chunk": 4},
        {"id": "lines", "command": "printf '%s\\n' {line}", "each_line": "inputs.txt"},
        {"id": "agg", "command": f"cat {out}/*.txt > {tmp_path}/all.txt", "dependencies": ["sim", "lines"]},
    ])
    assert files(run, "queued") == ["lines.0.json", "lines.1.json", "lines.2.json", "sim.0-3.json", "sim.4-5.json"]
    work(pool, run, slots=2)
    status = run_status(run)
    assert status["state"] == "done" and status["counts"]["done"] == 6 + 3 + 1
    assert row(run, "sim")["counts"] == {"done": 6} and row(run, "sim")["tasks"] == 6
    assert (out / "4.txt").read_text() == "sim:4 2 2 300\n"
    assert sorted((tmp_path / "all.txt").read_text().splitlines())[0] == "sim:0 1 1 280"
    log = Path(run.root, "logs", "lines.1.1.out").read_text()
    assert log == "==> lines:1 try 1 done exit 0 <==\nc;d\n"  # one argument, never code
    journal = [json.loads(x) for x in Path(run.task_journal("sim.0-3", 1)).read_text().splitlines()]
    assert sorted(j["task"] for j in journal) == [0, 1, 2, 3] and all(j["status"] == "done" for j in journal)
    text = Path(run.root, "logs", "sim.0-3.1.out").read_bytes()
    for j in journal:  # each task's output is findable by offset and length
        offset, length = j["out"]
        assert text[offset:offset + length] == b""  # (sim writes to a file, not stdout)


def test_one_task_retried_and_one_failing_for_good(pool: Path, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    run = submit(pool, tmp_path, [
        # task 2 fails once then succeeds; task 5 always fails
        {"id": "a", "array": 8, "chunk": 8, "max_retries": 2,
         "command": f"if [ {{index}} = 5 ]; then exit 7; fi; if [ {{index}} = 2 ] && [ ! -e {marks}/2 ]; "
                    f"then touch {marks}/2; exit 3; fi; echo ok"},
        {"id": "b", "array": 8, "chunk": 8, "command": "echo b {index}", "dependencies": ["a:{index}"]},
        {"id": "c", "command": "echo c", "dependencies": ["a"]},
    ])
    work(pool, run, slots=2)
    assert files(run, "failed") == ["a.5.json"]
    assert sorted(files(run, "done")) == sorted(["a.0-1.json", "a.2.json", "a.3-4.json", "a.6-7.json",
                                                 "b.0-4.json", "b.6-7.json"]) or len(files(run, "done")) >= 4
    failed = json.loads(Path(run.job("a.5", "failed")).read_text())
    assert failed["reason"] == "no retries left (max_retries 2)"
    assert [t["results"]["status"] for t in failed["tries"]] == [["failed"]] * 3
    assert files(run, "waiting") == ["b.5.json", "c.json"]
    status = run_status(run)
    assert status["state"] == "failed"
    assert row(run, "b")["counts"] == {"done": 7, "blocked": 1} and "b:5" in row(run, "b")["reason"]
    assert row(run, "c")["state"] == "blocked"
    assert status["counts"] == {"waiting": 0, "queued": 0, "running": 0, "done": 14, "failed": 1, "blocked": 2}
    retried = [f for f in files(run, "done") if f.startswith("a.2")]
    record = json.loads(Path(run.job(retried[0][:-5], "done")).read_text())
    assert [t["results"]["status"] for t in record["tries"]] == [["failed"], ["done"]]


def test_a_chunk_runs_its_tasks_on_the_free_slots_and_never_more(pool: Path, tmp_path: Path) -> None:
    spans = tmp_path / "spans"
    spans.mkdir()
    run = submit(pool, tmp_path, [{"id": "t", "array": 6, "chunk": 6,
                                   "command": f"s=$(date +%s.%N); sleep 0.5; echo $s $(date +%s.%N) > {spans}/{{index}}"}])
    work(pool, run, slots=3)
    assert run_status(run)["state"] == "done"
    times = sorted(tuple(map(float, (spans / str(i)).read_text().split())) for i in range(6))
    events = sorted([(s, 1) for s, _ in times] + [(e, -1) for _, e in times])
    most, now = 0, 0
    for _, d in events:
        now += d
        most = max(most, now)
    assert most == 3  # three at once (the chunk's own slot and the two others), never four


WORKER = ("import sys\nfrom executioner import Worker\n"
          "Worker(sys.argv[1], run_ids=[sys.argv[2]], slots=1, exit_when_idle=1.0, poll_min=0.02, poll_max=0.2,"
          " sweep_every=0.1, stale_after=float(sys.argv[3])).run()\n")


def test_a_chunk_whose_worker_is_killed_runs_only_its_unfinished_tasks_again(pool: Path, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    run = submit(pool, tmp_path, [{"id": "k", "array": 6, "chunk": 6,
                                   "command": f"sleep 1.1; echo {{index}} >> {ledger}"}])
    proc = subprocess.Popen([sys.executable, "-c", WORKER, str(pool), run.run_id, "60"])
    journal = Path(run.task_journal("k.0-5", 1))
    deadline = time.time() + 30
    while time.time() < deadline and (not journal.exists() or journal.read_text().count("\n") < 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = [str(json.loads(line)["task"]) for line in journal.read_text().splitlines()]
    assert 3 <= len(finished) < 6
    # a new worker on the same host sees the dead pid and takes the chunk over at once
    subprocess.run([sys.executable, "-c", WORKER, str(pool), run.run_id, "60"], timeout=60, check=True)
    counts = collections.Counter(ledger.read_text().split())
    assert sorted(counts) == [str(i) for i in range(6)]
    assert all(counts[t] == 1 for t in finished), counts  # what the journal holds is not run again
    assert run_status(run)["state"] == "done"
    done = {f: json.loads(Path(run.job(f[:-5], "done")).read_text()) for f in files(run, "done")}
    lost_tries = [t for r in done.values() for t in r["tries"] if t["status"] == "lost"]
    assert lost_tries and "process gone" in lost_tries[0]["reason"] or "not running" in lost_tries[0]["reason"]


def test_status_json_counts_tasks(pool: Path, tmp_path: Path) -> None:
    run = submit(pool, tmp_path, [{"id": "big", "array": 10_000, "command": "true"}])
    assert len(files(run, "queued")) == 250  # 40 tasks a chunk
    out = cli("exec-status", str(pool), run.run_id, "--json")
    data = json.loads(out.stdout)
    assert data["counts"]["queued"] == 10_000
    assert data["jobs"] == [{"id": "big", "state": "queued", "tasks": 10_000, "counts": {"queued": 10_000},
                             "tries": None, "exit_code": None, "duration": None, "host": None,
                             "reason": "10000 queued"}]
    pool_view = json.loads(cli("exec-status", str(pool), "--json").stdout)
    assert pool_view["runs"][0]["counts"]["queued"] == 10_000


def test_a_quarantined_chunk_is_shown_lost_and_its_tasks_rebuilt(pool: Path, tmp_path: Path) -> None:
    from executioner.execution.worker import Worker
    from executioner.protocol.scrub import quarantine

    ledger = tmp_path / "ledger"
    run = submit(pool, tmp_path, [{"id": "q", "array": 6, "chunk": 3, "command": f"echo {{index}} >> {ledger}"},
                                  {"id": "after", "command": "true", "dependencies": ["q"]}])
    quarantine(run, run.job("q.3-5", "queued"), "unreadable job file: not valid JSON")
    status = run_status(run)
    assert status["state"] == "running" and row(run, "q")["counts"] == {"queued": 3, "lost": 3}
    worker = Worker(str(pool), run_ids=[run.run_id], exit_when_idle=3.0, poll_min=0.02, poll_max=0.2,
                    sweep_every=0.1)
    worker.lost_every = 0.1
    worker.lost.confirm = 0.2
    worker.run()
    assert sorted(ledger.read_text().split()) == [str(i) for i in range(6)]
    assert run_status(run)["state"] == "done"
    rebuilt = json.loads(Path(run.job("q.3-5", "done")).read_text())
    assert rebuilt["tries"][0]["status"] == "lost" and "quarantined" in rebuilt["tries"][0]["reason"]


def test_job_view_of_an_array_and_of_one_task(pool: Path, tmp_path: Path) -> None:
    run = submit(pool, tmp_path, [{"id": "r", "array": {"start": 100, "stop": 130, "step": 10},
                                   "command": "echo r{index}; test {index} != 110"}])
    work(pool, run)
    tasks = json.loads(cli("exec-status", str(pool), run.run_id, "--job", "r", "--json").stdout)["tasks"]
    assert [(t["task"], t["state"], t["exit_code"]) for t in tasks] == [
        ("r:100", "done", 0), ("r:110", "failed", 1), ("r:120", "done", 0)]
    one = json.loads(cli("exec-status", str(pool), run.run_id, "--job", "r:110", "--json").stdout)
    assert one["state"] == "failed" and one["unit"] == "r.1" and [t["exit_code"] for t in one["tries"]] == [1]
    out = Path(one["tries"][0]["stdout"]).read_text()
    assert "==> r:110 try 1 failed exit 1 <==\nr110\n" in out
    bad = cli("exec-status", str(pool), run.run_id, "--job", "r:105")
    assert bad.returncode != 0 and "no task r:105 in this run (its tasks are r:100 to r:120)" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_the_slurm_dag_backend_plans_arrays(pool: Path, tmp_path: Path) -> None:
    """(Refused with exit 2 before the backend took arrays: see tests/test_slurm_arrays.py.)"""
    wf = tmp_path / "wf.yaml"
    wf.write_text("jobs:\n  - {id: a, command: x, array: 3}\n")
    out = cli("exec-submit", str(wf), "--pool", str(pool), "--backend", "slurm", "--dry-run")
    assert out.returncode == 0 and "a.0" in out.stdout, out.stdout + out.stderr


def test_a_chunk_split_by_a_reaper_while_its_worker_commits_is_not_recreated(pool: Path, tmp_path: Path) -> None:
    """RACE: the reaper takes a stale chunk (placing it as pieces under other names) while its
    worker finishes; the worker's fence fails and it looks for its chunk, finds its name
    nowhere, and must not put it back (its tasks would run, and complete, twice). Found by
    scripts/chaos.py --array."""
    from executioner.execution.worker import Worker
    from executioner.liveness.reap import requeue_lost
    from executioner.protocol import store

    run = submit(pool, tmp_path, [{"id": "c", "array": 4, "chunk": 4, "command": "true"}])
    worker = Worker(str(pool), run_ids=[run.run_id])
    claim = store.claim(run, "c.0-3", worker.owner)
    store.write_lock(claim)
    lock = json.loads(Path(claim.lock).read_text())
    Path(run.task_journal("c.0-3", 1)).write_text('{"task": 0, "status": "done", "exit": 0}\n')
    assert requeue_lost(run, "c.0-3", claim.token, claim.record, "stale", lock) is not None
    assert sorted(files(run, "done")) == ["c.0.json"] and files(run, "queued") == ["c.1-3.json"]
    assert not store.finish_pieces(claim, [("done", "c.0-3", dict(claim.record))])
    worker._vanished(claim, "its job file disappeared from running/ before its result was recorded")
    assert files(run, "queued") == ["c.1-3.json"] and files(run, "done") == ["c.0.json"]


def _killed_in_commit(pool: Path, tmp_path: Path, swapped: bool) -> tuple[RunLayout, collections.Counter]:
    """A worker ends a chunk whose tasks all succeeded (one piece: it leaves as a job does)
    and is SIGKILLed inside the commit, before or after the new record is swapped in."""
    import os
    ledger = tmp_path / "ledger"
    run = submit(pool, tmp_path, [{"id": "s", "array": 3, "chunk": 3, "command": f"echo {{index}} >> {ledger}"}])
    env = dict(os.environ, EXEC_TEST_COMMIT_PAUSE="3")
    proc = subprocess.Popen([sys.executable, "-c", WORKER, str(pool), run.run_id, "60"], env=env)
    running = Path(run.state_dir("running"))
    deadline = time.time() + 30
    seen = False
    while time.time() < deadline and not seen:
        for folder in running.glob("s.0-2@*+*"):
            record = folder / "s.0-2.json"
            try:
                tries = json.loads(record.read_text())["tries"]
            except (OSError, ValueError):
                continue
            seen = bool(tries) == swapped
        time.sleep(0.02)
    assert seen
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    subprocess.run([sys.executable, "-c", WORKER, str(pool), run.run_id, "60"], timeout=60, check=True)
    return run, collections.Counter(ledger.read_text().split())


def test_a_whole_chunk_killed_after_its_result_was_swapped_in_is_completed_not_rerun(pool: Path,
                                                                                     tmp_path: Path) -> None:
    """RACE: a chunk leaving as one piece swaps its result in over the fenced claim inside its
    private folder; its worker dies before the final rename. The recoverer completes it as
    its intent says: done, with its one try, and no task runs again."""
    run, counts = _killed_in_commit(pool, tmp_path, swapped=True)
    assert counts == {"0": 1, "1": 1, "2": 1}
    assert files(run, "done") == ["s.0-2.json"]
    tries = json.loads(Path(run.job("s.0-2", "done")).read_text())["tries"]
    assert [t["status"] for t in tries] == ["done"]
    assert run_status(run)["counts"]["done"] == 3


def test_a_whole_chunk_killed_before_its_result_was_swapped_in_keeps_its_journal(pool: Path,
                                                                                 tmp_path: Path) -> None:
    """The same crash one step earlier: the fenced claim is still the old record, so the try
    counts as lost, but its journal says every task finished: none runs again."""
    run, counts = _killed_in_commit(pool, tmp_path, swapped=False)
    assert counts == {"0": 1, "1": 1, "2": 1}
    assert run_status(run)["counts"]["done"] == 3
    assert run_status(run)["state"] == "done"


def test_a_task_killed_by_slurms_signal_before_our_handler_is_preempted(pool: Path, tmp_path: Path) -> None:
    """RACE (chunk.ChunkTry._run_task): Slurm signals every process of a job at once; a task
    that died of SIGTERM a moment before the worker's own handler marked it stopping was
    recorded failed (a fresh CI saw it on a real Slurm), not preempted as a plain job is."""
    import os
    import threading

    from executioner import Worker

    marker = tmp_path / "marker"
    run = submit(pool, tmp_path, [{"id": "sim", "command": f"touch '{marker}'; kill -TERM $$", "array": 1}])
    worker = Worker(str(pool), slots=1, exit_when_idle=5, poll_min=0.02, poll_max=0.2)

    def signal_later() -> None:  # our SIGTERM handler, 0.1 s after the task died of its own
        while not marker.exists():
            time.sleep(0.01)
        time.sleep(0.1)
        worker.stop("stopped by Slurm (SIGTERM)")

    threading.Thread(target=signal_later, daemon=True).start()
    worker.run()
    [record] = [json.loads((Path(run.state_dir(s)) / n).read_text())
                for s in ("queued", "failed") for n in os.listdir(run.state_dir(s))]
    assert record["tries"][-1]["status"] == "preempted", record["tries"]
