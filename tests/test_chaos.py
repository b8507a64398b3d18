"""The chaos check, CI-sized: workers SIGKILLed and frozen at random; nothing lost or doubled."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "chaos.py"


@pytest.mark.timeout(300)
def test_chaos_small() -> None:
    result = subprocess.run([sys.executable, str(SCRIPT), "--workers", "6", "--jobs", "300",
                             "--job-seconds", "0.2", "--every", "0.3", "--seed", "7", "--deadline", "200"],
                            capture_output=True, text=True, timeout=280)
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAIL" not in result.stdout and "SIGKILL" in result.stdout


@pytest.mark.timeout(300)
def test_chaos_over_an_array() -> None:
    """Chunks of 8 tasks under SIGKILL and SIGSTOP, inside commits too: every task ends in
    exactly one done chunk file, completed by one try, and nothing is left or quarantined."""
    result = subprocess.run([sys.executable, str(SCRIPT), "--array", "--workers", "4", "--jobs", "200", "--chunk", "8",
                             "--job-seconds", "0.2", "--every", "0.3", "--seed", "7", "--deadline", "200"],
                            capture_output=True, text=True, timeout=280)
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAIL" not in result.stdout and "SIGKILL" in result.stdout
