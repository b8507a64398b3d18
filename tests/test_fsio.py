"""Writes on a nearly full filesystem: short writes are finished, failed writes leave nothing."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from executioner.protocol import fsio
from executioner.execution.execute import run_command

from .conftest import files, submit

PAYLOAD = bytes(range(256)) * 400  # 100 KiB: many short writes


def _half_writes(monkeypatch) -> list[int]:
    """os.write writes half of what it is given (at least one byte), as a full disk may."""
    real, calls = os.write, []

    def half(fd: int, data) -> int:
        data = bytes(data)
        calls.append(len(data))
        return real(fd, data[: max(1, len(data) // 2)])

    monkeypatch.setattr(os, "write", half)
    return calls


@pytest.mark.timeout(30)
@pytest.mark.parametrize("write", [fsio.atomic_write, fsio.write_unsynced])
def test_short_writes_still_write_whole_files(tmp_path: Path, monkeypatch, write) -> None:
    calls = _half_writes(monkeypatch)
    target = tmp_path / "f.json"
    write(str(target), PAYLOAD)
    assert target.read_bytes() == PAYLOAD
    assert len(calls) > 1  # it did loop
    assert os.listdir(tmp_path) == ["f.json"]


@pytest.mark.timeout(30)
def test_a_run_submitted_under_short_writes_is_whole(pool: Path, make_workflow, monkeypatch) -> None:
    _half_writes(monkeypatch)
    run = submit(pool, make_workflow([{"id": f"j{i}", "command": "echo " + "x" * 500} for i in range(5)]))
    for name in files(run, "queued"):
        assert json.loads(Path(run.state_dir("queued"), name).read_text())["spec"]["command"].endswith("x" * 500)
    assert json.loads(Path(run.record).read_text())["jobs"] == 5


def _no_space(monkeypatch, how: str) -> None:
    def full(fd: int, data) -> int:
        if how == "zero":
            return 0
        raise OSError({"enospc": errno.ENOSPC, "edquot": errno.EDQUOT, "eio": errno.EIO}[how], "full")

    monkeypatch.setattr(os, "write", full)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("how", ["zero", "enospc", "edquot", "eio"])
@pytest.mark.parametrize("write", [fsio.atomic_write, fsio.write_unsynced])
def test_a_failed_write_raises_and_leaves_the_target_and_no_temp_file(tmp_path: Path, monkeypatch,
                                                                      how: str, write) -> None:
    target = tmp_path / "f.json"
    target.write_bytes(b"old\n")
    _no_space(monkeypatch, how)
    with pytest.raises(OSError) as info:
        write(str(target), PAYLOAD)
    want = {"zero": errno.ENOSPC, "enospc": errno.ENOSPC, "edquot": errno.EDQUOT, "eio": errno.EIO}[how]
    assert info.value.errno == want
    assert os.listdir(tmp_path) == ["f.json"] and target.read_bytes() == b"old\n"


@pytest.mark.timeout(30)
def test_a_failed_write_temp_removes_its_temp_file(tmp_path: Path, monkeypatch) -> None:
    _no_space(monkeypatch, "zero")
    with pytest.raises(OSError):
        fsio.write_temp(str(tmp_path), PAYLOAD)
    assert os.listdir(tmp_path) == []


@pytest.mark.timeout(30)
def test_the_error_line_of_a_command_that_cannot_start_is_whole(tmp_path: Path, monkeypatch) -> None:
    _half_writes(monkeypatch)
    out, err = tmp_path / "o", tmp_path / "e"
    result = run_command(["/no/such/command-" + "y" * 200], str(tmp_path), dict(os.environ), str(out), str(err),
                     None, 1.0, "marker")
    assert result.status == "failed" and result.exit_code == 127
    assert err.read_text() == f"command not found: /no/such/command-{'y' * 200}\n"
