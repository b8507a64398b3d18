"""``${VAR}`` in env values: the scope each level sees, the written order kept through the
job file and run.json, and the bounds on what a value may expand to."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from executioner import load_workflow
from executioner.attempts import definition_hash
from executioner.execute import build_env
from executioner.fsio import dumps, read_json

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
