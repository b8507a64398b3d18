"""``${VAR}`` in env values: the scope each level sees, the written order kept through the
job file and run.json, and the bounds on what a value may expand to."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from executioner import WorkflowErrors, load_workflow
from executioner.protocol.attempts import definition_hash
from executioner.execution.execute import build_env
from executioner.protocol.fsio import dumps, read_json

from .conftest import cli, submit, work

EXTRA = {"EXEC_JOB_ID": "j"}


# ---- scope, level by level (build_env, as the worker calls it) ----------------------------------
def test_a_value_sees_the_workers_environment() -> None:
    env = build_env({"HOME": "/h"}, [{"A": "${HOME}/x"}], EXTRA)
    assert env["A"] == "/h/x"


def test_the_workflow_env_sees_its_own_earlier_keys_whatever_their_names() -> None:
    env = build_env({}, [[["ZROOT", "/data"], ["ADIR", "${ZROOT}/in"]]], EXTRA)
    assert env["ADIR"] == "/data/in"


def test_the_job_env_sees_the_workflow_env_and_its_own_earlier_keys() -> None:
    env = build_env({}, [{"ROOT": "/r"}, [["Z1", "one"], ["A1", "${Z1}-two"], ["JOBV", "${A1}@${ROOT}"]]], EXTRA)
    assert (env["A1"], env["JOBV"]) == ("one-two", "one-two@/r")


def test_a_key_written_later_in_the_same_level_is_not_seen_yet() -> None:
    env = build_env({"LATER": "os"}, [[["B", "${LATER}"], ["LATER", "mine"]]], EXTRA)
    assert (env["B"], env["LATER"]) == ("os", "mine")


def test_a_key_refers_to_the_value_before_its_own_level() -> None:
    env = build_env({"PATH": "/bin"}, [{"PATH": "/wf:${PATH}"}, {"PATH": "/job:${PATH}"}], EXTRA)
    assert env["PATH"] == "/job:/wf:/bin"


def test_an_unset_variable_expands_to_nothing_and_exec_variables_are_set() -> None:
    env = build_env({}, [{"A": "[${NOPE}]", "B": "${EXEC_JOB_ID}"}], EXTRA)
    assert (env["A"], env["B"]) == ("[]", "j")


def test_an_old_job_file_with_a_sorted_mapping_expands_as_it_always_did() -> None:
    stored = json.loads(dumps({"A1": "${Z1}-two", "Z1": "one"}))  # sorted, as older versions wrote it
    assert build_env({}, [stored], EXTRA)["A1"] == "-two"


# ---- the written order survives validation, the job file and run.json -------------------------
ORDERED = """\
name: ordered
env: {ZROOT: /data, ADIR: "${ZROOT}/in"}
jobs:
  - id: j
    command: 'echo "$ADIR $JOBV $LATE"'
    env: {Z1: one, A1: "${Z1}-two", JOBV: "${A1}", LATE: "${ZZ}", ZZ: set-after}
  - {id: plain, command: 'echo "$B$Z"', env: {A: a, B: "${A}b", Z: "${NOPE}z"}}
