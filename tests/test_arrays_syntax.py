"""Task arrays in a workflow file (issue 11): each syntax form, placeholders where they are
allowed and left alone where they are not, and every mistake one line naming file, job, key."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from executioner import WorkflowErrors, load_workflow
from executioner.workflow.arrays import Template, chunk_size, chunks


def load(tmp_path: Path, text: str, **files: str):
    for name, content in files.items():
        (tmp_path / name).write_text(content)
    path = tmp_path / "wf.yaml"
    path.write_text(text)
    return load_workflow(str(path))


def refused(tmp_path: Path, text: str, **files: str) -> list[str]:
    with pytest.raises(WorkflowErrors) as info:
        load(tmp_path, text, **files)
    lines = str(info.value).splitlines()
    assert all(line.startswith(str(tmp_path / "wf.yaml")) for line in lines), lines
    return lines


def tasks_of(job) -> list[dict[str, str]]:
    return [job.tasks.params(i) for i in range(len(job.tasks))]


def test_matrix_is_the_cartesian_product_first_key_slowest(tmp_path: Path) -> None:
    wf = load(tmp_path, "jobs:\n  - id: sim\n    command: run {seed} {temp}\n"
                        "    matrix: {seed: [1, 2], temp: [280, 300, 320]}\n")
    sim = wf.jobs[0]
    assert [(t["index"], t["seed"], t["temp"]) for t in tasks_of(sim)] == [
        ("0", "1", "280"), ("1", "1", "300"), ("2", "1", "320"),
        ("3", "2", "280"), ("4", "2", "300"), ("5", "2", "320")]


def test_array_count_and_range(tmp_path: Path) -> None:
    wf = load(tmp_path, "jobs:\n  - {id: fit, command: 'fit {index}', array: 4}\n"
                        "  - {id: rng, command: 'r {index}', array: {start: 100, stop: 130, step: 10}}\n"
                        "  - {id: down, command: 'd {index}', array: {start: 3, stop: 0, step: -1}}\n")
    fit, rng, down = wf.jobs
    assert [t["index"] for t in tasks_of(fit)] == ["0", "1", "2", "3"]
    assert [t["index"] for t in tasks_of(rng)] == ["100", "110", "120"]
    assert rng.tasks.position(110) == 1 and rng.tasks.position(115) is None and rng.tasks.position(130) is None
    assert [t["index"] for t in tasks_of(down)] == ["3", "2", "1"]


def test_each_line_skips_blank_lines_and_keeps_the_rest_as_written(tmp_path: Path) -> None:
    wf = load(tmp_path, "jobs:\n  - {id: gz, command: 'gzip -k {line}', each_line: inputs.txt}\n",
              **{"inputs.txt": "a.txt\n\n  \nmy file; rm -rf ~\r\nlast"})
    assert [(t["index"], t["line"]) for t in tasks_of(wf.jobs[0])] == [
        ("0", "a.txt"), ("1", "my file; rm -rf ~"), ("2", "last")]
    assert wf.jobs[0].tasks.raw == (tmp_path / "inputs.txt").read_bytes()


def test_placeholders_are_substituted_and_other_braces_left_alone() -> None:
    text = """awk '{print $1}' x; echo '{"a":{"b":1}}' ${HOME} $HOME {{seed}} {seed}-{index}"""
    assert Template.parse(text).render({"seed": "7", "index": "3"}) == (
        """awk '{print $1}' x; echo '{"a":{"b":1}}' ${HOME} $HOME {seed} 7-3""")


def test_shell_commands_get_each_value_as_one_word(tmp_path: Path) -> None:
    """A line with spaces, quotes or ';' is one argument and never runs as code."""
    line = """it's a "file"; touch pwned"""
    cmd = Template.parse("printf '%s\\n' {line}").render({"line": line}, shell=True)
    out = subprocess.run(["/bin/sh", "-c", cmd], cwd=tmp_path, capture_output=True, text=True)
    assert out.stdout == line + "\n"
    assert not (tmp_path / "pwned").exists()
    assert Template.parse("run {seed}").render({"seed": "42"}, shell=True) == "run 42"  # safe: unchanged
    assert shlex.split(Template.parse("x {v}").render({"v": ""}, shell=True)) == ["x", ""]


