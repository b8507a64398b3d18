"""Hostile workflow files (issue 10): each is refused in one pass, one short line per problem,
exit code 2, nothing written, and never with a traceback, a MemoryError or minutes of work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from executioner import WorkflowErrors, load_workflow
from executioner.workflow import parse as wfparse

from .conftest import cli


def refused(tmp_path: Path, text: str | bytes, suffix: str = ".yaml") -> list[str]:
    """The lines a user sees for a workflow that must be refused."""
    path = tmp_path / f"bad{suffix}"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    with pytest.raises(WorkflowErrors) as info:
        load_workflow(str(path))
    lines = str(info.value).splitlines()
    assert lines and all(line.startswith(str(path)) for line in lines), lines
    return lines


def submit_refused(tmp_path: Path, text: str | bytes, suffix: str = ".yaml") -> str:
    """``exec-submit`` of a bad workflow: exit 2, no traceback, no pool; its stderr."""
    path = tmp_path / f"cli{suffix}"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    pool = tmp_path / "pool"
    result = cli("exec-submit", str(path), "--pool", str(pool))
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr and "Error:" not in result.stderr, result.stderr
    assert not pool.exists()
    return result.stderr


def alias_bomb(levels: int, use: str, width: int = 9) -> str:
    """The "billion laughs": each anchor is a list of ``width`` aliases of the one before."""
    text = "defaults: {}\nx0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
    for i in range(1, levels):
        text += f"x{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]\n"
    return text + use.replace("BOMB", f"*a{levels - 1}") + "\n"


# ---- 1. alias bombs and long values --------------------------------------------------------
@pytest.mark.timeout(20)
@pytest.mark.parametrize("levels", [7, 9, 30])
@pytest.mark.parametrize("use", ["jobs: [{id: a, command: x, timeout: BOMB}]",
                                 "jobs: [{id: a, command: BOMB}]",
                                 "jobs: [{id: BOMB, command: x}]"])
def test_alias_bomb_is_refused_quickly_in_one_short_line(tmp_path: Path, levels: int, use: str,
                                                         yaml_loader: str) -> None:
    lines = refused(tmp_path, alias_bomb(levels, use))
    assert any("aliases expand" in line for line in lines), lines
    assert len(lines) == 1 and len(lines[0]) < 300, lines


def test_alias_that_contains_itself_is_refused(tmp_path: Path, yaml_loader: str) -> None:
    [line] = refused(tmp_path, "loop: &l [a, *l]\njobs: [{id: a, command: x}]\n")
    assert "line 1" in line and "contains itself" in line


def test_ordinary_anchors_and_a_large_file_using_them_are_accepted(tmp_path: Path, yaml_loader: str) -> None:
    jobs = "".join(f"  - {{id: j{i}, command: *cmd, env: *env}}\n" for i in range(3000))
    path = tmp_path / "ok.yaml"
    path.write_text("defaults: {timeout: 5}\nx: &cmd [echo, a, b, c, d, e, f, g]\n"
                    "y: &env {A: '1', B: '2', C: '3', D: '4', E: '5'}\njobs:\n" + jobs)
    with pytest.raises(WorkflowErrors) as info:  # only the two helper keys are unknown
        load_workflow(str(path))
    assert [e.key for e in info.value.errors] == ["x", "y"]


def test_alias_bomb_through_the_cli_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    err = submit_refused(tmp_path, alias_bomb(9, "jobs: [{id: a, command: x, timeout: BOMB}]"))
    assert len(err) < 400


@pytest.mark.parametrize("text", [
    '{"jobs": [{"id": "a", "command": "x", "timeout": "' + "t" * 100_000 + '"}]}',
    '{"jobs": [{"id": "' + "i" * 100_000 + '", "command": "x"}]}',
    '{"jobs": [{"id": "a", "command": "x", "' + "k" * 100_000 + '": 1}]}',
    '{"jobs": [{"id": "a", "command": "x", "dependencies": ["' + "d" * 100_000 + '"]}]}',
    '{"jobs": [{"id": "a", "command": "x", "env": {"-' + "E" * 100_000 + '": 1}}]}',
    '{"jobs": [{"id": "a", "command": "x", "timeout": [' + ", ".join(["[1, 2, 3]"] * 30_000) + "]}]}",
    '{"jobs": [{"id": "a", "command": "x", "timeout": {"' + "k" * 1000 + '": "' + "v" * 1000 + '"}}]}',
])
def test_quoted_values_in_messages_are_cut_short(tmp_path: Path, text: str) -> None:
    lines = refused(tmp_path, text, ".json")
    assert len(lines) == 1 and len(lines[0]) < 300, [line[:500] for line in lines]
    assert "…" in lines[0] or "..." in lines[0], lines


# ---- 2. ids of the wrong type, deep nesting, merge keys -----------------------------------------
@pytest.mark.parametrize("text", ["jobs: [{id: [a], command: x}]\n", "jobs: [{id: {a: 1}, command: x}]\n",
                                  "jobs: [{id: !!set {a}, command: x}]\n",
                                  "jobs: [{id: [a], command: x}, {id: b, command: x, dependencies: [a]}]\n"])
def test_an_id_that_is_not_a_string_is_one_line(tmp_path: Path, text: str, yaml_loader: str) -> None:
    lines = refused(tmp_path, text)
    assert "job '#1': key 'id'" in lines[0] and "must match" in lines[0], lines
    assert all("Traceback" not in line for line in lines)


@pytest.mark.parametrize("where", ["id", "command", "env", "timeout", "slurm"])
def test_json_nested_a_thousand_deep_is_one_line(tmp_path: Path, where: str) -> None:
    deep = "[" * 1000 + "]" * 1000
    [line] = refused(tmp_path, '{"jobs": [{"id": "a", "command": "x", "%s": %s}]}' % (where, deep), ".json")
    assert "nested too deeply" in line


def test_json_key_given_twice_is_refused(tmp_path: Path) -> None:
    [line] = refused(tmp_path, '{"jobs": [{"id": "a", "command": "x", "command": "y"}]}', ".json")
    assert "'command' appears twice" in line


MERGED = """\
jobs:
  - &common {id: a, command: run, timeout: 5, env: &env {A: '1', B: '2'}}
  - {<<: *common, id: b}
  - <<: *common
    id: c
    timeout: 7
    env: {<<: *env, B: three}
  - {<<: [{max_retries: 2}, *common], id: d}
