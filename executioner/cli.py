"""The three commands. Each ``main(argv)`` parses arguments, calls the library, returns an exit code."""

from __future__ import annotations

import argparse
import gc
import getpass
import io
import logging
import math
import os
import shlex
import signal
import stat
import sys
from typing import Any, Callable, NoReturn

from .errors import ChangeIncomplete, CorruptFileError, ExecutionerError, PoolError, Refused, RunBusy, WorkflowErrors
from .protocol.layout import PoolLayout, RunLayout
from .views.select import LIMIT, parse_states
from .views.show import attempts_table, emit, job_table, pool_table, run_text
from .views.status import is_run_dir, pool_and_run, pool_status, run_status

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_REFUSED = 0, 1, 2, 3
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE  # 141: what a shell reports for `yes | head -1`


def _command(prog: str, body: Callable[[list[str] | None], int]) -> Callable[[list[str] | None], int]:
    """The entry point ``main(argv) -> exit code`` around ``body``, with the faults no
    command should show as a traceback: its reader gone (``| head -1``: silent, exit 141,
    like any tool killed by SIGPIPE), an OSError nobody caught (a read-only pool, a lost
    mount: one line naming the file, exit 1). Paths that are not UTF-8 go to stdout as the
    bytes they are, so a printed run directory can be pasted into the next command."""

    def main(argv: list[str] | None = None) -> int:
        if isinstance(sys.stdout, io.TextIOWrapper):
            sys.stdout.reconfigure(errors="surrogateescape")
        try:
            return body(argv)
        except BrokenPipeError:
            return _reader_gone()
        except OSError as e:  # ours (a pool path: exit 2) or the filesystem's (exit 1)
            try:
                print(f"{prog}: error: {e if isinstance(e, ExecutionerError) else _os_error(e)}",
                      file=sys.stderr, flush=True)
            except BrokenPipeError:
                return _reader_gone()
            return EXIT_USAGE if isinstance(e, PoolError) else EXIT_FAILED

    main.__doc__ = body.__doc__
    return main


def _reader_gone() -> int:
    """Stdout's reader has gone: point stdout at /dev/null, so the interpreter's last flush
    does not complain either (the pattern the Python docs give for SIGPIPE)."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):  # no stdout at all: nothing to flush either
        pass
    return EXIT_BROKEN_PIPE


def _os_error(e: OSError) -> str:
    return f"{e.filename}: {e.strerror}" if e.filename and e.strerror else str(e)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # usage errors exit 2 with one line
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _priority(text: str) -> int:
    """``--priority N``: a whole number within the bounds a job's priority has."""
    from .workflow.values import MAX_PRIORITY
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, not {text!r}") from None
    if abs(n) > MAX_PRIORITY:
        raise argparse.ArgumentTypeError(f"must be from {-MAX_PRIORITY} to {MAX_PRIORITY}")
    return n


def _fail(prog: str, error: Exception | str) -> int:
    for line in str(error).splitlines() or [""]:
        print(f"{prog}: error: {line}", file=sys.stderr)
    return EXIT_USAGE


def _pool_arg(value: str | None) -> str | None:
    return value or os.environ.get("EXEC_POOL")


MAX_SECONDS = 7 * 24 * 3600.0  # a week: longer is a typo (or a unit mistake), not a setting


def check_times(heartbeat: float | None = None, stale_after: float | None = None,
                exit_when_idle: float | None = None) -> str | None:
    """The one rule for the time flags of every command; None when they are fine, else why not.

    Each given value is a finite number of seconds, > 0 and at most a week; where both
    apply, ``--stale-after`` is more than twice ``--heartbeat`` (a live worker must beat
    at least twice within it).
    """
    for flag, value in (("--heartbeat", heartbeat), ("--stale-after", stale_after),
                        ("--exit-when-idle", exit_when_idle)):
        if value is not None and not (math.isfinite(value) and 0 < value <= MAX_SECONDS):
            return f"{flag} must be a number of seconds > 0 and at most {MAX_SECONDS:.0f} (a week), not {value:g}"
    if heartbeat is not None and stale_after is not None and not stale_after > 2 * heartbeat:
        return f"--stale-after ({stale_after:g}) must be more than twice --heartbeat ({heartbeat:g})"
    return None