def test_placeholders_in_every_allowed_key(tmp_path: Path) -> None:
    wf = load(tmp_path, 'jobs:\n  - id: a\n    array: 2\n    command: ["prog", "--n={index}"]\n'
                        '    env: {OUT: "out/{index}", PLAIN: "${HOME}"}\n    workdir: "w{index}"\n'
                        '    outputs: ["out/{index}.json"]\n')
    spec = wf.jobs[0]
    assert spec.command == ("prog", "--n={index}") and spec.env["OUT"] == "out/{index}"
    assert spec.workdir == "w{index}" and spec.outputs == ("out/{index}.json",)


def test_a_plain_job_has_no_placeholders(tmp_path: Path) -> None:
    wf = load(tmp_path, "jobs:\n  - {id: a, command: 'echo {index} {anything}'}\n")
    assert wf.jobs[0].tasks is None and wf.jobs[0].command == "echo {index} {anything}"


def test_element_wise_and_whole_array_dependencies(tmp_path: Path) -> None:
    wf = load(tmp_path, 'jobs:\n  - {id: sim, command: s, array: 3}\n'
                        '  - {id: post, command: p, array: 3, dependencies: ["sim:{index}"]}\n'
                        '  - {id: agg, command: g, dependencies: [sim, post]}\n'
                        '  - {id: both, command: b, array: 3, dependencies: [sim, "sim:{index}"]}\n')
    sim, post, agg, both = wf.jobs
    assert post.dependencies == ("sim",) and post.elementwise == ("sim",)
    assert agg.dependencies == ("sim", "post") and agg.elementwise == ()
    assert both.dependencies == ("sim",) and both.elementwise == ()  # the whole array includes task i
    assert wf.dependents()["sim"] == ["post", "agg", "both"]


def test_the_definition_of_a_plain_job_is_unchanged_by_arrays(tmp_path: Path) -> None:
    """Resume compares stored definitions: a plain job's stored spec has no array keys."""
    wf = load(tmp_path, "jobs:\n  - {id: a, command: x}\n  - {id: b, command: y, array: 2}\n")
    assert "tasks" not in wf.jobs[0].to_spec() and "elementwise" not in wf.jobs[0].to_spec()
    assert wf.jobs[1].to_spec()["tasks"] == {"kind": "array", "count": 2, "chunk": None, "start": 0, "step": 1}


