"""Plain jobs at scale: the shortcuts that make 100,000 jobs cheap must say what the slow
paths said. The quick shape check of a job record passes nothing the full check refuses;
the run view read in parallel and its streamed ``--json`` give what a user saw before;
a submit that writes its job files from several threads still publishes nothing until
every file is whole. (The figures themselves are measured by scripts/status_shapes.py,
never asserted here.)"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from executioner.protocol import records

A_TRY = {"status": "failed", "try": 1, "attempt": 1, "exit_code": 1, "signal": None, "reason": "exit code 1",
         "worker": "w-1", "host": "h", "stdout": "logs/a.1.out", "stderr": "logs/a.1.err", "worker_pid": 12,
         "pid": 13, "start": 1.5e9, "end": 1.5e9 + 2, "duration": 2.0, "start_storage": 1.5e9}
A_SPEC = {"always_rerun": False, "command": "true", "env": {"A": "1"}, "kill_grace": 5.0, "max_lost": 3,
          "max_retries": 0, "max_retry_time": None, "outputs": ["o"], "retry_backoff": 1.0, "retry_delay": 0.0,
          "retry_jitter": 0.0, "retry_on_exit_codes": [1, 2], "retry_on_status": ["failed", "timeout"], "slurm": {},
          "timeout": None, "workdir": None}
A_RECORD = {"attempt": 1, "definition_hash": "ab", "dependencies": ["x"], "dependents": ["y"], "format": 2,
            "held": False, "id": "a", "last_exit_code": 1, "not_before": None, "run_id": "r-0001",
            "skipped": None, "slurm": None, "reason": None, "retry_delay_s": 0.0, "spec": A_SPEC,
            "tries": [A_TRY, {**A_TRY, "try": 2, "status": "done", "exit_code": 0}]}
VALUES = [None, True, False, 0, -1, 7, 2**31, -(2**31), 2**40, 1.5, -2.5, 1e12, 1e300, "", "x", [], [1], ["a"],
          [None], [True], [["A", "1"]], {}, {"a": 1}, {"a": "b"}, {"status": "done"}]


def variants(record: dict[str, Any]):
    """``record`` with each of its keys (and those of its spec and of each try) set to each
    of VALUES, or removed."""
    paths = [(k,) for k in record] + [("spec", k) for k in record["spec"]]
    paths += [("tries", i, k) for i, t in enumerate(record["tries"]) for k in t] + [("tries", 0)] * bool(record["tries"])
    for path in paths:
        for value in [*VALUES, KeyError]:
            r = copy.deepcopy(record)
            where = r
            for step in path[:-1]:
                where = where[step]
            if value is KeyError:
                if isinstance(where, dict):
                    del where[path[-1]]
                else:
                    continue
            else:
                where[path[-1]] = value
            yield path, value, r


@pytest.mark.timeout(60)
@pytest.mark.parametrize("base", [A_RECORD, dict(A_RECORD, tries=[]), dict(A_RECORD, spec=dict(A_SPEC, command=["a", "b"]))],
                         ids=["tries", "no-tries", "argv"])
def test_the_quick_shape_check_passes_nothing_the_full_check_refuses(base: dict[str, Any]) -> None:
    assert records._plain_job_ok(base, "a"), "a good plain record takes the quick path"
    assert records.full_job_problem(base, "a") is None
    checked = 0
    for path, value, r in variants(base):
        quick = records._plain_job_ok(r, "a")
        full = records.full_job_problem(r, "a")
        assert not (quick and full is not None), f"{path} = {value!r}: quick check passed, full says {full}"
        assert records.job_problem(r, "a") == full
        checked += 1
    assert checked > 500
