"""What keeps a queued job (or chunk) from a worker, and the warnings a watcher gives.

:func:`queued_causes` answers ``exec-status --why`` for a queued unit: no live worker (or
none serving the run), a need or a tag no live worker has, its group limit full, jobs of
higher priority ahead, every fitting worker busy, or that it fits a worker now.

:class:`Advisor` is the check ``exec-status --wait`` (and the live view) makes every few
seconds: it warns once when a queued job can fit no live worker, and once when the run
has had no live worker for longer than a minute. It must stay cheap on a run of 100,000
jobs: it reads run.json's placement index (only the jobs with non-default needs or tags
are in it), lists queued/ once, and reads the workers' small heartbeat files; never a job
file.
"""

from __future__ import annotations

import os
import shlex
import time
from typing import Any, Final

from ..execution.placing import entry_of, priority_of
from ..protocol import placement
from ..protocol.layout import PoolLayout, RunLayout, job_id_of, split_private_name, split_running_name
from ..protocol.store import read_run_record
from .workers import WorkerView, fill_holdings, read_workers, serving

ALONE_AFTER: Final = 60.0  # seconds with no live worker before --wait says so
SHOWN: Final = 5  # jobs a warning names
Cause = dict[str, Any]


def amount(k: str, v: float) -> str:
    """``2 GPUs``, ``1 CPU``, ``32 GB of memory``, ``3 licenses``."""
    if k == "mem_gb":
        return f"{v:g} GB of memory"
    word = {"cpus": "CPU", "gpus": "GPU"}.get(k, k)
    return f"{v:g} {word}{'' if v == 1 or k not in ('cpus', 'gpus') else 's'}"


def cause(kind: str, text: str, **fields: Any) -> Cause:
    return {"kind": kind, **fields, "text": text}


def never_fits(needs: dict[str, float], tags: list[str], workers: list[WorkerView]) -> list[Cause]:
    """Why no live worker of ``workers`` (those serving the run) could ever take a job with
    these needs and tags; [] when one could, or when a worker of unknown capacity (a file
    written before placement) might."""
    if not workers or any(w.total() is None for w in workers):
        return []
    out: list[Cause] = []
    have: set[str] = set().union(*(w.tags() or set() for w in workers))
    for tag in sorted(set(tags) - have):
        out.append(cause("tag", f"needs tag `{tag}`, which no live worker has", tag=tag))
    if out:
        return out
    tagged = [w for w in workers if set(tags) <= (w.tags() or set())]
    who = "no live worker" + (f" with tag{'s' if len(tags) > 1 else ''} {', '.join(tags)}" if tags else "")
    for k, v in needs.items():
        most = max((w.total() or {}).get(k, 0.0) for w in tagged)
        if v > most + 1e-9:
            out.append(cause("needs", f"needs {amount(k, v)} and {who} has declared more than {most:g}",
                             resource=k, needs=v, most=int(most) if float(most).is_integer() else most))
    return out


def limit_cause(run: RunLayout, run_record: dict[str, Any], name: str) -> Cause | None:
    """The job's group limit when it is full: ``RUN/limits/<name>/free/<i>`` are its free
    slots, ``held/<i>@<token>`` the taken ones (the token is a claim's: ``running/<job>@<token>``);
    no ``limits/<name>`` at all: no slot exists yet, and workers hold the job back."""
    limits = run_record.get("limits")
    size = limits.get(name) if isinstance(limits, dict) else None
    if type(size) is not int:
        return None
    root = run.limit_dir(name)  # one object owns every path
    if not os.path.isdir(root):
        # made before limits were enforced (or its folder removed): workers hold its jobs
        # back until a resume makes the slots
        return cause("limit", f"limit `{name}` has no slots yet (the run was made before limits were "
                     f"enforced): `exec-submit --resume {run.run_id}` makes them", limit=name, held=0, size=size,
                     jobs=[], missing=True)
    try:
        held = sorted(n for n in os.listdir(os.path.join(root, "held")) if not n.startswith("."))
    except (FileNotFoundError, NotADirectoryError):
        held = []
    try:
        free = [n for n in os.listdir(os.path.join(root, "free")) if not n.startswith(".")]
    except (FileNotFoundError, NotADirectoryError):
        free = None  # not made yet: nothing taken
    if (len(held) < size) if free is None else bool(free):
        return None  # a free slot (or, with no free/ folder, fewer held than the limit)
    # RACE: a slot's claim may end between the listing of held/ and that of running/: its
    # token then names no claim and shows as "?" (a view only; the next look is right).
    jobs = _holders(run, [h.partition("@")[2] for h in held])
    shown = ", ".join(jobs[:8]) + (", …" if len(jobs) > 8 else "")
    return cause("limit", f"limit `{name}` is full ({len(held)}/{size}" + (f": jobs {shown})" if jobs else ")"),
                 limit=name, held=len(held), size=size, jobs=jobs)


