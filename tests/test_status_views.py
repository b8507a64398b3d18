"""The run view of a big run as a user reads it: filters, failures first, a summary above a
few hundred rows (reading only the files it shows), full widths through a pipe."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest

from executioner import RunLayout
from executioner.protocol import store

from .conftest import cli, submit, work

PLAIN = 240  # plain jobs besides the named ones: more rows than the summary's limit


def _claim(run: RunLayout, job: str) -> store.Claim:
    """``job`` running: claimed by this process (alive, so nobody reaps it), lock written."""
    claim = store.claim(run, job, store.Owner.current("test-holder"))
    assert claim is not None
    store.write_lock(claim)
    return claim


@pytest.fixture
def big_run(pool: Path, make_workflow: Any) -> RunLayout:
    """A failed job ``bad`` (its stderr ends with ``the last words``), ``after`` blocked by it,
    ``slow`` running, an array ``sweep`` of 5 tasks done, and PLAIN done jobs ``j000``..."""
    jobs: list[dict[str, Any]] = [
        {"id": "bad", "command": "echo first >&2; echo 'the last words' >&2; exit 3"},
        {"id": "after", "command": "true", "dependencies": ["bad"]},
        {"id": "slow", "command": "true"},
        {"id": "sweep", "array": 5, "command": "true"},
    ]
    jobs += [{"id": f"j{i:03d}", "command": "true"} for i in range(PLAIN)]
    run = submit(pool, make_workflow(jobs))
    _claim(run, "slow")
    # every other unit once (the array is 5 chunks of one): a worker waits on for a job
    # running elsewhere, so it is told how many to take
    work(pool, run, slots=2, max_jobs=1 + 5 + PLAIN)
    assert len(os.listdir(run.state_dir("failed"))) == 1 and len(os.listdir(run.state_dir("queued"))) == 0
    return run


def _rows(out: str) -> list[list[str]]:
    """The table's rows (after the title and the header), split into cells."""
    return [line.split() for line in out.splitlines()[2:] if line and not line.startswith(("…", " "))]


@pytest.mark.timeout(60)
def test_a_big_run_shows_a_summary_failures_and_running_first(big_run: RunLayout) -> None:
    out = cli("exec-status", big_run.root)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "failed 1" in lines[0] and "running 1" in lines[0] and f"done {PLAIN + 5}" in lines[0], lines[0]
    rows = _rows(out.stdout)
    assert [r[:2] for r in rows] == [["bad", "failed"], ["slow", "running"], ["sweep", "[5"]], rows
    assert "exit code 3" in lines[2] and "j000" not in out.stdout
    assert lines[-1] == (f"… {PLAIN + 1} more rows not shown (done {PLAIN}, blocked 1): "
                         "--all shows every row, --state STATE those of a state"), lines[-1]
    every = cli("exec-status", big_run.root, "--all")
    assert every.returncode == 0, every.stderr
    rows = _rows(every.stdout)
    assert len(rows) == PLAIN + 4 and "not shown" not in every.stdout
    assert [r[0] for r in rows[:2]] == ["bad", "slow"]
    assert [r[0] for r in rows[2:]] == sorted(r[0] for r in rows[2:])  # the rest by id
    data = json.loads(cli("exec-status", big_run.root, "--json").stdout)
    assert len(data["jobs"]) == PLAIN + 4 and set(data["jobs"][0]) == {"id", "state", "tries", "exit_code",
                                                                       "duration", "host", "reason"}
    assert [j["id"] for j in data["jobs"]] == sorted(j["id"] for j in data["jobs"])  # --json: unchanged


@pytest.mark.timeout(60)
def test_state_filters_and_a_wrong_state_name(big_run: RunLayout) -> None:
    out = cli("exec-status", big_run.root, "--state", "failed,blocked")
    assert out.returncode == 0, out.stderr
    assert [r[:2] for r in _rows(out.stdout)] == [["bad", "failed"], ["after", "blocked"]]
    assert "upstream failed: bad" in out.stdout and "not shown" not in out.stdout
    data = json.loads(cli("exec-status", big_run.root, "--state", "running", "--json").stdout)
    assert [(j["id"], j["state"]) for j in data["jobs"]] == [("slow", "running")]
    assert data["counts"]["done"] == PLAIN + 5  # the counts stay the run's
    done = cli("exec-status", big_run.root, "--state", "done")  # named: shown, up to the limit
    rows = _rows(done.stdout)
    assert rows[0][:2] == ["j000", "done"] and len(rows) < PLAIN and "more rows not shown" in done.stdout
    assert len(_rows(cli("exec-status", big_run.root, "--state", "done", "--all").stdout)) == PLAIN + 1
    for bad in ("failed,nope", "", "failed,,running"):
        out = cli("exec-status", big_run.root, "--state", bad)
        assert out.returncode == 2 and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr, out.stderr
        assert "--state" in out.stderr and "waiting, queued, running" in out.stderr, out.stderr