"""


def test_yaml_merge_keys_share_job_settings(tmp_path: Path, yaml_loader: str) -> None:
    path = tmp_path / "merge.yaml"
    path.write_text(MERGED)
    a, b, c, d = load_workflow(str(path)).jobs
    assert (b.id, b.command, b.timeout, b.env) == ("b", "run", 5, {"A": "1", "B": "2"})
    assert (c.timeout, c.env) == (7, {"A": "1", "B": "three"})
    assert (d.max_retries, d.command) == (2, "run")


@pytest.mark.parametrize("text,key", [
    ("jobs:\n  - &c {id: a, command: x}\n  - {<<: *c, id: b, id: c}\n", "'id' appears twice"),
    ("jobs:\n  - &c {id: a, command: x}\n  - {<<: *c, <<: *c, id: b}\n", "'<<' appears twice"),
    ("jobs:\n  - {id: a, command: x}\n  - {<<: [a], id: b}\n", "line 3"),
])
def test_real_duplicates_and_bad_merges_are_still_refused(tmp_path: Path, text: str, key: str,
                                                          yaml_loader: str) -> None:
    [line] = refused(tmp_path, text)
    assert key in line


# ---- 3. bytes that are not UTF-8, control characters -------------------------------------------
@pytest.mark.parametrize("text,where,what", [
    (b"jobs:\n  - {id: a, command: \"echo \xff\"}\n", "line 2, column 28", "byte 0xff is not UTF-8"),
    (b"jobs:\n  - {id: a, command: \"\xc3\xa9\xc3\xa9 \xe9\"}\n", "line 2, column 26", "byte 0xe9"),
    (b"jobs:\n  - {id: a,\n     command: \"x\x01\"}\n", "line 3, column 17", "U+0001"),
    (b"\xef\xbb\xbfjobs: [{id: a, command: x\x1b}]\n", "line 1, column 26", "U+001B"),
    (b"jobs: [{id: a, command: x}]\n#\x7f\n", "line 2, column 2", "U+007F"),
])
def test_bad_bytes_and_control_characters_name_line_and_column(tmp_path: Path, text: bytes, where: str,
                                                              what: str, yaml_loader: str) -> None:
    [line] = refused(tmp_path, text)
    assert f"not valid YAML at {where}: " in line and what in line, line


@pytest.mark.parametrize("text,where", [
    (b'{"jobs": [\n {"id": "a", "command": "x\xff"}]}', "line 2, column 27"),
    (b'{"jobs": [\n {"id": "a", "command": "x\x01"}]}', "line 2, column 27"),
])
def test_bad_bytes_in_json_name_line_and_column(tmp_path: Path, text: bytes, where: str) -> None:
    [line] = refused(tmp_path, text, ".json")
    assert f"not valid JSON at {where}: " in line, line


def test_escaped_control_characters_other_than_nul_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "esc.yaml"
    path.write_text('jobs: [{id: a, command: "printf \\x1b[1m"}]\n')
    assert load_workflow(str(path)).jobs[0].command == "printf \x1b[1m"


@pytest.mark.timeout(30)
def test_alias_bomb_past_what_a_float_can_count_is_refused(tmp_path: Path, yaml_loader: str) -> None:
    [line] = refused(tmp_path, alias_bomb(95, "jobs: [{id: a, command: BOMB}]", width=2000))  # 2000**95
    assert "line 4, column 5: aliases expand this to 4e+07 values" in line, line


# ---- 6. ids that one case-insensitive filesystem would take for one ---------------------------
def test_ids_differing_only_by_case_are_refused(tmp_path: Path) -> None:
    lines = refused(tmp_path, "jobs: [{id: Job, command: x}, {id: job, command: x}, {id: JOB, command: x},"
                              " {id: other, command: x, dependencies: [job]}]\n")
    assert len(lines) == 2, lines
    assert "job 'job': key 'id': ids 'Job' and 'job' differ only by case" in lines[0]
    assert "job 'JOB': key 'id': ids 'Job' and 'JOB' differ only by case" in lines[1]


def test_ids_differing_only_by_case_through_the_cli(tmp_path: Path) -> None:
    err = submit_refused(tmp_path, "jobs: [{id: Job, command: x}, {id: job, command: x}]\n")
    assert "differ only by case" in err and err.count("\n") == 1


# ---- 7. every number bounded ---------------------------------------------------------------------
YEAR = 365 * 24 * 3600


@pytest.mark.parametrize("key,bad,good", [
    ("timeout", [0, -1, YEAR + 1, 1.0e17, ".inf", ".nan", "true"], [0.5, YEAR, "null"]),
    ("max_retry_time", [0, YEAR + 1, 1.0e17, ".inf", ".nan"], [1, YEAR, "null"]),
    ("retry_delay", [-1, YEAR + 1, 1.0e17, ".inf", "-.inf", ".nan"], [0, 2.5, YEAR]),
    ("kill_grace", [-1, YEAR + 1, ".inf", ".nan"], [0, 5, YEAR]),
    ("retry_backoff", [0, -2, 101, 1.0e17, ".inf", ".nan"], [0.5, 1, 100]),
    ("retry_jitter", [-0.1, 1.1, ".nan"], [0, 1]),
    ("max_retries", [-1, 1_000_001, 2.5, "true", ".inf"], [0, 1_000_000]),
    ("max_lost", [0, 1_000_001, 1.5, ".nan"], [1, 1_000_000]),
    ("retry_on_exit_codes", ["[-1]", "[256]", "[1.5]", "[.nan]", "[true]"], ["[0, 255]", "null"]),
    ("slurm", ["{time: 0}", "{time: 525601}", "{cpus: 1000001}", "{gpus: 0}", "{mem_gb: .inf}",
               "{mem_gb: 1.0e+7}", "{additional_parameters: {nice: .nan}}"],
     ["{time: 525600, cpus: 1000000, gpus: 1, mem_gb: 1000000.0}"]),
])
def test_numbers_are_finite_and_within_bounds(tmp_path: Path, key: str, bad: list[object],
                                              good: list[object]) -> None:
    for value in bad:
        for where in (f"jobs: [{{id: a, command: x, {key}: {value}}}]\n",
                      f"defaults: {{{key}: {value}}}\njobs: [{{id: a, command: x}}]\n"):
            [line] = refused(tmp_path, where)
            assert f"key '{key}'" in line or f"key 'defaults.{key}'" in line, (value, line)
    for value in good:
        path = tmp_path / "good.yaml"
        path.write_text(f"jobs: [{{id: a, command: x, {key}: {value}}}]\n")
        load_workflow(str(path))


def test_a_bound_is_named_in_the_message(tmp_path: Path) -> None:
    [line] = refused(tmp_path, "jobs: [{id: a, command: x, retry_delay: 1.0e+17}]\n")
    assert "job 'a': key 'retry_delay': must be a number of seconds from 0 to 31536000 (a year), not 1e+17" in line


def test_a_long_series_of_quick_retries_does_not_overflow_the_delay(tmp_path: Path) -> None:
    from executioner.protocol.retry import decide

    path = tmp_path / "w.yaml"
    path.write_text("jobs: [{id: a, command: x, max_retries: 5000, retry_delay: 0, retry_backoff: 2}]\n")
    spec = load_workflow(str(path)).jobs[0].to_spec()  # valid: each number is within its bounds
    tries = [{"status": "failed", "exit_code": 1, "start": 0.0}] * 1100
    decision = decide(spec, tries, now=0.0)
    assert decision.retry and 0 <= decision.delay <= YEAR


# ---- 8. many problems: fast, and a bounded number of lines ------------------------------------------
def big_json(tmp_path: Path, jobs: list[dict[str, object]], name: str = "big") -> Path:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"jobs": jobs}))
    return path


@pytest.mark.timeout(30)
def test_thousands_of_unknown_dependencies_are_refused_fast_in_a_bounded_report(tmp_path: Path) -> None:
    jobs = [{"id": f"job{i:05d}", "command": "x"} for i in range(6000)]
    for i in range(0, 6000, 2):
        jobs[i]["dependencies"] = [f"jbo{i + 1:05d}"]  # a typo of an id that exists
    path = big_json(tmp_path, jobs)
    start = time.monotonic()
    with pytest.raises(WorkflowErrors) as info:
        load_workflow(str(path))
    assert time.monotonic() - start < 3
    lines = str(info.value).splitlines()
    assert len(lines) == 101 and lines[-1] == f"{path}: … and 2900 more problems", lines[-1]
    assert "job 'job00000': key 'dependencies': unknown dependency 'jbo00001' (did you mean 'job00001'?)" in lines[0]
    assert len(info.value.errors) == 101


def test_the_cli_prints_the_bounded_report(tmp_path: Path) -> None:
    text = json.dumps({"jobs": [{"id": f"j{i}", "command": "x", "timeot": 1} for i in range(500)]})
    err = submit_refused(tmp_path, text, ".json")
    assert err.count("\n") == 101 and "… and 400 more problems" in err


# ---- 9. every problem in one pass ------------------------------------------------------------------
def test_cycles_and_unknown_dependencies_are_reported_with_the_other_problems(tmp_path: Path) -> None:
    lines = refused(tmp_path, """\
