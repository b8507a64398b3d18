"""Task arrays on the Slurm-DAG backend (see executioner.backends.slurm_arrays).

The first tests need no cluster; the others run against a real one (scripts/slurm-local.sh)
and are skipped, with the reason, when none answers (failed when EXEC_REQUIRE_SLURM is set).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from executioner import RunLayout
from executioner.backends.slurm_arrays import Cut, index_spec, parts
from executioner.protocol.units import Chunk

from .conftest import cli
from .test_slurm import squeue, status, submit, until, write

pytestmark = pytest.mark.timeout(300)  # these wait on a real scheduler


# ---- no cluster needed ---------------------------------------------------------------------
def test_elements_are_the_first_cut_of_the_array_and_parts_keep_their_numbers() -> None:
    cut = Cut(10, 3)  # elements: 0-2, 3-5, 6-8, 9
    assert [cut.range(k) for k in range(4)] == [(0, 2), (3, 5), (6, 8), (9, 9)]
    # pieces of a chunk (a retry, a rollback of one task) still belong to its element
    assert cut.elements([Chunk("sim", 4, 4), Chunk("sim", 9, 9)]) == [1, 3]
    assert index_spec([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8" and index_spec([3]) == "3"
    # MaxArraySize 1001: element 1500 is index 499 of the second sbatch
    assert parts([0, 1000, 1001, 1500], 1001) == [(0, [0, 1000]), (1, [0, 499])]


def test_a_worker_limited_to_some_chunks_does_not_wait_for_the_others(pool: Path, make_workflow: Any) -> None:
    """An element of a Slurm array runs its chunks and leaves, while other elements' chunks
    still run (before, a limited worker waited for every claim of its run to end)."""
    import threading

    from executioner.protocol import store
    from .conftest import submit as create, work

    run = create(pool, make_workflow([{"id": "sim", "command": "true", "array": 4, "chunk": 2}]))
    other = store.claim(run, "sim.0-1", store.Owner.current("slurm77_0-elsewhere"))
    assert other is not None
    store.write_lock(other)  # a live claim of another element, running all along
    done = threading.Event()
    thread = threading.Thread(target=lambda: (work(pool, run, only_jobs=lambda u: u == "sim.2-3"), done.set()),
                              daemon=True)
    thread.start()
    assert done.wait(20), "the limited worker waited for a chunk that is not its own"
    assert os.path.exists(run.job("sim.2-3", "done")) and os.listdir(run.state_dir("running"))


def test_an_upstream_job_finishing_while_we_look_is_never_taken_for_blocked(
        pool: Path, make_workflow: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """upstream_gone lists queued/ and running/ before done/: a job that moves running ->
    done while it looks is seen in one or the other, never taken for gone (forced here: it
    would be, were done/ listed first)."""
    from executioner.backends import slurm_element
    from executioner.protocol import store
    from executioner.protocol.ready import arrays_of
    from .conftest import submit as create

    run = create(pool, make_workflow([{"id": "a", "command": "true"},
                                      {"id": "c", "command": "true", "dependencies": ["a"]}]))
    waiting_c = json.loads(Path(run.job("c", "waiting")).read_text())
    claim = store.claim(run, "a", store.Owner.current("slurm5-here"))
    assert claim is not None
    real = store.list_jobs

    def listing(r: RunLayout, state: str) -> list[str]:
        if state == "queued" and os.listdir(run.state_dir("running")):
            assert store.finish(claim, dict(claim.record), "done")  # a finishes as we begin to look
        return real(r, state)

    monkeypatch.setattr(slurm_element.store, "list_jobs", listing)
    assert slurm_element.upstream_gone(run, waiting_c, arrays_of(run)) is None
    monkeypatch.setattr(slurm_element.store, "list_jobs", real)
    assert os.path.exists(run.job("a", "done"))
    store.transition(run, "a", "done", "failed")  # and an upstream that failed for good is gone
    assert slurm_element.upstream_gone(run, waiting_c, arrays_of(run)) == "upstream failed or blocked: a"


def test_array_limit_must_be_a_whole_number(tmp_path: Path, slurm_pool: Path) -> None:
    wf = write(tmp_path, [{"id": "a", "command": "true", "array": 3,
                           "slurm": {"additional_parameters": {"array_limit": "many"}}}], "limit")
    out = cli("exec-submit", str(wf), "--pool", str(slurm_pool), "--backend", "slurm")
    assert out.returncode == 2 and not slurm_pool.exists()
    assert "job 'a': key 'slurm': additional_parameters: array_limit" in out.stderr, out.stderr
    out = cli("exec-submit", str(wf), "--pool", str(slurm_pool), "--slurm-param", "array_limit=0")
    assert out.returncode == 2 and "--slurm-param array_limit" in out.stderr, out.stderr


def _jobs(ledger: Path, fail: int | None = None, retry: int | None = None) -> list[dict[str, Any]]:
    sim = f"echo sim {{index}} >> '{ledger}'"
    if fail is not None:
        sim = f"[ -e '{ledger}.fixed' ] || [ {{index}} != {fail} ] || exit 4; " + sim
    if retry is not None:
        sim = f"if [ {{index}} = {retry} ] && [ \"$EXEC_TRY\" = 1 ]; then exit 3; fi; " + sim
    return [{"id": "prepare", "command": f"echo prepare >> '{ledger}'"},
            {"id": "sim", "command": sim, "dependencies": ["prepare"], "array": 12, "chunk": 3, "max_retries": 1,
             "slurm": {"additional_parameters": {"array_limit": 3}}},  # %3: at most 3 elements at once
            {"id": "post", "command": f"echo post {{index}} >> '{ledger}'", "dependencies": ["sim:{index}"],
             "array": 12, "chunk": 3},
            {"id": "agg", "command": f"echo agg >> '{ledger}'", "dependencies": ["post"]},
            {"id": "whole", "command": f"echo whole >> '{ledger}'", "dependencies": ["sim"]}]


def _chunks(run: RunLayout, state: str) -> dict[str, dict[str, Any]]:
    folder = Path(run.state_dir(state))
    return {p.stem: json.loads(p.read_text()) for p in folder.glob("*.json") if p.stem.startswith(("sim.", "post."))}


# ---- a real cluster ------------------------------------------------------------------------
def test_an_array_runs_as_one_slurm_array_before_its_dependents(slurm: None, slurm_pool: Path,
                                                                  tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    run = submit(slurm_pool, write(tmp_path, _jobs(ledger, retry=5), "sweep"), "--backend", "slurm")
    until("the run to finish", lambda: status(run)["state"] == "done", 200)
    lines = ledger.read_text().splitlines()
    assert lines[0] == "prepare" and lines.count("agg") == lines.count("whole") == 1
    for i in range(12):  # each task once (sim:5 failed its first try and was retried), post:i after sim:i
        assert lines.count(f"sim {i}") == 1 and lines.count(f"post {i}") == 1
        assert lines.index(f"sim {i}") < lines.index(f"post {i}")
    assert lines.index("agg") > max(lines.index(f"post {i}") for i in range(12))
    assert lines.index("whole") > max(lines.index(f"sim {i}") for i in range(12))  # (post may still run)
    # one sbatch per job or array: prepare, sim, post, agg, whole
    assert len(status(run)["slurm"]["dag"]) == 5
    done = _chunks(run, "done")
    sim_array = done["sim.0-2"]["slurm"]["job_id"].split("_")[0]
    post_array = done["post.0-2"]["slurm"]["job_id"].split("_")[0]
    for unit, record in done.items():  # each chunk ran in its own element: element k = tasks 3k..3k+2
        k = record["tasks"][0] // 3
        assert record["slurm"]["job_id"] == f"{(sim_array if unit.startswith('sim') else post_array)}_{k}"
        assert record["tries"][-1]["worker"].startswith(f"slurm{record['slurm']['job_id']}-")
    [retried] = [r for r in done.values() if r["tasks"] == [5, 5]]
    assert [t["status"] for t in retried["tries"]] == ["failed", "done"]  # the same element retried it
    assert "--array=0-3%3\n" in Path(run.slurm_dir, "sim.1.0.sbatch").read_text()
    script = Path(run.slurm_dir, "post.1.0.sbatch").read_text()
    assert f"--dependency=aftercorr:{sim_array}" in script and "--array=0-3" in script


def test_a_failed_task_blocks_its_matching_task_and_what_needs_the_whole_array(
        slurm: None, slurm_pool: Path, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    run = submit(slurm_pool, write(tmp_path, _jobs(ledger, fail=4), "blocks"), "--backend", "slurm")
    until("the run to stop", lambda: status(run)["state"] == "failed", 200)
    jobs = {j["id"]: j for j in status(run)["jobs"]}
    assert jobs["sim"]["counts"] == {"done": 11, "failed": 1}
    assert jobs["post"]["counts"] == {"done": 11, "blocked": 1}  # post:4 only: 3 and 5 share its chunk and ran
    assert jobs["agg"]["state"] == "blocked" and jobs["whole"]["state"] == "blocked"
    lines = ledger.read_text().splitlines()
    assert "post 4" not in lines and {"post 3", "post 5"} <= set(lines) and "agg" not in lines
    assert "whole" not in lines
    tasks = {t["task"]: t for t in json.loads(cli("exec-status", run.root, "--job", "post", "--json").stdout)["tasks"]}
    assert tasks["post:4"]["state"] == "waiting" and tasks["post:3"]["state"] == "done"
    # fixed and resumed: only element 1 of each array is submitted again, and the rest follows
    Path(f"{ledger}.fixed").touch()
    out = cli("exec-submit", "--pool", str(slurm_pool), "--resume", run.run_id)
    assert out.returncode == 0, out.stderr
    assert "sim=" in out.stderr and "_[1]" in out.stderr.split("sim=")[1].split()[0]
    until("the resumed run to finish", lambda: status(run)["state"] == "done", 200)
    lines = ledger.read_text().splitlines()
    assert lines.count("sim 4") == 1 and lines.count("post 4") == 1 and lines.count("post 3") == 1
    assert lines.index("sim 4") < lines.index("post 4") < lines.index("agg")


def _sim_and_post(ledger: Path, tasks: int, sim_chunk: int, post_chunk: int) -> list[dict]:
    """Two arrays of ``tasks`` tasks, post:i needing sim:i, each writing its task to the ledger."""
    return [{"id": "sim", "command": f"echo sim {{index}} >> '{ledger}'", "array": tasks, "chunk": sim_chunk},
            {"id": "post", "command": f"echo post {{index}} >> '{ledger}'", "dependencies": ["sim:{index}"],
             "array": tasks, "chunk": post_chunk}]


def test_an_array_longer_than_max_array_size_is_split_and_stays_paired(
        slurm: None, slurm_pool: Path, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    jobs = _sim_and_post(ledger, 10, sim_chunk=2, post_chunk=2)
    out = cli("exec-submit", str(write(tmp_path, jobs, "split")), "--pool", str(slurm_pool), "--backend", "slurm",
              env={"EXEC_SLURM_MAX_ARRAY_SIZE": "2"})  # as if Slurm's MaxArraySize were 2
    assert out.returncode == 0, out.stderr
    run = RunLayout(out.stdout.splitlines()[0].split(" ", 1)[1])
    until("the run to finish", lambda: status(run)["state"] == "done", 200)
    assert len(status(run)["slurm"]["dag"]) == 6  # 5 elements each: indices 0-1, 0-1, 0
    sims = [Path(run.slurm_dir, f"sim.1.{p}.sbatch").read_text() for p in range(3)]
    posts = [Path(run.slurm_dir, f"post.1.{p}.sbatch").read_text() for p in range(3)]
    assert ["--array=0-1" in s for s in sims] == [True, True, False] and "--array=0\n" in sims[2]
    done = _chunks(run, "done")
    for p in range(3):  # part p of post waits for part p of sim, element by element
        assert f"aftercorr:{done[f'sim.{4 * p}-{4 * p + 1}']['slurm']['job_id'].split('_')[0]}\n" in posts[p]
        assert f" {2 * p} 10 2 " in sims[p]  # the element offset of part p
    lines = ledger.read_text().splitlines()
    assert all(lines.index(f"sim {i}") < lines.index(f"post {i}") for i in range(10))


def test_chunks_cut_differently_wait_for_the_whole_array_and_say_so(
        slurm: None, slurm_pool: Path, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    jobs = _sim_and_post(ledger, 6, sim_chunk=2, post_chunk=3)
    out = cli("exec-submit", str(write(tmp_path, jobs, "uneven")), "--pool", str(slurm_pool), "--backend", "slurm")
    assert out.returncode == 0, out.stderr
    assert "array post waits for all of array sim, not task by task: their chunks differ" in out.stderr
    run = RunLayout(out.stdout.splitlines()[0].split(" ", 1)[1])
    until("the run to finish", lambda: status(run)["state"] == "done", 200)
    assert "--dependency=afterok:" in Path(run.slurm_dir, "post.1.0.sbatch").read_text()
    lines = ledger.read_text().splitlines()
    assert max(lines.index(f"sim {i}") for i in range(6)) < min(lines.index(f"post {i}") for i in range(6))


def test_cancel_an_array_then_resume_it(slurm: None, slurm_pool: Path, tmp_path: Path) -> None:
    gate, ledger = tmp_path / "gate", tmp_path / "ledger"
    jobs = [{"id": "sim", "command": f"while [ ! -e '{gate}' ]; do sleep 0.2; done; echo sim {{index}} >> '{ledger}'",
             "array": 4, "chunk": 2},
            {"id": "after", "command": f"echo after >> '{ledger}'", "dependencies": ["sim"]}]
    run = submit(slurm_pool, write(tmp_path, jobs, "cancel"), "--backend", "slurm")
    until("both elements to run a task", lambda: len(os.listdir(run.state_dir("running"))) == 2, 90)
    [array] = [i for i in status(run)["slurm"]["dag"] if squeue([i]) and "_" in squeue([i])[0]]
    assert f"Slurm array {array}" in cli("exec-status", run.root).stdout
    # a resume now would run the array beside its running elements: refused, nothing changed
    out = cli("exec-submit", "--pool", str(slurm_pool), "--resume", run.run_id)
    assert out.returncode == 3 and "chunk sim." in out.stderr and "is running" in out.stderr, out.stderr
    out = cli("exec-submit", "--pool", str(slurm_pool), "--cancel", run.run_id)
    assert out.returncode == 0 and "cancelled 2 Slurm job(s)" in out.stdout, out.stdout + out.stderr
    until("the tasks to be handed back", lambda: not os.listdir(run.state_dir("running")), 60)
    jobs_now = {j["id"]: j for j in status(run)["jobs"]}
    # every task ends failed, started or not: no other Slurm job would take it from queued/
    assert jobs_now["sim"]["counts"] == {"failed": 4} and jobs_now["after"]["state"] == "blocked"
    assert status(run)["state"] == "failed"
    for task in ("sim:0", "sim:1"):
        last = json.loads(cli("exec-status", run.root, "--job", task, "--json").stdout)["tries"][-1]
        assert last["status"] == "preempted" and "`exec-submit --resume` runs it again" in last["reason"], last
    until("Slurm to forget the elements", lambda: not squeue([array]), 60)
    gate.touch()
    out = cli("exec-submit", "--pool", str(slurm_pool), "--resume", run.run_id)
    assert out.returncode == 0, out.stderr
    until("the resumed run to finish", lambda: status(run)["state"] == "done", 200)
    lines = ledger.read_text().splitlines()
    assert sorted(lines[:-1]) == [f"sim {i}" for i in range(4)] and lines[-1] == "after"


def test_ten_thousand_tasks_reach_slurm_in_one_sbatch(slurm: None, slurm_pool: Path, tmp_path: Path) -> None:
    jobs = [{"id": "sweep", "command": "true", "array": 10000,
             "slurm": {"additional_parameters": {"begin": "now+600"}}}]  # submitted, never started here
    out = cli("exec-submit", str(write(tmp_path, jobs, "big")), "--pool", str(slurm_pool), "--backend", "slurm")
    assert out.returncode == 0, out.stderr
    run = RunLayout(out.stdout.splitlines()[0].split(" ", 1)[1])
    [array] = status(run)["slurm"]["dag"]  # one sbatch call for 10,000 tasks
    assert f"sweep={array}_[0-249]" in out.stderr
    pending = subprocess.run(["squeue", "-h", "-r", "-j", array, "-o", "%i %T"], capture_output=True, text=True,
                             timeout=30).stdout.split("\n")
    assert len([line for line in pending if line.endswith("PENDING")]) == 250  # one element per chunk of 40
    queued = [json.loads(p.read_text()) for p in Path(run.state_dir("queued")).glob("*.json")]
    assert len(queued) == 250
    assert {r["slurm"]["job_id"] for r in queued} == {f"{array}_{k}" for k in range(250)}