@pytest.mark.timeout(60)
def test_the_summary_reads_only_the_files_it_shows(big_run: RunLayout, monkeypatch: pytest.MonkeyPatch) -> None:
    from executioner.views.status import run_status

    opened: list[str] = []
    real_open = os.open

    def spy(path: Any, *a: Any, **kw: Any) -> int:
        opened.append(os.fsdecode(path))
        return real_open(path, *a, **kw)

    monkeypatch.setattr(os, "open", spy)
    data = run_status(big_run, limit=200)
    assert [j["id"] for j in data["jobs"]] == ["bad", "slow", "sweep"]
    for state in ("done", "queued", "waiting"):
        read = [p for p in opened if p.startswith(big_run.state_dir(state) + os.sep)]
        assert len(read) <= 1, (state, read)  # one chunk file of the array, for its dependencies
    full = {r["id"]: r for r in run_status(big_run)["jobs"]}
    assert data["jobs"] == [full[j["id"]] for j in data["jobs"]]  # the same rows as the full view


@pytest.mark.timeout(120)
def test_attempts_of_a_big_run_answers_from_the_attempt_records(pool: Path, make_workflow: Any) -> None:
    from executioner.views.history import FULL_UP_TO

    n = FULL_UP_TO + 1
    run = submit(pool, make_workflow([{"id": f"j{i}", "command": "true", "dependencies": [f"j{i - 1}"] if i else []}
                                      for i in range(n)]))
    out = cli("exec-status", run.root, "--attempts")
    assert out.returncode == 0, out.stderr
    assert f"run {n}" in out.stdout and "--attempts --all" in out.stdout and "would be attempt" not in out.stdout
    every = cli("exec-status", run.root, "--attempts", "--all")
    assert every.returncode == 0, every.stderr
    lines = every.stdout.splitlines()
    assert "a plain resume now would be attempt 2" in every.stdout and len(lines) < 40, every.stdout
    assert any(f"{n - 1} jobs (waiting" in line and "j1, j2, j3, j4, j5, …" in line for line in lines), lines
    data = json.loads(cli("exec-status", run.root, "--attempts", "--json").stdout)  # --json: everything
    assert data["attempts"][0]["tries"] == {} and len(data["next"]["steps"]) == n


def test_plan_steps_are_one_line_per_kind_of_move_unless_verbose() -> None:
    from executioner.coordinator.plantext import step_lines

    rows = [("run", "bad", "failed in attempt 1: requeued", "failed", "queued")]
    rows += [("run", f"j{i}", "downstream of bad", "waiting", "waiting") for i in range(7)]
    rows += [("skip", f"d{i}", f"done in attempt {1 + i % 2}", "done", None) for i in range(9)]
    assert step_lines(rows) == [
        "  run     bad  failed in attempt 1: requeued",
        "  run     7 jobs (waiting -> waiting): j0, j1, j2, j3, j4, …: downstream of bad",
        "  skip    9 jobs (done, left as they are): d0, d1, d2, d3, d4, …"]
    assert len(step_lines(rows, verbose=True)) == len(rows)


@pytest.mark.timeout(60)
def test_through_a_pipe_nothing_is_cut_to_80_columns(pool: Path, make_workflow: Any) -> None:
    deep = pool / ("a-long-folder-name-" * 6)
    run = submit(deep, make_workflow([{"id": "a-job-with-a-long-name-" * 3 + "x", "command": "echo hi"}]))
    work(deep, run)
    job = "a-job-with-a-long-name-" * 3 + "x"
    out = cli("exec-status", run.root, "--job", job)  # stdout is a pipe
    assert out.returncode == 0, out.stderr
    log = os.path.join(run.root, "logs", f"{job}.1.out")
    assert len(log) > 200 and any(log in line for line in out.stdout.splitlines()), out.stdout
    table = cli("exec-status", str(deep))
    assert any(run.run_id in line and "done 1" in line for line in table.stdout.splitlines()), table.stdout
    attempts = cli("exec-status", run.root, "--attempts")
    assert re.search(r"submit .* done 1", attempts.stdout) and re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d", attempts.stdout), \
        attempts.stdout  # its time not wrapped over two lines