jobs:
  - {id: a, command: x, dependencies: [b]}
  - {id: b, command: x, dependencies: [a]}
  - {id: c, command: x, dependencies: [zz]}
  - {id: d, command: x, tmeout: 1, dependencies: [yy]}
  - {id: e, command: x, timeout: -1, dependencies: [e]}
  - {command: x}
""")
    text = "\n".join(lines)
    assert len(lines) == 7, lines
    for fragment in ("job 'd': key 'tmeout': unknown key", "job 'e': key 'timeout'", "job '#6': key 'id': missing",
                     "job 'c': key 'dependencies': unknown dependency 'zz'",
                     "job 'd': key 'dependencies': unknown dependency 'yy'",
                     "job 'e': key 'dependencies': a job cannot depend on itself",
                     "key 'dependencies': dependency cycle: "):
        assert fragment in text, (fragment, lines)


def test_a_cycle_is_found_beside_a_broken_job_but_not_through_it(tmp_path: Path) -> None:
    lines = refused(tmp_path, """\
jobs:
  - {id: a, command: x, dependencies: [b]}
  - {id: b, command: x, dependencies: [a, broken]}
  - {id: broken, command: x, timeout: soon, dependencies: [c]}
  - {id: c, command: x, dependencies: [broken]}
""")
    assert len(lines) == 2 and "job 'broken': key 'timeout'" in lines[0], lines
    assert "dependency cycle: a -> b -> a" in lines[1] or "dependency cycle: b -> a -> b" in lines[1], lines


# ---- 10. a workflow in a directory whose name is not UTF-8 -----------------------------------------
def non_utf8_workflow(tmp_path: Path) -> bytes:
    directory = os.fsencode(tmp_path) + b"/caf\xe9-latin1"
    os.mkdir(directory)
    path = directory + b"/wf.yaml"
    with open(path, "wb") as f:
        f.write(b"jobs: [{id: a, command: 'true'}]\n")
    return path


@pytest.mark.parametrize("as_bytes", [False, True])
def test_a_path_that_is_not_utf8_is_refused_in_one_line(tmp_path: Path, as_bytes: bool) -> None:
    path = non_utf8_workflow(tmp_path)
    with pytest.raises(WorkflowErrors) as info:
        load_workflow(path if as_bytes else os.fsdecode(path))  # type: ignore[arg-type]
    [line] = str(info.value).splitlines()
    assert line.startswith(f"{tmp_path}/caf\\xe9-latin1/wf.yaml: ") and "not valid UTF-8" in line, line
    line.encode("utf-8")  # printable as it is


def test_a_path_that_is_not_utf8_through_the_cli_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    path = non_utf8_workflow(tmp_path)
    pool = tmp_path / "pool"
    code = "import sys; from executioner.cli import submit_main; sys.exit(submit_main(sys.argv[1:]))"
    for args, cwd in (([path], None), ([b"wf.yaml"], os.path.dirname(path))):
        result = subprocess.run([sys.executable, "-c", code, *args, "--pool", str(pool)], cwd=cwd,
                                capture_output=True, timeout=60)
        assert result.returncode == 2, result
        assert b"Traceback" not in result.stderr and b"not valid UTF-8" in result.stderr, result.stderr
        assert result.stderr.count(b"\n") == 1 and not pool.exists()


def test_a_non_utf8_name_is_refused_wherever_it_comes_from(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = non_utf8_workflow(tmp_path)
    monkeypatch.chdir(os.path.dirname(path))
    with pytest.raises(WorkflowErrors, match="not valid UTF-8"):
        load_workflow("wf.yaml")  # the name is fine, the current directory is not


def test_a_path_with_a_nul_and_a_file_too_large_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(WorkflowErrors, match="the path contains a NUL character"):
        load_workflow(str(tmp_path / "a\0b.yaml"))
    monkeypatch.setattr(wfparse, "MAX_FILE_BYTES", 1000)
    [line] = refused(tmp_path, "jobs: [{id: a, command: x}]\n" + "#" * 1000)
    assert line.endswith("larger than 1 kB: not read")


@pytest.mark.parametrize("value,problem", [
    ("NaN", "NaN is not a JSON number"), ("-Infinity", "-Infinity is not"),
    ("9" * 5000, "a number this long"), ("[" * 5000 + "]" * 5000, "nested too deeply"),
    ("[" * 101 + "]" * 101, "nested too deeply (more than 100 levels)")])
def test_json_without_nan_infinity_endless_numbers_or_endless_nesting(tmp_path: Path, value: str,
                                                                      problem: str) -> None:
    [line] = refused(tmp_path, '{"jobs": [{"id": "a", "command": "x", "timeout": %s}]}' % value, ".json")
    assert problem in line, line


# ---- large inputs stay linear (no recursion, nothing quadratic) ---------------------------------------
N = 100_000


def timed_load(path: Path) -> tuple[float, object]:
    start = time.monotonic()
    wf = load_workflow(str(path))
    return time.monotonic() - start, wf


@pytest.mark.timeout(120)
def test_a_chain_of_100000_jobs_validates_in_seconds(tmp_path: Path) -> None:
    jobs: list[dict[str, object]] = [{"id": "j0", "command": "true"}]
    jobs += [{"id": f"j{i}", "command": "true", "dependencies": [f"j{i - 1}"]} for i in range(1, N)]
    seconds, wf = timed_load(big_json(tmp_path, jobs))
    assert len(wf.jobs) == N and wf.dependents()["j0"] == ["j1"]  # type: ignore[attr-defined]
    assert seconds < 20, seconds  # about 3 s on 2 slow shared cores; a quadratic step takes hours


@pytest.mark.timeout(120)
def test_a_fan_out_and_in_of_100000_jobs_validates_in_seconds(tmp_path: Path) -> None:
    jobs: list[dict[str, object]] = [{"id": "root", "command": "true"}]
    jobs += [{"id": f"m{i}", "command": ["echo", "${X}"], "env": {"X": str(i)}, "dependencies": ["root"]}
             for i in range(N)]
    jobs.append({"id": "sink", "command": "true", "dependencies": [f"m{i}" for i in range(N)]})
    seconds, wf = timed_load(big_json(tmp_path, jobs))
    assert len(wf.jobs) == N + 2 and len(wf.dependents()["root"]) == N  # type: ignore[attr-defined]
    assert seconds < 20, seconds


@pytest.mark.timeout(120)
def test_a_cycle_through_100000_jobs_is_one_short_line(tmp_path: Path) -> None:
    jobs = [{"id": f"j{i}", "command": "true", "dependencies": [f"j{(i - 1) % N}"]} for i in range(N)]
    path = big_json(tmp_path, jobs)
    with pytest.raises(WorkflowErrors) as info:
        load_workflow(str(path))
    [line] = str(info.value).splitlines()
    assert "dependency cycle: j0 -> j99999 -> j99998" in line, line
    assert "(99991 more) -> j3 -> j2 -> j1 -> j0" in line and len(line) < 300, line


@pytest.mark.timeout(120)
def test_a_yaml_chain_of_20000_jobs_validates(tmp_path: Path, yaml_loader: str) -> None:
    path = tmp_path / "chain.yaml"
    path.write_text("jobs:\n  - {id: j0, command: 'true'}\n" + "".join(
        f"  - {{id: j{i}, command: 'true', dependencies: [j{i - 1}]}}\n" for i in range(1, 20_000)))
    seconds, wf = timed_load(path)
    assert len(wf.jobs) == 20_000  # type: ignore[attr-defined]


def test_a_runs_own_copy_in_a_pool_that_is_not_utf8_still_loads(tmp_path: Path) -> None:
    """A pool may live anywhere: resume and rebuild read the run's copy and keep its recorded
    path and workdir (they pass recorded=False)."""
    path = non_utf8_workflow(tmp_path)
    wf = load_workflow(path, recorded=False)  # type: ignore[arg-type]
    assert [j.id for j in wf.jobs] == ["a"]
