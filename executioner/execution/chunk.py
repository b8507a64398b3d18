"""One try of a chunk: its tasks run up to the worker's free slots at once, then the chunk
leaves running/ as pieces (see executioner.protocol.pieces).

Tasks run on *runners*, threads that start one task after another until none is left:
the slot that claimed the chunk gives the first; each further runner borrows another free
slot of the worker (a permit) and keeps it while tasks are left, so a worker never runs
more than ``-j`` commands, a chunk of 64 quick tasks on an otherwise idle ``-j 8`` worker
runs 8 at a time, and a task costs no thread of its own. Tasks whose element-wise upstream
task failed are not run: they go back to waiting/ as a piece of their own.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import tempfile
import threading
import time
from typing import TYPE_CHECKING, Any

from ..errors import WorkflowError
from ..protocol import placement, slots, store
from ..protocol.pieces import destination, results_columns, split
from ..protocol.ready import Upstream
from .execute import STOP_SIGNALS, build_env, command_argv, missing_outputs, run_command, TryResult
from .capacity import Assignment
from .tasks import TaskResult, TryLog, render, task_set

if TYPE_CHECKING:
    from .worker import Worker

log = logging.getLogger("executioner.worker")
HELD_CHECK = 0.5  # seconds between two checks that the claim is still ours, between tasks
SLOT_LOOK = 1.0  # seconds between two looks for a free slot of a full limit, by a chunk's runners


class ChunkTry:
    def __init__(self, worker: "Worker", claim: store.Claim):
        self.worker = worker
        self.claim = claim
        record = claim.record
        self.record = record
        self.spec = record["spec"]
        self.job = record["job"]
        self.lo, self.hi = record["tasks"]
        self.tasks = task_set(self.spec, record.get("lines"), self.lo)
        self.number = claim.try_number
        self.results: dict[int, dict[str, Any]] = {}
        self.cond = threading.Condition()
        self.running = 0
        self.checked = time.monotonic()  # claimed just now: first checked HELD_CHECK from now
        self.held = True
        self.needs = worker._fitted(placement.needs(self.spec))  # of each task, as the claim counted them
        self.limit = slots.limit_of(self.spec)  # each runner holds one slot of it (see _wait_for_permit)
        self.slot_looked = 0.0  # when a runner last looked for a free slot of it

    # ---- running ----------------------------------------------------------------
    def run(self) -> list[tuple[str, str, dict[str, Any]]] | None:
        """Run the tasks; the pieces to commit, or None if the claim was lost meanwhile."""
        claim, run = self.claim, self.claim.run
        deps = self.record.get("dependencies")
        blocked = (Upstream(run).blocked(self.record) or set()) if deps else set()
        for p in blocked:
            self.results[p] = {"status": "blocked", "reason": "its upstream task failed"}
        unit = claim.job_id
        self.out, self.err = run.log(unit, self.number, "out"), run.log(unit, self.number, "err")
        self.logs = TryLog(self.out, self.err, run.task_journal(unit, self.number), claim.log_fds)
        self.spool = tempfile.mkdtemp(prefix="exec-spool-")
        self.todo = iter([p for p in range(self.lo, self.hi + 1) if p not in blocked])
        self.left = self.hi - self.lo + 1 - len(blocked)
        self.base_env = dict(os.environ)
        start = time.time()
        runners: list[threading.Thread] = []
        try:
            # the first runner uses the slot that claimed the chunk, and what the claim took
            held: Assignment | None = self.worker._assigned.get(claim.token)
            # and the slot of its limit the claim took
            slot = next((i for _r, _n, i in self.worker._slots.get(claim.token, ())), None)
            borrowed = False
            while True:
                with self.cond:
                    if self.left <= self.running or self._stopping():
                        break  # every task left is taken by a runner, or no more may start
                    self.running += 1
                t = threading.Thread(target=self._runner, args=(len(runners), borrowed, held, slot), daemon=True)
                t.start()
                runners.append(t)
                more = self._wait_for_permit()
                if more is None:
                    break
                borrowed, (held, slot) = True, more
            for t in runners:
                t.join()
        finally:
            self.logs.close()
            shutil.rmtree(self.spool, ignore_errors=True)
        if not self.held:
            return None  # seen gone while running; else the commit's fence decides
        w = self.worker
        if w.slurm_dag and w._abort.is_set():
            # An element of a Slurm array stopped by Slurm: no other Slurm job would take
            # its tasks from queued/, so those it did not start end failed too (see slurm_element).
            for p in range(self.lo, self.hi + 1):
                self.results.setdefault(p, {"status": "preempted", "reason": f"not started: {w.stop_reason}; "
                                            "`exec-submit --resume` runs it again"})
        return self._pieces(start, time.time())

    def _wait_for_permit(self) -> tuple[Assignment, int | None] | None:
        """A free slot of the worker, room for one more task (what it holds) and, for an
        array with a ``limit``, a slot of that limit (its number); None once no more runner
        is wanted: every task left is taken, or the chunk must stop. While the worker holds
        a reservation (see Claiming._short) no runner is added. A full limit is looked at
        again (one listing of its free/) at most every SLOT_LOOK seconds."""
        w = self.worker
        with self.cond:
            while True:
                if self.left <= self.running or self._stopping():
                    return None
                if self.running == 0 and w._reserved is not None:
                    return None  # every runner stopped for the reservation: the chunk ends here
                now = time.monotonic()
                if w._reserved is None and (self.limit is None or now - self.slot_looked >= SLOT_LOOK) \
                        and w._permits.acquire(blocking=False):
                    held = w.ledger.take(self.needs)
                    if held is not None:
                        if self.limit is None:
                            return held, None
                        self.slot_looked = now
                        slot = self._take_slot()
                        if slot is not None:
                            return held, slot
                        w.ledger.give(held)
                    w._permits.release()
                self.cond.wait(0.2)

    def _take_slot(self) -> int | None:
        """One more slot of the chunk's limit, with the chunk's claim token."""
        w, claim = self.worker, self.claim
        assert self.limit is not None
        n = slots.limits_of(w._records.get(claim.run.run_id) or {}).get(self.limit)
        i = slots.take(claim.run, self.limit, claim.token, n)
        if i is not None:
            with w._lock:
                w._slots.setdefault(claim.token, []).append((claim.run, self.limit, i))
        return i

    def _next(self) -> int | None:
        """The next task to start, or None when none is left or none may start."""
        with self.cond:
            if self._stopping():
                return None
            p = next(self.todo, None)
            if p is not None:
                self.left -= 1
            return p

    def _stopping(self) -> bool:
        """No more task of this chunk may start: the worker stops, or the claim is gone."""
        return self.worker._abort.is_set() or not self._still_held()

    def _still_held(self) -> bool:
        now = time.monotonic()
        if now - self.checked >= HELD_CHECK:
            self.checked = now
            self.held = self.claim.still_held()
        return self.held

    def _yield_to_reservation(self, borrowed: bool) -> bool:
        return self.worker._reserved is not None and (borrowed or not self.worker.slurm_dag)

    def _runner(self, k: int, borrowed: bool, held: Assignment | None, slot: int | None = None) -> None:
        """Run tasks one after another until none is left: a thread per slot in use, not per
        task, and one pair of spool files it empties for each task."""
        paths = (os.path.join(self.spool, f"{k}.out"), os.path.join(self.spool, f"{k}.err"))
        fds: list[int] = []
        try:
            for path in paths:
                fds.append(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600))
            env = self.worker.placed_env(held, self.base_env, self.spec)  # once per runner, not per task
            # every runner stops at a reservation (see Claiming._short), freeing its room: the
            # reserved job waits for one task, not the whole chunk; the tasks not started go
            # back to queued/ as a piece (a Slurm element's first runner goes on: its pieces
            # must stay its own)
            while not self._yield_to_reservation(borrowed) and (p := self._next()) is not None:
                self._task(p, (fds[0], fds[1]), held, env)
        except Exception:  # ours (no spool file): the tasks not started stay for the pieces
            log.exception("chunk %s of run %s: internal error", self.claim.job_id, self.claim.run.run_id)
        finally:
            for fd in fds:
                os.close(fd)
            if slot is not None:  # its last task has ended: the limit's slot is free now
                self.worker._release_slots(self.claim.token, only=slot)
            if borrowed:
                if held is not None:
                    self.worker.give_back(held)
                self.worker._permits.release()
            with self.cond:
                self.running -= 1
                self.cond.notify_all()

    def _task(self, p: int, spools: tuple[int, int], held: Assignment | None,
              env: tuple[dict[str, str], dict[str, str]]) -> None:
        spans: tuple[Any, Any] = (None, None)  # what the task wrote to each spool; None: unknown
        try:
            result = self._run_task(p, spools, held, env)
            self.results[p] = result
            task = TaskResult(p, result["status"], exit=result.get("exit"), signal=result.get("signal"),
                              start=result.get("start"), end=result.get("end"), reason=result.get("reason"))
            header = (f"==> {self.job}:{self.tasks.index(p)} try {self.number} {result['status']}"
                      f"{'' if result.get('exit') is None else ' exit ' + str(result['exit'])} <==\n")
            self.logs.add(task, header, spools)
            result["out"], result["err"] = list(task.out or ()), list(task.err or ())
            spans = (task.out or (0, 0), task.err or (0, 0))
        except Exception as e:  # ours, not the task's: the task is lost, the chunk goes on
            log.exception("task %s:%d of run %s: internal error", self.job, p, self.claim.run.run_id)
            self.results[p] = {"status": "lost", "reason": f"internal error in the worker: {e!r}"[:500]}
        finally:
            for fd, span in zip(spools, spans):
                if span is None or span[1]:
                    os.ftruncate(fd, 0)  # emptied for the runner's next task (most write nothing)

    def _run_task(self, p: int, spools: tuple[int, int], held: Assignment | None,
                  env0: tuple[dict[str, str], dict[str, str]]) -> dict[str, Any]:
        w, claim, run = self.worker, self.claim, self.claim.run
        run_record = w._records[run.run_id]
        r = render(self.job, self.spec, self.tasks, p)
        cwd = os.path.normpath(os.path.join(run_record["workdir"], r.workdir or ""))
        base, placed = env0
        try:
            env = build_env(base, [run_record["env"], r.env], {
                "EXEC_RUN_ID": run.run_id, "EXEC_JOB_ID": self.job, "EXEC_TRY": str(self.number),
                "EXEC_ATTEMPT": str(self.record.get("attempt", 1)), "EXEC_RUN_DIR": run.root,
                "EXEC_CLAIM": claim.token, "EXEC_UNIT": claim.job_id, **r.extra, **placed})
            argv = command_argv(r.command, env)
        except WorkflowError as e:
            now = time.time()
            result = TryResult("failed", None, None, now, now, str(e))
        else:
            result = run_command(argv, cwd, env, spools[0], spools[1],
                                 self.spec["timeout"], self.spec["kill_grace"], claim.token,
                                 keep_going=lambda: not w._abort.is_set() and claim.still_held(),
                                 tick=min(w.heartbeat, 1.0), cores=held.cores if held else ())
        status, reason = result.status, result.reason
        if status == "failed" and not w._abort.is_set() and (result.signal in STOP_SIGNALS or w.in_slurm):
            # RACE: as for a plain job (see Worker._execute): Slurm signals every process of
            # the job at once, so the task may die of it before our handler marks us as
            # stopping; give it a moment, or the task is recorded failed, not preempted
            w._abort.wait(0.5)
        if status in ("failed", "timeout", "lost") and w._abort.is_set():
            status, reason = "preempted", (f"{w.stop_reason}; `exec-submit --resume` runs it again" if w.slurm_dag
                                           else f"{w.stop_reason}; task put back in queued/")
        if status == "done":
            missing = missing_outputs(cwd, r.outputs)
            if missing:
                status, reason = "failed", f"missing outputs: {', '.join(missing)}"
        return {"status": status, "exit": result.exit_code, "signal": result.signal, "start": result.start,
                "end": result.end, "duration": round(result.end - result.start, 6), "reason": reason}

    # ---- ending -----------------------------------------------------------------
    def _pieces(self, start: float, end: float) -> list[tuple[str, str, dict[str, Any]]]:
        w, run = self.worker, self.claim.run
        statuses = [r["status"] for r in self.results.values()]
        summary = ("done" if statuses and all(s in ("done", "blocked") for s in statuses)
                   else "preempted" if "preempted" in statuses else "failed" if statuses else "preempted")
        entry = store.try_record(
            self.number, self.record.get("attempt", 1), summary, start=start, end=end, worker=w.worker_id,
            host=w.owner.host, worker_pid=w.owner.pid, stdout=os.path.relpath(self.out, run.root),
            stderr=os.path.relpath(self.err, run.root))
        entry["start_storage"] = round(start + w.clock.offset(), 6)
        entry["results"] = results_columns(self.lo, self.hi, self.results)
        now, rng = w.clock.now(), random.Random()
        return split(self.record, entry,
                     lambda p: destination(self.spec, self.record, entry, p, now, rng, w.slurm_dag))
