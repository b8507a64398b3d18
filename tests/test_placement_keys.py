"""Placement keys (resources, priority, tags, limit, limits): each checked as every key is,
one line naming file, job and key, exit 2, nothing written; stored in the job files and the
run's placement index; old job files (no such keys) read as defaults."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from executioner import PoolLayout, load_workflow
from executioner.backends.slurm import from_mapping
from executioner.protocol import placement

from .conftest import cli, submit
from .test_validation import problems

BAD = [
    ("jobs: [{id: a, command: x, resources: 4}]\n", ["job 'a'", "key 'resources'", "mapping"]),
    ("jobs: [{id: a, command: x, resources: {cpus: -1}}]\n", ["job 'a'", "key 'resources'", "cpus", "0 to"]),
    ("jobs: [{id: a, command: x, resources: {cpus: 1.5}}]\n", ["key 'resources'", "only mem_gb may be fractional"]),
    ("jobs: [{id: a, command: x, resources: {gpus: 0.5}}]\n", ["key 'resources'", "gpus", "whole"]),
    ("jobs: [{id: a, command: x, resources: {licenses: 0.5}}]\n", ["key 'resources'", "licenses", "whole"]),
    ("jobs: [{id: a, command: x, resources: {mem_gb: -2}}]\n", ["key 'resources'", "mem_gb"]),
    ("jobs: [{id: a, command: x, resources: {cpus: 99999999999}}]\n", ["key 'resources'", "1000000"]),
    ("jobs: [{id: a, command: x, resources: {'a b': 1}}]\n", ["key 'resources'", "'a b'", "not a resource name"]),
    ("jobs: [{id: a, command: x, resources: {cpus: true}}]\n", ["key 'resources'", "cpus"]),
    ("jobs: [{id: a, command: x, priority: high}]\n", ["job 'a'", "key 'priority'", "whole number"]),
    ("jobs: [{id: a, command: x, priority: 1.5}]\n", ["key 'priority'"]),
    ("jobs: [{id: a, command: x, tags: a100}]\n", ["job 'a'", "key 'tags'", "list"]),
    ("jobs: [{id: a, command: x, tags: ['a,b']}]\n", ["key 'tags'", "'a,b'", "not a tag name"]),
    ("jobs: [{id: a, command: x, limit: download}]\n", ["job 'a'", "key 'limit'", "'download'", "no limits"]),
    ("limits: {download: 4}\njobs: [{id: a, command: x, limit: downlod}]\n",
     ["key 'limit'", "did you mean 'download'"]),
    ("limits: {download: 0}\njobs: [{id: a, command: x}]\n", ["key 'limits.download'", "1 to"]),
    ("limits: [download]\njobs: [{id: a, command: x}]\n", ["key 'limits'", "mapping"]),
    ("limits: {download: 4}\ndefaults: {limit: upload}\njobs: [{id: a, command: x}]\n",
     ["key 'defaults.limit'", "'upload'"]),
    ("defaults: {resources: {cpus: x}}\njobs: [{id: a, command: x}]\n", ["key 'defaults.resources'"]),
    ("jobs: [{id: a, command: x, slurm: {cpus: 2}, resources: {cpus: 4}}]\n",
     ["job 'a'", "key 'slurm.cpus'", "both slurm and resources"]),
    ("defaults: {slurm: {gpus: 1}, resources: {gpus: 1}}\njobs: [{id: a, command: x}]\n",
     ["key 'defaults.slurm.gpus'", "both"]),
]


@pytest.mark.parametrize("text,expected", BAD)
def test_each_mistake_is_one_line(tmp_path: Path, text: str, expected: list[str]) -> None:
    lines = problems(tmp_path, text)
    assert len(lines) == 1, lines
    for part in expected:
        assert part in lines[0], lines[0]


def test_cli_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    wf = tmp_path / "wf.yaml"
    wf.write_text("jobs: [{id: a, command: x, resources: {gpus: -1}}]\n")
    pool = tmp_path / "pool"
    out = cli("exec-submit", str(wf), "--pool", str(pool))
    assert out.returncode == 2
    assert "job 'a'" in out.stderr and "key 'resources'" in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert not pool.exists() or not [n for n in os.listdir(pool) if n != "workers"]


WF = """
limits: {download: 4}
defaults:
  resources: {cpus: 2}
  priority: 1
