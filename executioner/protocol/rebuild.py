"""Jobs whose file is gone or torn: found, and rebuilt from the run's workflow copy.

The run knows its job set (its last attempt's plan). A job in no state folder, no private
folder in running/ and no coordinator's staging folder (quarantined as broken, deleted by
hand or by a job that removed its own claim) is *lost*: ``exec-status`` shows it so, its
dependents say why they wait, and a worker's sweep rebuilds it from its definition, with a
``lost`` try saying what happened (its earlier tries are gone with its file: a job may lose
history, never its place). The same rebuild serves a private folder whose job file is torn.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from . import attempts, fsio
from .layout import STATES, RunLayout, job_id_of, split_running_name
from .ready import arrays_of
from .units import Chunk, Coverage, overlapping, parse_unit, runs, unit_name

log = logging.getLogger("executioner.rebuild")


def coordinating(run: RunLayout) -> bool:
    """A resume is changing the run, or left a change behind: its jobs may sit in its staging
    folder, out of every state folder, for a while."""
    try:
        return bool(os.listdir(run.staging_root)) or os.path.exists(run.coordinator_lock)
    except FileNotFoundError:
        return os.path.exists(run.coordinator_lock)


def known_jobs(run: RunLayout) -> set[str]:
    """Jobs the run had after its last attempt (its plan, less what it removed)."""
    record = attempts.read(run, attempts.current(run)) or {}
    plan = record.get("plan")
    if not isinstance(plan, list):
        return set()
    arrays = arrays_of(run)
    # An array's chunks split into pieces as their tasks end: its units are not known by
    # name (its tasks are found missing by coverage instead).
    return {str(s["job"]) for s in plan if isinstance(s, dict) and "job" in s and s.get("action") != "remove"
            and not (arrays and parse_unit(str(s["job"]), arrays))}


def rebuilt(run: RunLayout, job_id: str, reason: str) -> dict[str, Any] | None:
    """A fresh record of ``job_id`` from the workflow copy of the run's current attempt, with
    one ``lost`` try giving ``reason``; None if that workflow does not have the job."""
    from .store import new_chunk_record, new_job_record, try_record
    from ..workflow import load_workflow

    number = attempts.current(run)
    path = attempts.workflow_of(run, number)
    if path is None:
        return None
    try:
        workflow = load_workflow(path, recorded=False, inputs=lambda job, _src: run.attempt_lines(number, job))
    except Exception as e:  # noqa: BLE001 - a broken copy: say so, rebuild nothing
        log.warning("run %s: cannot rebuild job %s: its workflow copy %s is unreadable: %s",
                    run.run_id, job_id, path, e)
        return None
    chunk = parse_unit(job_id, arrays_of(run))
    spec = next((s for s in workflow.jobs if s.id == (chunk.job if chunk else job_id)), None)
    if spec is None or (chunk is not None) != spec.is_array:
        return None
    if chunk is not None:
        if spec.tasks is None or chunk.hi >= len(spec.tasks):
            return None
        record = new_chunk_record(run.run_id, spec, chunk.lo, chunk.hi, workflow.dependents()[spec.id], number)
    else:
        record = new_job_record(run.run_id, spec, workflow.dependents()[job_id], number)
    record["tries"] = [try_record(1, number, "lost", start=None, end=time.time(), worker=None, host=None,
                                  worker_pid=None, reason=reason)]
    return record


def missing(run: RunLayout, known: set[str]) -> set[str]:
    """Known jobs found in no state folder or private folder right now."""
    return known - seen_jobs(run)


def seen_jobs(run: RunLayout) -> set[str]:
    """Jobs in a state folder or a private folder in running/ right now."""
    from .store import running_jobs

    seen: set[str] = set()
    for state in STATES:
        if state == "running":
            seen.update(r.job_id for r in running_jobs(run))
            continue
        try:
            seen.update(j for j in map(job_id_of, os.listdir(run.state_dir(state))) if j)
        except FileNotFoundError:
            continue
    return seen


def array_gaps(run: RunLayout, seen: set[str]) -> set[str]:
    """Tasks of the run's arrays in no unit seen, as chunk names (``sim.12-13``)."""
    arrays = arrays_of(run)
    if not arrays:
        return set()
    covered = Coverage(seen, arrays)
    gaps = set()
    for job, size in arrays.items():
        have = covered.positions(job, 0, size - 1) if covered.tasks.get(job, 0) < size else None
        if have is None:
            continue
        missing = sorted(set(range(size)) - set(have))
        gaps.update(unit_name(job, lo, hi) for lo, hi in runs(missing))
    return gaps


