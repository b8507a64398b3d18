"""``exec-status POOL RUN --why JOB``: why a job (a task ``sim:4``, a chunk ``sim.0-63``, or
an array) is not running, in a sentence per cause; or where it runs, or how it ended.

The answer is ``{"run_id", "job", "unit", "state", "causes": [{"kind", ...fields, "text"}]}``.
Kinds: ``waiting_for`` (a dependency not done yet, with its state, and where and since
when it runs), ``promotion`` (every dependency done: a sweep queues it), ``blocked`` (a job
it needs failed), ``held`` (``--failed-only``), ``retry`` (a retry's delay), ``slurm`` (the
Slurm-DAG backend runs it), ``no_worker``, ``tag``, ``needs``, ``limit``, ``priority``,
``busy``, ``fits`` (see :mod:`executioner.views.advice`), ``running``, ``done``,
``skipped``, ``failed``, ``lost``, ``unusable`` (its file cannot be read), ``array`` (an
array's task counts). The states come from the folders' listings (and graph.json), as the
run view's do; only the files of the job and of the jobs named in its causes are read.
"""

from __future__ import annotations

import difflib
import errno
import os
import time
from typing import Any

from ..errors import UnknownJob
from ..protocol.journal import read_journal
from ..protocol.layout import PoolLayout, RunLayout
from ..protocol.ready import arrays_of
from ..protocol.records import read_job
from ..protocol.retry import COUNTED
from ..protocol.store import attempt_tries, claim_lock, read_run_record
from ..protocol.units import parse_unit
from ..workflow.arrays import TASK_SEP
from .advice import Cause, ago, cause, queued_causes
from .jobs import detail, job_views
from .reading import token_of
from .rows import REBUILT, ArrayView, JobView
from .workers import WorkerView, read_workers

CLOSEST = 3  # names offered for an unknown one
MOVES = 5  # listings taken again while the job asked about keeps moving


def explain(run: RunLayout, name: str, now: float | None = None, stale_after: float = 60.0) -> dict[str, Any]:
    """What holds ``name`` (see the module docstring); UnknownJob (exit 2) for a name the run has not."""
    now = time.time() if now is None else now
    pool = PoolLayout(os.path.dirname(os.path.normpath(run.root)))
    for attempt in range(MOVES):
        record = read_run_record(run)
        views = {v.id: v for v in job_views(run, record.get("jobs", 0), details=False,
                                             may_hold=record.get("attempt") != 1, attempt=record.get("attempt", 1))}
        try:
            return _Why(pool, run, record, views, now, stale_after).answer(name)
        except _Moved:
            # RACE: the job's file moved (claimed, finished, promoted) between the listing and
            # its read: list again and answer from where it is now.
            if attempt == MOVES - 1:
                raise
    raise AssertionError("unreachable")


class _Moved(FileNotFoundError):
    """The file of the job asked about left the place the listing saw it in."""