@pytest.mark.parametrize("job, expected", [
    ("{id: a, command: x, array: 3, matrix: {k: [1]}}", "key 'array': a job may have one of matrix, array, each_line, not matrix and array"),
    ("{id: a, command: x, array: 0}", "key 'array': must be a number of tasks (1 to 10,000,000)"),
    ("{id: a, command: x, array: 2.5}", "key 'array': must be a number of tasks"),
    ("{id: a, command: x, array: 20000000}", "key 'array': must be a number of tasks"),
    ("{id: a, command: x, array: {start: 5, stop: 5}}", "key 'array': range(5, 5, 1) has no values"),
    ("{id: a, command: x, array: {start: 0, stop: 9, step: 0}}", "key 'array': step cannot be 0"),
    ("{id: a, command: x, array: {start: 0}}", "key 'array': a range needs 'stop'"),
    ("{id: a, command: x, array: {stop: 3, every: 2}}", "key 'array': unknown key 'every'"),
    ("{id: a, command: x, matrix: {}}", "key 'matrix': must be a mapping of names to lists of values"),
    ("{id: a, command: x, matrix: [1, 2]}", "key 'matrix': must be a mapping of names to lists of values, not a list"),
    ("{id: a, command: x, matrix: {k: []}}", "key 'matrix': k must be a non-empty list of values"),
    ("{id: a, command: x, matrix: {k: 3}}", "key 'matrix': k must be a non-empty list of values"),
    ("{id: a, command: x, matrix: {k: [[1]]}}", "key 'matrix': k: [1] is not a string or a number"),
    ("{id: a, command: x, matrix: {k: [1, 1]}}", "key 'matrix': k lists '1' twice"),
    ("{id: a, command: x, matrix: {index: [1]}}", "key 'matrix': 'index' is reserved"),
    ("{id: a, command: x, matrix: {a-b: [1]}}", "key 'matrix': 'a-b' is not a placeholder name"),
    ("{id: a, command: x, matrix: {a: [1,2,3,4,5,6,7,8,9,10], b: [1,2,3,4,5,6,7,8,9,10], c: [1,2,3,4,5,6,7,8,9,10], "
     "d: [1,2,3,4,5,6,7,8,9,10], e: [1,2,3,4,5,6,7,8,9,10], f: [1,2,3,4,5,6,7,8,9,10], g: [1,2,3,4,5,6,7,8,9,10], "
     "h: [1,2,3,4,5,6,7,8,9,10]}}", "key 'matrix': makes more than 10,000,000 tasks"),
    ("{id: a, command: x, chunk: 4}", "key 'chunk': only an array (matrix, array or each_line) is claimed in chunks"),
    ("{id: a, command: x, array: 4, chunk: 0}", "key 'chunk': must be a whole number of tasks from 1 to 100,000"),
    ("{id: a, command: 'x {seed}', array: 4}", "key 'command': placeholder {seed} names nothing (this array has {index}; write {{seed}} for a literal {seed})"),
    ("{id: a, command: x, array: 4, env: {A: '{line}'}}", "key 'env': placeholder {line} names nothing"),
    ("{id: a, command: x, array: 4, workdir: '{k}'}", "key 'workdir': placeholder {k} names nothing"),
    ("{id: a, command: x, array: 4, outputs: ['{k}']}", "key 'outputs': placeholder {k} names nothing"),
    ("{id: a, command: x, each_line: missing.txt}", "key 'each_line': 'missing.txt': no such file (an each_line path is relative to the workflow file)"),
    ("{id: a, command: x, each_line: 3}", "key 'each_line': must be the path of a file of inputs"),
    ("{id: a, command: x, each_line: .}", "key 'each_line': '.': is a directory"),
])
def test_each_mistake_is_one_line(tmp_path: Path, job: str, expected: str) -> None:
    lines = refused(tmp_path, f"jobs:\n  - {job}\n")
    assert len(lines) == 1 and f"job 'a': {expected}" in lines[0], lines


@pytest.mark.parametrize("content, expected", [
    ("\n \n\n", "'in.txt' has no non-empty line (no task)"),
    ("ok\nbad\0line\n", "'in.txt' line 2: contains a NUL character"),
])
def test_each_line_file_problems(tmp_path: Path, content: str, expected: str) -> None:
    lines = refused(tmp_path, "jobs:\n  - {id: a, command: x, each_line: in.txt}\n", **{"in.txt": content})
    assert len(lines) == 1 and expected in lines[0], lines


