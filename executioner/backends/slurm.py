"""Slurm, reached through submitit: worker arrays, and the Slurm-DAG backend.

*Worker arrays*: ``exec-submit --slurm-workers N`` submits N ordinary workers as one job
array; each knows when its allocation ends (``squeue``), claims no job whose ``timeout``
cannot finish before then, and hands its jobs back on Slurm's signals.

*Slurm-DAG backend*: ``--backend slurm`` submits one Slurm job per workflow job with
``dependency=afterok:<its upstream jobs>``. Each runs a one-job worker on that job, through
the same claim, run and complete path as a pool worker, and exits non-zero unless the job
ended done, so ``afterok`` dependents never start after a failure. All are submitted held;
their ids are written into the job files (through the coordinator's grab and place, like
any change to a live run), and only then released. Pool workers leave such runs alone.
A task array is one Slurm job array, one element per chunk, with ``aftercorr`` for
element-wise dependencies: see :mod:`executioner.backends.slurm_arrays` (submitting) and
:mod:`executioner.backends.slurm_element` (inside an element). A plain job that needs an
array which ended with failed tasks (one with ``aftercorr`` dependents ends its elements 0
once their tasks have settled) starts, finds itself blocked, and ends at once.
"""

from __future__ import annotations

import getpass
import graphlib
import logging
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

import submitit

from ..protocol import fsio, records, store
from ..protocol.placement import DEFAULT_NEEDS
from ..errors import ExecutionerError
from ..protocol.layout import PoolLayout, RunLayout
from ..execution.worker import Worker, slurm_job_id
from ..workflow import Workflow
from ..workflow.values import ARRAY_LIMIT

log = logging.getLogger("executioner.slurm")
SIGNAL_DELAY_S = 30  # Slurm sends SIGUSR2 this long before the time limit: hand jobs back then
ID_WAIT_S = 60.0
DEFAULT_MINUTES = 60  # time limit of a Slurm job when nothing sets one (submitit's would be 5)
FIT_SLACK_S = 90  # Slurm's warning comes SIGNAL_DELAY_S before the end, or up to a minute earlier


class SlurmError(ExecutionerError, RuntimeError):
    """Slurm refused or failed something we asked (sbatch, scontrol, scancel)."""


@dataclass(frozen=True)
class SlurmOptions:
    """Resources for one Slurm job (a worker of an array, or one DAG job)."""

    partition: str | None = None
    time: int | None = None  # minutes
    cpus: int | None = None
    mem_gb: float | None = None
    gpus: int | None = None
    additional_parameters: dict[str, Any] = field(default_factory=dict)

    def over(self, base: "SlurmOptions") -> "SlurmOptions":
        """These settings, falling back to ``base`` for the ones not set."""
        return SlurmOptions(
            partition=self.partition or base.partition, time=self.time or base.time,
            cpus=self.cpus or base.cpus, mem_gb=self.mem_gb or base.mem_gb, gpus=self.gpus or base.gpus,
            additional_parameters=merge_dependency({**base.additional_parameters, **self.additional_parameters},
                                                   base.additional_parameters.get("dependency")
                                                   if "dependency" in self.additional_parameters else None))

    def executor_parameters(self, dependency: str | None = None,
                            default_time: int | None = None) -> dict[str, Any]:
        """submitit's ``update_parameters`` keywords, with our dependency merged in."""
        params: dict[str, Any] = {"slurm_signal_delay_s": SIGNAL_DELAY_S,
                                  "timeout_min": self.time or default_time or DEFAULT_MINUTES}
        if self.partition:
            params["slurm_partition"] = self.partition
        if self.cpus:
            params["cpus_per_task"] = self.cpus
        if self.mem_gb:
            params["mem_gb"] = self.mem_gb
        if self.gpus:
            params["gpus_per_node"] = self.gpus
        # ARRAY_LIMIT is ours (an array's %K, see slurm_arrays), not an sbatch option
        additional = merge_dependency({k: v for k, v in self.additional_parameters.items() if k != ARRAY_LIMIT},
                                      dependency)
        if additional:
            params["slurm_additional_parameters"] = additional
        return params


def merge_dependency(additional: dict[str, Any], ours: str | None) -> dict[str, Any]:
    """The user's additional parameters with our ``afterok`` added to any ``dependency`` of
    theirs (both must hold: joined with ``,``), never replacing it."""
    out = dict(additional)
    theirs = out.get("dependency")
    if ours and theirs:
        out["dependency"] = f"{theirs},{ours}"
    elif ours:
        out["dependency"] = ours
    return out