class _Why:
    def __init__(self, pool: PoolLayout, run: RunLayout, record: dict[str, Any], views: dict[str, JobView],
                 now: float, stale_after: float):
        self.pool, self.run, self.record, self.views = pool, run, record, views
        self.now, self.stale_after = now, stale_after
        self.arrays = arrays_of(run)
        self._workers: list[WorkerView] | None = None

    @property
    def workers(self) -> list[WorkerView]:
        if self._workers is None:
            self._workers = read_workers(self.pool, self.now, self.stale_after)
        return self._workers

    def answer(self, name: str) -> dict[str, Any]:
        job, sep, index = name.partition(TASK_SEP)
        out: dict[str, Any] = {"run_id": self.run.run_id, "job": name, "unit": name}
        if sep and isinstance(self.views.get(job), ArrayView):
            unit, state, path, position = self._task(job, index, name)
            out["unit"] = unit
            if path is None:
                out["state"], out["causes"] = "lost", [cause("lost", f"in no chunk file of any state folder: {REBUILT}")]
                return out
            out["state"], out["causes"] = self._unit(unit, state, path, self.views[job], position, name)
            return out
        v = self.views.get(name)
        if isinstance(v, ArrayView):
            return self._array(out, v)
        if v is not None:
            if v.path is None and v.state == "lost":
                out["state"], out["causes"] = "lost", [cause("lost", v.reason or "in no state folder")]
                return out
            out["state"], out["causes"] = self._unit(name, v.state, v.path, v, None, name)
            return out
        chunk = parse_unit(name, self.arrays)
        a = self.views.get(chunk.job) if chunk is not None else None
        if isinstance(a, ArrayView):
            found = next(((s, p) for s, c, p in a.units if c.unit == name), None)
            if found is not None:
                out["state"], out["causes"] = self._unit(name, found[0], found[1], a, None, name)
                return out
        raise UnknownJob(self.run.run_id, name, difflib.get_close_matches(name, list(self.views), CLOSEST))

    def _task(self, job: str, index: str, name: str) -> tuple[str, str, str | None, int]:
        from .history import _names, _units_of

        units = _units_of(self.run, job, self.arrays)
        tasks = _names(units)
        position = tasks.position(int(index)) if tasks is not None and index.lstrip("-").isdigit() else None
        a = self.views[job]
        assert isinstance(a, ArrayView)
        if position is None:
            close = [f"{job}:{tasks.index(0)}", f"{job}:{tasks.index(len(tasks) - 1)}"] if tasks else [job]
            raise UnknownJob(self.run.run_id, name, close)
        found = next(((s, c, p) for s, c, p in a.units if c.lo <= position <= c.hi), None)
        if found is None:  # a task of the array in no chunk file: lost (a sweep rebuilds it)
            return "", "lost", None, position
        return found[1].unit, found[0], found[2], position

    def _array(self, out: dict[str, Any], a: ArrayView) -> dict[str, Any]:
        """An array as a whole: its counts, and the causes of its first unit not done."""
        counts = ", ".join(f"{k} {v}" for k, v in a.counts.items() if v)
        out["state"] = a.state
        causes = [cause("array", f"array `{a.id}` of {a.size} tasks: {counts}", counts=dict(a.counts))]
        order = {"running": 0, "queued": 1, "waiting": 2, "failed": 3}
        first = min((u for u in a.units if u[0] in order), key=lambda u: (order[u[0]], u[1].lo), default=None)
        if first is not None:
            state, chunk, path = first
            out["unit"] = chunk.unit
            causes += self._unit(chunk.unit, state, path, a, None, chunk.unit)[1]
        return dict(out, causes=causes)

    def _unit(self, unit: str, state: str, path: str | None, v: JobView, position: int | None,
              name: str) -> tuple[str, list[Cause]]:
        """The shown state and causes of one job or chunk (a task of it: ``position``)."""
        record, problem = None, None
        if path is not None:
            try:
                record, problem = read_job(path, unit)
            except FileNotFoundError:
                raise _Moved(errno.ENOENT, "kept moving while it was read: ask again", path) from None
            except OSError as e:
                problem = e.strerror or str(e)
        elif v.record is not None:
            record = v.record
        if record is None:
            return state, [cause("unusable", f"its file cannot be used ({problem}); a worker quarantines it",
                                 problem=problem)]
        if state == "running":
            return "running", self._running(unit, path or "", record, position)
        if state == "done":
            return self._ended("done", unit, record, position, name)
        if state == "failed":
            return self._ended("failed", unit, record, position, name)
        if state == "queued":
            return "queued", self._queued(unit, record)
        return self._waiting(unit, record, v, name)

    def _running(self, unit: str, path: str, record: dict[str, Any], position: int | None) -> list[Cause]:
        token = token_of(path)
        lock = claim_lock(self.run, unit, token, record) if token else None
        number = len(record["tries"]) + 1
        if lock is None:  # RACE: claimed an instant ago, its lock not written yet (or torn)
            return [cause("running", f"claimed (try {number}); its worker is starting it", try_number=number)]
        host, worker, since = lock.get("host"), lock.get("worker"), lock.get("claimed_at")
        when = time.strftime("%H:%M:%S", time.localtime(since)) if isinstance(since, (int, float)) else "?"
        long = f" ({ago(self.now - since)})" if isinstance(since, (int, float)) else ""
        text = f"running on {host} (worker {worker}, pid {lock.get('pid')}) since {when}{long}, try {lock.get('try')}"
        out = [cause("running", text, host=host, worker=worker, pid=lock.get("pid"), since=since,
                     try_number=lock.get("try"))]
        if position is not None:
            done = read_journal(self.run.task_journal(unit, int(lock.get("try") or number))).get(position)
            if done is not None:
                out[0]["text"] = f"in chunk {unit}, {text}; this task has ended ({done.status}, exit {done.exit})"
            else:
                out[0]["text"] = f"in chunk {unit}, {text}"
        w = next((w for w in self.workers if w.id == worker), None)
        if w is not None and not w.live or w is None and host != _host():
            silent = f"no heartbeat for {ago(w.age)}" if w else "no heartbeat file"
            out.append(cause("worker_gone", f"its worker looks gone ({silent}): a reaper requeues it", worker=worker))
        return out

    def _ended(self, state: str, unit: str, record: dict[str, Any], position: int | None,
               name: str) -> tuple[str, list[Cause]]:
        from ..execution.tasks import task_rows

        tries = list(task_rows(record, position)) if position is not None else record["tries"]
        last = tries[-1] if tries else {}
        where = f"try {len(tries)}" + (f" on {last['host']}" if last.get("host") else "")
        if state == "done":
            if record.get("skipped"):
                why = record["skipped"].get("reason", "skipped") if isinstance(record["skipped"], dict) else "skipped"
                return "skipped", [cause("skipped", f"skipped: {why}", reason=why)]
            if position is not None and last.get("status") not in (None, "done"):
                state = str(last.get("status"))
            else:
                end = last.get("end")
                at = f", ended {time.strftime('%H:%M:%S', time.localtime(end))}" if isinstance(end, (int, float)) else ""
                return "done", [cause("done", f"done ({where}, exit {last.get('exit_code')}{at})",
                                      try_number=len(tries), host=last.get("host"), exit_code=last.get("exit_code"))]
        reason = (last.get("reason") if position is not None else record.get("reason")) or last.get("reason")
        said = _last_stderr(self.run, name)
        text = "failed" + (f": {reason}" if reason else f" (exit {last.get('exit_code')})")
        text += f" ({where})" + (f"; stderr: {said}" if said else "")
        return "failed", [cause("failed", text, reason=reason, exit_code=last.get("exit_code"), stderr=said,
                                try_number=len(tries))]

    def _queued(self, unit: str, record: dict[str, Any]) -> list[Cause]:
        out: list[Cause] = []
        spec = record["spec"]
        due = record.get("not_before")
        if isinstance(due, (int, float)) and due > self.now:
            n = sum(1 for t in attempt_tries(record) if t.get("status") in COUNTED)
            at = time.strftime("%H:%M:%S", time.localtime(due))
            out.append(cause("retry", f"retry {n} of {spec.get('max_retries', '?')} not before {at}",
                             retry=n, max_retries=spec.get("max_retries"), not_before=due))
        slurm = (record.get("slurm") or {}).get("job_id")
        if slurm or self.record.get("backend") == "slurm":
            return out + [cause("slurm", f"its Slurm job {slurm or '?'} runs it: Slurm starts it (see squeue)",
                                slurm_job=slurm)]
        found = queued_causes(self.pool, self.run, self.record, unit, spec, self.workers)
        if out:  # waiting out a retry's delay: no worker starts it before, fitting or not
            found = [c for c in found if c["kind"] != "fits"]
        return out + found

    def _waiting(self, unit: str, record: dict[str, Any], v: JobView, name: str) -> tuple[str, list[Cause]]:
        reason = v.reason or ""
        if v.state == "held" or (isinstance(v, ArrayView) and record.get("held")):
            if record.get("held"):
                return "held", [cause("held", "held by `--failed-only`: a plain `exec-submit --resume "
                                      f"{self.run.run_id}` runs it")]
            up = reason.rpartition(": ")[2]
            return "held", [cause("held", f"held: it needs `{up}`, held by `--failed-only`", job=up)]
        if v.state == "blocked" or reason.startswith("upstream failed: "):
            up = reason.rpartition("upstream failed: ")[2]
            return "blocked", [self._blocked_by(up)]
        deps = [d for d in record.get("dependencies") or [] if isinstance(d, str)]
        each = set((record.get("spec") or {}).get("elementwise") or ())
        out = []
        for d in deps:
            u = self.views.get(d)
            if u is None:
                continue
            if isinstance(u, ArrayView):
                done = u.counts["done"]
                if d in each and isinstance(record.get("tasks"), list):
                    lo, hi = record["tasks"]
                    if u.positions("done").covers(d, lo, hi):
                        continue
                    first, last = self._task_name(d, lo), self._task_name(d, hi)
                    which = f"task `{first}`" if lo == hi else f"tasks `{first}` to `{last}`"
                    out.append(cause("waiting_for", f"waiting for {which} (`{d}` {u.state}: {done} of "
                                     f"{u.size} tasks done)", job=d, tasks=[first, last], state=u.state, done=done,
                                     size=u.size))
                elif done < u.size:
                    if u.counts["failed"] or u.counts["blocked"]:
                        out.append(self._blocked_by(d))
                    else:
                        out.append(cause("waiting_for", f"waiting for `{d}` ({done} of {u.size} tasks done)",
                                         job=d, state=u.state, done=done, tasks=u.size))
            elif u.state not in ("done", "skipped"):
                out.append(self._waiting_for(u))
        if not out:
            out.append(cause("promotion", "its dependencies are done: a worker's sweep queues it soon"))
        return "waiting", out

    def _task_name(self, job: str, position: int) -> str:
        """``sim:<index>`` of a position (an ``array: {start, stop, step}`` names tasks by value)."""
        from .history import _names, _units_of

        names = _names(_units_of(self.run, job, self.arrays))
        return f"{job}:{names.index(position) if names is not None else position}"

    def _waiting_for(self, u: JobView) -> Cause:
        if u.state == "running":
            detail(self.run, list(self.views.values()), [u])
            c = u.claim or {}
            since = c.get("claimed_at")
            long = f" for {ago(self.now - since)}" if isinstance(since, (int, float)) else ""
            return cause("waiting_for", f"waiting for `{u.id}` (running on {c.get('host', '?')}{long})",
                         job=u.id, state="running", host=c.get("host"), since=since)
        what = {"queued": "queued", "waiting": "itself waiting", "held": "held by `--failed-only`",
                "lost": "lost: a worker rebuilds it"}.get(u.state, u.state)
        return cause("waiting_for", f"waiting for `{u.id}` ({what})", job=u.id, state=u.state)

    def _blocked_by(self, up: str) -> Cause:
        u = self.views.get(up)
        if isinstance(u, ArrayView):
            bad = u.counts["failed"] + u.counts["blocked"]
            return cause("blocked", f"blocked by array `{up}`, {bad} of whose tasks failed or are blocked",
                         job=up, failed=bad)
        if u is not None:
            detail(self.run, list(self.views.values()), [u])
        code = ((u.record if u else None) or {}).get("last_exit_code")
        return cause("blocked", f"blocked by `{up}` which failed" + (f" (exit {code})" if code is not None else ""),
                     job=up, exit_code=code, reason=u.reason if u else None)


def _host() -> str:
    from ..protocol.fsio import HOST
    return HOST


def _last_stderr(run: RunLayout, name: str) -> str | None:
    """The last line of the stderr of ``name``'s last try (a job's or a task's part), if any."""
    from .logs import find_logs, read_part

    try:
        found = find_logs(run, name, None, ("stderr",))
        log = found.logs[0]
        if log.missing:
            return None
        data, _ = read_part(log, 1)
    except (OSError, ValueError, IndexError):
        return None
    text = data.decode("utf-8", "replace").strip()
    return text[:200] or None


def why_text(data: dict[str, Any]) -> str:
    """The answer as text: a title line, then a line per cause."""
    unit = f" (chunk {data['unit']})" if data["unit"] != data["job"] else ""
    lines = [f"{data['run_id']} {data['job']}{unit}: {data['state']}"]
    lines += [f"  {c['text']}" for c in data["causes"]]
    return "\n".join(lines) + "\n"
