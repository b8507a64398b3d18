"""The on-disk format of a pool and its runs, and the one object that builds every path.

Format version 1. A *pool* is a directory of runs::

    POOL/
      workers/<worker_id>.json       one per worker process: who it is (host, pid, start
                                     time, "runs" it is limited to or null) and, since
                                     placement, its "capacity" (cpus, gpus, mem_gb,
                                     resources, tags); its mtime is the worker's heartbeat
      workers/.probe-<host>-<pid>    touched to read the storage's clock; removed at exit
      workers/.watch-<host>-<boot>.json   what that host's processes saw stand still
                                     (see executioner.liveness.watch)
      <run_id>/                      one run, e.g. etl-0007
        run.json                     run record: id, name, created, workdir, env, job count,
                                     submitter; written last, so a run without it is
                                     still being built and is ignored. Optional (missing:
                                     defaults): "priority" (exec-submit --priority),
                                     "limits", and "placement", the index workers order and
                                     fit claims by (see executioner.protocol.placement)
        workflow.yaml                verbatim copy of the submitted file (.json if JSON)
        graph.json                   every job's dependencies, the held jobs and an order
                                     (each job after those it needs), as the current attempt
                                     made them (a summary for views; see
                                     executioner.protocol.graph)
        waiting/<job>.json           dependencies not done yet (or blocked by a failure)
        queued/<job>.json            ready to run (a retry may carry "not_before")
        running/<job>@<token>.json   claimed; <token> names the claim
        running/<job>@<token>+<who>/<job>.json
                                     the same job while one process takes it out of
                                     running/ (format 2): its private folder, see below
        done/<job>.json              finished with success
        failed/<job>.json            finished without success, retries used up
        logs/<job>.<try>.claim       the lock of try N, created (with the try's logs) right
                                     after the claim rename, written in place (empty or torn
                                     for an instant: read as no lock yet):
                                     worker, host, pid, pid start time, token, time claimed;
                                     it is live while running/<job>@<token>.json exists, and
                                     stays afterwards as the record of who ran that try
        logs/<job>.<try>.out|.err    stdout and stderr of each try, created by it (O_EXCL):
                                     never opened through what was there before
        logs/<job>.<try>.out.old-<random>
                                     what was at that name when the try began (the logs of
                                     a try whose result could not be recorded, or a planted
                                     link), moved aside and kept
        <state>/<job>.<lo>-<hi>.json a chunk of an array: its tasks lo..hi (positions; see
                                     executioner.protocol.units), a unit like a job file
        logs/<chunk>.<try>.tasks     a chunk try's journal (see executioner.protocol.journal);
                                     its .out/.err hold every task's output after a header line
        attempts/NNNN.<job>.lines    the each_line file of an array, as that attempt used it
        quarantine/<file>[.reason]   broken files taken out of the state folders, and why
        attempts/NNNN.json           one per attempt (1 = the submit, then each resume,
                                     rollback or from-job): when, who, why, flags, the
                                     workflow's sha256, parent, accepted changes, plan
        attempts/NNNN.workflow.yaml  the workflow that attempt used (.json if JSON)
        removed/<job>.json           jobs taken out of the run by a forced resume
        limits/<name>/free/<i>       a free slot of workflow limit <name> (empty files,
                                     i = 0..N-1; see executioner.protocol.slots)
        limits/<name>/held/<i>@<token>   slot i, held by the claim <token> (running/<job>@<token>.json)
        coordinator.lock / .json     present only while a resume or rollback changes the run:
                                     who, doing what, since when
        .coord/<token>/              a coordinator's staging folder (see executioner.coordinator.change);
                                     present while it works, or after it crashed (the next
                                     coordinator renames it aside, then finishes or undoes it)
        launch/worker-<id>.json|.out|.err   a local worker started by exec-submit --workers:
                                     pid, pid start time, command, log paths; its stdout, stderr
        slurm.json                   Slurm job ids of this run: "workers" (arrays), "dag" (jobs)
        slurm/<slurm job id>/        submitit's files and logs of each Slurm job
        slurm/<job>.<attempt>.<part>.sbatch   the script of an array's Slurm array (Slurm-DAG
                                     backend; one Slurm array element per chunk of tasks)
        slurm/<array id>_<element>.out|.err   what an element of such a Slurm array printed

**Leaving running/ (format 2).** Nobody ever writes into a file another process can still
reach by name. Whoever takes a job out of ``running/`` (its worker finishing, a reaper or a
resume taking a claim back, a checker recovering one of these that stalled) first creates
its private folder ``running/<job>@<token>+<who>/`` and renames the claim into it (the
fence: only one rename of the claim can succeed), writes the new record as a fresh temp
file, renames that over the job file inside its folder, and renames the job file out to
its new state folder; then it removes the empty folder. ``<who>`` is
``<intent>-<random>-<pid>-<host>``: the intent is the state it is committing to (``done``,
``failed``, ``queued``, ``waiting``) or ``take``/``recover``. Each step is a rename from
inside the private folder, so once a checker has renamed that folder to a private name of
its own (because it stood still for ``--stale-after``, or its process is gone), every
later step of the stalled owner fails and it writes nothing. While a job's file is in a
private folder the job counts as ``running``. Format 1 runs (workers wrote into the claim
itself) are read and finished the same way.

A job's state is the folder its file is in, and nothing else. A job file holds the job's
definition (``spec``), ``dependencies``, ``dependents``, every try so far (``tries``),
``last_exit_code`` and, while waiting for a retry delay, ``not_before``; since attempts
exist also ``attempt`` (the attempt its next try belongs to), ``definition_hash``,
``held`` (kept waiting by ``--failed-only``) and ``skipped`` (marked done without running,
with the reason), and with the Slurm-DAG backend ``slurm`` (its Slurm job id). Every try
records its ``attempt``; a try that held more than one CPU records ``resources`` (its
GPU ids and, with ``--bind``, its cores). A spec stores ``resources``, ``priority``,
``tags`` and ``limit`` only when set (missing: one CPU, 0, none, none). A job file that is a symlink is never run nor rewritten: it is
quarantined. One with a second hard link (a ``cp -al`` snapshot of the run) runs as any
other: its inode is never written into, so the other name keeps what it held. A run.json with ``"backend": "slurm"`` is left alone by pool workers. State changes
are single ``rename`` calls (see :mod:`executioner.protocol.store`); every write is temp file +
fsync + rename, with temp files named ``.tmp-<host>-<pid>-<random>``.

**Modes.** Everything executioner creates is its owner's alone (directories ``0700``, files
``0600``), whatever the umask, or with ``--shared-group`` its group's too (``2770``, ``0640``);
never the world's: job files, run.json and the workflow copies hold the workflow's ``env``.
A pool that already exists keeps its mode (see :mod:`executioner.protocol.fsio`).
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from typing import Final, Literal

FORMAT_VERSION: Final = 2  # 2: a job leaves running/ through a private folder (see below)
STATES: Final = ("waiting", "queued", "running", "done", "failed")
State = Literal["waiting", "queued", "running", "done", "failed"]
TOKEN_SEP: Final = "@"
JOB_SUFFIX: Final = ".json"
RUN_RECORD: Final = "run.json"
STAGE_SEP: Final = "~"
PRIVATE_SEP: Final = "+"
PROBE_PREFIX: Final = ".probe-"


@dataclass(frozen=True)
class RunLayout:
    """Every path inside one run directory."""

    root: str

    @property
    def run_id(self) -> str:
        return os.path.basename(os.path.normpath(self.root))

    @property
    def record(self) -> str:
        return os.path.join(self.root, RUN_RECORD)

    @property
    def graph(self) -> str:
        """The dependency graph of the current attempt (see executioner.protocol.graph)."""
        return os.path.join(self.root, "graph.json")

    def workflow_copy(self, suffix: str) -> str:
        return os.path.join(self.root, "workflow" + suffix)

    def state_dir(self, state: str) -> str:
        return os.path.join(self.root, state)

    @property
    def coordinator_lock(self) -> str:
        return os.path.join(self.root, "coordinator.lock")

    @property
    def coordinator_info(self) -> str:
        return os.path.join(self.root, "coordinator.json")

    @property
    def attempts_dir(self) -> str:
        return os.path.join(self.root, "attempts")

    def attempt_record(self, number: int) -> str:
        return os.path.join(self.root, "attempts", f"{number:04d}.json")

    def attempt_workflow(self, number: int, suffix: str) -> str:
        return os.path.join(self.root, "attempts", f"{number:04d}.workflow{suffix}")

    def attempt_lines(self, number: int, job_id: str) -> str:
        """The copy of an ``each_line`` file that attempt N of the run used."""
        return os.path.join(self.root, "attempts", f"{number:04d}.{job_id}.lines")

    @property
    def removed_dir(self) -> str:
        return os.path.join(self.root, "removed")

    @property
    def staging_root(self) -> str:
        """``.coord/``: one staging folder per coordinator, named by its token."""
        return os.path.join(self.root, ".coord")

    def staging(self, stage: str) -> str:
        return os.path.join(self.root, ".coord", stage)

    def staged(self, stage: str, job_id: str, state: str) -> str:
        """A job grabbed by coordinator ``stage`` out of ``state`` (its content unchanged)."""
        return os.path.join(self.root, ".coord", stage, f"{state}{STAGE_SEP}{job_id}{JOB_SUFFIX}")

    def staging_new(self, stage: str) -> str:
        """What coordinator ``stage`` will place when it commits (new job content, records)."""
        return os.path.join(self.root, ".coord", stage, "new")

    def staged_new(self, stage: str, job_id: str, state: str) -> str:
        """The job's new content, to be placed into ``state`` when ``stage`` commits."""
        return os.path.join(self.staging_new(stage), f"{state}{STAGE_SEP}{job_id}{JOB_SUFFIX}")

    def staged_file(self, stage: str, name: str) -> str:
        """Another file staged for the commit (the attempt record, run.json, ...)."""
        return os.path.join(self.staging_new(stage), name)

    def staging_commit(self, stage: str) -> str:
        return os.path.join(self.root, ".coord", stage, "COMMIT")

    @property
    def quarantine_dir(self) -> str:
        return os.path.join(self.root, "quarantine")

    @property
    def logs_dir(self) -> str:
        return os.path.join(self.root, "logs")

    @property
    def slurm_dir(self) -> str:
        return os.path.join(self.root, "slurm")

    @property
    def slurm_record(self) -> str:
        return os.path.join(self.root, "slurm.json")

    @property
    def slurm_cancelled(self) -> str:
        """Written by ``exec-submit --cancel`` (when, by whom, which Slurm jobs); removed by
        the next submission to Slurm. Views say the run is cancelled rather than queued."""
        return os.path.join(self.root, "slurm-cancelled.json")

    def slurm_array_script(self, job: str, attempt: int, part: int) -> str:
        """The sbatch script that submitted part ``part`` of array ``job``'s Slurm array in
        attempt ``attempt`` (kept for reading by hand; Slurm keeps its own copy)."""
        return os.path.join(self.root, "slurm", f"{job}.{attempt}.{part}.sbatch")

    def slurm_element_log(self, what: Literal["out", "err"]) -> str:
        """sbatch's ``--output``/``--error`` pattern for the elements of a Slurm array:
        ``slurm/<array job id>_<element>.out|.err`` (a ``%`` of the run's path doubled, as
        sbatch reads it)."""
        return os.path.join(self.root.replace("%", "%%"), "slurm", f"%A_%a.{what}")

    @property
    def launch_dir(self) -> str:
        return os.path.join(self.root, "launch")

    def launched(self, name: str, what: Literal["json", "out", "err"]) -> str:
        """A local worker started by ``exec-submit --workers``: its record, stdout or stderr."""
        return os.path.join(self.root, "launch", f"{name}.{what}")

    def all_dirs(self) -> list[str]:
        return [self.state_dir(s) for s in STATES] + [self.logs_dir, self.attempts_dir]

    def job(self, job_id: str, state: str) -> str:
        """Path of a job file in a state folder other than ``running`` (or in removed/)."""
        return os.path.join(self.root, state, job_id + JOB_SUFFIX)

    def running(self, job_id: str, token: str) -> str:
        return os.path.join(self.root, "running", f"{job_id}{TOKEN_SEP}{token}{JOB_SUFFIX}")

    def private(self, job_id: str, token: str, who: str) -> str:
        """The private folder of a process taking claim ``<job>@<token>`` out of running/."""
        return os.path.join(self.root, "running", f"{job_id}{TOKEN_SEP}{token}{PRIVATE_SEP}{who}")

    def private_job(self, folder: str, job_id: str) -> str:
        """The job's file inside a private folder."""
        return os.path.join(folder, job_id + JOB_SUFFIX)

    def piece(self, folder: str, unit: str, state: str) -> str:
        """A piece of a chunk written into a private folder, to be placed in ``state``."""
        return os.path.join(folder, f"{state}{STAGE_SEP}{unit}{JOB_SUFFIX}")

    @staticmethod
    def parse_piece(name: str) -> tuple[str, str] | None:
        """``<state>~<unit>.json`` -> (state, unit); None for anything else."""
        state, sep, rest = name.partition(STAGE_SEP)
        if not sep or state not in (*STATES, "removed") or not rest.endswith(JOB_SUFFIX) or rest.startswith("."):
            return None
        return state, rest[: -len(JOB_SUFFIX)]

    def task_journal(self, unit: str, try_number: int) -> str:
        """The progress journal of a chunk try (see executioner.execution.tasks)."""
        return os.path.join(self.root, "logs", f"{unit}.{try_number}.tasks")

    def claim_record(self, job_id: str, try_number: int) -> str:
        """The lock of try N: who claimed it, with which token. Kept as the try's record."""
        return os.path.join(self.root, "logs", f"{job_id}.{try_number}.claim")

    def log(self, job_id: str, try_number: int, stream: Literal["out", "err"]) -> str:
        return os.path.join(self.root, "logs", f"{job_id}.{try_number}.{stream}")

    @property
    def limits_dir(self) -> str:
        """``limits/``: one folder per workflow limit (see executioner.protocol.slots)."""
        return os.path.join(self.root, "limits")

    def limit_dir(self, name: str) -> str:
        return os.path.join(self.root, "limits", name)

    def slots_free(self, name: str) -> str:
        """``limits/<name>/free/``: one empty file ``<i>`` per free slot of the limit."""
        return os.path.join(self.root, "limits", name, "free")

    def slots_held(self, name: str) -> str:
        """``limits/<name>/held/``: ``<i>@<token>`` per slot held by the claim ``<token>``."""
        return os.path.join(self.root, "limits", name, "held")

    def slot_free(self, name: str, i: int) -> str:
        return os.path.join(self.root, "limits", name, "free", str(i))

    def slot_held(self, name: str, i: int, token: str) -> str:
        return os.path.join(self.root, "limits", name, "held", f"{i}{TOKEN_SEP}{token}")


