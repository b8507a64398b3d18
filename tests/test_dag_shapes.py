"""Graph walks are linear on every DAG shape: a ladder (2^30 paths), long chains, wide fans."""

from __future__ import annotations

import time
import os
from pathlib import Path

import pytest

from executioner.protocol import store
from executioner.views.blocking import mark_blocked as _mark_blocked, mark_held as _mark_held
from executioner.views.rows import JobView

from .conftest import cli, submit


def fail_first(run, job: str) -> None:
    claim = store.claim(run, job, store.Owner.current("w"))
    assert store.finish(claim, dict(claim.record, reason="exit code 1"), "failed")


@pytest.mark.timeout(60)
def test_exec_status_answers_on_a_ladder_of_30_layers(pool: Path, make_workflow) -> None:
    jobs = [{"id": "top", "command": "false"}]
    previous = ["top"]
    for layer in range(30):
        names = [f"l{layer}a", f"l{layer}b"]
        jobs += [{"id": n, "command": "true", "dependencies": previous} for n in names]
        previous = names
    run = submit(pool, make_workflow(jobs))
    fail_first(run, "top")
    t = time.monotonic()
    out = cli("exec-status", str(pool), run.run_id, "--json")
    assert out.returncode == 0, out.stderr
    assert '"blocked": 60' in out.stdout.replace("\n", "").replace("  ", " ") or '"blocked": 60' in out.stdout
    assert cli("exec-status", str(pool)).returncode == 0
    assert time.monotonic() - t < 30


@pytest.mark.timeout(120)
def test_exec_status_on_a_chain_of_1500_jobs_whose_first_failed(pool: Path, make_workflow) -> None:
    jobs = [{"id": "j0000", "command": "false"}]
    jobs += [{"id": f"j{i:04d}", "command": "true", "dependencies": [f"j{i - 1:04d}"]} for i in range(1, 1500)]
    run = submit(pool, make_workflow(jobs))
    fail_first(run, "j0000")
    out = cli("exec-status", str(pool), run.run_id, "--json")
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    assert '"blocked": 1499' in out.stdout


def views_of(deps: dict[str, list[str]], failed: str | None = None, held: str | None = None) -> dict[str, JobView]:
    return {j: JobView(j, "failed" if j == failed else "waiting",
                       {"dependencies": d, "held": j == held}) for j, d in deps.items()}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("shape", ["chain", "fan"])
def test_blocked_and_held_marking_is_linear_at_100000_jobs(shape: str) -> None:
    n = 100_000
    if shape == "chain":
        deps = {f"j{i}": ([f"j{i - 1}"] if i else []) for i in range(n)}
    else:  # fan-out from j0 to n-2 jobs, then fan-in to the last
        deps = {"j0": [], **{f"j{i}": ["j0"] for i in range(1, n - 1)}, f"j{n - 1}": [f"j{i}" for i in range(1, n - 1)]}
    t = time.monotonic()
    views = views_of(deps, failed="j0")
    _mark_blocked(views)
    assert sum(v.state == "blocked" for v in views.values()) == n - 1
    views = views_of(deps, held="j0")
    _mark_held(views)
    assert sum(v.state == "held" for v in views.values()) == n
    assert time.monotonic() - t < 20


def test_a_dependency_cycle_in_hand_edited_files_does_not_hang() -> None:
    views = views_of({"a": ["b"], "b": ["a"], "c": ["a", "x"], "x": []}, failed="x")
    _mark_blocked(views)
    assert views["c"].state == "blocked" and views["a"].state == "waiting"