def test_each_line_file_not_utf8_names_the_line(tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_bytes(b"ok\nfine\n\xff\xfe\n")
    lines = refused(tmp_path, "jobs:\n  - {id: a, command: x, each_line: in.txt}\n")
    assert len(lines) == 1 and "'in.txt' line 3: not UTF-8" in lines[0], lines


@pytest.mark.parametrize("jobs, expected", [
    ('  - {id: s, command: x, array: 3}\n  - {id: p, command: y, dependencies: ["s:{index}"]}\n',
     "job 'p': key 'dependencies': 's:{index}': only an array (matrix, array or each_line) can depend on another array's tasks one by one"),
    ('  - {id: s, command: x}\n  - {id: p, command: y, array: 3, dependencies: ["s:{index}"]}\n',
     "job 'p': key 'dependencies': 's:{index}': 's' is not an array; depend on 's'"),
    ('  - {id: s, command: x, array: 3}\n  - {id: p, command: y, array: 4, dependencies: ["s:{index}"]}\n',
     "job 'p': key 'dependencies': 's:{index}': task i waits for task i of 's', but this array has 4 tasks and 's' has 3"),
    ('  - {id: s, command: x, array: 3}\n  - {id: p, command: y, array: 3, dependencies: ["s:2"]}\n',
     "job 'p': key 'dependencies': 's:2': a dependency names a job, or 's:{index}' for task i of an array"),
    ('  - {id: p, command: y, array: 3, dependencies: ["nope:{index}"]}\n',
     "job 'p': key 'dependencies': unknown dependency 'nope'"),
    ('  - {id: s, command: x, array: 3}\n  - {id: a, command: y, defaults: 1}\n',
     "job 'a': key 'defaults': unknown key"),
    ('  - {id: s, command: x, array: 3}\n  - {id: s.0-1, command: y}\n',
     "job 's.0-1': key 'id': looks like a chunk of array 's' (its files are s.<first>-<last>.json): rename the job"),
])
def test_dependency_mistakes(tmp_path: Path, jobs: str, expected: str) -> None:
    lines = refused(tmp_path, "jobs:\n" + jobs)
    assert any(expected in line for line in lines), lines


def test_array_keys_cannot_be_defaults(tmp_path: Path) -> None:
    lines = refused(tmp_path, "defaults: {array: 3, chunk: 2}\njobs:\n  - {id: a, command: x}\n")
    assert [line.split(": ", 1)[1] for line in lines] == [
        "key 'defaults.array': cannot be set in defaults", "key 'defaults.chunk': cannot be set in defaults"]


def test_every_problem_at_once_with_arrays(tmp_path: Path) -> None:
    lines = refused(tmp_path, 'jobs:\n  - {id: s, command: "x {nope}", array: 3}\n'
                              '  - {id: p, command: y, array: 0, dependencies: ["s:{index}", "ghost"]}\n')
    assert len(lines) == 3, lines


def test_automatic_chunk_size_rule() -> None:
    """100 tasks on 100 workers are 100 claims; 10,000 tasks at most 64 a chunk; a million
    tasks at most 2,000 files; an explicit chunk wins."""
    assert chunk_size(100) == 1 and chunk_size(256) == 1 and chunk_size(1000) == 4
    assert chunk_size(10_000) == 40 and chunk_size(100_000) == 64
    assert chunk_size(1_000_000) == 500 and len(list(chunks(1_000_000, 500))) == 2000
    assert chunk_size(10_000_000) == 5000
    assert chunk_size(100, 50) == 50 and chunk_size(10, 50) == 10
    assert list(chunks(10, 4)) == [(0, 3), (4, 7), (8, 9)]


def test_a_million_task_array_validates_fast_and_small(tmp_path: Path) -> None:
    """Nothing is materialised per task: a 1M-task matrix is a few values."""
    import tracemalloc
    tracemalloc.start()
    wf = load(tmp_path, "jobs:\n  - id: m\n    command: x {a} {b}\n"
                        f"    matrix: {{a: {list(range(1000))}, b: {list(range(1000))}}}\n")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(wf.jobs[0].tasks) == 1_000_000 and wf.jobs[0].tasks.params(999_999)["b"] == "999"
    assert peak < 50_000_000


@pytest.mark.parametrize("text, expected", [
    ("jobs:\n  - id: a\n    array: 3\n    command: x\n    outputs: [out/{index}.json]\n",
     "(if a {placeholder} is meant there, quote the value: 'out/{index}.json')"),
    ("jobs:\n  - {id: a, command: x {index}, array: 3}\n",
     "(if a {placeholder} is meant there, quote the value: 'out/{index}.json')"),
    ("jobs:\n  - id: a\n    array: 3\n    command: {index}\n",
     "key 'command': must be a string or a list of strings, not a mapping (unquoted, YAML reads {index} as a mapping: quote the value)"),
])
def test_an_unquoted_placeholder_that_yaml_reads_as_syntax_is_explained(tmp_path: Path, text: str, expected: str) -> None:
    lines = refused(tmp_path, text)
    assert len(lines) == 1 and lines[0].endswith(expected), lines
