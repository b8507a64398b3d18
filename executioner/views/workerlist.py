"""``exec-status POOL --workers``: every worker seen in the pool, from ``POOL/workers/*.json``.

(Named workerlist, not workers: a module views/workers.py of the same purpose for ``--why``
was written apart at the same time; after both are merged, one should read for the other.)

A row per heartbeat file: host, pid, the runs it serves (``null``: every run), what it holds
(its claims in ``running/`` of every run, found through each claim's lock, which names its
worker), its capacity (the ``capacity`` its heartbeat records since placement; ``null`` in
older files), how long ago it last beat, and whether it looks alive. A claim whose worker
has no heartbeat file gets a row too (dead: its worker is gone and tidied away, and a reaper
will requeue the claim).

Alive or dead is one look, as :func:`executioner.liveness.reap.judge_now` judges a claim for a
coordinator: a process of this host is alive while its pid (and pid start time) is; another
host's worker is dead once its heartbeat has stood still for longer than its patience
(``--stale-after``, or twice its ``--heartbeat``, whichever is longer, as its heartbeat file
declares; 60 s when it declares none). The age is measured against the storage's clock
(read through our probe file, see executioner.liveness.clock), or our own clock when the
pool is read-only. Workers never use such a one-look verdict; a view may, since it decides
nothing.

The view writes nothing (a read-only pool works): dead heartbeats are removed by the
workers' own tidy (executioner.liveness.tidy: at once on their host when the process is
gone, else after standing still for an hour as watched). Until a worker runs, a dead one
last seen more than a day ago is left out of the view (counted in a last line) unless
``--all``.
"""

from __future__ import annotations

import os
import time
from typing import Any, Final

from ..errors import PoolError
from ..liveness.clock import storage_now
from ..liveness.reap import owner_dead_here
from ..protocol import fsio
from ..protocol.layout import JOB_SUFFIX, PoolLayout, RunLayout
from ..protocol.records import read_job
from ..protocol.store import claim_lock, running_jobs
from .text import render

DAY: Final = 24 * 3600.0
PATIENCE: Final = 60.0  # seconds, when a heartbeat file declares no --stale-after
RECORD_MAX: Final = 1 << 16


def _patience(record: dict[str, Any]) -> float:
    values = [record.get("stale_after"), 2 * (record.get("heartbeat") or 0)
              if isinstance(record.get("heartbeat"), (int, float)) else None]
    return max([float(v) for v in values if isinstance(v, (int, float)) and 0 < v < 1e7] or [PATIENCE])


def _now(pool: PoolLayout) -> float:
    try:
        return storage_now(pool)
    except OSError:  # a read-only pool: our clock, whose offset from the storage's is unknown
        return time.time()


def holdings(pool: PoolLayout, run_ids: list[str] | None = None) -> dict[str, list[dict[str, Any]]]:
    """worker id -> the claims it holds, ``{"run", "job", "try", "host"}``, from every run's
    running/ and each claim's lock. Costs one read per running job."""
    out: dict[str, list[dict[str, Any]]] = {}
    for run_id in pool.run_ids() if run_ids is None else run_ids:
        run = pool.run(run_id)
        for r in running_jobs(run):
            try:
                record, _ = read_job(r.path, r.job_id)
            except OSError:
                continue  # it left running/ meanwhile
            lock = claim_lock(run, r.job_id, r.token, record) if record is not None else None
            if lock is None:
                continue  # claimed a moment ago (no lock yet), or broken: no worker to name
            out.setdefault(str(lock.get("worker")), []).append(
                {"run": run_id, "job": r.job_id, "try": len(record["tries"]) + 1, "host": lock.get("host")})
    return out