@pytest.mark.timeout(60)
def test_exec_status_takes_the_pool_from_exec_pool(pool: Path, make_workflow: Any, tmp_path: Path) -> None:
    run = submit(pool, make_workflow([{"id": "a", "command": "true"}]))
    env = {"EXEC_POOL": str(pool)}
    out = cli("exec-status", env=env)  # the pool view
    assert out.returncode == 0 and run.run_id in out.stdout and "last update" in out.stdout, out.stderr
    out = cli("exec-status", run.run_id, "--json", env=env)  # a run id, not a path: a run of $EXEC_POOL
    assert out.returncode == 0 and json.loads(out.stdout)["run_id"] == run.run_id, out.stderr
    assert json.loads(cli("exec-status", run.run_id, "--job", "a", "--json", env=env).stdout)["job"] == "a"
    out = cli("exec-status", run.root, "--json", env={"EXEC_POOL": str(tmp_path / "elsewhere")})  # a path wins
    assert out.returncode == 0 and json.loads(out.stdout)["run_id"] == run.run_id, out.stderr
    for args, env in (((), {"EXEC_POOL": ""}), ((run.run_id,), {"EXEC_POOL": ""}), (("nope-0001",), env)):
        out = cli("exec-status", *args, env=env, cwd=str(tmp_path))
        assert out.returncode == 2 and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr, out.stderr
    assert "EXEC_POOL" in cli("exec-status", env={"EXEC_POOL": ""}).stderr


@pytest.mark.timeout(60)
def test_dry_run_and_resume_print_a_summary_of_the_plan_unless_verbose(pool: Path, make_workflow: Any) -> None:
    n = 30
    run = submit(pool, make_workflow([{"id": f"j{i:02d}", "command": "true",
                                       "dependencies": [f"j{i - 1:02d}"] if i else []} for i in range(n)]))
    work(pool, run)
    args = ("exec-submit", "--pool", str(pool), "--resume", run.run_id, "--rollback-to", "j00")
    short = cli(*args, "--dry-run")
    assert short.returncode == 0, short.stderr
    lines = short.stdout.splitlines()
    assert len(lines) < 12 and f"  run     {n - 1} jobs (done -> waiting): j01, j02, j03, j04, j05, …: " \
        "downstream of j00" in lines, short.stdout
    every = cli(*args, "--dry-run", "--verbose")
    assert all(any(f" j{i:02d} " in line for line in every.stdout.splitlines()) for i in range(n)), every.stdout
    done = cli(*args)  # the resume itself: the same summary on stderr
    assert done.returncode == 0 and len(done.stderr.splitlines()) < 12 and f"{n - 1} jobs (done -> " in done.stderr, \
        done.stderr


# ---- logs ------------------------------------------------------------------------------------
@pytest.fixture
def logged_run(pool: Path, make_workflow: Any) -> RunLayout:
    """``flaky``: try 1 fails, try 2 passes, each printing which try it is; ``bad`` fails
    with two lines of stderr; ``sweep``: an array of 3 tasks printing their index."""
    run = submit(pool, make_workflow([
        {"id": "flaky", "command": 'echo "out $EXEC_TRY"; echo "more $EXEC_TRY"; echo "err $EXEC_TRY" >&2; '
                                   'test "$EXEC_TRY" -ge 2', "max_retries": 1},
        {"id": "bad", "command": "echo first >&2; echo 'the last words' >&2; exit 3"},
        {"id": "sweep", "array": 3, "command": "echo task {index}; echo oops {index} >&2"},
    ]))
    work(pool, run)
    return run


