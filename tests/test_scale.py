"""Plain jobs at scale: the shortcuts that make 100,000 jobs cheap must say what the slow
paths said. The quick shape check of a job record passes nothing the full check refuses;
the run view read in parallel and its streamed ``--json`` give what a user saw before;
a submit that writes its job files from several threads still publishes nothing until
every file is whole. (The figures themselves are measured by scripts/status_shapes.py,
never asserted here.)"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from executioner.protocol import records

from .conftest import cli, submit, work

A_TRY = {"status": "failed", "try": 1, "attempt": 1, "exit_code": 1, "signal": None, "reason": "exit code 1",
         "worker": "w-1", "host": "h", "stdout": "logs/a.1.out", "stderr": "logs/a.1.err", "worker_pid": 12,
         "pid": 13, "start": 1.5e9, "end": 1.5e9 + 2, "duration": 2.0, "start_storage": 1.5e9}
A_SPEC = {"always_rerun": False, "command": "true", "env": {"A": "1"}, "kill_grace": 5.0, "max_lost": 3,
          "max_retries": 0, "max_retry_time": None, "outputs": ["o"], "retry_backoff": 1.0, "retry_delay": 0.0,
          "retry_jitter": 0.0, "retry_on_exit_codes": [1, 2], "retry_on_status": ["failed", "timeout"], "slurm": {},
          "timeout": None, "workdir": None}
A_RECORD = {"attempt": 1, "definition_hash": "ab", "dependencies": ["x"], "dependents": ["y"], "format": 2,
            "held": False, "id": "a", "last_exit_code": 1, "not_before": None, "run_id": "r-0001",
            "skipped": None, "slurm": None, "reason": None, "retry_delay_s": 0.0, "spec": A_SPEC,
            "tries": [A_TRY, {**A_TRY, "try": 2, "status": "done", "exit_code": 0}]}
VALUES = [None, True, False, 0, -1, 7, 2**31, -(2**31), 2**40, 1.5, -2.5, 1e12, 1e300, "", "x", [], [1], ["a"],
          [None], [True], [["A", "1"]], {}, {"a": 1}, {"a": "b"}, {"status": "done"}]


def variants(record: dict[str, Any]):
    """``record`` with each of its keys (and those of its spec and of each try) set to each
    of VALUES, or removed."""
    paths = [(k,) for k in record] + [("spec", k) for k in record["spec"]]
    paths += [("tries", i, k) for i, t in enumerate(record["tries"]) for k in t] + [("tries", 0)] * bool(record["tries"])
    for path in paths:
        for value in [*VALUES, KeyError]:
            r = copy.deepcopy(record)
            where = r
            for step in path[:-1]:
                where = where[step]
            if value is KeyError:
                if isinstance(where, dict):
                    del where[path[-1]]
                else:
                    continue
            else:
                where[path[-1]] = value
            yield path, value, r


@pytest.mark.timeout(60)
@pytest.mark.parametrize("base", [A_RECORD, dict(A_RECORD, tries=[]), dict(A_RECORD, spec=dict(A_SPEC, command=["a", "b"]))],
                         ids=["tries", "no-tries", "argv"])
def test_the_quick_shape_check_passes_nothing_the_full_check_refuses(base: dict[str, Any]) -> None:
    assert records._plain_job_ok(base, "a"), "a good plain record takes the quick path"
    assert records.full_job_problem(base, "a") is None
    checked = 0
    for path, value, r in variants(base):
        quick = records._plain_job_ok(r, "a")
        full = records.full_job_problem(r, "a")
        assert not (quick and full is not None), f"{path} = {value!r}: quick check passed, full says {full}"
        assert records.job_problem(r, "a") == full
        checked += 1
    assert checked > 500


# ---- the run view -----------------------------------------------------------------------------
def a_run_of_every_kind(pool, make_workflow):
    """A run with a failed job and one blocked behind it, done jobs, an array, and a job file
    of the wrong shape (shown with its reason)."""
    jobs = [{"id": "bad", "command": "exit 3"}, {"id": "after", "command": "true", "dependencies": ["bad"]},
            {"id": "sweep", "array": 5, "command": "true"}]
    jobs += [{"id": f"j{i}", "command": "true"} for i in range(12)]
    run = submit(pool, make_workflow(jobs))
    work(pool, run, slots=2)
    path = run.job("j3", "done")
    record = json.loads(Path(path).read_text())
    record["tries"] = [None]
    Path(path).write_text(json.dumps(record))
    return run


@pytest.mark.timeout(60)
def test_the_run_view_read_by_threads_is_the_view_read_alone(pool, make_workflow, monkeypatch) -> None:
    from executioner.views import reading
    from executioner.views.status import run_status

    run = a_run_of_every_kind(pool, make_workflow)
    alone = run_status(run)
    monkeypatch.setattr(reading, "SLICE", 2)
    monkeypatch.setattr(reading, "LATENCY", 0.0)  # every storage looks slow: threads read
    import threading

    seen = set()
    real_read_one = reading.read_one

    def spy(*a):
        seen.add(threading.current_thread().name)
        return real_read_one(*a)

    monkeypatch.setattr(reading, "read_one", spy)
    threaded = run_status(run)
    assert any(n.startswith("exec-read") for n in seen), seen
    assert threaded == alone
    rows = {r["id"]: r for r in alone["jobs"]}
    assert rows["after"]["state"] == "blocked" and rows["bad"]["state"] == "failed"
    assert rows["j3"]["state"] == "done" and "tries[0] is None" in rows["j3"]["reason"]
    assert rows["sweep"]["tasks"] == 5 and rows["j4"]["tries"] == 1 and rows["j4"]["host"]


@pytest.mark.timeout(60)
def test_exec_status_json_streamed_is_the_document_it_was(pool, make_workflow) -> None:
    """Byte for byte what one orjson.dumps of the whole view printed before it was streamed."""
    from executioner.views.status import run_status

    run = a_run_of_every_kind(pool, make_workflow)
    out = cli("exec-status", str(pool), run.run_id, "--json")
    assert out.returncode == 0, out.stderr
    assert out.stdout == (orjson.dumps(run_status(run), option=orjson.OPT_INDENT_2) + b"\n").decode()
    Path(run.record).write_text("[1, 2]")  # corrupt: no jobs at all
    out = cli("exec-status", str(pool), run.run_id, "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["state"] == "corrupt", out.stderr
    assert out.stdout == (orjson.dumps(run_status(run), option=orjson.OPT_INDENT_2) + b"\n").decode()


@pytest.mark.timeout(30)
def test_rows_are_written_as_they_are_made() -> None:
    """The first rows are out before the last is made: 100,000 rows are never one document."""
    import io

    from executioner.views.text import write_json

    made = []

    class Out(io.BytesIO):
        def write(self, b: bytes) -> int:
            made.append(("write", len(rows_taken)))
            return super().write(b)

    rows_taken: list[int] = []

    def rows():
        for i in range(2500):
            rows_taken.append(i)
            yield {"id": f"j{i}", "state": "done", "note": 'a "quoted"\nline'}

    out = Out()
    data = {"run_id": "r-0001", "name": "r", "state": "done", "counts": {"done": 2500}, "jobs": rows(),
            "reason": "x"}
    write_json(data, out)
    assert [n for _, n in made][1] < 2500, made
    whole = dict(data, jobs=[{"id": f"j{i}", "state": "done", "note": 'a "quoted"\nline'} for i in range(2500)])
    assert out.getvalue() == orjson.dumps(whole, option=orjson.OPT_INDENT_2) + b"\n"


# ---- the pool view ----------------------------------------------------------------------------
def _fail(run, job: str) -> None:
    from executioner.protocol import store

    claim = store.claim(run, job, store.Owner.current("test"))
    assert claim is not None and store.finish(claim, dict(claim.record, reason="exit code 1"), "failed")


def _pool_row(pool) -> dict[str, Any]:
    from executioner import PoolLayout
    from executioner.views.status import pool_status

    [row] = pool_status(PoolLayout(str(pool)))["runs"]
    return row


@pytest.mark.timeout(60)
@pytest.mark.parametrize("graph_order", ["as-written", "none", "reversed"])
def test_the_pool_view_counts_from_listings_what_the_job_files_say(pool, make_workflow, monkeypatch,
                                                                   graph_order: str) -> None:
    """Blocked and held told apart from graph.json alone (in one pass in its order, or by a
    walk when it has none or a wrong one) count what reading every job file counts."""
    from executioner.views import counts, status

    jobs = [{"id": "root", "command": "true"}, {"id": "w1", "command": "true", "dependencies": ["root"]},
            {"id": "w2", "command": "true", "dependencies": ["w1"]}, {"id": "bad", "command": "false"},
            {"id": "b1", "command": "true", "dependencies": ["bad"]},
            {"id": "b2", "command": "true", "dependencies": ["b1", "root"]},
            {"id": "w3", "command": "true", "dependencies": ["root"]}]
    run = submit(pool, make_workflow(jobs))
    _fail(run, "bad")
    graph = json.loads(Path(run.graph).read_text())
    assert graph["order"].index("w1") < graph["order"].index("w2")
    graph["held"] = ["w1"]  # as a --failed-only resume leaves it: in graph.json and in the job file
    if graph_order == "none":
        del graph["order"]
    elif graph_order == "reversed":
        graph["order"].reverse()
    Path(run.graph).write_text(json.dumps(graph))
    record = json.loads(Path(run.job("w1", "waiting")).read_text())
    Path(run.job("w1", "waiting")).write_text(json.dumps(dict(record, held=True)))

    assert counts.plain_counts(run, 7, 1) is not None  # the listings and graph.json decide
    fast = _pool_row(pool)
    assert fast["counts"] == {"waiting": 3, "queued": 1, "running": 0, "done": 0, "failed": 1, "blocked": 2}
    assert fast["state"] == "running"
    monkeypatch.setattr(status, "plain_counts", lambda *a: None)
    assert _pool_row(pool) == fast  # job_views, with graph.json
    Path(run.graph).unlink()
    assert _pool_row(pool) == fast  # job_views, reading the waiting job files
    assert counts.plain_counts(run, 7, 1) is None  # no graph: left to job_views


@pytest.mark.timeout(60)
def test_a_pool_view_of_a_run_with_a_lost_job_is_left_to_the_job_views(pool, make_workflow) -> None:
    run = submit(pool, make_workflow([{"id": "a", "command": "true"}, {"id": "b", "command": "true"}]))
    Path(run.job("b", "queued")).unlink()
    row = _pool_row(pool)
    assert row["state"] == "running" and row["counts"]["queued"] == 1 and row["counts"]["waiting"] == 1  # b: lost


# ---- submit -----------------------------------------------------------------------------------
def _threaded_creates(monkeypatch) -> list[tuple[str, str]]:
    """Job files created by threads 4 at a time; returns the log of (thread, file)
    creations and the publication of run.json."""
    import threading

    from executioner.protocol import fsio

    monkeypatch.setattr(fsio, "BATCH", 4)
    log: list[tuple[str, str]] = []
    real_new, real_publish = fsio._write_new, fsio.atomic_write_json

    def write_new(path, payload, *a, **kw):
        real_new(path, payload, *a, **kw)
        log.append((threading.current_thread().name, str(path)))

    def publish(path, data):
        log.append(("publish", str(path)))
        real_publish(path, data)

    monkeypatch.setattr(fsio, "_write_new", write_new)
    monkeypatch.setattr(fsio, "atomic_write_json", publish)
    return log


@pytest.mark.timeout(60)
def test_a_submit_creates_job_files_from_threads_and_publishes_last(
        pool, make_workflow, monkeypatch) -> None:
    log = _threaded_creates(monkeypatch)
    run = submit(pool, make_workflow([{"id": f"j{i}", "command": f"echo {i}",
                                       "dependencies": [f"j{i - 1}"] if i else []} for i in range(60)]))
    jobs = [i for i, (_, p) in enumerate(log) if "/queued/" in p or "/waiting/" in p]
    assert len(jobs) == 60 and any(log[i][0].startswith("exec-create") for i in jobs), log
    assert log.index(("publish", run.record)) > max(jobs), "run.json is written after every job file"
    for i in range(60):
        state = "queued" if i == 0 else "waiting"
        assert json.loads(Path(run.job(f"j{i}", state)).read_text())["spec"]["command"] == f"echo {i}"
    assert not [n for d in run.all_dirs() for n in os.listdir(d) if n.startswith(".tmp-")]


@pytest.mark.timeout(60)
def test_a_disk_full_in_one_thread_of_a_submit_leaves_no_run(pool, make_workflow, monkeypatch) -> None:
    import errno

    from executioner import PoolLayout
    from executioner.protocol import fsio

    _threaded_creates(monkeypatch)
    real = os.write
    count = {"n": 0}

    def full(fd, data):
        count["n"] += 1
        if count["n"] == 30:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data)

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OSError):
        submit(pool, make_workflow([{"id": f"j{i}", "command": "true"} for i in range(60)]))
    monkeypatch.setattr(os, "write", real)
    assert PoolLayout(str(pool)).run_ids() == [] and [n for n in os.listdir(pool) if n != "workers"] == []
    assert fsio.BATCH == 4


@pytest.mark.timeout(60)
def test_the_plans_order_is_graphlibs() -> None:
    """The plan walks jobs in graphlib's static order (its steps, text and attempt record
    keep their order), computed without graphlib's cycle search; a cycle still raises."""
    import graphlib
    import random

    from executioner.coordinator.plan import static_order

    rng = random.Random(7)
    for n in (1, 2, 5, 30, 300):
        for _ in range(20):
            names = [f"j{i}" for i in range(n)]
            rng.shuffle(names)
            needs = {}
            for i, name in enumerate(names):
                deps = rng.sample(names[:i], rng.randint(0, min(i, 4))) if i else []
                needs[name] = tuple(deps)
            items = list(needs.items())
            rng.shuffle(items)  # written in any order, not only dependencies first
            needs = dict(items)
            assert static_order(needs) == list(graphlib.TopologicalSorter(needs).static_order())
    with pytest.raises(graphlib.CycleError):
        static_order({"a": ("b",), "b": ("a",), "c": ()})