def placed_units(run: RunLayout) -> list[tuple[str, str, str]]:
    """(unit, state, path) of every file in a state folder, and every claim in running/."""
    out = []
    for state in STATES:
        try:
            names = os.listdir(run.state_dir(state))
        except FileNotFoundError:
            continue
        for name in names:
            parts = split_running_name(name) if state == "running" else None
            unit = (parts[0] if parts else None) if state == "running" else job_id_of(name)
            if unit:
                out.append((unit, state, os.path.join(run.state_dir(state), name)))
    return out


KEEP = {"done": 0, "failed": 1, "running": 2}  # of two overlapping chunks, the one further on stays


def overlap_victims(run: RunLayout, placed: list[tuple[str, str, str]]) -> dict[str, str]:
    """Chunk files that share tasks with another chunk file of their array (see
    :func:`executioner.protocol.units.overlapping`): path -> why. Of each pair the one
    further on stays (done, then failed, then a claim), else the first by position; a
    claim is never taken from its worker. Once the other is quarantined, tasks only it held
    are found missing by coverage and rebuilt: every task is left in exactly one file."""
    arrays = arrays_of(run)
    found = [(c, state, path) for unit, state, path in placed if (c := parse_unit(unit, arrays)) is not None]
    chunks: list[Chunk] = [c for c, _, _ in found]
    out: dict[str, str] = {}
    chosen: set[int] = set()
    for a, b in overlapping(chunks):
        if a in chosen or b in chosen:
            continue  # (a chain: once one goes, the rest is judged at the next look)
        rank_a, rank_b = (KEEP.get(found[i][1], 3) for i in (a, b))
        victim, kept = (b, a) if rank_b >= rank_a else (a, b)
        if found[victim][1] == "running":
            continue  # two claims: left to their workers (counted twice, and said so by exec-status)
        other = found[kept]
        both = f"{max(chunks[a].lo, chunks[b].lo)}-{min(chunks[a].hi, chunks[b].hi)}"
        chosen.add(victim)
        out[found[victim][2]] = (f"overlaps {other[1]}/{os.path.basename(other[2])} (tasks {both} would run or "
                                 "count twice); its other tasks are rebuilt")
    return out


def quarantine_notes(run: RunLayout, job_id: str) -> list[str]:
    """The names of the notes saying why a file of the job was quarantined, oldest first."""
    try:
        # <state>--<job>.json--<rand>.reason, or running--<job>@<token>.json--<rand>.reason
        return sorted(n for n in os.listdir(run.quarantine_dir)
                      if n.endswith(".reason") and (f"--{job_id}.json--" in n or f"--{job_id}@" in n))
    except FileNotFoundError:
        return []


def quarantine_reason(run: RunLayout, job_id: str, names: list[str] | None = None) -> str | None:
    """Why the job's file was quarantined, if it was (the latest such note)."""
    names = quarantine_notes(run, job_id) if names is None else names
    for name in reversed(names):
        try:
            return fsio.read_bytes(os.path.join(run.quarantine_dir, name), 1 << 14).decode(errors="replace").strip()
        except (OSError, ValueError):
            continue
    return None


