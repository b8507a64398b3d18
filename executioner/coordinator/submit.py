"""Create a run directory from a validated workflow: attempt 1 of the run."""

from __future__ import annotations

import getpass
import os
import shutil
import time
from typing import Any

from ..protocol import attempts, fsio, placement, slots
from ..protocol.graph import graph_record
from ..errors import PoolError
from ..protocol.layout import FORMAT_VERSION, PoolLayout, RunLayout, run_sort_key
from .plan import Options, Plan, check_options, make_plan
from ..workflow import Workflow


def create_run(pool: PoolLayout, workflow: Workflow, options: Options | None = None) -> RunLayout:
    """Build ``POOL/<name>-<seq>/`` and publish it by writing ``run.json`` last."""
    return create_run_planned(pool, workflow, options)[0]


def create_run_planned(pool: PoolLayout, workflow: Workflow, options: Options | None = None,
                       shared_group: bool = False) -> tuple[RunLayout, Plan]:
    """The run is its owner's alone (``0700``; a new pool too), or with ``shared_group`` its
    group's as well (``2770``, in the pool's group); an existing pool keeps its mode."""
    options = options or Options()
    check_options(workflow, options)  # unknown --from-job names fail before any write
    fsio.share_with_group(shared_group)
    try:
        fsio.make_dirs(pool.root)
        fsio.make_dirs(pool.workers_dir)
    except OSError as e:
        raise PoolError(f"cannot create the pool directory: {e.strerror}", pool.root) from None
    run = _reserve_run_dir(pool, workflow.name, shared_group)
    try:
        plan = make_plan(run.run_id, 1, workflow, {}, options)
        _build(run, workflow, plan)
    except BaseException:
        shutil.rmtree(run.root, ignore_errors=True)
        raise
    return run, plan


def plan_submit(workflow: Workflow, options: Options) -> Plan:
    """What a submit would do (for --dry-run); writes nothing."""
    return make_plan("(new run)", 1, workflow, {}, options)


def _reserve_run_dir(pool: PoolLayout, name: str, shared_group: bool = False) -> RunLayout:
    existing = [run_sort_key(n)[0] for n in os.listdir(pool.root)]
    seq = max([s for s in existing if s < 1 << 62], default=0) + 1
    while True:
        run = pool.run(f"{name}-{seq:04d}")
        try:
            # RACE: two submits pick the same number; mkdir is atomic, so one gets
            # EEXIST and takes the next number.
            fsio.make_dir(run.root)
        except FileExistsError:
            seq += 1
            continue
        if shared_group:  # the pool's group, as a setgid pool would have given it
            try:
                pool_gid = os.stat(pool.root).st_gid
                if os.stat(run.root).st_gid != pool_gid:
                    os.chown(run.root, -1, pool_gid)
                    os.chmod(run.root, fsio.SHARED_DIR)  # a chown may clear setgid
            except PermissionError:  # not a member of the pool's group: ours, then
                pass
        return run


def _build(run: RunLayout, workflow: Workflow, plan: Plan) -> None:
    """Every file of the run, then run.json. Until run.json is there no process reads the
    run (PoolLayout.run_ids lists only runs that have one), so the job files are created
    in place (``O_EXCL``, no temp file and rename: half the metadata operations), by threads
    when the storage is slow to answer (fsio.create_files); a crash before run.json leaves
    an unpublished directory that nothing reads."""
    for d in run.all_dirs():
        fsio.make_dir(d)
    fsio.write_unsynced(run.workflow_copy(workflow.suffix), workflow.raw)
    fsio.create_files((run.job(step.job, step.dst), fsio.dumps(step.build(None)))  # type: ignore[misc,arg-type]
                      for step in plan.steps)
    fsio.write_unsynced(run.attempt_workflow(1, workflow.suffix), workflow.raw)
    for spec in workflow.jobs:  # each_line files: the run keeps the lines it was given
        if spec.tasks is not None and spec.tasks.kind == "each_line":
            fsio.write_unsynced(run.attempt_lines(1, spec.id), spec.tasks.raw)
    record = attempts.new_record(run, 1, plan.why, plan.options.flags(), workflow.raw, workflow.suffix,
                                 [], [s.row() for s in plan.steps], plan.checks)
    fsio.write_unsynced(run.attempt_record(1), fsio.dumps(record))
    fsio.write_unsynced(run.graph, fsio.dumps(graph_record(workflow.needs(), 1, [], plan.order)))
    if workflow.limits:  # no limits/ folder at all for a run without limits
        slots.create(run, workflow.limits)
    # One syncfs makes every file above durable (instead of one fsync each) before
    # run.json publishes the run; nothing reads a run before that.
    fsio.sync_filesystem(run.root)
    fsio.atomic_write_json(run.record, run_record(run, workflow, plan.options.backend, plan.options.priority))


def run_record(run: RunLayout, workflow: Workflow, backend: str | None = None,
               priority: int | None = None) -> dict[str, Any]:
    arrays = {j.id: len(j.tasks) for j in workflow.jobs if j.tasks is not None}
    return {
        "format": FORMAT_VERSION,
        "run_id": run.run_id,
        "name": workflow.name,
        "created": time.time(),
        "workflow": os.path.basename(run.workflow_copy(workflow.suffix)),
        "source": workflow.path,
        "workdir": workflow.workdir,
        "env": workflow.env,
        "jobs": len(workflow.jobs),  # files a listing finds at least (an array: one chunk file or more)
        "arrays": arrays,  # job -> its number of tasks (see executioner.protocol.units)
        "tasks": len(workflow.jobs) - len(arrays) + sum(arrays.values()),
        "attempt": 1,
        "backend": backend or "workers",
        "submitted_by": f"{getpass.getuser()}@{fsio.HOST}",
        **({"priority": priority} if priority else {}),
        **placement.run_fields(((j.id, j.to_spec()) for j in workflow.jobs), workflow.limits),
    }
