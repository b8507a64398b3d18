"""Every workflow problem is one line naming file, job and key; exit 2; nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from executioner import WorkflowErrors, load_workflow

from .conftest import cli


def problems(tmp_path: Path, text: str, suffix: str = ".yaml") -> list[str]:
    path = tmp_path / f"bad{suffix}"
    path.write_text(text)
    with pytest.raises(WorkflowErrors) as info:
        load_workflow(str(path))
    lines = str(info.value).splitlines()
    assert all(line.startswith(str(path)) for line in lines)
    return lines


CASES = [
    ("jobs:\n  - id: a\n    command: x\n    timeot: 5\n", ["job 'a'", "key 'timeot'", "did you mean 'timeout'"]),
    ("jobz: []\njobs: [{id: a, command: x}]\n", ["key 'jobz'", "did you mean 'jobs'"]),
    ("defaults: {max_retry: 2}\njobs: [{id: a, command: x}]\n",
     ["key 'defaults.max_retry'", "did you mean 'max_retries'"]),
    ("jobs: [{id: a, command: x, timeout: soon}]\n", ["job 'a'", "key 'timeout'", "number > 0"]),
    ("jobs: [{id: a, command: x, max_retries: true}]\n", ["key 'max_retries'", "whole number"]),
    ("jobs: [{id: a, command: x, env: [A]}]\n", ["key 'env'", "mapping"]),
    ("jobs: [{id: a, command: {x: 1}}]\n", ["key 'command'", "string or a list"]),
    ("jobs: [{id: a, command: x, retry_on_status: [crashed]}]\n", ["key 'retry_on_status'"]),
    ("jobs: [{id: a, command: x, retry_jitter: 2}]\n", ["key 'retry_jitter'", "0 to 1"]),
    ("jobs: [{command: x}]\n", ["job '#1'", "key 'id'", "missing"]),
    ("jobs: [{id: a}]\n", ["job 'a'", "key 'command'", "missing"]),
    ("jobs: [{id: a, command: x}, {id: a, command: y}]\n", ["job 'a'", "key 'id'", "duplicate"]),
    ("jobs: [{id: a/b, command: x}]\n", ["key 'id'", "'a/b'"]),
    ("jobs: [{id: '..', command: x}]\n", ["key 'id'", "'..'"]),
    ("jobs: [{id: \"a\\0b\", command: x}]\n", ["key 'id'"]),
    ("jobs: [{id: 'has space', command: x}]\n", ["key 'id'"]),
    ("jobs: [{id: a, command: x, dependencies: [b]}]\n", ["job 'a'", "key 'dependencies'", "unknown dependency 'b'"]),
    ("jobs: []\n", ["key 'jobs'", "empty"]),
    ("name: etl\n", ["key 'jobs'", "missing"]),
    ("- just\n- a list\n", ["top level must be a mapping"]),
    ("jobs: [{id: a, command: x\n", ["not valid YAML at line"]),
]


@pytest.mark.parametrize("text,expected", CASES)
def test_each_problem_is_one_line_naming_file_job_and_key(tmp_path: Path, text: str, expected: list[str],
                                                          yaml_loader: str) -> None:
    lines = problems(tmp_path, text)
    assert len(lines) == 1, lines
    for fragment in expected:
        assert fragment in lines[0]


def test_cycle_is_printed_as_a_path(tmp_path: Path) -> None:
    text = ("jobs:\n  - {id: a, command: x, dependencies: [c]}\n  - {id: b, command: x, dependencies: [a]}\n"
            "  - {id: c, command: x, dependencies: [b]}\n  - {id: d, command: x}\n")
    [line] = problems(tmp_path, text)
    assert "dependency cycle:" in line
    path = line.split("dependency cycle: ")[1].split(" (")[0].split(" -> ")
    assert path[0] == path[-1] and sorted(path[:-1]) == ["a", "b", "c"]
    needs = {"a": "c", "b": "a", "c": "b"}
    assert all(needs[x] == y for x, y in zip(path, path[1:]))


def test_all_problems_reported_together(tmp_path: Path) -> None:
    lines = problems(tmp_path, "jobs:\n  - {id: a, command: x, tmeout: 1}\n  - {id: b}\n")
    assert len(lines) == 2


def test_json_is_accepted_and_bad_json_is_one_line(tmp_path: Path) -> None:
    good = tmp_path / "w.json"
    good.write_text('{"jobs": [{"id": "a", "command": ["echo", "hi"]}]}')
    wf = load_workflow(str(good))
    assert wf.name == "w" and wf.jobs[0].command == ("echo", "hi")
    [line] = problems(tmp_path, '{"jobs": [', suffix=".json")
    assert "not valid JSON" in line


def test_defaults_apply_and_job_keys_win(tmp_path: Path) -> None:
    path = tmp_path / "d.yaml"
    path.write_text("defaults: {timeout: 30, max_retries: 2}\njobs:\n  - {id: a, command: x}\n"
                    "  - {id: b, command: x, timeout: 5}\n")
    a, b = load_workflow(str(path)).jobs
    assert (a.timeout, a.max_retries, b.timeout, b.max_retries) == (30, 2, 5, 2)


def test_cli_bad_workflow_exits_2_writes_nothing_no_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("jobs:\n  - id: a\n    command: x\n    dependencies: [nope]\n")
    pool = tmp_path / "pool"
    result = cli("exec-submit", str(bad), "--pool", str(pool))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and "unknown dependency 'nope'" in result.stderr
    assert not pool.exists()


def test_cli_missing_file_and_missing_pool_are_one_line(tmp_path: Path) -> None:
    result = cli("exec-submit", str(tmp_path / "absent.yaml"), "--pool", str(tmp_path / "p"))
    assert result.returncode == 2 and "cannot read" in result.stderr and "Traceback" not in result.stderr
    wf = tmp_path / "ok.yaml"
    wf.write_text("jobs: [{id: a, command: 'true'}]\n")
    result = cli("exec-submit", str(wf), env={"EXEC_POOL": ""})
    assert result.returncode == 2 and "no pool" in result.stderr


MORE_CASES = [
    ("jobs: [{id: a, command: x, retry_delay: .inf}]\n", ["key 'retry_delay'"]),
    ("jobs: [{id: a, command: x, timeout: .nan}]\n", ["key 'timeout'"]),
    ("jobs: [{id: a, command: x, retry_on_exit_codes: [99999999999999999999]}]\n", ["key 'retry_on_exit_codes'"]),
    ("jobs: [{id: a, command: x, retry_on_exit_codes: [-1]}]\n", ["key 'retry_on_exit_codes'"]),
    ("jobs:\n  - id: a\n    command: x\n    command: y\n", ["key 'command' appears twice", "line 4"]),
    ("defaults: {env: [bad]}\njobs: [{id: a, command: x}, {id: b, command: y}]\n", ["key 'defaults.env'"]),
    ("jobs:\n  - {id: a, command: x, dependencies: oops}\n  - {id: b, command: y, dependencies: [a]}\n",
     ["job 'a'", "key 'dependencies'"]),
    ("jobs: " + "[" * 5000 + "]" * 5000 + "\n", ["nested too deeply"]),
]


@pytest.mark.parametrize("text,expected", MORE_CASES)
def test_edge_cases_are_one_line_too(tmp_path: Path, text: str, expected: list[str], yaml_loader: str) -> None:
    lines = problems(tmp_path, text)
    assert len(lines) == 1, lines
    for fragment in expected:
        assert fragment in lines[0], lines