# ---- exec-submit ------------------------------------------------------------------------
def _submit_main(argv: list[str] | None = None) -> int:
    p = _Parser(prog="exec-submit", description="Validate a workflow and create a run in a pool, "
                "or resume, roll back or start midstream an existing run.")
    p.add_argument("workflow", nargs="?", help="workflow file (.yaml, .yml or .json); "
                   "with --resume, default: the run's own copy")
    p.add_argument("--pool", help="pool directory (default: $EXEC_POOL)")
    p.add_argument("--workers", type=int, default=0, metavar="N", help="start N local workers for this run")
    p.add_argument("-j", "--jobs", "--jobs-per-worker", dest="jobs_per_worker", type=int, default=1, metavar="K",
                   help="jobs each local worker runs at once (default 1; exec-worker's -j)")
    p.add_argument("--wait", action="store_true", help="wait for the run to end; exit 1 if any job failed")
    p.add_argument("--priority", type=_priority, metavar="N",
                   help="the run's priority: workers take jobs of runs of higher priority first (default 0; "
                        "with --resume: keep the run's unless given)")
    p.add_argument("--stale-after", type=float, default=60.0, metavar="SECONDS",
                   help="a claim whose worker has not beaten for this long is requeued (default 60)")
    p.add_argument("--shared-group", action="store_true",
                   help="a new run (and a new pool) the pool's group may read and run too, env included "
                        "(default: yours alone, mode 0700)")
    g = p.add_argument_group("resume, midstream start, rollback")
    g.add_argument("--resume", metavar="RUN_ID", help="continue this run as its next attempt")
    g.add_argument("--failed-only", action="store_true",
                   help="requeue only failed jobs; jobs that never ran are held until a plain resume")
    g.add_argument("--no-retry-failed", action="store_true", help="failed jobs stay failed")
    g.add_argument("--from-job", action="append", default=[], metavar="JOB",
                   help="assume every ancestor of JOB done; run JOB and what follows (repeatable)")
    g.add_argument("--rollback-to", action="append", default=[], metavar="JOB",
                   help="with --resume: run JOB and everything downstream again (repeatable)")
    g.add_argument("--force", action="store_true",
                   help="accept changed or removed done jobs, and take back live claims in the way")
    g.add_argument("--dry-run", action="store_true", help="print the plan and its checks; change nothing")
    g.add_argument("-v", "--verbose", action="store_true",
                   help="print the plan a line per job (else: per kind of move, its count and first five jobs)")
    sl = p.add_argument_group("Slurm")
    sl.add_argument("--slurm-workers", type=int, default=0, metavar="N",
                    help="submit N workers for this run as one Slurm job array (each exits when idle)")
    sl.add_argument("--backend", choices=("workers", "slurm"),
                    help="slurm: one Slurm job per workflow job, with afterok dependencies (default: workers)")
    sl.add_argument("--slurm-partition", metavar="NAME")
    sl.add_argument("--slurm-time", type=int, metavar="MINUTES", help="time limit of each Slurm job")
    sl.add_argument("--slurm-cpus", type=int, metavar="N", help="CPUs per Slurm job")
    sl.add_argument("--slurm-mem-gb", type=float, metavar="GB", help="memory per Slurm job")
    sl.add_argument("--slurm-gpus", type=int, metavar="N", help="GPUs per Slurm job")
    sl.add_argument("--slurm-param", action="append", default=[], metavar="KEY=VALUE",
                    help="any other sbatch option, e.g. account=proj or qos=long (repeatable)")
    sl.add_argument("--cancel", metavar="RUN_ID", help="cancel the run's Slurm jobs; the run stays resumable")
    rm = p.add_argument_group("removing a run")
    rm.add_argument("--delete", metavar="RUN_ID",
                    help="remove the run from the pool (refused while it has running jobs, unless --force)")
    rm.add_argument("--archive", nargs=2, metavar=("RUN_ID", "FILE.tar.gz"),
                    help="write the run into a new .tar.gz, check it, then remove the run as --delete does")
    a = p.parse_args(argv)
    from .coordinator.plan import Options

    pool_dir = _pool_arg(a.pool)
    if not pool_dir:
        return _fail(p.prog, "no pool: pass --pool DIR or set EXEC_POOL")
    if a.workers < 0 or a.jobs_per_worker < 1 or a.slurm_workers < 0:
        return _fail(p.prog, "--workers and --slurm-workers must be >= 0 and -j >= 1")
    bad_time = check_times(stale_after=a.stale_after)
    if bad_time:
        return _fail(p.prog, bad_time)
    try:
        slurm_base = _slurm_options(a)
    except ValueError as e:
        return _fail(p.prog, e)
    if a.cancel:
        return _cancel(p.prog, PoolLayout(os.path.abspath(pool_dir)), a.cancel, a.dry_run)
    if a.delete or a.archive:
        if a.delete and a.archive:
            return _fail(p.prog, "--delete and --archive exclude each other (--archive removes the run too)")
        run_id, archive = (a.delete, None) if a.delete else (a.archive[0], a.archive[1])
        return _remove(p.prog, PoolLayout(os.path.abspath(pool_dir)), run_id, archive, a.force, a.stale_after,
                       a.dry_run)
    if a.backend == "slurm" and a.slurm_workers:
        return _fail(p.prog, "--backend slurm runs each job as its own Slurm job: no --slurm-workers")
    if a.resume and a.shared_group:
        return _fail(p.prog, "--shared-group is for a new run; a resume keeps the run's mode (chmod it yourself)")
    if not a.resume:
        bad = [f for f, v in (("--failed-only", a.failed_only), ("--no-retry-failed", a.no_retry_failed),
                              ("--rollback-to", a.rollback_to), ("--force", a.force)) if v]
        if bad:
            return _fail(p.prog, f"{bad[0]} needs --resume RUN_ID")
        if not a.workflow:
            return _fail(p.prog, "give a workflow file, or --resume RUN_ID")
    if a.failed_only and a.no_retry_failed:
        return _fail(p.prog, "--failed-only and --no-retry-failed exclude each other")
    options = Options(failed_only=a.failed_only, no_retry_failed=a.no_retry_failed, force=a.force,
                      from_jobs=tuple(a.from_job), rollback_to=tuple(a.rollback_to), stale_after=a.stale_after,
                      backend=a.backend, priority=a.priority)
    pool = PoolLayout(os.path.abspath(pool_dir))
    try:
        if a.resume:
            run, plan = _resume(pool, a.resume, a.workflow, options, a.dry_run)
        else:
            run, plan = _submit(pool, a.workflow, options, a.dry_run, a.shared_group)
    except (WorkflowErrors, PoolError) as e:
        return _fail(p.prog, e)
    except CorruptFileError as e:  # a damaged run: said as exec-status says it (state "corrupt")
        return _fail(p.prog, f"{e.path}: corrupt: {e.message}".replace("\n", " "))
    except (Refused, RunBusy) as e:
        for line in str(e).splitlines():
            print(f"{p.prog}: {line}", file=sys.stderr)
        return EXIT_REFUSED
    except ChangeIncomplete as e:  # an I/O error while settling or placing: the message says what is left
        _fail(p.prog, e)
        return EXIT_FAILED
    except OSError as e:  # a full disk, a lost mount: one line, no traceback
        _fail(p.prog, _os_error(e))
        return EXIT_FAILED
    if run is None:  # --dry-run
        print(plan.text(a.verbose), flush=True)
        if plan.nothing_to_do:
            print(plan.idle_text(), flush=True)
        return EXIT_REFUSED if plan.refused else EXIT_OK
    backend = _backend(run)
    # a new Slurm-DAG run is kept only if sbatch takes it: its line is printed after that
    run_line = None if plan.nothing_to_do else f"{run.run_id} {run.root}"
    deferred = not a.resume and backend == "slurm"
    if plan.nothing_to_do:  # nothing was written; workers asked for are still started
        print(plan.idle_text(), flush=True)
    else:
        if not deferred:
            print(run_line, flush=True)
        if a.shared_group:
            from .execution.worker import pool_is_shared

            if not pool_is_shared(pool):
                print(f"{p.prog}: warning: {pool.workers_dir} does not let its group write: the group's "
                      "workers cannot serve this pool until it does (chmod 2770 it)", file=sys.stderr, flush=True)
        if a.resume or options.from_jobs:
            print(plan.text(a.verbose), file=sys.stderr, flush=True)
    from .backends.slurm import SlurmError

    try:
        if backend == "slurm":
            from .backends.slurm import submit_dag

            to_run = [s.job for s in plan.steps if s.action == "run"]
            left = {s.job for s in plan.steps if s.src == "running" and s.dst is None}
            notes: list[str] = []
            ids = submit_dag(pool, run, plan.workflow, to_run, slurm_base, plan.attempt,
                             heartbeat=a.stale_after / 6, stale_after=a.stale_after, left_running=left, notes=notes)
            for note in notes:
                print(f"{p.prog}: note: {note}", file=sys.stderr, flush=True)
            if deferred and run_line:
                print(run_line, flush=True)
            print(f"slurm: {len(ids)} job(s): " + " ".join(f"{j}={i}" for j, i in ids.items()),
                  file=sys.stderr, flush=True)
        if a.slurm_workers:
            from .backends.slurm import start_workers

            workers = start_workers(pool, run, a.slurm_workers, slurm_base, slots=a.jobs_per_worker,
                                    heartbeat=a.stale_after / 6, stale_after=a.stale_after)
            print(f"slurm: {len(workers)} worker(s): {' '.join(workers)}", file=sys.stderr, flush=True)
    except (SlurmError, Refused) as e:
        if not a.resume and backend == "slurm":  # a new run that nothing can run: not kept
            import shutil

            shutil.rmtree(run.root, ignore_errors=True)
            return _fail(p.prog, f"{e}\nthe run was not kept")
        for line in str(e).splitlines():
            print(f"{p.prog}: error: {line}", file=sys.stderr)
        print(f"{p.prog}: run {run.run_id} is in place but its Slurm submission failed; fix the cause, then: "
              f"exec-submit --pool {pool.root} --resume {run.run_id}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    if a.workers:
        from .execution.launch import start_local_workers

        try:  # the same beat as Slurm workers get: --wait judges them with this --stale-after
            pids = start_local_workers(pool, run, a.workers, slots=a.jobs_per_worker,
                                       heartbeat=a.stale_after / 6, stale_after=a.stale_after)
        except OSError as e:
            print(f"{p.prog}: error: cannot start local workers: {e}; the run is in place: start "
                  f"`exec-worker --pool {shlex.quote(pool.root)} --run {run.run_id}`", file=sys.stderr, flush=True)
            return EXIT_FAILED
        print(f"{p.prog}: started {len(pids)} local worker(s), detached (logs in {run.launch_dir}); they exit "
              f"once the run is idle; to stop them now: kill {' '.join(pids)}", file=sys.stderr, flush=True)
    if not a.wait:
        return EXIT_OK
    from .views.progress import wait_for_run

    try:
        from .views.advice import Advisor

        status = wait_for_run(run, total=len(plan.workflow.jobs), stale_after=a.stale_after,
                              advisor=Advisor(run, a.stale_after, alone_after=None))
    except KeyboardInterrupt:
        if a.workers:
            print(f"\n{p.prog}: stopped waiting; the local workers go on and exit once the run is idle",
                  file=sys.stderr, flush=True)
        return 130
    c = status["counts"]
    held = "; the jobs held by --failed-only wait for a plain --resume" if status["state"] == "held" else ""
    print(f"{run.run_id}: {status['state']} (done {c['done']}, failed {c['failed']}, "
          f"blocked {c['blocked']}{held})", flush=True)
    # held: every job allowed to run is done (a failure would make the run 'failed'), the
    # rest is kept waiting on purpose by --failed-only: what was asked for succeeded
    return EXIT_OK if status["state"] in ("done", "held") else EXIT_FAILED


def _slurm_options(a: argparse.Namespace) -> Any:
    from .backends.slurm import SlurmOptions
    from .workflow.values import array_limit_problem

    extra: dict[str, Any] = {}
    for item in a.slurm_param:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--slurm-param {item!r}: expected KEY=VALUE (an sbatch option without its --)")
        extra[key.lstrip("-")] = value
        if key.lstrip("-") == "array_limit" and (problem := array_limit_problem(value)):
            raise ValueError(f"--slurm-param {problem}")
    for name in ("slurm_time", "slurm_cpus", "slurm_gpus"):
        if getattr(a, name) is not None and getattr(a, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
    if a.slurm_mem_gb is not None and a.slurm_mem_gb <= 0:
        raise ValueError("--slurm-mem-gb must be > 0")
    return SlurmOptions(partition=a.slurm_partition, time=a.slurm_time, cpus=a.slurm_cpus, mem_gb=a.slurm_mem_gb,
                        gpus=a.slurm_gpus, additional_parameters=extra)


def _backend(run: RunLayout) -> str:
    from .protocol.store import read_run_record

    return str(read_run_record(run).get("backend") or "workers")


def _remove(prog: str, pool: PoolLayout, run_id: str, archive: str | None, force: bool, stale_after: float,
            dry_run: bool) -> int:
    from .backends.slurm import SlurmError
    from .coordinator.remove import remove_run

    try:
        done = remove_run(pool, run_id, force=force, archive=archive, stale_after=stale_after, dry_run=dry_run)
    except (PoolError, SlurmError) as e:
        return _fail(prog, e)
    except (Refused, RunBusy) as e:
        print(f"{prog}: {e}", file=sys.stderr, flush=True)
        return EXIT_REFUSED
    except OSError as e:  # the rename out of the pool itself (a read-only pool): nothing changed
        return _fail(prog, f"{e.filename or pool.root}: cannot remove run {run_id}: {e.strerror or e}; nothing changed")
    took = "".join(f"; {what}: {' '.join(items)}" for what, items in
                   (("stops", done.stopped), ("cancels Slurm jobs", done.cancelled)) if items)
    if dry_run:
        print(f"{run_id}: would {'archive into ' + archive + ' and ' if archive else ''}remove{took}", flush=True)
        return EXIT_OK
    print(f"{run_id}: {'archived into ' + str(done.archive) + ' and ' if archive else ''}removed"
          f"{took.replace('stops', 'stopped').replace('cancels', 'cancelled')}", flush=True)
    return EXIT_OK


def _cancel(prog: str, pool: PoolLayout, run_id: str, dry_run: bool) -> int:
    from .backends.slurm import SlurmError, cancel_run

    run = pool.run(run_id)
    if not is_run_dir(run.root):
        return _fail(prog, f"{pool.root}: no run {run_id!r}")
    try:
        ids = cancel_run(run, dry_run=dry_run)
    except SlurmError as e:
        return _fail(prog, e)
    if dry_run:
        print(f"{run_id}: would cancel {len(ids)} Slurm job(s){': ' + ' '.join(ids) if ids else ''}", flush=True)
        return EXIT_OK
    print(f"{run_id}: cancelled {len(ids)} Slurm job(s){': ' + ' '.join(ids) if ids else ''}; "
          f"resume with: exec-submit --pool {pool.root} --resume {run_id}", flush=True)
    return EXIT_OK


def _submit(pool: PoolLayout, path: str, options: Any, dry_run: bool,
            shared_group: bool = False) -> tuple[RunLayout | None, Any]:
    from .coordinator.submit import create_run_planned, plan_submit
    from .workflow import load_workflow

    workflow = load_workflow(path)
    _no_limits_on_slurm(workflow, options.backend == "slurm")
    if dry_run:
        return None, plan_submit(workflow, options)
    return create_run_planned(pool, workflow, options, shared_group)


def _no_limits_on_slurm(workflow: Any, slurm: bool) -> None:
    """The Slurm-DAG backend does not enforce ``limits`` (README "Placement"): refused, one
    line, exit 2, rather than run N+many downloads at once while the workflow says N."""
    if slurm and workflow.limits:
        from .errors import WorkflowError

        raise WorkflowErrors([WorkflowError(
            "the Slurm-DAG backend (--backend slurm) does not enforce limits (each job is a Slurm job of its "
            "own); run it with pool workers (exec-worker, --workers, --slurm-workers), or drop limits",
            workflow.path, key="limits")])


def _resume(pool: PoolLayout, run_id: str, path: str | None, options: Any,
            dry_run: bool) -> tuple[RunLayout | None, Any]:
    from .coordinator.change import apply
    from .coordinator.plan import plan_resume, workflow_for_resume
    from .protocol.scrub import folder_problem

    run = pool.run(run_id)
    if not is_run_dir(run.root):
        raise PoolError(f"no run {run_id!r} in this pool", pool.root)
    problem = folder_problem(run)
    if problem is not None:  # workers skip such a run: a resume writes nothing through it either
        raise Refused(f"refused: run {run_id}: {problem}; workers skip it too: put the folder back first",
                      run.run_id)
    workflow = workflow_for_resume(run, path)
    slurm = (options.backend or _backend(run)) == "slurm"
    _no_limits_on_slurm(workflow, slurm)
    held: list[str] = []
    if slurm:
        from .backends.slurm import array_claims, pool_worker_claims

        held = [f"{h}; the Slurm backend cannot share the run with pool workers: wait for it, or stop that worker"
                for h in pool_worker_claims(run)]
        if not held and not options.force:
            held = array_claims(run)
    if dry_run:
        plan = plan_resume(pool, run, workflow, options)
        if slurm:
            plan.check("Slurm backend", not held, "; ".join(held) or "no job held by a pool worker")
        return None, plan
    if held:
        raise Refused("\n".join(f"refused: {h}" for h in held), run.run_id)
    return run, apply(run, lambda: plan_resume(pool, run, workflow, options))


# ---- exec-worker ------------------------------------------------------------------------
def _worker_main(argv: list[str] | None = None) -> int:
    p = _Parser(prog="exec-worker", description="Claim and run jobs from the runs of a pool.")
    p.add_argument("--pool", help="pool directory (default: $EXEC_POOL)")
    p.add_argument("--run", action="append", dest="runs", metavar="RUN_ID", help="only this run (repeatable)")
    p.add_argument("-j", "--jobs", "--jobs-per-worker", dest="jobs", type=int, metavar="K",
                   help="at most K jobs (or tasks) at once (default: as many as its CPUs hold)")
    pl = p.add_argument_group("capacity (default: what the node or the Slurm allocation has)")
    pl.add_argument("--cpus", type=int, metavar="N", help="CPUs this worker gives its jobs")
    pl.add_argument("--gpus", metavar="LIST|N", help="GPU ids (0,1,3) or a count")
    pl.add_argument("--mem-gb", type=float, metavar="GB", help="memory this worker gives its jobs")
    pl.add_argument("--resource", action="append", default=[], metavar="NAME=N",
                    help="a custom resource a job may ask for (repeatable)")
    pl.add_argument("--tags", metavar="A,B", help="tags this worker has (a job's tags must all be here)")
    pl.add_argument("--bind", action="store_true", help="pin each job to distinct cores (sched_setaffinity)")
    pl.add_argument("--reserve-after", type=float, default=60.0, metavar="SECONDS",
                    help="a job that fits but finds no room for this long is reserved: no other job "
                         "starts until it can (default 60)")
    p.add_argument("--exit-when-idle", type=float, metavar="SECONDS",
                   help="exit after this long with nothing to run")
    p.add_argument("--max-jobs", type=int, metavar="N", help="exit after claiming N jobs")
    p.add_argument("--heartbeat", type=float, default=10.0, metavar="SECONDS",
                   help="heartbeat interval (default 10)")
    p.add_argument("--stale-after", type=float, default=60.0, metavar="SECONDS",
                   help="a claim whose worker has not beaten for this long is requeued (default 60)")
    p.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    a = p.parse_args(argv)
    from .execution.worker import Worker

    pool_dir = _pool_arg(a.pool)
    if not pool_dir:
        return _fail(p.prog, "no pool: pass --pool DIR or set EXEC_POOL")
    if not os.path.isdir(pool_dir):
        return _fail(p.prog, f"{pool_dir}: no such pool directory")
    if (a.jobs is not None and a.jobs < 1) or (a.max_jobs is not None and a.max_jobs < 1):
        return _fail(p.prog, "-j and --max-jobs must be >= 1")
    from .execution.capacity import declare
    try:
        capacity = declare(a.cpus, a.gpus, a.mem_gb, a.resource, a.tags, a.jobs)
    except ValueError as e:
        return _fail(p.prog, str(e))
    if not 0 <= a.reserve_after < float("inf"):
        return _fail(p.prog, "--reserve-after must be a number of seconds >= 0")
    bad_time = check_times(heartbeat=a.heartbeat, stale_after=a.stale_after, exit_when_idle=a.exit_when_idle)
    if bad_time:
        return _fail(p.prog, bad_time)
    for run_id in a.runs or []:
        if not is_run_dir(os.path.join(pool_dir, run_id)):
            return _fail(p.prog, f"{pool_dir}: no run {run_id!r}")
    logging.basicConfig(level=logging.WARNING if a.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s")
    if os.stat(pool_dir).st_mode & stat.S_IWOTH:
        print(f"exec-worker: warning: {pool_dir} is writable by others: anyone who can write to a pool "
              f"can run commands as its workers' user ({getpass.getuser()})", file=sys.stderr, flush=True)
    ends_at = None
    if os.environ.get("SLURM_JOB_ID"):  # inside a Slurm allocation: claim only what fits in it
        from .backends.slurm import allocation_end

        ends_at = allocation_end()
    worker = Worker(pool_dir, run_ids=a.runs, slots=a.jobs or capacity.cpus, exit_when_idle=a.exit_when_idle,
                    max_jobs=a.max_jobs, heartbeat=a.heartbeat, stale_after=a.stale_after, ends_at=ends_at,
                    capacity=capacity, bind=a.bind, reserve_after=a.reserve_after)

    def on_signal(signum: int, frame: Any) -> None:
        if worker._abort.is_set() and signum == signal.SIGINT:
            os._exit(130)  # a second Ctrl-C: stop at once
        worker.stop()
        print(f"exec-worker: {signal.Signals(signum).name}: stopping; running jobs go back to queued/ "
              "(Ctrl-C again to exit at once)", file=sys.stderr, flush=True)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGUSR2, on_signal)  # Slurm's warning before the time limit (--signal)
    try:
        finished = worker.run()
    except PoolError as e:  # workers/ is a symlink
        print(f"exec-worker: error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as e:  # no heartbeat can be written (a full disk, a read-only pool): say so, once
        print(f"exec-worker: error: {e.filename or pool_dir}: {e.strerror or e}", file=sys.stderr)
        return EXIT_FAILED
    logging.getLogger("executioner.worker").info("worker %s exits after %d jobs", worker.worker_id, finished)
    return EXIT_OK


# ---- exec-status ------------------------------------------------------------------------
def _states(text: str) -> frozenset[str]:
    try:
        return parse_states(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _log_flags(a: argparse.Namespace) -> str | None:
    """Why the --log flags do not go together, or None."""
    if not a.log:
        used = [f for f, v in (("--try", a.try_number), ("--stderr", a.stderr), ("--both", a.both),
                               ("--tail", a.tail is not None), ("--follow", a.follow)) if v]
        return f"{used[0]} goes with --log JOB" if used else None
    if a.try_number is not None and a.try_number < 1:
        return "--try must be >= 1"
    if a.tail is not None and a.tail < 0:
        return "--tail must be >= 0"
    if a.follow and a.json:
        return "--follow prints the log as it grows: not with --json"
    if a.attempts or a.job:
        return "--log goes alone: not with --attempts or --job"
    return None


def _view_flags(a: argparse.Namespace) -> str | None:
    """Why --watch, --joblog, --workers and --interval do not go with the other flags, or None."""
    views = [f for f, v in (("--watch", a.watch), ("--joblog", a.joblog), ("--workers", a.workers),
                            ("--log", a.log), ("--attempts", a.attempts), ("--job", a.job), ("--why", a.why),
                            ("--wait", a.wait), ("--report", a.report is not None)) if v]
    if not (math.isfinite(a.interval) and 0.05 <= a.interval <= 3600):
        return f"--interval must be a number of seconds from 0.05 to 3600, not {a.interval:g}"
    if a.interval != 1.0 and not a.watch:
        return "--interval goes with --watch"
    if a.watch and a.json:
        return "--watch is a live view: not with --json"
    if (a.watch or a.joblog or a.workers) and len(views) > 1:
        return f"{views[0]} goes alone: not with {views[1]}"
    if a.joblog and a.json:
        return "--joblog prints GNU parallel's joblog format: not with --json"
    return None


def _alone_flags(a: argparse.Namespace) -> str | None:
    """Why --why, --wait or --report do not go with the other flags, or None."""
    for flag, value in (("--why", a.why), ("--wait", a.wait), ("--report", a.report is not None)):
        if not value:
            continue
        others = [f for f, v in (("--why", a.why), ("--wait", a.wait), ("--report", a.report is not None),
                                 ("--log", a.log), ("--attempts", a.attempts), ("--job", a.job), ("--state", a.state),
                                 ("--all", a.all)) if v and f != flag]
        if others:
            return f"{flag} goes alone: not with {others[0]}"
        if flag == "--wait" and a.json:
            return "--wait prints progress as it goes: not with --json"
        if flag == "--report" and a.json:
            return "--report goes alone: not with --json"
    return None


def _status_main(argv: list[str] | None = None) -> int:
    p = _Parser(prog="exec-status", description="Show the runs of a pool, or the jobs of a run.")
    p.add_argument("dir", nargs="?", help="a pool directory or a run directory (default: $EXEC_POOL); "
                   "alone, a run id that is no path names a run of $EXEC_POOL")
    p.add_argument("run_id", nargs="?", help="a run of the pool")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.add_argument("--attempts", action="store_true",
                   help="the run's attempts, and what a plain resume would do next (above "
                        "2000 jobs: with --all)")
    p.add_argument("--job", metavar="ID", help="one job's whole try history, across attempts")
    p.add_argument("--state", type=_states, metavar="STATE[,STATE...]",
                   help="only the jobs in these states (waiting, queued, running, done, failed, blocked, "
                        "skipped, held, lost)")
    p.add_argument("--all", action="store_true",
                   help=f"every row, even above {LIMIT} (else a summary: failures, running jobs, arrays)")
    p.add_argument("--joblog", action="store_true",
                   help="every ended try in GNU parallel's --joblog format (tab-separated, one line per try)")
    p.add_argument("--workers", action="store_true",
                   help="every worker seen in the pool: host, pid, runs, claims held, capacity, last heartbeat, "
                        "alive or dead (with a run: those serving it)")
    p.add_argument("--watch", action="store_true",
                   help="a live view of the run (or the pool) until it ends (exit 0 done, 1 failed), q or Ctrl-C "
                        "(130); without a terminal, one line per change")
    p.add_argument("--interval", type=float, default=1.0, metavar="S",
                   help="with --watch: seconds between looks while the run changes (default 1; idle: up to 10)")
    g = p.add_argument_group("logs")
    g.add_argument("--log", metavar="JOB", help="the output of JOB's last try (or of task sim:4), "
                   "or of try N with --try")
    g.add_argument("--try", dest="try_number", type=int, metavar="N", help="with --log: try N")
    which = g.add_mutually_exclusive_group()
    which.add_argument("--stderr", action="store_true", help="with --log: its stderr (default: stdout)")
    which.add_argument("--both", action="store_true", help="with --log: stdout, then stderr")
    g.add_argument("--tail", type=int, metavar="N", help="with --log: its last N lines only")
    g.add_argument("--follow", action="store_true", help="with --log: follow a running try until it ends")
    p.add_argument("--why", metavar="JOB", help="why JOB (or task sim:4, or chunk sim.0-63) is not running: "
                   "a line per cause (what it waits for, what no live worker has, a full limit, ...)")
    p.add_argument("--wait", action="store_true", help="follow the run until it ends (exit 1 if a job failed), "
                   "warning once when a queued job fits no live worker or no worker is live for a minute")
    p.add_argument("--report", metavar="FILE.html", help="write one self-contained HTML page about the run: "
                   "summary, DAG, timeline of every try, failures (needs executioner[report])")
    a = p.parse_args(argv)
    bad = _log_flags(a) or _view_flags(a) or _alone_flags(a)
    if bad:
        return _fail(p.prog, bad)
    # A short-lived reader: the cyclic collector would walk every job record read so far
    # again and again while 100,000 are read (a third of the time), and nothing here makes
    # cycles worth collecting before the process exits.
    gc.disable()
    env_pool = _pool_arg(None)
    if a.dir is None:
        if not env_pool:
            return _fail(p.prog, "no pool: pass POOL (or a run directory) or set EXEC_POOL")
        a.dir = env_pool
    elif a.run_id is None and env_pool and os.sep not in a.dir and not os.path.lexists(a.dir):
        a.dir, a.run_id = env_pool, a.dir  # `exec-status RUN`: a run of $EXEC_POOL
    try:
        if a.workers:
            return _workers_view(a)
        if a.watch:
            return _watch_view(a)
        if a.run_id or is_run_dir(a.dir):
            path = os.path.join(a.dir, a.run_id) if a.run_id else a.dir
            if not is_run_dir(path):
                raise PoolError("no such run (no run.json)", path)
            run = RunLayout(os.path.abspath(path))
            if a.joblog:
                from .views.joblog import write_joblog

                write_joblog(run, sys.stdout)
                sys.stdout.flush()
                return EXIT_OK
            if a.why:
                from .views.why import explain, why_text

                data = explain(run, a.why)
                if a.json:
                    emit(data, True, None)
                else:
                    sys.stdout.write(why_text(data))
                    sys.stdout.flush()
                return EXIT_OK
            if a.wait:
                return _wait_status(p.prog, run)
            if a.report is not None:
                from .views.report import write_report

                info = write_report(run, a.report)
                print(f"{info['path']}: {info['bytes'] / 1e6:.1f} MB, {info['jobs']:,} jobs, {info['tries']:,} "
                      f"tries, written in {info['seconds']:.1f} s")
                return EXIT_OK
            if a.log:
                from .views.show import print_logs

                streams = ("stdout", "stderr") if a.both else ("stderr",) if a.stderr else ("stdout",)
                try:
                    return print_logs(run, a.log, a.try_number, streams, a.tail, a.follow, a.json)
                except KeyboardInterrupt:
                    return 130
            if a.attempts or a.job:
                from .views.history import FULL_UP_TO, attempts_status, job_history

                pool = PoolLayout(os.path.dirname(run.root))
                if a.attempts:
                    from .protocol.store import read_run_record

                    full = a.json or a.all or read_run_record(run).get("jobs", 0) <= FULL_UP_TO
                    emit(attempts_status(pool, run, full), a.json, attempts_table)
                if a.job:
                    emit(job_history(run, a.job), a.json, job_table)
                return EXIT_OK
            data = run_status(run, lazy=True, states=a.state, limit=None if a.json or a.all else LIMIT,
                              problems_first=not a.json)
            if a.json:
                from .views.text import write_json

                write_json(data, sys.stdout.buffer)
                sys.stdout.flush()
            else:  # plain text: rich takes minutes for 100,000 rows
                sys.stdout.write(run_text(data, sys.stdout.isatty() and not os.environ.get("NO_COLOR")))
                sys.stdout.flush()
        elif a.attempts or a.job or a.log or a.joblog or a.why or a.wait or a.report is not None:
            raise PoolError("--attempts, --job, --log, --joblog, --why, --wait and --report need a run: "
                            "exec-status POOL RUN_ID --attempts", a.dir)
        else:
            pool = PoolLayout(os.path.abspath(a.dir))
            data = pool_status(pool)
            emit(data, a.json, lambda d: pool_table(d, pool))
    except ExecutionerError as e:
        return _fail(p.prog, e)
    return EXIT_OK


def _wait_status(prog: str, run: RunLayout) -> int:
    """``exec-status POOL RUN --wait``: follow the run as ``exec-submit --wait`` does, but only
    reading (no reaping: exec-status works on a read-only pool), with the Advisor's warnings."""
    from .protocol.store import read_run_record
    from .views.advice import Advisor
    from .views.progress import wait_for_run

    try:
        status = wait_for_run(run, total=int(read_run_record(run).get("jobs") or 0), reap=False,
                              advisor=Advisor(run))
    except KeyboardInterrupt:
        return 130
    c = status["counts"]
    print(f"{run.run_id}: {status['state']} (done {c['done']}, failed {c['failed']}, "
          f"blocked {c['blocked']})", flush=True)
    return EXIT_OK if status["state"] == "done" else EXIT_FAILED


def _watch_view(a: argparse.Namespace) -> int:
    """``exec-status POOL [RUN] --watch [--interval S]``."""
    from .views.live import leaving_on_interrupt, watch

    try:
        return watch(*pool_and_run(a.dir, a.run_id), a.interval)
    except KeyboardInterrupt:  # a second Ctrl-C before the first was handled
        leaving_on_interrupt()
        return 130


def _workers_view(a: argparse.Namespace) -> int:
    """``exec-status POOL [RUN] --workers [--json] [--all]``."""
    from .views.workerlist import workers_status, workers_text

    pool, run = pool_and_run(a.dir, a.run_id)
    data = workers_status(pool, run, everything=a.all)
    if a.json:
        emit(data, True, None)
    else:
        sys.stdout.write(workers_text(data, pool))
        sys.stdout.flush()
    return EXIT_OK


submit_main = _command("exec-submit", _submit_main)
worker_main = _command("exec-worker", _worker_main)
status_main = _command("exec-status", _status_main)