@pytest.mark.timeout(60)
def test_log_prints_a_jobs_last_try_or_try_n(logged_run: RunLayout) -> None:
    root = logged_run.root
    assert cli("exec-status", root, "--log", "flaky").stdout == "out 2\nmore 2\n"
    assert cli("exec-status", root, "--log", "flaky", "--try", "1", "--stderr").stdout == "err 1\n"
    assert cli("exec-status", root, "--log", "flaky", "--tail", "1").stdout == "more 2\n"
    both = cli("exec-status", root, "--log", "flaky", "--both").stdout
    assert both == (f"==> {root}/logs/flaky.2.out <==\nout 2\nmore 2\n\n"
                    f"==> {root}/logs/flaky.2.err <==\nerr 2\n"), both
    data = json.loads(cli("exec-status", root, "--log", "flaky", "--try", "1", "--both", "--json").stdout)
    assert (data["job"], data["try"], data["status"]) == ("flaky", 1, "failed")
    assert [(g["stream"], g["text"], g["missing"]) for g in data["logs"]] == [
        ("stdout", "out 1\nmore 1\n", None), ("stderr", "err 1\n", None)]
    # the run view: a failed job's reason ends with its last line of stderr
    row = next(r for r in json.loads(cli("exec-status", root, "--json").stdout)["jobs"] if r["id"] == "bad")
    assert row["reason"].startswith("exit code 3") and row["reason"].endswith("; stderr: the last words"), row
    assert "; stderr: the last words" in cli("exec-status", root, "--state", "failed").stdout


@pytest.mark.timeout(60)
def test_log_of_an_array_task_is_its_part_of_the_chunk_log(logged_run: RunLayout) -> None:
    root = logged_run.root
    for i in range(3):
        assert cli("exec-status", root, "--log", f"sweep:{i}").stdout == f"task {i}\n"
        assert cli("exec-status", root, "--log", f"sweep:{i}", "--stderr").stdout == f"oops {i}\n"
    data = json.loads(cli("exec-status", root, "--log", "sweep:2", "--json").stdout)
    assert data["job"] == "sweep:2" and data["logs"][0]["text"] == "task 2\n" and data["logs"][0]["length"] == 7


@pytest.mark.timeout(60)
def test_missing_logs_and_wrong_log_requests_are_one_line(logged_run: RunLayout) -> None:
    root = logged_run.root
    os.unlink(os.path.join(root, "logs", "flaky.1.out"))  # as a try lost with its node may leave it
    out = cli("exec-status", root, "--log", "flaky", "--try", "1")
    assert out.returncode == 1 and out.stdout == "" and out.stderr.count("\n") == 1, out
    assert "flaky.1.out: no such file: try 1 of flaky (failed" in out.stderr, out.stderr
    for args, says in ((("--log", "nope"), "no job 'nope'"), (("--log", "flaky", "--try", "5"), "no try 5"),
                       (("--try", "1"), "--try goes with --log"), (("--log", "sweep:7"), "no task sweep:7"),
                       (("--log", "flaky", "--follow", "--json"), "not with --json"),
                       (("--log", "flaky", "--stderr", "--both"), "not allowed with")):
        out = cli("exec-status", root, *args)
        assert out.returncode == 2 and out.stderr.count("\n") == 1 and says in out.stderr, (args, out.stderr)


@pytest.mark.timeout(60)
def test_follow_prints_a_running_try_as_it_grows_and_stops_when_it_ends(pool: Path, make_workflow: Any) -> None:
    import subprocess
    import sys
    import time

    run = submit(pool, make_workflow([{"id": "talker", "command": "for i in 1 2 3 4; do echo line $i; sleep 0.6; done"}]))
    worker = subprocess.Popen([sys.executable, "-m", "executioner", "worker", "--pool", str(pool),
                               "--exit-when-idle", "0.5", "-q"])
    try:
        deadline = time.monotonic() + 20
        while not any(n.startswith("talker@") for n in os.listdir(run.state_dir("running"))):
            assert time.monotonic() < deadline, "the job never started"
            time.sleep(0.05)
        follower = subprocess.Popen([sys.executable, "-m", "executioner", "status", run.root, "--log", "talker",
                                     "--follow"], stdout=subprocess.PIPE, text=True)
        assert follower.stdout is not None
        first = follower.stdout.readline()
        still_running = bool(os.listdir(run.state_dir("running")))
        rest = follower.stdout.read()
        assert follower.wait(timeout=20) == 0
        assert first + rest == "line 1\nline 2\nline 3\nline 4\n", first + rest
        assert still_running, "the first line came only after the try ended"
        assert os.listdir(run.state_dir("done")) == ["talker.json"]  # it stopped once the try had ended
    finally:
        worker.wait(timeout=20)