jobs:
  - id: train
    command: "true"
    resources: {cpus: 8, gpus: 1, mem_gb: 3.5, licenses: 1}
    priority: 10
    tags: [a100, a100, big]
    limit: download
  - id: old
    command: "true"
    slurm: {cpus: 3, partition: p}
  - id: plain
    command: "true"
  - id: sweep
    command: "echo {index}"
    array: 3
    slurm: {cpus: 4}
    resources: {gpus: 1}
"""


def test_keys_stored_in_job_files_and_index(tmp_path: Path) -> None:
    path = tmp_path / "wf.yaml"
    path.write_text(WF)
    wf = load_workflow(str(path))
    specs = {j.id: j for j in wf.jobs}
    assert specs["train"].resources == {"cpus": 8, "gpus": 1, "mem_gb": 3.5, "licenses": 1}
    assert specs["train"].tags == ("a100", "big") and specs["train"].limit == "download"
    assert specs["plain"].resources == {"cpus": 2} and specs["plain"].priority == 1  # from defaults
    # slurm's cpus (the old spelling) became the job's resources; slurm keeps the rest
    assert specs["old"].resources == {"cpus": 3} and specs["old"].slurm == {"partition": "p"}
    # an array's slurm: sizes its Slurm elements; resources are per task
    assert specs["sweep"].slurm == {"cpus": 4} and specs["sweep"].resources == {"cpus": 2, "gpus": 1}
    run = submit(tmp_path / "pool", path)
    record = json.loads(Path(run.job("train", "queued")).read_text())
    assert record["spec"]["resources"]["gpus"] == 1 and record["spec"]["priority"] == 10
    assert record["spec"]["tags"] == ["a100", "big"] and record["spec"]["limit"] == "download"
    run_json = json.loads(Path(run.record).read_text())
    assert run_json["limits"] == {"download": 4}
    assert run_json["placement"]["train"] == {"priority": 10, "needs": {"cpus": 8, "gpus": 1, "mem_gb": 3.5,
                                                                        "licenses": 1},
                                              "tags": ["a100", "big"], "limit": "download"}
    assert run_json["placement"]["sweep"]["needs"] == {"cpus": 2, "gpus": 1}
    assert placement.needs(record["spec"]) == {"cpus": 8, "gpus": 1, "mem_gb": 3.5, "licenses": 1}


def test_plain_workflow_stores_nothing_new(tmp_path: Path, make_workflow) -> None:
    run = submit(tmp_path / "pool", make_workflow([{"id": "a", "command": "true"}]))
    record = json.loads(Path(run.job("a", "queued")).read_text())
    assert not {"resources", "priority", "tags", "limit"} & set(record["spec"])
    assert not {"placement", "limits", "priority"} & set(json.loads(Path(run.record).read_text()))


def test_old_job_files_read_as_defaults() -> None:
    """A spec written before these keys: one CPU; its slurm: cpus count (they were meant)."""
    assert placement.needs({"command": "x"}) == {"cpus": 1}
    assert placement.needs({"command": "x", "slurm": {"cpus": 2, "gpus": 1}}) == {"cpus": 2, "gpus": 1}
    assert placement.needs({"command": "x", "tasks": {}, "slurm": {"cpus": 4}}) == {"cpus": 1}
    assert placement.needs({"command": "x", "resources": {"cpus": 0}}) == {}
    assert placement.entry({"command": "x"}) is None


def test_dag_backend_reads_resources(tmp_path: Path) -> None:
    path = tmp_path / "wf.yaml"
    path.write_text(WF)
    specs = {j.id: j for j in load_workflow(str(path)).jobs}
    params = from_mapping(specs["train"].slurm, specs["train"].resources).executor_parameters()
    assert params["cpus_per_task"] == 8 and params["gpus_per_node"] == 1 and params["mem_gb"] == 3.5
    params = from_mapping(specs["old"].slurm, specs["old"].resources).executor_parameters()
    assert params["cpus_per_task"] == 3 and params["slurm_partition"] == "p"
    # an old run's job file: cpus still in slurm:
    assert from_mapping({"cpus": 5}, None).executor_parameters()["cpus_per_task"] == 5


def test_submit_priority_stored(tmp_path: Path, make_workflow) -> None:
    wf = make_workflow([{"id": "a", "command": "true"}])
    pool = tmp_path / "pool"
    out = cli("exec-submit", str(wf), "--pool", str(pool), "--priority", "7")
    assert out.returncode == 0, out.stderr
    (run_id,) = PoolLayout(str(pool)).run_ids()
    assert json.loads(Path(PoolLayout(str(pool)).run(run_id).record).read_text())["priority"] == 7
    out = cli("exec-submit", str(wf), "--pool", str(pool), "--priority", "high")
    assert out.returncode == 2 and "--priority" in out.stderr and "Traceback" not in out.stderr


def test_slurm_workers_ask_for_what_j_jobs_need(tmp_path: Path, make_workflow) -> None:
    """--slurm-workers 2 -j 4 asks each worker for the CPUs (GPUs, memory) of the 4 largest jobs."""
    from executioner.backends.slurm import SlurmOptions, worker_request

    jobs = [{"id": f"s{i}", "command": "true"} for i in range(10)]
    jobs += [{"id": "train", "command": "true", "resources": {"cpus": 8, "gpus": 1, "mem_gb": 32}},
             {"id": "prep", "command": "true", "resources": {"cpus": 4, "mem_gb": 8}}]
    run = submit(tmp_path / "pool", make_workflow(jobs))
    record = json.loads(Path(run.record).read_text())
    asked = worker_request(record, 4)
    assert (asked.cpus, asked.gpus, asked.mem_gb) == (8 + 4 + 1 + 1, 1, 40)
    params = SlurmOptions(cpus=2).over(asked).executor_parameters()  # --slurm-cpus wins
    assert params["cpus_per_task"] == 2 and params["gpus_per_node"] == 1
    plain = worker_request({"jobs": 5}, 4)
    assert (plain.cpus, plain.gpus, plain.mem_gb) == (4, None, None)  # today's missing --cpus-per-task


def test_resume_updates_the_index_and_keeps_or_sets_the_run_priority(tmp_path: Path, make_workflow) -> None:
    wf = make_workflow([{"id": "a", "command": "true", "priority": 1}, {"id": "b", "command": "true"}])
    pool = tmp_path / "pool"
    assert cli("exec-submit", str(wf), "--pool", str(pool), "--priority", "3").returncode == 0
    layout = PoolLayout(str(pool))
    (run_id,) = layout.run_ids()
    record = lambda: json.loads(Path(layout.run(run_id).record).read_text())  # noqa: E731
    assert record()["priority"] == 3 and record()["placement"] == {"a": {"priority": 1}}
    wf2 = make_workflow([{"id": "a", "command": "true"}, {"id": "b", "command": "true", "tags": ["x"]}])
    out = cli("exec-submit", str(wf2), "--pool", str(pool), "--resume", run_id)
    assert out.returncode == 0, out.stderr
    assert record()["priority"] == 3 and record()["placement"] == {"b": {"tags": ["x"]}}
    out = cli("exec-submit", "--pool", str(pool), "--resume", run_id, "--priority", "-2")
    assert out.returncode == 0, out.stderr
    assert record()["priority"] == -2


def test_dag_backend_asks_slurm_for_licenses_and_features() -> None:
    """Custom resources and tags were ignored by the Slurm-DAG backend."""
    params = from_mapping({}, {"cpus": 2, "licenses": 1, "dl": 2.5}, ("a100", "ib")).executor_parameters()
    extra = params["slurm_additional_parameters"]
    assert extra["licenses"] == "dl:2.5,licenses:1" and extra["constraint"] == "a100&ib"
    assert params["cpus_per_task"] == 2
    # the user's own spelling in additional_parameters wins
    mine = from_mapping({"additional_parameters": {"constraint": "a100|h100"}}, {"dl": 1}, ("a100",))
    assert mine.additional_parameters == {"constraint": "a100|h100", "licenses": "dl:1"}
    assert "slurm_additional_parameters" not in from_mapping({}, {"cpus": 1}, ()).executor_parameters()
