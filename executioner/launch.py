"""Start worker processes through submitit: local ones now, Slurm ones with the same call later."""

from __future__ import annotations

import logging

import submitit

from .layout import PoolLayout, RunLayout
from .worker import Worker

FOREVER_MIN = 60 * 24 * 365  # submitit's local controller kills a job after its timeout


def worker_entry(pool: str, run_ids: list[str] | None, slots: int, exit_when_idle: float | None) -> int:
    """What each launched worker process runs (importable, so submitit can pickle it)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return Worker(pool, run_ids=run_ids, slots=slots, exit_when_idle=exit_when_idle).run()


def start_local_workers(pool: PoolLayout, run: RunLayout, count: int, slots: int = 1,
                        exit_when_idle: float = 3.0) -> list[str]:
    """Start ``count`` local worker processes for one run; they exit once it is idle."""
    executor = submitit.LocalExecutor(folder=run.launch_dir)
    executor.update_parameters(timeout_min=FOREVER_MIN)
    jobs = [executor.submit(worker_entry, pool.root, [run.run_id], slots, exit_when_idle)
            for _ in range(count)]
    return [job.job_id for job in jobs]