# ---- YAML ---------------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_a_yaml_workflow_without_aliases_skips_the_node_walk(tmp_path, monkeypatch) -> None:
    from executioner import load_workflow
    from executioner.workflow import parse

    walked = []
    real = parse.check_nodes
    monkeypatch.setattr(parse, "check_nodes", lambda node: walked.append(node) or real(node))
    plain = tmp_path / "plain.yaml"
    plain.write_text("jobs:\n" + "".join(f"  - id: j{i}\n    command: echo {i}\n" for i in range(50)))
    assert len(load_workflow(str(plain)).jobs) == 50 and walked == []
    aliased = tmp_path / "aliased.yaml"
    aliased.write_text("defaults: {env: &e {A: '1'}}\njobs:\n  - {id: a, command: x, env: *e}\n")
    assert load_workflow(str(aliased)).jobs[0].env == {"A": "1"} and len(walked) == 1


@pytest.mark.timeout(60)
@pytest.mark.parametrize("depth", [95, 96, 97, 98, 101])
@pytest.mark.parametrize("kind", ["list", "mapping"])
def test_the_depth_bound_is_the_same_with_or_without_the_node_walk(tmp_path, depth: int, kind: str) -> None:
    """A document is refused at the same depth, with the same positioned message, whether
    its depth is counted on its nodes (a document with an alias) or on its data."""
    from executioner.errors import WorkflowErrors
    from executioner.workflow import parse

    open_, close = ("[", "]") if kind == "list" else ("{k: ", "}")
    value = open_ * depth + "x" + close * depth
    plain = f"jobs: [{{id: a, command: x, timeout: {value}}}]\n".encode()
    walked = b"anchor: &a 1\n" + plain.replace(b"x, timeout", b"*a, timeout")

    def outcome(raw: bytes) -> str:
        try:
            parse.parse(raw, "wf.yaml")
            return "accepted"
        except WorkflowErrors as e:
            return str(e).split("column", 1)[1] if "column" in str(e) else str(e)

    plain_says, walked_says = outcome(plain), outcome(walked)
    assert (plain_says == "accepted") == (walked_says == "accepted"), (plain_says, walked_says)
    if plain_says != "accepted":
        assert "nested too deeply" in plain_says
    assert (plain_says == "accepted") == (depth <= 96)  # the top, jobs, the job above; the scalar below