class LostFinder:
    """Finds a run's lost jobs and rebuilds them, after seeing them missing twice, at least
    ``confirm`` seconds apart (a job is never in no folder for longer than a rename takes)."""

    def __init__(self, confirm: float = 2.0):
        self.confirm = confirm
        self._pending: dict[str, tuple[set[str], float]] = {}
        self._overlaps: dict[str, tuple[dict[str, str], float]] = {}

    def pending(self, run_id: str) -> bool:
        return run_id in self._pending or run_id in self._overlaps

    def check(self, run: RunLayout, expected: int, mono: float) -> list[str]:
        """One look; returns the jobs rebuilt. Call it holding the run's sweep lease."""
        if coordinating(run):
            self._pending.pop(run.run_id, None)
            self._overlaps.pop(run.run_id, None)
            return []
        from .store import still_look

        (seen, placed), still = still_look(run, lambda: (seen_jobs(run), placed_units(run)))
        if not still:
            return []  # the run kept moving under every look: nothing can be concluded now
        self._settle_overlaps(run, overlap_victims(run, placed), mono)
        gaps = array_gaps(run, seen)
        if len(seen) >= expected and not gaps and run.run_id not in self._pending:
            return []
        gone = (known_jobs(run) - seen) | gaps
        first = self._pending.pop(run.run_id, None)
        if not gone:
            return []
        if first is None or mono - first[1] < self.confirm:
            self._pending[run.run_id] = (gone if first is None else first[0], first[1] if first else mono)
            return []
        rebuilt_now = []
        for job_id in sorted(first[0] & gone):
            notes = quarantine_notes(run, job_id)
            note = quarantine_reason(run, job_id, notes)
            why = f"its file was quarantined ({note})" if note else "its file was in no state folder (deleted?)"
            if place_lost(run, job_id, why, quarantined=len(notes)):
                rebuilt_now.append(job_id)
        return rebuilt_now


    def _settle_overlaps(self, run: RunLayout, victims: dict[str, str], mono: float) -> None:
        """Quarantine chunk files seen overlapping another twice, ``confirm`` seconds apart."""
        first = self._overlaps.pop(run.run_id, None)
        if not victims:
            return
        if first is None or mono - first[1] < self.confirm:
            self._overlaps[run.run_id] = (victims if first is None else first[0], first[1] if first else mono)
            return
        from .scrub import quarantine

        for path in sorted(set(first[0]) & set(victims)):
            # RACE: claimed meanwhile (the rename finds nothing: its worker runs it, and
            # exec-status says the tasks are counted twice) or moved on by its worker.
            try:
                quarantine(run, path, f"refused chunk file: {victims[path]}")
            except OSError as e:
                log.warning("run %s: cannot quarantine %s: %s", run.run_id, path, e)


def place_record(run: RunLayout, job_id: str, record: dict[str, Any], dst: str) -> bool:
    """Put a job that is in no folder back into ``dst`` with ``record``; False if it turned
    up meanwhile. ``os.link`` never replaces a file that appeared in ``dst`` itself.

    Between the link and the unlink of the temp file the job file has two links; a claim in
    that instant takes it as usual (a second link is harmless: no job file's inode is ever
    written into)."""
    from .store import state_of

    tmp = fsio.write_temp(run.state_dir("running"), fsio.dumps(record))
    try:
        # RACE: a job that was only moving (seen nowhere by a listing that raced its rename)
        # is found by this look; the caller looked twice, some time apart, already.
        from .store import still_look

        state, still = still_look(run, lambda: state_of(run, job_id))
        if state is not None or not still:
            return False
        # RACE: from here until the unlink below the job file has a second link, our temp:
        # a worker claiming it meanwhile runs it; the temp's name is ours alone.
        os.link(tmp, run.job(job_id, dst))
        return True
    except FileExistsError:
        return False
    finally:
        fsio.unlink_quietly(tmp)


def place_lost(run: RunLayout, job_id: str, reason: str, quarantined: int = 0) -> bool:
    """Rebuild a lost job into waiting/ (the sweep promotes it when its dependencies are done).

    A job whose files were quarantined ``max_lost`` times (its rebuilt file is refused again
    and again: a name the storage will not let anyone read) goes to failed/ instead, so that
    workers do not rebuild and refuse it for ever.

    The caller has seen it missing twice, some time apart, holds the run's sweep lease, and
    made sure no coordinator is at work; ``os.link`` never replaces a file that appeared.
    """
    record = rebuilt(run, job_id, reason)
    if record is None:
        return False
    max_lost = record["spec"].get("max_lost", 3)
    dst = "failed" if quarantined >= max_lost else "waiting"
    if dst == "failed":
        record["reason"] = f"its file was quarantined {quarantined} times (max_lost {max_lost}); last: {reason}"
    if not place_record(run, job_id, record, dst):
        return False
    log.warning("run %s: job %s was in no state folder (%s); rebuilt from the workflow into %s/",
                run.run_id, job_id, reason, dst)
    return True
