"""Task arrays on the Slurm-DAG backend: one Slurm job array per workflow array.

**The mapping.** An array of N tasks is stored as chunk files of ``size`` tasks
(:func:`executioner.workflow.arrays.chunk_size`: 10,000 tasks are 250 chunks of 40). With
``--backend slurm`` it is submitted as ONE ``sbatch --array`` whose element ``k`` runs the
tasks at positions ``k*size .. (k+1)*size-1``: the chunk the array was first cut into. The
element runs them through the same claim, run and pieces path as a pool worker (see
:mod:`executioner.backends.slurm_element`), on ``--slurm-cpus`` slots, retries included, and
exits 0 only when all of them are done, so ``afterok`` on the Slurm array holds back what
needs the whole array. ``--slurm-param array_limit=K`` (or a job's ``slurm:
{additional_parameters: {array_limit: K}}``) adds Slurm's ``%K``: at most K elements at once.

**Dependencies.** On a plain job: ``afterok:<its Slurm job>``. On a whole array:
``afterok`` on its Slurm array(s). Element-wise (``sim:{index}``): ``aftercorr`` on it, so
element ``k`` starts once element ``k`` of the upstream array ended well. That needs the
same element numbering on both sides: the same task count and the same chunk size (the same
``chunk:``, or both automatic). When they differ the dependency falls back to ``afterok`` on
the whole upstream array, and the submit says so. An upstream array with ``aftercorr``
dependents ends an element with exit code 0 once every one of its tasks has *settled*
(done, failed for good, or blocked), not only when all are done: otherwise one failed task
would keep Slurm from ever starting the matching element downstream, whose other tasks can
run. That element then runs the tasks whose upstream task is done and leaves the others in
``waiting/`` (blocked), exactly as a pool worker does; a job needing the whole array starts,
finds a task upstream failed, and ends at once, non-zero, leaving itself blocked.

**Element numbers and MaxArraySize.** Slurm refuses array indices of MaxArraySize or more
(1001 by default). Element ``k`` goes to part ``k // M`` (``M`` = MaxArraySize, read from
``scontrol show config``), as index ``k - part*M``: one ``sbatch`` per part, numbered the
same way on every array of equal chunking, so ``aftercorr`` pairs part ``p`` with part ``p``.
Two thousand chunks (the most any array has, unless ``chunk:`` says otherwise) are two
``sbatch`` calls at the default.

**A resume** submits only the elements whose range holds a task the plan runs (the index
list may have gaps: ``--array=3,7,12-15``); an ``aftercorr`` whose upstream element was
not submitted again is, for Slurm, an ``afterok`` on the whole upstream array. Live
elements of the run's arrays are cancelled first. A resume without ``--force`` while a
chunk of an array is running is refused (wait, or ``exec-submit --cancel`` first).

**Why not submitit's ``map_array``.** It submits an array fast enough (250 elements in
0.07 s, 1,000 in 0.3 s here, one pickle and one folder per element), but it numbers the
elements 0..n-1 always: a resume that runs chunks 3 and 7 again could not keep them
elements 3 and 7, and ``aftercorr`` needs that. So the array is one plain sbatch script
(kept as ``RUN/slurm/<job>.<attempt>.<part>.sbatch``) that starts ``python -m
executioner.backends.slurm_element``; its resource options are written as submitit writes
them (``--key=value``, ``_`` as ``-``), and plain jobs still go through submitit.

Submitted held, like plain jobs: the Slurm ids are written into the chunk files (the
coordinator's grab and place), then released; an element checks that the chunks of its
range name it before it runs any.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, Final

from ..protocol import fsio, store
from ..protocol.layout import PoolLayout, RunLayout
from ..protocol.units import Chunk, parse_unit
from ..workflow import Workflow
from ..workflow.arrays import chunk_size
from ..workflow.values import ARRAY_LIMIT
from .slurm import (DEFAULT_MINUTES, FIT_SLACK_S, SIGNAL_DELAY_S, SlurmError, SlurmOptions, _slurm,
                    from_mapping, merge_dependency)

DEFAULT_MAX_ARRAY_SIZE: Final = 1001  # Slurm's default MaxArraySize
LIMIT_KEY: Final = ARRAY_LIMIT  # slurm additional parameter: at most K elements at once (%K)
MAX_ENV: Final = "EXEC_SLURM_MAX_ARRAY_SIZE"  # overrides what scontrol says (tests split small arrays)


@dataclass(frozen=True)
class Cut:
    """How an array's tasks map to Slurm array elements: element k = tasks k*size..(k+1)*size-1."""

    count: int
    size: int

    def range(self, k: int) -> tuple[int, int]:
        return k * self.size, min((k + 1) * self.size, self.count) - 1

    def element(self, position: int) -> int:
        return position // self.size

    def elements(self, chunks: list[Chunk]) -> list[int]:
        """The elements holding any task of these chunks, sorted."""
        out: set[int] = set()
        for c in chunks:
            out.update(range(self.element(c.lo), self.element(c.hi) + 1))
        return sorted(out)


