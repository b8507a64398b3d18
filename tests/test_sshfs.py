"""Two workers' views of one pool through two sshfs mounts: a real network filesystem.

The mounts (scripts/sshfs-local.sh) keep sshfs's default caching, so each side sees the
other's renames and unlinks late; the protocol must stay correct anyway.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _why_not() -> str | None:
    missing = [t for t in ("sshfs", "fusermount3", "ssh-keygen") if shutil.which(t) is None]
    if not os.path.exists("/usr/sbin/sshd") and shutil.which("sshd") is None:
        missing.append("sshd")
    if missing:
        return f"needs {', '.join(missing)} (Debian: openssh-server sshfs fuse3; .ci/run installs them)"
    if not os.path.exists("/dev/fuse"):
        return "needs /dev/fuse"
    return None


@pytest.fixture(scope="module")
def mounts(tmp_path_factory: pytest.TempPathFactory):
    why = _why_not()
    if why:
        pytest.skip(why)
    base = tmp_path_factory.mktemp("sshfs")
    result = subprocess.run([str(ROOT / "scripts" / "sshfs-local.sh"), "start", str(base)],
                            capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        pytest.skip(f"could not start sshd + sshfs here: {result.stderr.strip()[-300:]}")
    try:
        yield base / "mnt1", base / "mnt2"
    finally:
        subprocess.run([str(ROOT / "scripts" / "sshfs-local.sh"), "stop", str(base)], timeout=60)


def test_the_two_mounts_are_one_directory(mounts) -> None:
    one, two = mounts
    (one / "hello").write_text("from one")
    assert (two / "hello").read_text() == "from one"


@pytest.mark.timeout(420)
def test_chaos_over_two_sshfs_mounts(mounts) -> None:
    one, two = mounts
    (one / "pool").mkdir()
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "chaos.py"), "--workers", "4",
                             "--jobs", "200", "--job-seconds", "0.2", "--every", "0.4", "--seed", "11",
                             "--deadline", "300", "--mounts", f"{one}/pool,{two}/pool"],
                            capture_output=True, text=True, timeout=400)
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "over 2 view(s)" in result.stdout and "FAIL" not in result.stdout