@pytest.mark.timeout(30)
def test_follow_reads_once_more_after_the_claim_is_gone(tmp_path: Path) -> None:
    """RACE: the try writes its last output and its claim leaves running/ between two polls:
    that output is still printed (the claim is looked at before the logs are read)."""
    from executioner.views.logs import Log, TryLogs, follow

    log, claim = tmp_path / "a.1.out", tmp_path / "a@t.json"
    log.write_bytes(b"one\n")
    claim.write_text("{}")
    printed: list[bytes] = []

    def write(g: Log, data: bytes) -> None:
        printed.append(data)
        if len(printed) == 1:  # right after the first read: the last words, then the claim goes
            with open(log, "ab") as f:
                f.write(b"two\n")
            claim.unlink()

    found = TryLogs("r-0001", "a", 1, "running", None, [Log("stdout", str(log))], claim=str(claim))
    follow(found, write, interval=0.01)
    assert b"".join(printed) == b"one\ntwo\n"


@pytest.mark.timeout(60)
def test_log_of_a_job_caught_leaving_running_is_its_last_try(logged_run: RunLayout) -> None:
    """RACE: a job whose result is already swapped into its private folder (a commit caught
    half-way, or stalled) shows the try it ran, not a try that never started."""
    from executioner.views.logs import find_logs, read_part

    folder = logged_run.private("flaky", "abcdef123456", "done-0a1b2c-999-elsewhere")
    os.mkdir(folder)
    os.rename(logged_run.job("flaky", "done"), os.path.join(folder, "flaky.json"))
    found = find_logs(logged_run, "flaky", None, ("stdout",))
    assert found.try_number == 2 and read_part(found.logs[0])[0] == b"out 2\nmore 2\n"
    assert cli("exec-status", logged_run.root, "--log", "flaky").stdout == "out 2\nmore 2\n"


def test_a_running_job_counts_its_try_under_way(pool: Path, make_workflow: Any) -> None:
    """A running job's first try showed `tries 0` and `--job` said "no tries yet"."""
    run = submit(pool, make_workflow([{"id": "a", "command": "true"}], name="one"))
    _claim(run, "a")
    out = cli("exec-status", run.root, "--json")
    assert out.returncode == 0, out.stderr
    assert [(j["id"], j["state"], j["tries"]) for j in json.loads(out.stdout)["jobs"]] == [("a", "running", 1)]
    out = cli("exec-status", run.root, "--job", "a", "--json")
    assert out.returncode == 0, out.stderr
    tries = json.loads(out.stdout)["tries"]
    assert [(t["try"], t["status"], t["host"]) for t in tries] == [(1, "running", os.uname().nodename)]
    assert tries[0]["stdout"].endswith("a.1.out")