def cut_of(spec: Any) -> Cut:
    count = len(spec.tasks)
    return Cut(count, chunk_size(count, spec.tasks.chunk))


def parts(elements: list[int], max_size: int) -> list[tuple[int, list[int]]]:
    """Elements grouped by part (``k // max_size``): [(part, [indices within the part])]."""
    out: dict[int, list[int]] = {}
    for k in elements:
        out.setdefault(k // max_size, []).append(k % max_size)
    return sorted(out.items())


def index_spec(indices: list[int]) -> str:
    """sbatch's ``--array`` list: [0, 1, 2, 5, 7, 8] -> ``0-2,5,7-8``."""
    runs: list[list[int]] = []
    for i in sorted(indices):
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def max_array_size() -> int:
    """Slurm's MaxArraySize (array indices run 0..MaxArraySize-1)."""
    forced = os.environ.get(MAX_ENV)
    if forced and forced.isdigit() and int(forced) > 0:
        return int(forced)
    try:
        out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return DEFAULT_MAX_ARRAY_SIZE
    m = re.search(r"^MaxArraySize\s*=\s*(\d+)", out, re.M)
    return int(m.group(1)) if m else DEFAULT_MAX_ARRAY_SIZE


def sbatch_lines(options: Any, minutes: int, signal_delay: int) -> list[str]:
    """``#SBATCH`` lines for one element, as submitit writes its options."""
    params: dict[str, Any] = {"time": minutes, "signal": f"USR2@{signal_delay}", "nodes": 1, "ntasks": 1}
    if options.partition:
        params["partition"] = options.partition
    if options.cpus:
        params["cpus-per-task"] = options.cpus
    if options.mem_gb:
        params["mem"] = f"{int(round(options.mem_gb * 1024))}M"
    if options.gpus:
        params["gpus-per-node"] = options.gpus
    for key, value in options.additional_parameters.items():
        if key != LIMIT_KEY:
            params[key.replace("_", "-")] = value
    return [f"#SBATCH --{k}" if v is True else f"#SBATCH --{k}={shlex.quote(str(v))}" for k, v in params.items()]


def element_minutes(spec: Any, size: int, slots: int, slack_s: int, default: int) -> int:
    """An element's time limit when none is given: its chunk's tasks, ``slots`` at a time,
    each its timeout and kill grace, plus slack; an hour when the tasks have no timeout."""
    if spec.timeout is None:
        return default
    rounds = -(-size // max(1, slots))
    return max(1, -(-int(rounds * (spec.timeout + spec.kill_grace) + slack_s) // 60))


def write_script(run: RunLayout, pool: PoolLayout, job: str, attempt: int, part: int, offset: int, cut: Cut,
                 indices: list[int], lines: list[str], limit: int | None, dependency: str | None,
                 settled_ok: bool, heartbeat: float, stale_after: float) -> str:
    """The sbatch script of one part of an array's Slurm array (its index i is element
    ``offset + i``); returns its path."""
    array = index_spec(indices) + (f"%{limit}" if limit else "")
    head = ["#!/bin/bash", f"#SBATCH --job-name={shlex.quote(f'{run.run_id}.{job}')}",
            f"#SBATCH --array={array}", "#SBATCH --hold",
            f"#SBATCH --output={shlex.quote(run.slurm_element_log('out'))}",
            f"#SBATCH --error={shlex.quote(run.slurm_element_log('err'))}",
            f"#SBATCH --chdir={shlex.quote(run.root)}", *lines]
    if dependency:
        head.append(f"#SBATCH --dependency={shlex.quote(dependency)}")
    argv = [sys.executable, "-m", "executioner.backends.slurm_element", pool.root, run.run_id, job,
            str(offset), str(cut.count), str(cut.size), str(heartbeat), str(stale_after)]
    if settled_ok:
        argv.append("--settled-ok")
    text = "\n".join([*head, "", "exec " + " ".join(shlex.quote(a) for a in argv), ""])
    path = run.slurm_array_script(job, attempt, part)
    fsio.make_dirs(run.slurm_dir)
    fsio.atomic_write(path, text.encode())
    return path


def units_of(run: RunLayout, job: str, arrays: dict[str, int], states: tuple[str, ...]) -> list[tuple[str, Chunk]]:
    """(state, chunk) of the chunk files of array ``job`` in these state folders."""
    out = []
    for state in states:
        for unit in store.list_jobs(run, state):
            chunk = parse_unit(unit.partition("@")[0], arrays)
            if chunk is not None and chunk.job == job:
                out.append((state, chunk))
    return out


def recorded_arrays(run: RunLayout, job: str, arrays: dict[str, int]) -> set[str]:
    """The Slurm array ids written into the array's chunk files that may still run."""
    from ..protocol import records

    ids: set[str] = set()
    for state, chunk in units_of(run, job, arrays, ("waiting", "queued")):
        try:
            record, _ = records.read_job(run.job(chunk.unit, state), chunk.unit)
        except OSError:
            continue
        slurm_id = ((record or {}).get("slurm") or {}).get("job_id")
        if isinstance(slurm_id, str) and "_" in slurm_id:
            ids.add(slurm_id.split("_")[0])
    return ids


def element_ids(run: RunLayout, job: str, cut: Cut, submitted: list[tuple[int, str, list[int]]], max_size: int,
                arrays: dict[str, int], attempt: int) -> dict[str, dict[str, Any]]:
    """What to write into each chunk file of ``job`` that a submitted element will run:
    ``{"slurm": {"job_id": "<array id>_<index>", "attempt": N}}`` (the element of its first task)."""
    slurm_of = {part * max_size + i: f"{slurm_id}_{i}" for part, slurm_id, indices in submitted for i in indices}
    out = {}
    for _, chunk in units_of(run, job, arrays, ("waiting", "queued")):
        slurm_id = slurm_of.get(cut.element(chunk.lo))
        if slurm_id is not None:
            out[chunk.unit] = {"slurm": {"job_id": slurm_id, "attempt": attempt}}
    return out


def submit_array(pool: PoolLayout, run: RunLayout, workflow: Workflow, j: str, cuts: dict[str, Cut],
                 chunks: list[Chunk], arrays: dict[str, list[tuple[int, str, list[int]]]], ids: dict[str, str],
                 base: SlurmOptions, attempt: int, max_size: int, heartbeat: float, stale_after: float,
                 wanted: set[str], notes: list[str] | None) -> list[tuple[int, str, list[int]]]:
    """sbatch array ``j`` (its elements holding ``chunks``), held: one call per part (see the
    module docstring). ``arrays`` and ``ids``: what was submitted before it, in dependency
    order. Returns [(part, Slurm array id, indices)], also left in ``arrays[j]`` as it grows,
    so that a failure halfway cancels what was submitted."""
    specs = {s.id: s for s in workflow.jobs}
    spec, cut = specs[j], cuts[j]
    # slurm: sizes the element (tasks at once); else it asks what one task's resources say
    options = from_mapping(spec.slurm, {k: v for k, v in spec.resources.items() if k not in spec.slurm},
                           spec.tags).over(base)
    limit = options.additional_parameters.get(LIMIT_KEY)
    slots = max(1, (options.cpus or 1) // max(1, int(spec.resources.get("cpus", 1))))
    minutes = options.time or element_minutes(spec, cut.size, slots, FIT_SLACK_S, DEFAULT_MINUTES)
    lines = [x for x in sbatch_lines(options, minutes, SIGNAL_DELAY_S) if not x.startswith("#SBATCH --dependency=")]
    # aftercorr pairs element k with element k: only when both sides are cut alike
    matching = {d for d in spec.elementwise if d in arrays and cuts.get(d) == cut}
    for d in spec.elementwise:
        if d in arrays and d not in matching and notes is not None:
            notes.append(f"array {j} waits for all of array {d}, not task by task: their chunks differ "
                         f"({cut.count} tasks in chunks of {cut.size}, {cuts[d].count} in chunks of {cuts[d].size}); "
                         "give both the same chunk: to pair them")
    settled_ok = any(j in s.elementwise and s.id in wanted and cuts.get(s.id) == cut for s in workflow.jobs)
    out = []
    for part, indices in parts(cut.elements(chunks), max_size):
        whole = [whole_of(ids[d], arrays.get(d)) for d in spec.dependencies if d in ids and d not in matching]
        corr = [i for d in sorted(matching) for p, i, _ in arrays[d] if p == part]
        dependency = ",".join(x for x in ("afterok:" + ":".join(whole) if whole else "",
                                          "aftercorr:" + ":".join(corr) if corr else "") if x)
        user = options.additional_parameters.get("dependency")
        dependency = merge_dependency({"dependency": user} if user else {}, dependency or None).get("dependency")
        script = write_script(run, pool, j, attempt, part, part * max_size, cut, indices, lines, limit,
                              dependency, settled_ok, heartbeat, stale_after)
        try:
            slurm_id = _slurm("sbatch", "--parsable", script).strip().split(";")[0]
        except SlurmError as e:
            raise SlurmError(f"sbatch for array {j} failed: {e}") from None
        out.append((part, slurm_id, indices))
        arrays[j] = out  # so far: a failure in a later part cancels what was submitted
    return out


def whole_of(slurm_id: str, parts: list[tuple[int, str, list[int]]] | None) -> str:
    """What ``afterok`` names for a dependency: a job's Slurm job, or every part of an array's."""
    return slurm_id if parts is None else ":".join(i for _, i, _ in parts)
