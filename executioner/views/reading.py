"""Reading every job file of a run for the run view: in parallel, and kept small.

On a network filesystem a read is latency-bound (an open, a stat and a read are each a
round trip), so there the files are read by a few threads at once. On a local disk a read
takes microseconds and threads only fight over the interpreter (they made 100,000 reads
half as slow again here), so the first slice is read alone, each file timed: only when the
median file took longer than LATENCY are the rest read in parallel. Each record is checked (the
one shape check, :func:`executioner.protocol.records.read_job`) and then cut down to what
the view shows, so that 100,000 jobs do not hold 100,000 whole records (their commands,
envs and every try) in memory while the view is made.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final

from ..protocol.layout import RunLayout, split_private_name, split_running_name
from ..protocol.records import read_job
from ..protocol.store import claim_lock

THREADS: Final = 8  # reads in flight when the storage is slow to answer
SLICE: Final = 512  # files a thread reads before it takes the next slice
LATENCY: Final = 100e-6  # seconds a file (a local disk: 10 to 30 µs; NFS or sshfs: hundreds or more)
KEPT: Final = ("dependencies", "held", "skipped", "not_before", "slurm", "last_exit_code", "reason")


@dataclass
class Read:
    """What the view needs of one job file: the record cut down to KEPT and its last try
    (None if it cannot be used), its number of tries, its claim's lock (running jobs), and
    why it cannot be used."""

    record: dict[str, Any] | None
    tries: int = 0
    claim: dict[str, Any] | None = None
    problem: str | None = None


def token_of(path: str) -> str | None:
    """The claim token of a job file in running/ (a claim, or the job file in a private folder)."""
    parts = split_running_name(os.path.basename(path)) or split_private_name(os.path.basename(os.path.dirname(path)))
    return parts[1] if parts else None


def read_one(run: RunLayout, job_id: str, state: str, path: str) -> Read:
    try:
        record, problem = read_job(path, job_id)
    except OSError:
        return Read(None)  # moved since the listing, or an I/O error: shown without details
    if record is None:
        return Read(None, problem=problem)
    claim = None
    if state == "running":
        token = token_of(path)
        # None when not written yet (the claim is a moment old), or torn: shown without it
        claim = claim_lock(run, job_id, token, record) if token else None
    tries = record["tries"]
    slim = {k: record[k] for k in KEPT if record.get(k) is not None}
    slim["tries"] = tries[-1:]
    return Read(slim, len(tries), claim)


def read_jobs(run: RunLayout, jobs: list[tuple[str, str, str]]) -> dict[str, Read]:
    """``(job id, state, path)`` -> job id -> what its file holds (see the module docstring)."""
    def read_slice(part: list[tuple[str, str, str]]) -> list[tuple[str, Read]]:
        return [(job_id, read_one(run, job_id, state, path)) for job_id, state, path in part]

    out: dict[str, Read] = {}
    took: list[float] = []
    for job_id, state, path in jobs[:SLICE]:
        start = time.perf_counter()
        out[job_id] = read_one(run, job_id, state, path)
        took.append(time.perf_counter() - start)
    if len(jobs) <= SLICE:
        return out
    # The median read: a busy CPU (other processes) stretches a few reads, not the middle one
    if sorted(took)[len(took) // 2] < LATENCY:
        out.update(read_slice(jobs[SLICE:]))
        return out
    slices = [jobs[i:i + SLICE] for i in range(SLICE, len(jobs), SLICE)]
    with ThreadPoolExecutor(max_workers=min(THREADS, len(slices)), thread_name_prefix="exec-read") as pool:
        for part in pool.map(read_slice, slices):
            out.update(part)
    return out