def _shapes_script():
    """scripts/status_shapes.py, whose builders the timing table uses too."""
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "scripts" / "status_shapes.py"
    spec = importlib.util.spec_from_file_location("status_shapes", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(60)
@pytest.mark.parametrize("shape", ["ladder", "chain", "fan-in", "fan-out", "grid"])
def test_exec_status_counts_every_shape_of_1000_jobs(tmp_path: Path, shape: str) -> None:
    import json

    shapes = _shapes_script()
    pool = str(tmp_path / "pool")
    run = shapes.build(pool, shape, 1000)
    expected = shapes.expected_counts(shape, 1000)
    [row] = json.loads(cli("exec-status", pool, "--json").stdout)["runs"]
    assert (row["state"], row["counts"]) == ("running" if expected["queued"] else "failed", expected)
    data = json.loads(cli("exec-status", pool, run.run_id, "--json").stdout)
    assert data["counts"] == expected and len(data["jobs"]) == 1000
    blocked = [j for j in data["jobs"] if j["state"] == "blocked"]
    assert all(j["reason"] == f"upstream failed: {shapes.shape_jobs(shape, 1000)[1]}" for j in blocked)
    human = cli("exec-status", pool, run.run_id, "--all")
    lines = human.stdout.splitlines()
    assert human.returncode == 0 and len(lines) == 2 + 1000, human.stderr  # title, header, a line per job
    assert sum(" blocked " in line for line in lines[2:]) == expected["blocked"]
    summary = cli("exec-status", pool, run.run_id).stdout.splitlines()  # above 200 rows: the failure, a count
    assert len(summary) == 2 + 1 + 1 and summary[2].split()[1] == "failed" and "999 more rows" in summary[3]


def test_the_pool_view_of_a_run_without_failures_reads_no_job_file(tmp_path: Path, monkeypatch,
                                                                    make_workflow) -> None:
    from executioner import PoolLayout
    from executioner.protocol import fsio
    from executioner.views.status import pool_status

    jobs = [{"id": "a", "command": "true"}] + [{"id": f"b{i}", "command": "true", "dependencies": ["a"]}
                                               for i in range(50)]
    pool = tmp_path / "pool"
    run = submit(pool, make_workflow(jobs))
    read = []
    real = fsio.read_json
    monkeypatch.setattr(fsio, "read_json", lambda path, *a: read.append(path) or real(path, *a))
    [row] = pool_status(PoolLayout(str(pool)))["runs"]
    assert row["counts"]["waiting"] == 50 and row["counts"]["queued"] == 1 and row["state"] == "running"
    assert [p for p in read if "/waiting/" in p] == []
    fail_first(run, "a")  # now waiting jobs may be blocked: the run's graph.json says what they need
    [row] = pool_status(PoolLayout(str(pool)))["runs"]
    assert (row["state"], row["counts"]["blocked"], row["counts"]["failed"]) == ("failed", 50, 1)
    assert [p for p in read if "/waiting/" in p] == []
    os.unlink(run.graph)  # without it (a run made before graph.json existed): the job files say it
    [row] = pool_status(PoolLayout(str(pool)))["runs"]
    assert (row["state"], row["counts"]["blocked"], row["counts"]["failed"]) == ("failed", 50, 1)
    assert len([p for p in read if "/waiting/" in p]) == 50


def test_graph_json_of_another_attempt_is_not_trusted(tmp_path: Path, make_workflow) -> None:
    """A resume publishes run.json before graph.json: between the two, a view reads the job
    files. Here graph.json says nothing is needed, but it belongs to another attempt."""
    from executioner import PoolLayout
    from executioner.protocol import fsio
    from executioner.views.status import pool_status

    jobs = [{"id": "a", "command": "true"}, {"id": "b", "command": "true", "dependencies": ["a"]}]
    pool = tmp_path / "pool"
    run = submit(pool, make_workflow(jobs))
    fail_first(run, "a")
    fsio.atomic_write_json(run.graph, {"attempt": 7, "needs": {"a": [], "b": []}, "held": []})
    [row] = pool_status(PoolLayout(str(pool)))["runs"]
    assert row["counts"]["blocked"] == 1 and row["state"] == "failed"


def test_the_pool_view_shows_held_jobs_from_graph_json(tmp_path: Path, monkeypatch, make_workflow) -> None:
    """--failed-only holds the rest; the resume's graph.json says which, so the pool view
    needs no job file to show the run held."""
    from executioner import PoolLayout
    from executioner.protocol import fsio
    from executioner.views.status import pool_status

    from .conftest import cli

    pool = tmp_path / "pool"
    run = submit(pool, make_workflow([{"id": "a", "command": "false"}, {"id": "b", "command": "true"},
                                      {"id": "c", "command": "true", "dependencies": ["b"]}]))
    fail_first(run, "a")
    out = cli("exec-submit", "--pool", str(pool), "--resume", run.run_id, "--failed-only")
    assert out.returncode == 0, out.stderr
    claim = store.claim(run, "a", store.Owner.current("w"))  # the failed job runs again, and passes
    assert store.finish(claim, claim.record, "done")
    read = []
    real = fsio.read_json
    monkeypatch.setattr(fsio, "read_json", lambda path, *a: read.append(path) or real(path, *a))
    [row] = pool_status(PoolLayout(str(pool)))["runs"]
    assert row["state"] == "held" and row["counts"]["done"] == 1 and row["counts"]["waiting"] == 2
    assert [p for p in read if "/waiting/" in p] == []
