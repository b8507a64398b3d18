"""What a job needs of a worker, read from its stored spec, and the run's placement index.

A job's spec stores ``resources``, ``priority``, ``tags`` and ``limit`` only when they differ
from their defaults (see :meth:`executioner.workflow.JobSpec.placement`): a run written
before they existed reads as every job asking one CPU, priority 0, no tag, no limit. A
spec's ``slurm:`` may still hold ``cpus``, ``gpus`` and ``mem_gb`` (runs written before
``resources`` existed): they count as resources there too, ``resources`` winning; except
in an array's spec, where ``slurm:`` sizes a Slurm element running several tasks at once.

**The index.** A worker decides what to claim from a listing of ``queued/``; reading each
file to learn its needs would cost a read per queued file per poll. So ``run.json`` holds,
under ``"placement"``, one entry per job whose placement is not the default::

    "placement": {"train": {"priority": 10, "needs": {"cpus": 8, "gpus": 1}, "tags": ["a100"]}}
    "priority": 5            # the run's own, from exec-submit --priority (missing: 0)
    "limits": {"download": 4}

A job absent from it needs ``{"cpus": 1}`` at priority 0. A chunk (``sim.0-63``) reads its
array's entry (per task). The index is written with run.json (submit, and each resume:
the attempt's specs), and a worker reads run.json again when a claimed job's attempt is
newer than the one it cached; the job file's own spec is what a claim finally checks.
"""

from __future__ import annotations

from typing import Any, Final, Iterable

DEFAULT_NEEDS: Final = {"cpus": 1}
SLURM_RESOURCES: Final = ("cpus", "gpus", "mem_gb")
INDEX_MAX: Final = 1_000_000  # the most of anything validation lets a job ask for


def needs(spec: dict[str, Any]) -> dict[str, float]:
    """What one job (or one task of an array) takes of a worker while it runs, from its
    stored spec: one CPU unless it says otherwise; amounts of 0 are left out."""
    # an array's slurm: is its Slurm elements' (several tasks at once), not a task's
    slurm = spec.get("slurm") or {} if "tasks" not in spec else {}
    out: dict[str, float] = dict(DEFAULT_NEEDS)
    out.update({k: slurm[k] for k in SLURM_RESOURCES if k in slurm})
    out.update(spec.get("resources") or {})
    return {k: v for k, v in out.items() if v}


def entry(spec: dict[str, Any]) -> dict[str, Any] | None:
    """The job's entry of the placement index, or None when it asks for nothing special."""
    out: dict[str, Any] = {}
    if spec.get("priority"):
        out["priority"] = spec["priority"]
    n = needs(spec)
    if n != DEFAULT_NEEDS:
        out["needs"] = n
    if spec.get("tags"):
        out["tags"] = list(spec["tags"])
    if spec.get("limit"):
        out["limit"] = spec["limit"]
    return out or None


def index(specs: Iterable[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """job -> entry, for the jobs that have one."""
    return {job: e for job, spec in specs if (e := entry(spec)) is not None}


def run_fields(specs: Iterable[tuple[str, dict[str, Any]]], limits: dict[str, int]) -> dict[str, Any]:
    """What run.json holds about placement (nothing at all for a workflow that sets none of it)."""
    out: dict[str, Any] = {}
    found = index(specs)
    if found:
        out["placement"] = found
    if limits:
        out["limits"] = dict(limits)
    return out


def lookup(run_record: dict[str, Any], job: str) -> dict[str, Any]:
    """The index entry of ``job`` (an array's name for a chunk), {} when it has none or the
    record's index is not a mapping (a damaged or hand-edited run.json costs only order).
    A worker reads the index through :func:`cleaned` first."""
    found = run_record.get("placement")
    if type(found) is not dict:
        return {}
    e = found.get(job)
    return e if type(e) is dict else {}


def cleaned(run_record: dict[str, Any]) -> dict[str, Any]:
    """``run_record`` with each index entry's needs or tags of the wrong shape, sign or size
    left out (a hand-edited or damaged run.json; the job file decides at the claim): a
    negative need would add room to a worker's ledger, a text would raise in it, a huge one
    would keep a job that fits from ever being claimed. Once per read of run.json, so a
    lookup stays a dict access."""
    found = run_record.get("placement")
    if type(found) is not dict:
        return run_record
    fixed: dict[str, Any] = {}
    for job, e in found.items():
        if type(e) is not dict:
            continue
        tags = e.get("tags")
        bad_needs = "needs" in e and not _usable_needs(e["needs"])
        bad_tags = tags is not None and not (type(tags) is list and all(type(t) is str for t in tags))
        if bad_needs or bad_tags:
            fixed[job] = {k: v for k, v in e.items() if not (k == "needs" and bad_needs or k == "tags" and bad_tags)}
    return {**run_record, "placement": {**found, **fixed}} if fixed else run_record


def _usable_needs(value: Any) -> bool:
    """Needs as an index may hold them: names to numbers from 0 to what validation allows."""
    return type(value) is dict and all(type(v) in (int, float) and 0 <= v <= INDEX_MAX for v in value.values())
