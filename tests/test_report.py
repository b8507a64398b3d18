"""``exec-status POOL RUN --report FILE.html`` (issue 13): one self-contained page, loaded in a
real headless Chromium with the network cut off; the DAG and the timeline must have drawn
their elements and no script may have failed."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from executioner import RunLayout
from executioner.protocol import store
from executioner.views import figures
from executioner.views.report_data import TAIL_BYTES, Bar, read_report

from .conftest import cli, submit, work

CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium: scripts/_system_packages.sh installs the "
                                    "Debian package chromium (as root, with apt-get)")
BROWSER = ["--headless", "--no-sandbox", "--disable-gpu", "--proxy-server=127.0.0.1:9", "--hide-scrollbars",
           "--virtual-time-budget=5000", "--enable-logging=stderr", "--v=0"]


def browse(page: Path, *args: str) -> tuple[str, str]:
    """Chromium's DOM dump (or screenshot) of ``page`` and its log; no network (a dead proxy)."""
    p = subprocess.run([CHROMIUM or "chromium", *BROWSER, *args, page.as_uri()], capture_output=True,
                       text=True, timeout=50, cwd=page.parent)
    assert p.returncode == 0, p.stderr[-2000:]
    return p.stdout, p.stderr


def between(dom: str, start: str, end: str) -> str:
    return dom[dom.index(start):dom.index(end)]


@pytest.fixture
def mixed_run(pool: Path, make_workflow: Any, tmp_path: Path) -> RunLayout:
    """``prep`` done, ``flaky`` failing its first try then done, ``bad`` failing for good with
    a long stderr (``the last words`` at its end), ``after`` blocked by it, and an array
    ``sim`` of 6 tasks in chunks of 2 whose task 4 fails."""
    marks = tmp_path / "marks"
    marks.mkdir()
    wf = make_workflow([
        {"id": "prep", "command": "true"},
        {"id": "flaky", "command": f"test -e {marks}/f || {{ touch {marks}/f; exit 75; }}", "max_retries": 2,
         "retry_delay": 0, "dependencies": ["prep"]},
        {"id": "bad", "command": "head -c 100000 /dev/zero | tr '\\0' x >&2; echo >&2; echo 'the last words' >&2; "
                                 "exit 3", "dependencies": ["prep"]},
        {"id": "after", "command": "true", "dependencies": ["bad"]},
        {"id": "sim", "command": "test {i} -ne 4 || { echo 'task four broke' >&2; exit 2; }",
         "matrix": {"i": [0, 1, 2, 3, 4, 5]}, "chunk": 2, "dependencies": ["prep"]},
    ])
    run = submit(pool, wf)
    work(pool, run, slots=2)
    return run


@needs_chromium
@pytest.mark.timeout(120)
def test_report_draws_the_dag_and_every_try_in_chromium_offline(mixed_run: RunLayout, tmp_path: Path) -> None:
    page = tmp_path / "report page.html"
    p = cli("exec-status", mixed_run.root, "--report", str(page))
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith(f"{page}: ") and "5 jobs" in p.stdout
    text = page.read_text()
    outside_scripts = re.sub(r"<script>.*?</script>", "", text, flags=re.S)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", outside_scripts)  # nothing fetched
    assert not re.search(r"<script[^>]+src=|<link[^>]+href=", text)

    dom, log = browse(page, "--dump-dom")
    assert "Uncaught" not in log
    assert re.search(r'<pre id="script-errors"></pre>', dom), between(dom, "script-errors", "</pre>")
    dag = between(dom, 'id="dag"', 'id="timeline-title"')
    assert dag.count('class="point"') == 5  # prep, flaky, bad, after, and sim as one node
    assert 'class="js-line"' in dag  # the edges
    timeline = between(dom, 'id="timeline"', 'id="slowest"')
    # prep 1, flaky 2, bad 1, the chunks' tries: 3 (sim.4-5 once more for its failed task 4)
    tries = 1 + 2 + 1 + 3 + 1
    assert timeline.count('class="point"') == tries
    assert f"Timeline ({tries} tries)" in dom
    failures = between(dom, 'id="failures"', 'id="hosts"')
    assert "the last words" in failures and "task four broke" in failures and "sim:4" in failures
    assert "x" * (TAIL_BYTES + 1) not in failures  # the tail only, not 100 kB of stderr
    retried = between(dom, 'id="retries"', "</body>")
    assert "flaky" in retried and "exit code 75" in retried

    shot = tmp_path / "shot.png"
    browse(page, "--window-size=1200,2400", f"--screenshot={shot}")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