def from_mapping(value: dict[str, Any] | None, resources: dict[str, Any] | None = None,
                 tags: list[str] | tuple[str, ...] | None = None) -> SlurmOptions:
    """A validated ``slurm:`` mapping of a workflow (see workflow.py) and the job's
    ``resources`` and ``tags`` as options: cpus, gpus and mem_gb come from ``resources``
    (where the validator moves them from ``slurm:``, their old spelling, still read for old
    runs); every other resource is a Slurm license (``--licenses=name:N``: Slurm's own
    countable, cluster-wide resource) and every tag a node feature (``--constraint=a&b``),
    unless ``additional_parameters`` gives licenses or constraint itself."""
    v = value or {}
    r = {**{k: v[k] for k in ("cpus", "gpus", "mem_gb") if k in v}, **(resources or {})}
    extra = dict(v.get("additional_parameters") or {})
    custom = {k: n for k, n in r.items() if k not in ("cpus", "gpus", "mem_gb") and n}
    if custom and "licenses" not in extra:
        extra["licenses"] = ",".join(f"{k}:{int(n) if float(n).is_integer() else n}" for k, n in sorted(custom.items()))
    if tags and "constraint" not in extra:
        extra["constraint"] = "&".join(tags)
    return SlurmOptions(partition=v.get("partition"), time=v.get("time"), cpus=r.get("cpus") or None,
                        mem_gb=r.get("mem_gb") or None, gpus=r.get("gpus") or None, additional_parameters=extra)