@pytest.mark.timeout(60)
def test_marking_blocked_and_held_in_graph_order_is_the_walk() -> None:
    """Blocked and held (and the upstream job each names) are the same whether found in one
    pass in graph.json's order or by the walk; a wrong or short order falls back to the walk."""
    import random

    from executioner.coordinator.plan import static_order
    from executioner.views.blocking import mark_blocked as _mark_blocked, mark_held as _mark_held
    from executioner.views.rows import JobView

    rng = random.Random(11)
    for n in (3, 10, 60, 200):
        for _ in range(30):
            names = [f"j{i}" for i in range(n)]
            needs = {name: rng.sample(names[:i], rng.randint(0, min(i, 3))) for i, name in enumerate(names)}
            states = {j: rng.choice(["waiting"] * 5 + ["failed", "done", "queued"]) for j in names}
            held = {j for j in names if rng.random() < 0.05}
            good = static_order({j: tuple(d) for j, d in needs.items()})
            for order in (None, good, list(reversed(good)), good[:-1]):
                views = {j: JobView(j, states[j], {"dependencies": needs[j], "held": j in held}) for j in names}
                _mark_blocked(views, order)
                _mark_held(views, order)
                seen = {j: (v.state, v.reason) for j, v in views.items()}
                if order is None:
                    expected = seen
                assert seen == expected, (n, order is good)