def test_a_running_run_is_a_snapshot_with_the_running_try_drawn(pool: Path, make_workflow: Any,
                                                                  tmp_path: Path) -> None:
    run = submit(pool, make_workflow([{"id": "a", "command": "true"}, {"id": "b", "command": "true"}]))
    claim = store.claim(run, "a", store.Owner.current("test-holder"))
    assert claim is not None
    store.write_lock(claim)
    data = read_report(run)
    assert [(b.unit, b.status) for b in data.bars] == [("a", "running")]
    page = tmp_path / "r.html"
    assert cli("exec-status", run.root, "--report", str(page)).returncode == 0
    title = re.search(r"<h1>(.*?)</h1>", page.read_text()).group(1)  # type: ignore[union-attr]
    assert ": running (a snapshot of a running run" in title


def test_many_jobs_collapse_into_groups_and_many_tries_into_busy_bars(pool: Path, make_workflow: Any) -> None:
    jobs = [{"id": f"sim-{i:03d}", "command": "true"} for i in range(figures.NODES_MAX + 50)]
    run = submit(pool, make_workflow(jobs + [{"id": "merge", "command": "true",
                                              "dependencies": [j["id"] for j in jobs]}]))
    nodes, note = figures.collapse(read_report(run).nodes)
    assert note and "differ only in digits" in note
    assert {n: sum(v.counts.values()) for n, v in nodes.items()} == {"sim-# (layer 0)": figures.NODES_MAX + 50,
                                                                     "merge (layer 1)": 1}
    bars = [Bar(f"w{i % 4}", "h", 1000.0 + i, 1000.5 + i, "failed" if i == 7 else "done", f"j{i}", 1, 0)
            for i in range(figures.BARS_MAX * 2)]
    fig, notes = figures.timeline_figure(bars)
    drawn = sum(len(t.y) for t in fig.data)
    assert drawn <= figures.BARS_MAX and any("are one bar" in n for n in notes)
    assert any(t.name == "failed" for t in fig.data)  # a merged bar holding a failure shows it