def _holders(run: RunLayout, tokens: list[str]) -> list[str]:
    """The jobs of these claim tokens, from running/'s names (a token no claim has: ``?``)."""
    try:
        names = os.listdir(run.state_dir("running"))
    except FileNotFoundError:
        names = []
    by_token = {}
    for n in names:
        parts = split_running_name(n) or split_private_name(n)
        if parts:
            by_token[parts[1]] = parts[0]
    return [by_token.get(t, f"? (token {t}, no claim in running/)") for t in tokens if t]


def ahead(pool: PoolLayout, run: RunLayout, run_record: dict[str, Any], unit: str) -> int:
    """Queued units a worker takes before ``unit``: of higher priority in its run, and every
    queued unit of runs of higher priority (``exec-submit --priority``)."""
    mine = priority_of(entry_of(run_record, unit).get("priority"))
    count = 0
    if isinstance(run_record.get("placement"), dict):
        for name in _queued(run):
            if name != unit and priority_of(entry_of(run_record, name).get("priority")) > mine:
                count += 1
    own = priority_of(run_record.get("priority"))
    for other in pool.run_ids():
        if other == run.run_id:
            continue
        try:
            if priority_of(read_run_record(pool.run(other)).get("priority")) > own:
                count += len(_queued(pool.run(other)))
        except (OSError, ValueError):
            continue
    return count


def _queued(run: RunLayout) -> list[str]:
    try:
        return [j for n in os.listdir(run.state_dir("queued")) if (j := job_id_of(n))]
    except FileNotFoundError:
        return []


def _listing(run: RunLayout, state: str) -> list[str]:
    try:
        return [n for n in os.listdir(run.state_dir(state)) if not n.startswith(".")]
    except FileNotFoundError:
        return []


def start_hint(pool: PoolLayout) -> str:
    return f"start `exec-worker --pool {shlex.quote(pool.root)}`"


def no_worker(pool: PoolLayout, workers: list[WorkerView], run: RunLayout) -> Cause | None:
    """No live worker, or none that serves this run."""
    live = [w for w in workers if w.live]
    if not live:
        dead = min(workers, key=lambda w: w.age, default=None)
        last = f" (the last heartbeat, of {dead.where()}, is {ago(dead.age)} old)" if dead else ""
        return cause("no_worker", f"no live worker at all{last}: {start_hint(pool)}", workers=0)
    if not serving(workers, run):
        runs = sorted({r for w in live for r in w.runs or []})
        return cause("no_worker", f"no live worker serves this run: workers limited to other runs "
                     f"({', '.join(runs)})", workers=len(live), runs=runs)
    return None


def idle_note(pool: PoolLayout, run: RunLayout, workers: list[WorkerView]) -> str | None:
    """For a run with work left and nothing running: "no live worker for 5 min: start ...",
    so that nobody waits on nothing (None when a live worker serves it)."""
    if no_worker(pool, workers, run) is None:
        return None
    gone = [w for w in workers if not w.live and w.serves(run.run_id)]
    since = f" for {ago(min(w.age for w in gone))}" if gone else ""
    live = [w for w in workers if w.live]
    if live:  # live workers, limited to other runs
        return f"no live worker serves this run{since} (workers limited to other runs): {start_hint(pool)}"
    return f"no live worker{since}: {start_hint(pool)}"


def ago(seconds: float) -> str:
    s = max(0.0, seconds)
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def queued_causes(pool: PoolLayout, run: RunLayout, run_record: dict[str, Any], unit: str,
                  spec: dict[str, Any], workers: list[WorkerView]) -> list[Cause]:
    """What holds a queued unit whose file's spec is ``spec`` (see the module docstring)."""
    found = no_worker(pool, workers, run)
    if found is not None:
        return [found]
    mine = serving(workers, run)
    needs = placement.needs(spec)
    tags = [str(t) for t in spec.get("tags") or []]
    out = never_fits(needs, tags, mine)
    if spec.get("limit"):
        full = limit_cause(run, run_record, str(spec["limit"]))
        if full is not None:
            out.append(full)
    n = ahead(pool, run, run_record, unit)
    soft = [cause("priority", f"queued behind {n} job{'s' if n != 1 else ''} of higher priority", jobs=n)] if n else []
    if out:
        return out + soft
    fill_holdings(pool, mine)
    fitting = [w for w in mine if set(tags) <= (w.tags() if w.tags() is not None else set(tags))
               and all(v <= (w.total() or {k: v}).get(k, 0.0) + 1e-9 for k, v in needs.items())]
    free = [w for w in fitting if (w.free_slots() is None or w.free_slots() > 0)  # type: ignore[operator]
            and all(v <= (w.free() or {k: v}).get(k, 0.0) + 1e-9 for k, v in needs.items())]
    if not fitting:  # cannot be, unless the files changed between two reads
        return soft + [cause("no_fit", "no live worker fits it now", needs=needs, tags=tags)]
    if not free:
        return soft + [cause("busy", "live workers exist but every one is busy: " + "; ".join(
            _busy_text(w) for w in fitting[:5]) + (" …" if len(fitting) > 5 else ""),
            workers=[_busy_fields(w) for w in fitting])]
    w = free[0]
    return soft + [cause("fits", f"queued; fits worker {w.id} on {w.host or '?'}; should start within a poll",
                         worker=w.id, host=w.host)]