@dataclass(frozen=True)
class PoolLayout:
    """Every path at pool level."""

    root: str

    @property
    def workers_dir(self) -> str:
        return os.path.join(self.root, "workers")

    def heartbeat(self, worker_id: str) -> str:
        return os.path.join(self.root, "workers", worker_id + JOB_SUFFIX)

    def probe(self, host: str, pid: int) -> str:
        """The file a process touches to read the storage's clock (see executioner.liveness.clock)."""
        return os.path.join(self.root, "workers", f"{PROBE_PREFIX}{host}-{pid}")

    def run(self, run_id: str) -> RunLayout:
        return RunLayout(os.path.join(self.root, run_id))

    def run_ids(self) -> list[str]:
        """Published runs (those with a run record), oldest first."""
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return []
        runs = [n for n in names if not n.startswith(".") and n != "workers"
                and os.path.exists(os.path.join(self.root, n, RUN_RECORD))]
        return sorted(runs, key=run_sort_key)


def aside(path: str) -> str:
    """Where an entry found at ``path`` goes when we meant to create ``path`` ourselves:
    ``<path>.old-<random>``, beside it (see :func:`executioner.protocol.fsio.create_fresh`)."""
    return f"{path}.old-{secrets.token_hex(3)}"


def run_sort_key(run_id: str) -> tuple[int, str]:
    """Runs sort by their pool-wide sequence number, then by name."""
    name, _, seq = run_id.rpartition("-")
    return (int(seq), name) if seq.isdigit() else (1 << 62, run_id)


def split_running_name(filename: str) -> tuple[str, str] | None:
    """``job@token.json`` -> (job, token); None for anything else."""
    if not filename.endswith(JOB_SUFFIX) or filename.startswith("."):
        return None
    job_id, sep, token = filename[: -len(JOB_SUFFIX)].rpartition(TOKEN_SEP)
    return (job_id, token) if sep and job_id and token else None


def split_private_name(name: str) -> tuple[str, str, str] | None:
    """``job@token+who`` -> (job, token, who); None for anything else."""
    if name.startswith(".") or name.endswith(JOB_SUFFIX):
        return None
    claim, sep, who = name.partition(PRIVATE_SEP)
    job_id, at, token = claim.rpartition(TOKEN_SEP)
    return (job_id, token, who) if sep and at and job_id and token and who else None


def job_id_of(filename: str) -> str | None:
    """``job.json`` -> job; None for temp files and foreign names."""
    if not filename.endswith(JOB_SUFFIX) or filename.startswith("."):
        return None
    return filename[: -len(JOB_SUFFIX)]