def test_without_the_extra_it_says_so_in_one_line(mixed_run: RunLayout, tmp_path: Path) -> None:
    code = ("import sys; sys.modules['plotly'] = None; from executioner.cli import status_main; "
            "sys.exit(status_main(sys.argv[1:]))")
    page = tmp_path / "r.html"
    p = subprocess.run([sys.executable, "-c", code, mixed_run.root, "--report", str(page)], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert "pip install 'executioner[report]'" in p.stderr and not page.exists()


def test_report_needs_a_run_and_goes_alone(pool: Path, make_workflow: Any, tmp_path: Path) -> None:
    run = submit(pool, make_workflow([{"id": "a", "command": "true"}]))
    p = cli("exec-status", str(pool), "--report", str(tmp_path / "r.html"))
    assert p.returncode == 2 and "need a run" in p.stderr
    p = cli("exec-status", run.root, "--report", str(tmp_path / "r.html"), "--json")
    assert p.returncode == 2 and "--report goes alone" in p.stderr
    p = cli("exec-status", run.root, "--report", str(tmp_path / "no such folder" / "r.html"))
    assert p.returncode == 2 and "no such folder" in p.stderr and p.stderr.count("\n") == 1


@pytest.mark.parametrize("column, bad, said", [
    ("exit", True, "exit holds True, not int"), ("start", 1e12, "start holds 1000000000000.0, not num"),
    ("duration", "1", "duration holds '1', not num"), ("out", [-1, 2], "out holds [-1, 2], not [offset, length]"),
    ("err", [1.0, 2], "err holds [1.0, 2], not [offset, length]"), ("status", 7, "status holds 7, not str")])
def test_a_bad_value_deep_in_a_big_column_is_still_found(column: str, bad: Any, said: str) -> None:
    """The chunk columns are checked a column at a time (made for the report's read of a
    1,000,000-task array); one wrong value among 10,000 is still found and named."""
    from executioner.protocol.records import _columns_problem

    n = 10_000
    results: dict[str, Any] = {"first": 0, "status": ["done"] * n, "exit": [0] * n, "signal": [None] * n,
                               "start": [1.5] * n, "duration": [None] * n, "reason": [None] * n,
                               "out": [[0, 0]] * n, "err": [[]] * n}
    assert _columns_problem(results) is None
    results[column] = results[column][:-1] + [bad]
    assert _columns_problem(results) == said


def test_a_job_or_chunk_moving_while_the_report_reads_is_counted_once(pool: Path, make_workflow: Any,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The race forced: between the listing and the read, job ``a`` moves to done/ and chunk
    ``sim.0-3`` leaves as two pieces (done/sim.0-1, queued/sim.2-3). Each is read where it
    went, and no task is counted twice or left out."""
    import json
    import os

    from executioner.protocol import fsio
    from executioner.views import report_data

    run = submit(pool, make_workflow([{"id": "a", "command": "true"}, {"id": "b", "command": "true"},
                                      {"id": "sim", "command": "true", "array": 6, "chunk": 4}]))
    real = report_data.read_job
    moves = {"a": lambda: os.rename(run.job("a", "queued"), run.job("a", "done")), "sim.0-3": lambda: split()}

    def split() -> None:
        record = json.loads(Path(run.job("sim.0-3", "queued")).read_text())
        for lo, hi, state in ((0, 1, "done"), (2, 3, "queued")):
            fsio.atomic_write_json(run.job(f"sim.{lo}-{hi}", state), {**record, "id": f"sim.{lo}-{hi}",
                                                                         "tasks": [lo, hi]})
        os.unlink(run.job("sim.0-3", "queued"))

    def racing(path: str, unit: str) -> Any:
        move = moves.pop(unit, None)
        if move is not None:
            move()
            raise FileNotFoundError(path)
        return real(path, unit)

    monkeypatch.setattr(report_data, "read_job", racing)
    data = read_report(run)
    assert not moves  # both races happened
    counts = {name: dict(node.counts) for name, node in data.nodes.items()}
    assert counts == {"a": {"done": 1}, "b": {"queued": 1}, "sim": {"done": 2, "queued": 4}}
    assert not data.unusable


def test_a_file_that_cannot_be_used_is_named_and_the_page_still_written(pool: Path, make_workflow: Any,
                                                                          tmp_path: Path) -> None:
    run = submit(pool, make_workflow([{"id": "a", "command": "true"}, {"id": "b", "command": "true"}]))
    work(pool, run, slots=1)
    Path(run.job("b", "done")).write_text('{"torn": ')
    page = tmp_path / "r.html"
    p = cli("exec-status", run.root, "--report", str(page))
    assert p.returncode == 0, p.stderr
    text = page.read_text()
    assert "files that cannot be used" in text and "done/b.json" in text
    assert "Timeline (1 tries)" in text  # a's try; b's record is unreadable


def test_a_failing_host_stands_out_and_many_workers_are_one_lane_per_host() -> None:
    from executioner.views.report import _tables
    from executioner.views.report_data import HostRow, ReportData

    d = ReportData("r", {}, 0.0)
    d.hosts = {f"node{i}": HostRow(tries=50) for i in range(10)}
    d.hosts["node3"].failed = 20
    d.hosts["node5"].failed = 1
    page = _tables(d)
    assert re.findall(r'<tr class="bad"><td>(.*?)</td>', page) == ["node3"]
    assert page.index("node3") < page.index("node0")  # the failing host first
    bars = [Bar(f"node{i % 10}-{i}", f"node{i % 10}", 1000.0 + i, 1001.0 + i, "done", f"j{i}", 1, 0)
            for i in range(figures.LANES_MAX + 40)]
    fig, notes = figures.timeline_figure(bars)
    assert {y for t in fig.data for y in t.y} == {f"node{i}" for i in range(10)}
    assert any("one lane per host" in n for n in notes)
