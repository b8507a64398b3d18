"""Attempts of a run: the submit is attempt 1, each resume, rollback or from-job the next.

An attempt record (``attempts/NNNN.json``) says when, who, why, with which flags and which
workflow (sha256, and a copy beside it), its parent, the definition changes it accepted
and its plan. It is written as part of the change it describes (see
:mod:`executioner.coordinator.change`), never on its own: a refused resume leaves no record.
"""

from __future__ import annotations

import getpass
import hashlib
import os
import time
from typing import Any

import orjson

from . import fsio, records
from .layout import RunLayout

# The fields of a job whose change means its results are no longer what the workflow says.
DEFINITION_FIELDS = ("command", "env", "workdir", "dependencies", "outputs")


def definition(spec: dict[str, Any], dependencies: list[str]) -> dict[str, Any]:
    """The part of a job that its result depends on (``spec`` as stored in a job file)."""
    d = {k: spec.get(k) for k in DEFINITION_FIELDS if k != "dependencies"}
    d["dependencies"] = sorted(dependencies)
    d["outputs"] = list(d["outputs"] or [])
    d["env"] = dict(d["env"] or {})
    return d


def definition_hash(spec: dict[str, Any], dependencies: list[str]) -> str:
    payload = orjson.dumps(definition(spec, dependencies), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(payload).hexdigest()


def numbers(run: RunLayout) -> list[int]:
    """Attempt numbers recorded in the run, in order. A run made before attempts existed: [1]."""
    try:
        names = os.listdir(run.attempts_dir)
    except FileNotFoundError:
        return [1]
    found = sorted(int(n[:-5]) for n in names if n.endswith(".json") and n[:-5].isdigit())
    return found or [1]


def current(run: RunLayout) -> int:
    return numbers(run)[-1]


def read(run: RunLayout, number: int) -> dict[str, Any] | None:
    try:
        record = fsio.read_json(run.attempt_record(number))
    except (OSError, ValueError):
        return None
    return record if records.attempt_problem(record) is None else None  # of the wrong shape: absent


def all_records(run: RunLayout) -> list[dict[str, Any]]:
    """Every attempt record; a run older than attempts gets a synthetic attempt 1."""
    out = []
    for n in numbers(run):
        record = read(run, n)
        if record is None and n == 1:
            record = {"attempt": 1, "why": "submit", "time": None, "who": None, "flags": {},
                      "plan": [], "changes": [], "parent": None}
        if record is not None:
            out.append(record)
    return out


def workflow_of(run: RunLayout, number: int) -> str | None:
    """Path of the workflow copy attempt ``number`` used."""
    record = read(run, number)
    if record and record.get("workflow_copy"):
        return os.path.join(run.root, record["workflow_copy"])
    for suffix in (".yaml", ".json"):  # a run from before attempts: its one copy
        if os.path.exists(run.workflow_copy(suffix)):
            return run.workflow_copy(suffix)
    return None


def new_record(run: RunLayout, number: int, why: str, flags: dict[str, Any], raw: bytes,
               suffix: str, changes: list[dict[str, Any]], plan: list[dict[str, Any]],
               checks: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "attempt": number,
        "time": time.time(),
        "who": f"{getpass.getuser()}@{fsio.HOST}",
        "why": why,
        "flags": flags,
        "sha256": hashlib.sha256(raw).hexdigest(),
        "workflow_copy": os.path.relpath(run.attempt_workflow(number, suffix), run.root),
        "parent": number - 1 if number > 1 else None,
        "changes": changes,
        "plan": plan,
        "checks": checks,
    }
