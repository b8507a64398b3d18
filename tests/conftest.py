from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from executioner import PoolLayout, RunLayout, Worker, create_run, load_workflow
from executioner.workflow import parse as wfparse

HOSTILE = "pool with spaces 'quote\" ; echo x"


@pytest.fixture
def pool(tmp_path: Path) -> Path:
    """A pool directory whose name has spaces, both quotes and a semicolon."""
    return tmp_path / HOSTILE


@pytest.fixture(params=["libyaml", "pure"] if wfparse.yaml.__with_libyaml__ else ["pure"])
def yaml_loader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with libyaml's parser (the default when PyYAML has it) and with PyYAML's own."""
    if request.param == "pure":
        monkeypatch.setattr(wfparse, "_LOADER", wfparse._PyLoader)
    return str(request.param)


@pytest.fixture
def make_workflow(tmp_path: Path):
    def make(jobs: list[dict[str, Any]], name: str = "wf", **top: Any) -> Path:
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"name": name, "jobs": jobs, **top}, sort_keys=False))
        return path
    return make


@pytest.fixture(autouse=True)
def no_leftover_processes():
    """Whatever a test starts (worker processes, their commands) is gone when it ends,
    passed or failed: a failing test must not leave workers running on the machine."""
    import psutil

    before = {p.pid for p in psutil.Process().children(recursive=True)}
    yield
    for p in psutil.Process().children(recursive=True):
        if p.pid not in before:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass


def submit(pool: Path, workflow: Path) -> RunLayout:
    return create_run(PoolLayout(str(pool)), load_workflow(str(workflow)))


def work(pool: Path, run: RunLayout | None = None, slots: int = 2, idle: float = 0.3, **kw: Any) -> Worker:
    worker = Worker(str(pool), run_ids=[run.run_id] if run else None, slots=slots,
                    exit_when_idle=idle, poll_min=0.02, poll_max=0.2, sweep_every=0.1, **kw)
    worker.run()
    return worker


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60,
        cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run one of the console scripts as a user would (through the installed module)."""
    prog, *rest = args
    entry = {"exec-submit": "submit_main", "exec-worker": "worker_main", "exec-status": "status_main"}[prog]
    code = f"import sys; from executioner.cli import {entry}; sys.exit({entry}(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *rest], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, cwd=cwd)


def files(run: RunLayout, state: str) -> list[str]:
    return sorted(os.listdir(run.state_dir(state)))


def precious(tmp_path: Path, name: str = "precious.txt") -> Path:
    """A file outside the pool that nothing of ours may write, nor even touch (mtime 1000)."""
    path = tmp_path / "outside" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text("precious\n")
    os.utime(path, (1000.0, 1000.0))
    return path


def untouched(path: Path) -> bool:
    return path.read_text() == "precious\n" and path.stat().st_mtime == 1000.0


# ---- a real Slurm cluster (tests/test_slurm*.py; scripts/slurm-local.sh starts one) ----------
def _cluster_problem() -> str | None:
    if not shutil.which("sbatch"):
        return "no Slurm commands (apt-get install slurm-wlm), and no cluster: see scripts/slurm-local.sh"
    if not os.environ.get("SLURM_CONF"):
        return "SLURM_CONF is not set: run scripts/slurm-local.sh start and export what it prints"
    out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=20)
    if out.returncode != 0 or not out.stdout.strip():
        return f"no Slurm cluster answers: {out.stderr.strip()[:200]}"
    return None


@pytest.fixture
def slurm() -> None:
    problem = _cluster_problem()
    if problem:
        if os.environ.get("EXEC_REQUIRE_SLURM"):
            pytest.fail(problem)  # CI started a cluster: a missing one is a failure, not a skip
        pytest.skip(problem)


@pytest.fixture
def slurm_pool(tmp_path: Path):
    """A pool whose name has a space and a quote (sbatch scripts must quote it). Whatever
    Slurm jobs a test submitted into it are cancelled when it ends, passed or failed."""
    pool = tmp_path / "slurm pool 'q'"
    yield pool
    ids = []
    for path in pool.glob("*/slurm.json"):
        ids += [i for kind in json.loads(path.read_text()).values() for i in kind]
    if ids and shutil.which("scancel"):
        subprocess.run(["scancel", *ids], capture_output=True, timeout=30)