def test_after_cancel_slurm_dag_jobs_are_not_shown_as_queued_for_a_slurm_job(pool: Path, make_workflow: Any) -> None:
    """`exec-submit --cancel` left the run `running` and its jobs `queued / Slurm job N`
    for ever. The cancel's marker (slurm-cancelled.json, as backends.slurm.cancel_run writes
    it) makes the run `cancelled`, says how to resume, and names the cancelled Slurm jobs."""
    from executioner.protocol import fsio

    run = submit(pool, make_workflow([{"id": "a", "command": "true"},
                                      {"id": "b", "command": "true", "dependencies": ["a"]}], name="dag"))
    record = json.loads(Path(run.record).read_text())
    fsio.atomic_write_json(run.record, dict(record, backend="slurm"))
    for job, state, slurm_id in (("a", "queued", "123"), ("b", "waiting", "124")):
        job_file = json.loads(Path(run.job(job, state)).read_text())
        fsio.atomic_write_json(run.job(job, state), dict(job_file, slurm={"job_id": slurm_id, "attempt": 1}))
    before = json.loads(cli("exec-status", run.root, "--json").stdout)
    assert before["state"] == "running" and before["jobs"][0]["reason"] == "Slurm job 123"
    fsio.atomic_write_json(run.slurm_cancelled, {"at": 1796300000.0, "by": "me@login1", "ids": ["123", "124"]})
    out = cli("exec-status", run.root, "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["state"] == "cancelled" and "by me@login1" in data["reason"]
    assert f"--resume {run.run_id}` submits them again" in data["reason"]
    assert [j["reason"] for j in data["jobs"]] == ["Slurm job 123 cancelled (exec-submit --cancel)",
                                                   "Slurm job 124 cancelled (exec-submit --cancel)"]
    pool_view = cli("exec-status", str(pool))
    assert "cancelled" in pool_view.stdout, pool_view.stdout
    # a broken marker says nothing (the run is shown as before), never a traceback
    Path(run.slurm_cancelled).write_text("{not json")
    assert json.loads(cli("exec-status", run.root, "--json").stdout)["state"] == "running"


def test_a_finished_runs_last_update_stays_put_while_workers_sweep(pool: Path, make_workflow: Any) -> None:
    run = submit(pool, make_workflow([{"id": "a", "command": "true"},
                                      {"id": "b", "command": "true", "dependencies": ["a"]}], name="fin"))
    work(pool, run)
    old = 1_700_000_000  # 2023: every folder of the finished run last changed then
    for d in run.all_dirs():
        os.utime(d, (old, old))
    work(pool, run, idle=0.5)  # a worker serving the pool sweeps the finished run (its lease in waiting/)
    assert os.stat(run.state_dir("waiting")).st_mtime > old  # the sweep did touch waiting/
    out = cli("exec-status", str(pool))
    assert out.returncode == 0, out.stderr
    assert "2023-11-1" in out.stdout, out.stdout  # 1_700_000_000 is 2023-11-14/15 in any time zone


def test_job_view_of_a_waiting_job_says_blocked_or_what_it_waits_for(pool: Path, make_workflow: Any) -> None:
    """--job said `waiting` for a job the run view showed `blocked` (upstream failed)."""
    jobs = [{"id": "a", "command": "exit 1"}, {"id": "b", "command": "true", "dependencies": ["a"]},
            {"id": "c", "command": "true", "dependencies": ["b"]}]
    fresh = submit(pool, make_workflow(jobs, name="fresh"))
    data = json.loads(cli("exec-status", fresh.root, "--job", "c", "--json").stdout)
    assert (data["state"], data["reason"]) == ("waiting", "waits for b")
    run = submit(pool, make_workflow(jobs, name="blk"))
    work(pool, run)
    data = json.loads(cli("exec-status", run.root, "--job", "c", "--json").stdout)
    assert (data["state"], data["reason"]) == ("blocked", "upstream failed: a")
    out = cli("exec-status", run.root, "--job", "c")
    assert "job c: blocked (upstream failed: a)" in out.stdout, out.stdout


def test_a_run_nobody_serves_says_no_live_worker_and_for_how_long(pool: Path, make_workflow: Any) -> None:
    """A run stayed `running` with no word that no worker was there to run it."""
    run = submit(pool, make_workflow([{"id": "a", "command": "true"}], name="alone"))
    data = json.loads(cli("exec-status", run.root, "--json").stdout)
    assert data["state"] == "running" and data["warning"].startswith("no live worker: start `exec-worker --pool")
    gone = pool / "workers" / "w-old.json"  # a worker of another host, its last heartbeat 5 min ago
    gone.write_text(json.dumps({"worker": "w-old", "host": "elsewhere", "pid": 1, "runs": None,
                                "heartbeat": 10, "stale_after": 60}))
    os.utime(gone, (time.time() - 300, time.time() - 300))
    out = cli("exec-status", str(pool))
    assert "queued 1; no live worker for 5 min: start" in out.stdout, out.stdout
    assert "no live worker for 5 min" in cli("exec-status", run.root).stdout.splitlines()[0]
    os.utime(gone)  # it beats again: live, and serving every run
    assert "warning" not in json.loads(cli("exec-status", run.root, "--json").stdout)
    work(pool, run)
    assert "warning" not in json.loads(cli("exec-status", str(pool), "--json").stdout)["runs"][0]


def test_the_run_view_says_when_queued_jobs_fit_no_live_worker(pool: Path, make_workflow: Any) -> None:
    run = submit(pool, make_workflow([{"id": "train", "command": "true", "resources": {"gpus": 2}},
                                      {"id": "any", "command": "true"}], name="gpu"))
    beat = pool / "workers" / "w-cpu.json"  # a live worker of this host with no GPU
    beat.write_text(json.dumps({"worker": "w-cpu", "host": os.uname().nodename, "pid": os.getpid(),
                                "pid_start": None, "runs": None, "heartbeat": 10, "stale_after": 60,
                                "capacity": {"cpus": 4, "gpus": [], "mem_gb": 8, "resources": {}, "tags": []}}))
    data = json.loads(cli("exec-status", run.root, "--json").stdout)
    assert data["warning"] == ("queued job `train` fits no live worker: needs 2 GPUs and no live worker "
                               "has declared more than 0 (see --why)"), data
    assert "fits no live worker" in cli("exec-status", str(pool)).stdout