"""


def test_written_order_reaches_the_job(pool: Path, tmp_path: Path) -> None:
    path = tmp_path / "ordered.yaml"
    path.write_text(ORDERED)
    run = submit(pool, path)
    work(pool, run)
    for job, expected in (("j", "/data/in one-two \n"), ("plain", "abz\n")):
        t = read_json(run.job(job, "done"))["tries"][0]
        assert (Path(run.root) / t["stdout"]).read_text() == expected


def test_job_files_stay_plain_mappings_unless_order_matters(pool: Path, tmp_path: Path) -> None:
    path = tmp_path / "ordered.yaml"
    path.write_text(ORDERED)
    run = submit(pool, path)
    j, plain = read_json(run.job("j", "queued"))["spec"], read_json(run.job("plain", "queued"))["spec"]
    assert j["env"] == [["Z1", "one"], ["A1", "${Z1}-two"], ["JOBV", "${A1}"], ["LATE", "${ZZ}"],
                        ["ZZ", "set-after"]]
    assert plain["env"] == {"A": "a", "B": "${A}b", "Z": "${NOPE}z"}  # sorted expands the same
    assert read_json(run.record)["env"] == [["ZROOT", "/data"], ["ADIR", "${ZROOT}/in"]]


def test_definition_hash_is_unchanged_for_an_env_whose_order_does_not_matter(tmp_path: Path) -> None:
    path = tmp_path / "h.yaml"
    path.write_text("jobs: [{id: a, command: x, env: {Z: '1', B: '${Z}', A: '${HOME}'}}]\n")
    spec = load_workflow(str(path)).jobs[0].to_spec()
    older = {**spec, "env": {"A": "${HOME}", "B": "${Z}", "Z": "1"}}  # as a job file of an older version
    assert definition_hash(spec, []) == definition_hash(older, [])


def test_resume_sees_no_change_in_an_unchanged_workflow_with_ordered_env(pool: Path, tmp_path: Path) -> None:
    path = tmp_path / "ordered.yaml"
    path.write_text(ORDERED)
    out = cli("exec-submit", str(path), "--pool", str(pool))
    assert out.returncode == 0, out.stderr
    run_id = out.stdout.split()[0]
    work(pool)
    out = cli("exec-submit", "--pool", str(pool), "--resume", run_id, str(path), "--dry-run")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "definitions: 0 change(s)" in out.stdout and "skip    j      done" in out.stdout, out.stdout


# ---- bounds: values that stand for gigabytes, NUL characters ---------------------------------
def doubling(prefix: str, steps: int, seed: str = "x" * 8) -> dict[str, str]:
    """``P0: xxxxxxxx``, ``P1: ${P0}${P0}``, ...: a few bytes each, 8 * 2**steps characters."""
    env = {f"{prefix}0": seed}
    for i in range(1, steps + 1):
        env[f"{prefix}{i}"] = f"${{{prefix}{i - 1}}}${{{prefix}{i - 1}}}"
    return env


def refused_lines(tmp_path: Path, data: dict[str, Any]) -> list[str]:
    path = tmp_path / "big.json"
    path.write_text(json.dumps(data))
    with pytest.raises(WorkflowErrors) as info:
        load_workflow(str(path))
    return str(info.value).splitlines()


@pytest.mark.timeout(10)
def test_a_workflow_env_standing_for_gigabytes_is_refused_once(tmp_path: Path) -> None:
    env = doubling("A", 35)  # under a kilobyte written, 256 GB expanded
    lines = refused_lines(tmp_path, {"env": env, "jobs": [{"id": "a", "command": "x", "env": {"B": "${A35}"}},
                                                         {"id": "b", "command": ["echo", "${A35}"]}]})
    assert len(json.dumps(env)) < 1000
    assert len(lines) == 1 and "key 'env'" in lines[0] and "job" not in lines[0], lines
    assert "A17 would expand to 1.05 MB" in lines[0] and "at most 1 MB" in lines[0], lines


@pytest.mark.timeout(10)
def test_a_job_env_standing_for_gigabytes_is_refused(tmp_path: Path) -> None:
    lines = refused_lines(tmp_path, {"env": {"W": "w" * 1000}, "jobs": [
        {"id": "a", "command": "x", "env": {"J": "${W}${W}", **doubling("B", 40)}}]})
    assert len(lines) == 1 and "job 'a': key 'env'" in lines[0] and "B17 would expand" in lines[0], lines


def test_a_job_whose_values_are_each_fine_but_too_large_together_is_refused(tmp_path: Path) -> None:
    half = doubling("H", 16)  # H16: 512 kB
    lines = refused_lines(tmp_path, {"env": half, "jobs": [
        {"id": "a", "command": "x", "env": {f"C{i}": "${H16}" for i in range(7)}},
        {"id": "ok", "command": "x", "env": {"C": "${H16}"}}]})
    assert len(lines) == 1 and "job 'a': key 'env'" in lines[0] and "4 MB" in lines[0], lines


def test_a_workflow_env_too_large_in_all_is_refused_once(tmp_path: Path) -> None:
    half = doubling("H", 16)
    lines = refused_lines(tmp_path, {"env": {**half, **{f"C{i}": "${H16}" for i in range(7)}},
                                     "jobs": [{"id": "a", "command": "x"}, {"id": "b", "command": "x"}]})
    assert len(lines) == 1 and ": key 'env': would expand to 4.72 MB in all" in lines[0], lines


def test_a_list_command_argument_standing_for_gigabytes_is_refused(tmp_path: Path) -> None:
    lines = refused_lines(tmp_path, {"env": doubling("A", 16), "jobs": [
        {"id": "a", "command": ["echo", "${A16}${A16}${A16}"]}]})
    assert len(lines) == 1 and "job 'a': key 'command'" in lines[0] and "argument 2" in lines[0], lines


@pytest.mark.parametrize("job,key", [
    ({"command": "echo a\u0000b"}, "command"),
    ({"command": ["echo", "a\u0000b"]}, "command"),
    ({"command": "x", "env": {"A": "a\u0000"}}, "env"),
    ({"command": "x", "workdir": "sub\u0000dir"}, "workdir"),
    ({"command": "x", "outputs": ["out\u0000put"]}, "outputs"),
    ({"command": "x", "slurm": {"partition": "cpu\u0000"}}, "slurm"),
    ({"command": "x", "slurm": {"additional_parameters": {"account": "a\u0000"}}}, "slurm"),
])
def test_nul_characters_are_refused_at_validation(tmp_path: Path, job: dict[str, Any], key: str) -> None:
    [line] = refused_lines(tmp_path, {"jobs": [{"id": "a", **job}]})
    assert f"job 'a': key '{key}'" in line and "NUL" in line, line


@pytest.mark.parametrize("top,key", [({"workdir": "w\u0000"}, "workdir"), ({"env": {"A": "\u0000"}}, "env")])
def test_nul_characters_at_the_top_are_refused_too(tmp_path: Path, top: dict[str, Any], key: str) -> None:
    [line] = refused_lines(tmp_path, {**top, "jobs": [{"id": "a", "command": "x"}]})
    assert f"key '{key}'" in line and "NUL" in line, line


def test_a_lone_surrogate_is_refused_at_validation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from executioner.workflow import parse as wfparse
    monkeypatch.setattr(wfparse, "_LOADER", wfparse._PyLoader)  # libyaml refuses it while parsing
    path = tmp_path / "s.yaml"
    path.write_text('jobs: [{id: a, command: "x\\udc80y"}]\n')
    with pytest.raises(WorkflowErrors) as info:
        load_workflow(str(path))
    [line] = str(info.value).splitlines()
    assert "key 'command'" in line and "UTF-8" in line, line


@pytest.mark.timeout(10)
def test_expand_refuses_at_run_time_what_the_workers_environment_makes_too_large() -> None:
    with pytest.raises(ValueError, match="BIG_TWICE would expand to 1.2 MB"):
        build_env({"BIG": "b" * 600_000}, [{"OK": "${BIG}", "BIG_TWICE": "${BIG}${BIG}"}], EXTRA)


@pytest.mark.timeout(60)
def test_a_job_the_workers_environment_makes_too_large_fails_with_the_reason(
        pool: Path, make_workflow, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXEC_TEST_BIG", "b" * 100_000)  # a single variable passed to exec: < 128 kB
    wf = make_workflow([{"id": "a", "command": "true", "env": {"X": "${EXEC_TEST_BIG}" * 12}},
                        {"id": "b", "command": "true"}])
    run = submit(pool, wf)
    for _ in range(5):  # each try is lost and requeued; a loaded machine may idle a worker out between
        work(pool, run)
        if os.path.exists(run.job("a", "failed")):
            break
    record = read_json(run.job("a", "failed"))
    assert "X would expand to 1.2 MB; a value may expand to at most 1 MB" in record["reason"], record["reason"]
    assert read_json(run.job("b", "done"))["id"] == "b"


@pytest.mark.parametrize("slurm,fragment", [
    ({"partition": "cpu\n#SBATCH --account=other"}, "partition"),
    ({"additional_parameters": {"comment": "x\necho injected"}}, "'comment'"),
    ({"additional_parameters": {"account=x --qos": "y"}}, "'account=x --qos'"),
    ({"additional_parameters": {"comment": "tab\tand\rcarriage"}}, "'comment'"),
])
def test_slurm_settings_cannot_break_out_of_their_sbatch_line(tmp_path: Path, slurm: dict[str, Any],
                                                              fragment: str) -> None:
    [line] = refused_lines(tmp_path, {"jobs": [{"id": "a", "command": "x", "slurm": slurm}]})
    assert "job 'a': key 'slurm'" in line and fragment in line, line
