"""A run removed under a live worker (``rm -r POOL/RUN``) stays removed: the worker never
makes its folders again (filelock's lease makes missing parents) and forgets it."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path
from typing import Any

import filelock
import pytest

from executioner import Worker

from .conftest import submit, work


def _serve(pool: Path, **kw: Any) -> tuple[Worker, threading.Thread]:
    worker = Worker(str(pool), slots=1, exit_when_idle=1.5, poll_min=0.02, poll_max=0.1, sweep_every=0.05,
                    dormant_every=0.05, **kw)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    return worker, thread


def test_a_run_removed_under_a_worker_is_not_made_again(pool: Path, make_workflow: Any) -> None:
    gone = submit(pool, make_workflow([{"id": "a", "command": "true"}], name="gone"))
    work(pool, gone)
    kept = submit(pool, make_workflow([{"id": "b", "command": "true"}], name="kept"))
    removed = threading.Event()
    real = filelock.SoftFileLease.acquire

    def acquire(self: Any, *a: Any, **kw: Any) -> Any:
        if gone.root in str(self.lock_file) and not removed.is_set():
            removed.set()
            shutil.rmtree(gone.root)  # rm -r while the worker sweeps it
        return real(self, *a, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(filelock.SoftFileLease, "acquire", acquire)
        worker, thread = _serve(pool)
        thread.join(30)
    assert not thread.is_alive() and removed.is_set()
    assert not os.path.exists(gone.root), sorted(os.listdir(pool))  # no ghost RUN/waiting/
    assert os.listdir(kept.state_dir("done")) == ["b.json"]  # the other run was served
    assert gone.run_id not in worker._known and gone.run_id not in worker._records


def test_a_run_removed_before_a_sweep_is_forgotten_without_touching_it(pool: Path, make_workflow: Any,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    gone = submit(pool, make_workflow([{"id": "a", "command": "true"}], name="gone"))
    work(pool, gone)
    made: list[str] = []
    real = filelock.SoftFileLease.acquire

    def acquire(self: Any, *a: Any, **kw: Any) -> Any:
        made.append(str(self.lock_file))
        return real(self, *a, **kw)

    shutil.rmtree(gone.root)
    os.makedirs(gone.root)  # a half-made directory of that name (say, a new submit under way): no run.json
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(filelock.SoftFileLease, "acquire", acquire)
        worker, thread = _serve(pool, run_ids=[gone.run_id])
        thread.join(30)
    assert not thread.is_alive()
    assert not [m for m in made if gone.root in m]  # no lease taken in it
    assert os.listdir(gone.root) == []  # nothing made in it