def _busy_fields(w: WorkerView) -> dict[str, Any]:
    used, count = w.in_use()
    return {"worker": w.id, "host": w.host, "running": count, "slots": w.slots, "free": w.free()}


def _busy_text(w: WorkerView) -> str:
    used, count = w.in_use()
    free = w.free()
    what = ", ".join(amount(k, v) for k, v in (free or {}).items() if v and k in ("cpus", "gpus", "mem_gb")) \
        if free is not None else "capacity unknown"
    slots = f"{count}/{w.slots}" if w.slots else str(count)
    return f"{w.where()} runs {slots} (free: {what or 'nothing'})"


class Advisor:
    """The warnings of a watcher (``exec-status --wait``, the live view): call :meth:`check`
    every few seconds; it returns the lines to show now, each said once (the no-worker line
    again only after a live worker came and went)."""

    def __init__(self, run: RunLayout, stale_after: float = 60.0, alone_after: float | None = ALONE_AFTER):
        self.run = run
        self.pool = PoolLayout(os.path.dirname(os.path.normpath(run.root)))
        self.stale_after = stale_after
        self.alone_after = alone_after
        self._said: set[str] = set()
        self._alone_since: float | None = None
        self._alone_said = False
        self._record: tuple[Any, dict[str, Any]] | None = None

    def _run_record(self) -> dict[str, Any]:
        st = os.stat(self.run.record)
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if self._record is None or self._record[0] != key:
            self._record = (key, read_run_record(self.run))
        return self._record[1]

    def check(self, now: float | None = None, mono: float | None = None) -> list[str]:
        """The warnings to show now (``now``: our wall clock, to age heartbeats; ``mono``: our
        monotonic clock, for how long no worker has been live). A reason no live worker can
        meet is said once, as one line naming the first jobs it holds."""
        now = time.time() if now is None else now
        mono = time.monotonic() if mono is None else mono
        try:
            record = self._run_record()
        except (OSError, ValueError):
            return []
        queued = _queued(self.run)
        busy = queued or _listing(self.run, "running")
        workers = read_workers(self.pool, now, self.stale_after)
        mine = serving(workers, self.run)
        lines: list[str] = []
        if mine:
            self._alone_since, self._alone_said = None, False
        elif busy and self.alone_after is not None:
            dead = [w.age - w.patience for w in workers if w.serves(self.run.run_id)]
            if self._alone_since is None:  # what the files show: the newest went silent this long ago
                self._alone_since = mono - max(0.0, min(dead, default=0.0))
            alone = mono - self._alone_since
            if alone >= self.alone_after and not self._alone_said:
                self._alone_said = True
                others = sorted({r for w in workers if w.live for r in w.runs or []})
                if others:  # live workers, each limited to other runs
                    lines.append(f"{self.run.run_id}: warning: no live worker serves this run for {ago(alone)}: "
                                 f"workers limited to other runs ({', '.join(others)})")
                else:
                    lines.append(f"{self.run.run_id}: warning: no live worker for {ago(alone)}: "
                                 f"{start_hint(self.pool)}")
        if not mine or record.get("backend") == "slurm":
            return lines  # Slurm places the jobs of the Slurm-DAG backend
        index = record.get("placement")
        if not isinstance(index, dict) or not queued:
            return lines
        sizes = record.get("arrays") if isinstance(record.get("arrays"), dict) else {}
        arrays = {a for n in queued if "." in n and (a := n.rpartition(".")[0]) in sizes}
        names = set(queued)
        unfit: dict[str, list[str]] = {}  # why -> the jobs (arrays) it keeps queued
        for job, entry in sorted(index.items()):
            if not isinstance(entry, dict) or not (entry.get("needs") or entry.get("tags")):
                continue
            if job not in names and job not in arrays:
                continue
            needs = entry.get("needs") if isinstance(entry.get("needs"), dict) else placement.DEFAULT_NEEDS
            tags = entry.get("tags") if isinstance(entry.get("tags"), list) else []
            why = "; ".join(c["text"] for c in never_fits(needs, tags, mine))
            if why:
                unfit.setdefault(why, []).append(job)
        for why, jobs in unfit.items():  # one line per reason, however many jobs it holds
            if why not in self._said:
                self._said.add(why)
                shown = ", ".join(f"`{j}`" for j in jobs[:SHOWN]) + (f" and {len(jobs) - SHOWN} more"
                                                                     if len(jobs) > SHOWN else "")
                what = f"queued job {shown} fits" if len(jobs) == 1 else f"queued jobs {shown} fit"
                lines.append(f"{self.run.run_id}: warning: {what} no live worker: {why}")
        return lines