def workers_status(pool: PoolLayout, run: RunLayout | None = None, everything: bool = False,
                   now: float | None = None) -> dict[str, Any]:
    """``{"workers": [...], "hidden": n}``: a row per worker (see the module docstring), by id;
    with ``run``, only the workers that serve it (and those holding its claims)."""
    if not os.path.isdir(pool.root):
        raise PoolError("no such pool directory", pool.root)
    now = _now(pool) if now is None else now
    held = holdings(pool, [run.run_id] if run is not None else None)
    try:
        names = sorted(n for n in os.listdir(pool.workers_dir) if n.endswith(JOB_SUFFIX) and not n.startswith("."))
    except FileNotFoundError:
        names = []
    rows, hidden = [], 0
    for name in names:
        worker = name[:-len(JOB_SUFFIX)]
        path = os.path.join(pool.workers_dir, name)
        stamp = now
        try:
            stamp = os.stat(path).st_mtime
            record = fsio.read_json(path, RECORD_MAX)
        except FileNotFoundError:
            continue  # its worker exited meanwhile
        except (OSError, ValueError) as e:
            record = {"problem": f"unreadable heartbeat file: {getattr(e, 'strerror', None) or e}"}
        if not isinstance(record, dict):
            record = {"problem": "not a heartbeat record"}
        runs = record.get("runs") if isinstance(record.get("runs"), list) else None
        if run is not None and runs is not None and run.run_id not in runs and worker not in held:
            continue
        age = max(0.0, now - stamp)
        if owner_dead_here(record):
            alive, why = False, f"process {record.get('pid')} is gone (this host)"
        elif record.get("host") == fsio.HOST and "pid" in record:
            alive, why = True, "its process runs (this host)"
        elif age > _patience(record):
            alive, why = False, f"no heartbeat for {age:.0f} s (more than {_patience(record):.0f} s)"
        else:
            alive, why = True, f"beat {age:.0f} s ago"
        if not alive and age > DAY and not everything:
            hidden += 1
            continue
        capacity = record.get("capacity") if isinstance(record.get("capacity"), dict) else None
        rows.append({"worker": worker, "host": record.get("host"), "pid": record.get("pid"), "alive": alive,
                     "why": record.get("problem") or why, "last_beat": round(age, 1), "started": record.get("started"),
                     "runs": runs, "slots": record.get("slots"), "capacity": capacity,
                     "holds": [{k: h[k] for k in ("run", "job", "try")} for h in held.pop(worker, [])]})
    for worker, claims in sorted(held.items()):  # claims of a worker with no heartbeat file
        rows.append({"worker": worker, "host": claims[0].get("host"), "pid": None, "alive": False,
                     "why": "no heartbeat file: its worker is gone; a reaper requeues its claims",
                     "last_beat": None, "started": None, "runs": None, "slots": None, "capacity": None,
                     "holds": [{k: h[k] for k in ("run", "job", "try")} for h in claims]})
    return {"workers": rows, "hidden": hidden}


def capacity_text(capacity: dict[str, Any] | None) -> str:
    if not capacity:
        return "-"
    parts = [f"{capacity.get('cpus')} cpus"]
    if capacity.get("gpus"):
        parts.append(f"gpus {','.join(str(g) for g in capacity['gpus'])}")
    if capacity.get("mem_gb"):
        parts.append(f"{capacity['mem_gb']:g} GB")
    parts += [f"{k}={v:g}" if isinstance(v, (int, float)) else f"{k}={v}"
              for k, v in sorted((capacity.get("resources") or {}).items())]
    if capacity.get("tags"):
        parts.append(f"tags {','.join(capacity['tags'])}")
    return ", ".join(parts)


def age_text(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 2 * DAY:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / DAY:.0f} days ago"


def workers_text(data: dict[str, Any], pool: PoolLayout, color: bool = False) -> str:
    rows = []
    for w in data["workers"]:
        holds = " ".join(f"{h['run']}/{h['job']} (try {h['try']})" for h in w["holds"]) or "-"
        runs = ",".join(w["runs"]) if w["runs"] is not None else "all"
        rows.append([w["worker"], str(w["host"]), str(w["pid"] if w["pid"] is not None else "-"),
                     "alive" if w["alive"] else "dead", age_text(w["last_beat"]), runs,
                     capacity_text(w["capacity"]), holds])
    alive = sum(w["alive"] for w in data["workers"])
    title = f"workers of {pool.root}: {alive} alive, {len(data['workers']) - alive} dead" if rows \
        else f"no worker in {pool.root}"
    text = render(title, ["worker", "host", "pid", "state", "last beat", "runs", "capacity", "holds"], rows,
                  color_column=3, color=color) if rows else title + "\n"
    if data.get("hidden"):
        n = data["hidden"]
        text += (f"{n} dead worker{'s' if n != 1 else ''} last seen more than a day ago not shown (--all); "
                 "a worker's tidy removes them\n")
    return text
