"""Create a run directory from a validated workflow."""

from __future__ import annotations

import ctypes
import getpass
import os
import shutil
import time
from typing import Any

from . import fsio
from .errors import PoolError
from .layout import FORMAT_VERSION, PoolLayout, RunLayout, run_sort_key
from .store import new_job_record
from .workflow import Workflow


def create_run(pool: PoolLayout, workflow: Workflow) -> RunLayout:
    """Build ``POOL/<name>-<seq>/`` and publish it by writing ``run.json`` last."""
    try:
        os.makedirs(pool.root, exist_ok=True)
        os.makedirs(pool.workers_dir, exist_ok=True)
    except OSError as e:
        raise PoolError(f"cannot create the pool directory: {e.strerror}", pool.root) from None
    run = _reserve_run_dir(pool, workflow.name)
    try:
        _build(run, workflow)
    except BaseException:
        shutil.rmtree(run.root, ignore_errors=True)
        raise
    return run


def _reserve_run_dir(pool: PoolLayout, name: str) -> RunLayout:
    existing = [run_sort_key(n)[0] for n in os.listdir(pool.root)]
    seq = max([s for s in existing if s < 1 << 62], default=0) + 1
    while True:
        run = pool.run(f"{name}-{seq:04d}")
        try:
            # RACE: two submits pick the same number; mkdir is atomic, so one gets
            # EEXIST and takes the next number.
            os.mkdir(run.root)
            return run
        except FileExistsError:
            seq += 1


def _build(run: RunLayout, workflow: Workflow) -> None:
    for d in run.all_dirs():
        os.mkdir(d)
    _write_unsynced(run.workflow_copy(workflow.suffix), workflow.raw)
    dependents = workflow.dependents()
    for spec in workflow.jobs:
        state = "waiting" if spec.dependencies else "queued"
        record = new_job_record(run.run_id, spec, dependents[spec.id])
        _write_unsynced(run.job(spec.id, state), fsio.dumps(record))
    # One syncfs makes every file above durable (instead of one fsync each) before
    # run.json publishes the run; nothing reads a run before that.
    _sync_filesystem(run.root)
    fsio.atomic_write_json(run.record, run_record(run, workflow))


def run_record(run: RunLayout, workflow: Workflow) -> dict[str, Any]:
    return {
        "format": FORMAT_VERSION,
        "run_id": run.run_id,
        "name": workflow.name,
        "created": time.time(),
        "workflow": os.path.basename(run.workflow_copy(workflow.suffix)),
        "source": workflow.path,
        "workdir": workflow.workdir,
        "env": workflow.env,
        "jobs": len(workflow.jobs),
        "submitted_by": f"{getpass.getuser()}@{fsio.HOST}",
    }


def _write_unsynced(path: str, payload: bytes) -> None:
    """Temp file + rename, with the fsync left to the one syncfs of the whole run."""
    tmp = fsio.temp_name(os.path.dirname(path))
    with open(tmp, "xb") as f:
        f.write(payload)
    os.rename(tmp, path)


def _sync_filesystem(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if getattr(libc, "syncfs", None) is None or libc.syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)