# ---- talking to Slurm --------------------------------------------------------------------
def _slurm(*args: str) -> str:
    try:
        out = subprocess.run(list(args), capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise SlurmError(f"{args[0]}: not found (is Slurm installed, and SLURM_CONF set?)") from None
    if out.returncode != 0:
        raise SlurmError(f"{' '.join(args)}: {out.stderr.strip() or out.stdout.strip()}")
    return out.stdout


def allocation_end(job_id: str | None = None) -> float | None:
    """When our Slurm allocation ends (epoch seconds), or None outside Slurm / without limit."""
    job_id = job_id or slurm_job_id()
    if not job_id:
        return None
    try:
        end = _slurm("squeue", "-h", "-j", job_id, "-o", "%e").strip()
    except SlurmError:
        return None
    try:
        return time.mktime(time.strptime(end, "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None  # "N/A", "Unknown": no limit known


def job_states(job_ids: list[str]) -> dict[str, str]:
    """Slurm job id -> state, for those Slurm still knows (array tasks one by one, ``12_3``)."""
    if not job_ids:
        return {}
    try:
        out = _slurm("squeue", "-h", "-r", "-j", ",".join(job_ids), "-o", "%i %T")
    except SlurmError as e:
        # One id that Slurm has forgotten (MinJobAge) fails the whole query: ask for all of
        # our jobs instead and keep the ones we asked about.
        if "Invalid job id" not in str(e):
            raise
        out = _slurm("squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%i %T")
    wanted = set(job_ids)
    states = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and (parts[0] in wanted or parts[0].split("_")[0] in wanted):
            states[parts[0]] = parts[1]
    return states


def cancel(job_ids: list[str]) -> None:
    if job_ids:
        _slurm("scancel", *job_ids)


def release(job_ids: list[str]) -> None:
    if job_ids:
        _slurm("scontrol", "release", ",".join(job_ids))


# ---- inside a Slurm job ------------------------------------------------------------------
class _Stopper:
    """Slurm's signals, caught from the start of our function (submitit's own handlers would
    just log them): SIGUSR2 (SIGNAL_DELAY_S before the time limit, or up to a minute earlier),
    SIGTERM (scancel, preemption, the limit itself). Each stops the current worker, which
    hands its jobs back; one that arrives between two workers stops the next one at once."""

    def __init__(self) -> None:
        self.signal: str | None = None
        self.worker: Worker | None = None
        for sig in (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.signal = signal.Signals(signum).name
        log.warning("%s from Slurm: stopping; running jobs are handed back", self.signal)
        if self.worker is not None:
            self.worker.stop(self.reason)

    @property
    def reason(self) -> str:
        if self.signal == "SIGUSR2":
            return "stopped by Slurm: the time limit of its Slurm job was near"
        return f"stopped by Slurm ({self.signal}: scancel, preemption or the time limit)"

    def run(self, worker: Worker) -> int:
        self.worker = worker
        if self.signal:
            worker.stop(self.reason)
        return worker.run()


def worker_entry(pool: str, run_ids: list[str] | None, slots: int, exit_when_idle: float,
                 heartbeat: float, stale_after: float) -> int:
    """One worker of a Slurm array (importable, so submitit can pickle it)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    stopper = _Stopper()
    return stopper.run(Worker(pool, run_ids=run_ids, slots=slots, exit_when_idle=exit_when_idle,
                              heartbeat=heartbeat, stale_after=stale_after, ends_at=allocation_end()))


class JobNotDone(ExecutionerError, RuntimeError):
    """The DAG job's workflow job did not end done: the Slurm job fails, so afterok holds back."""


def dag_entry(pool: str, run_id: str, job_id: str, heartbeat: float, stale_after: float) -> str:
    """One Slurm job of the DAG backend: run workflow job ``job_id`` to its end.

    Its worker claims only this job and, unlike a pool worker, ends a try that Slurm stopped
    (time limit, scancel, preemption) in failed/ rather than queued/: no other Slurm job would
    take it from queued/, and in failed/ its dependents show as blocked and a resume runs it
    again. No timeout check against the allocation either: the allocation is this job's own.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    stopper = _Stopper()
    run = PoolLayout(pool).run(run_id)
    mine = slurm_job_id() or ""
    recorded = wait_for_slurm_id(run, job_id, ID_WAIT_S)
    if mine and recorded != mine:
        raise JobNotDone(f"job {job_id} of run {run_id} belongs to Slurm job {recorded}, not to us ({mine})")
    stuck_since = None
    while True:
        state = store.state_of(run, job_id)
        if state in ("done", "failed", None) or stopper.signal:
            break
        if state == "waiting" and not store.promote(run, [job_id]):
            blocked = _blocked(run, job_id)
            if blocked:  # an upstream array that ended with failed tasks (see slurm_arrays)
                raise JobNotDone(f"job {job_id} of run {run_id} is blocked: {blocked}")
            # afterok let us start, so its dependencies were done; a missed promotion is made
            # good above. Still waiting after a minute: something moved them (a rollback).
            stuck_since = stuck_since or time.monotonic()
            if time.monotonic() - stuck_since > ID_WAIT_S:
                raise JobNotDone(f"job {job_id} of run {run_id} waits for dependencies that are not done")
            time.sleep(1.0)
            continue
        stopper.run(Worker(pool, run_ids=[run_id], slots=1, exit_when_idle=1.0, heartbeat=heartbeat,
                           stale_after=stale_after, only_jobs={job_id}, slurm_dag=True))
    if state != "done":
        raise JobNotDone(f"job {job_id} of run {run_id} ended {state or 'out of the run'}"
                         + (f"; {stopper.reason}" if stopper.signal else ""))
    return state


def _blocked(run: RunLayout, job_id: str) -> str | None:
    """Why waiting job ``job_id`` will never be promoted in this submission (None: it may)."""
    from ..protocol.ready import arrays_of
    from .slurm_element import upstream_gone

    try:
        record, _ = records.read_job(run.job(job_id, "waiting"), job_id)
    except OSError:
        return None
    return upstream_gone(run, record, arrays_of(run)) if record else None


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


def recorded_slurm_id(run: RunLayout, job_id: str) -> tuple[str | None, str | None]:
    """(the Slurm job id written into the job's file, the state it was found in)."""
    places = [(s, run.job(job_id, s)) for s in ("queued", "waiting", "done", "failed")]
    places += [("running", r.path) for r in store.running_jobs(run) if r.job_id == job_id]
    for state, path in places:
        try:
            record, _ = records.read_job(path, job_id)
        except OSError:
            continue
        if record is None:
            continue  # unusable (a worker quarantines it)
        slurm_id = (record.get("slurm") or {}).get("job_id")
        return (None if slurm_id is None else str(slurm_id)), state
    return None, None


def wait_for_slurm_id(run: RunLayout, job_id: str, limit: float) -> str:
    """The Slurm job id in ``job_id``'s file, waiting up to ``limit`` s for it to appear."""
    deadline = time.monotonic() + limit
    last = None
    while True:
        found, state = recorded_slurm_id(run, job_id)
        if found:
            return str(found)
        last = state or last
        if time.monotonic() >= deadline:
            raise SlurmError(f"no Slurm job id for {job_id} after {limit:.0f} s "
                             f"(last seen {'in ' + last + '/' if last else 'nowhere'})")
        time.sleep(0.2)


# ---- submitting --------------------------------------------------------------------------
def _executor(run: RunLayout) -> Any:
    fsio.make_dirs(run.slurm_dir)
    return submitit.AutoExecutor(folder=os.path.join(run.slurm_dir, "%j"), cluster="slurm")


def start_workers(pool: PoolLayout, run: RunLayout, count: int, options: SlurmOptions, slots: int = 1,
                  exit_when_idle: float = 10.0, heartbeat: float = 10.0, stale_after: float = 60.0) -> list[str]:
    """Submit ``count`` workers for ``run`` as one Slurm array; record and return their job ids.
    Each asks Slurm for what ``slots`` of the run's jobs need at once (see :func:`worker_request`),
    unless ``options`` (``--slurm-cpus`` and the like) say otherwise; once running, a worker
    declares what its allocation has (executioner.execution.capacity.detect)."""
    executor = _executor(run)
    options = options.over(worker_request(store.read_run_record(run), slots))
    executor.update_parameters(name=f"exec-worker-{run.run_id}", slurm_array_parallelism=count,
                               **options.executor_parameters())
    args = [pool.root] * count, [[run.run_id]] * count, [slots] * count, [exit_when_idle] * count, \
        [heartbeat] * count, [stale_after] * count
    try:
        jobs = executor.map_array(worker_entry, *args)
    except Exception as e:  # submitit raises plain exceptions for sbatch failures
        raise SlurmError(f"sbatch failed: {e}") from None
    ids = [str(j.job_id) for j in jobs]
    record_ids(run, "workers", ids)
    return ids


def worker_request(run_record: dict[str, Any], slots: int) -> SlurmOptions:
    """CPUs, GPUs and memory for a worker running ``slots`` jobs at once: the sum of what the
    ``slots`` largest jobs of the run need of each (a job without a placement entry: one
    CPU), so the biggest ones can run side by side. From run.json's placement index: no job
    file is read."""
    index = run_record.get("placement")
    index = index if isinstance(index, dict) else {}
    jobs = run_record.get("jobs") if isinstance(run_record.get("jobs"), int) else len(index)
    plain = max(0, jobs - len(index))
    wants = [e.get("needs", DEFAULT_NEEDS) for e in index.values() if isinstance(e, dict)]
    wants += [DEFAULT_NEEDS] * min(plain, slots)

    def top(key: str) -> float:
        return sum(sorted((float(w.get(key, 0)) for w in wants if isinstance(w, dict)), reverse=True)[:slots])

    cpus, gpus, mem = int(top("cpus")), int(top("gpus")), top("mem_gb")
    return SlurmOptions(cpus=max(1, cpus), gpus=gpus or None, mem_gb=mem or None)


def record_ids(run: RunLayout, kind: str, ids: list[str]) -> None:
    """Add Slurm job ids to ``RUN/slurm.json`` (kind: "workers" or "dag")."""
    try:
        data = records.slurm_ids(fsio.read_json(run.slurm_record))
    except (OSError, ValueError):
        data = {}
    data.setdefault(kind, [])
    data[kind] += [i for i in ids if i not in data[kind]]
    fsio.atomic_write_json(run.slurm_record, data)


def recorded_ids(run: RunLayout) -> dict[str, list[str]]:
    try:
        return records.slurm_ids(fsio.read_json(run.slurm_record))
    except (OSError, ValueError):
        return {}


def all_ids(run: RunLayout) -> list[str]:
    """Every Slurm job id recorded for the run, workers and DAG jobs alike."""
    return [i for kind in recorded_ids(run).values() for i in kind]


ALIVE = ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING")


def submit_dag(pool: PoolLayout, run: RunLayout, workflow: Workflow, to_run: list[str], base: SlurmOptions,
               attempt: int, heartbeat: float = 10.0, stale_after: float = 60.0,
               left_running: set[str] | None = None, notes: list[str] | None = None) -> dict[str, str]:
    """One Slurm job per plain job of ``to_run`` and one Slurm job array per array with
    chunks in ``to_run`` (see :mod:`executioner.backends.slurm_arrays`), in dependency
    order, ``afterok`` (``aftercorr`` element-wise) on the Slurm jobs of their dependencies
    among them. Returns job -> Slurm job id (reused or new; ``123_[0-249]`` for an array).
    ``notes`` collects what a user should know (an element-wise dependency run as afterok).

    A job's recorded Slurm job is reused, not submitted twice, when it is running a claim the
    plan left alone (``left_running``), or pending with every dependency's Slurm job reused
    too (then its afterok still names jobs that will run). Any other live Slurm job of the
    run's jobs is cancelled: its afterok names jobs replaced or cancelled, or its claim was
    taken back. Arrays are never reused: their live elements are cancelled and the elements
    with work submitted again.
    """
    from ..coordinator.change import annotate
    from . import slurm_arrays as sa

    specs = {s.id: s for s in workflow.jobs}
    sizes = {s.id: len(s.tasks) for s in workflow.jobs if s.tasks is not None}
    array_units: dict[str, list[Any]] = {}
    for unit in to_run:
        chunk = sa.parse_unit(unit, sizes)
        if chunk is not None:
            array_units.setdefault(chunk.job, []).append(chunk)
    for unit in left_running or set():
        chunk = sa.parse_unit(unit, sizes)
        if chunk is not None:
            raise SlurmError(f"chunk {unit} of array {chunk.job} is running: an array is submitted again "
                             "only once none of its chunks runs; wait, or exec-submit --cancel the run first")
    wanted = {u for u in to_run if u in specs and u not in sizes} | set(array_units)
    order = [j for j in graphlib.TopologicalSorter({s.id: s.dependencies for s in workflow.jobs}).static_order()
             if j in wanted]
    recorded = {j: recorded_slurm_id(run, j)[0] for j in specs if j not in sizes}
    alive = job_states([str(i) for i in recorded.values() if i])
    # Pending Slurm jobs of jobs this plan does not run (held, blocked, removed from the
    # plan): they would start one day and find nothing to do. Cancel them.
    cancel([str(recorded[j]) for j in recorded if j not in wanted and recorded[j]
            and alive.get(str(recorded[j])) == "PENDING"])
    # Live elements of the run's arrays: none runs a chunk (checked above), and their
    # dependencies name Slurm jobs this submission replaces. (A new run has none: not read.)
    old_arrays = sorted({i for j in sizes for i in sa.recorded_arrays(run, j, sizes)}) if attempt > 1 else []
    cancel(sorted({k.split("_")[0] for k in job_states(old_arrays)}))
    ids: dict[str, str] = {}
    new: dict[str, str] = {}
    arrays: dict[str, list[tuple[int, str, list[int]]]] = {}  # job -> [(part, Slurm id, indices)]
    reused_pending: list[str] = []
    cuts = {j: sa.cut_of(specs[j]) for j in array_units}
    max_size = sa.max_array_size() if array_units else 0
    executor = _executor(run)
    try:
        for j in order:
            if j in array_units:
                arrays[j] = sa.submit_array(pool, run, workflow, j, cuts, array_units[j], arrays, ids, base,
                                            attempt, max_size, heartbeat, stale_after, wanted, notes)
                record_ids(run, "dag", [i for _, i, _ in arrays[j]])  # at once: --cancel finds them
                ids[j] = new[j] = ",".join(f"{i}_[{sa.index_spec(x)}]" for _, i, x in arrays[j])
                continue
            old = str(recorded[j]) if recorded[j] else None
            state = alive.get(old or "")
            deps_reused = all(d in ids and d not in new for d in specs[j].dependencies)
            if old and ((state == "RUNNING" and j in (left_running or set()))
                        or (state == "PENDING" and deps_reused)):
                ids[j] = old  # reused as a dependency, not submitted twice
                if state == "PENDING":
                    reused_pending.append(old)
                continue
            if j in (left_running or set()):
                raise SlurmError(f"job {j} is running, but not in a Slurm job of this run that Slurm still "
                                 "knows; wait for it to end, then resume")
            if old and state in ALIVE:
                cancel([old])  # its afterok names replaced jobs, or its claim was taken back
            deps = [sa.whole_of(ids[d], arrays.get(d)) for d in specs[j].dependencies if d in ids]
            params = from_mapping(specs[j].slurm, specs[j].resources, specs[j].tags).over(base).executor_parameters(
                "afterok:" + ":".join(deps) if deps else None, default_time=_job_minutes(specs[j]))
            # Held until its id is in its job file (below): no Slurm job starts unrecorded.
            params["slurm_additional_parameters"] = {**params.get("slurm_additional_parameters", {}), "hold": True}
            executor.update_parameters(name=f"{run.run_id}.{j}", **params)
            try:
                job = executor.submit(dag_entry, pool.root, run.run_id, j, heartbeat, stale_after)
            except Exception as e:  # submitit raises plain exceptions for sbatch failures
                raise SlurmError(f"sbatch for job {j} failed: {e}") from None
            ids[j] = new[j] = str(job.job_id)
            record_ids(run, "dag", [new[j]])  # at once: --cancel finds it even if we die now
        updates = {j: {"slurm": {"job_id": i, "attempt": attempt}} for j, i in new.items() if j not in arrays}
        for j, submitted in arrays.items():
            updates.update(sa.element_ids(run, j, cuts[j], submitted, max_size, sizes, attempt))
        if updates:
            annotate(run, updates, "recording Slurm job ids")
    except BaseException:
        try:
            cancel([i for j, i in new.items() if j not in arrays] + [i for a in arrays.values() for _, i, _ in a])
        except SlurmError as e:
            log.warning("could not cancel the Slurm jobs just submitted: %s", e)
        raise
    release([i for j, i in new.items() if j not in arrays] + [i for a in arrays.values() for _, i, _ in a])
    try:
        os.unlink(run.slurm_cancelled)  # submitted again: no longer cancelled
    except FileNotFoundError:
        pass
    for held in reused_pending:  # held by a submission that died before releasing them
        try:
            release([held])
        except SlurmError:
            pass  # not held: nothing to do
    return ids


def _job_minutes(spec: Any) -> int:
    """A DAG job's time limit when none is given: its timeout with room to stop, else an hour."""
    if spec.timeout is None:
        return DEFAULT_MINUTES
    return max(1, -(-int(spec.timeout + spec.kill_grace + FIT_SLACK_S) // 60))


def pool_worker_claims(run: RunLayout) -> list[str]:
    """Jobs held in running/ by a worker that is not a Slurm job: they stop a DAG submission."""
    held = []
    for job in store.running_jobs(run):
        job_id = job.job_id
        try:
            record, _ = records.read_job(job.path, job_id)
        except OSError:
            continue
        claim = store.claim_lock(run, job_id, job.token, record) if record else None
        if claim is None:
            continue
        if not claim.get("dag"):  # array workers run inside Slurm too: only a DAG job says so
            held.append(f"job {job_id} is held in running/ by pool worker {claim.get('worker')} "
                        f"on host {claim.get('host')}")
    return held


def array_claims(run: RunLayout) -> list[str]:
    """Chunks of arrays in running/: a resume without --force does not submit an array again
    while one of its Slurm array's elements runs a chunk (it would run beside the new one)."""
    from ..protocol.ready import arrays_of
    from ..protocol.units import parse_unit

    arrays = arrays_of(run)
    out = []
    for job in store.running_jobs(run) if arrays else []:
        chunk = parse_unit(job.job_id, arrays)
        if chunk is not None:
            out.append(f"chunk {job.job_id} of array {chunk.job} is running; a resume submits an array again "
                       f"only once none of its chunks runs: wait, or `exec-submit --cancel {run.run_id}` first "
                       "(or --force: its chunk is taken back and run again)")
    return out


def cancel_run(run: RunLayout, dry_run: bool = False) -> list[str]:
    """scancel every Slurm job of the run Slurm still knows; running ones hand their jobs back."""
    ids = all_ids(run)
    known = job_states(ids)
    live = [i for i in ids if i in known or any(k.startswith(i + "_") for k in known)]
    if not dry_run:
        cancel(live)
        # Said in the views: the run's jobs left in queued/ and waiting/ wait for Slurm
        # jobs that will never start (until a resume submits them again, and removes it).
        fsio.atomic_write_json(run.slurm_cancelled, {
            "at": round(time.time(), 3), "by": f"{getpass.getuser()}@{socket.gethostname()}", "ids": ids})
    return live
