"""Group limits across the pool: the slots of a workflow's ``limits``, taken and given back
by rename, as claims are.

A workflow with ``limits: {download: 4}`` gets, at submit (and at a resume that adds a
limit or raises it), four empty files::

    RUN/limits/download/free/0 .. free/3       a free slot each
    RUN/limits/download/held/<i>@<token>       slot i, held by the claim <token>

A claim of a job with ``limit: download`` takes a slot right after its claim rename, with
the claim's token: ``rename(free/<i>, held/<i>@<token>)``. Of two processes renaming the
same name one wins; the other gets ENOENT and tries another ``i`` (or finds none free and
puts its claim back). Whoever ends the try gives it back: ``rename(held/<i>@<token>,
free/<i>)``. A reaper (or a resume) that takes the claim ``<token>`` away gives back every
``held/*@<token>`` of the job's limit the same way; when both the slow owner and the reaper
give it back, one rename wins and the other gets ENOENT, so a slot is never freed twice,
and a slow worker can never free a slot someone else holds now: the name it renames
carries its own token. Nothing here locks anything; no file is ever written into.

A held slot whose token is in no claim of ``running/`` (its holder died between the end of
its claim and the release, or took it after its claim was taken) is freed by the worker's
sweep once seen so twice, ``confirm`` seconds apart (:class:`OrphanFinder`).

A resume that lowers N removes the extra free slots; the extra held ones are removed when
given back by a process that knows the new N (a worker whose run.json is older may give
one back into free/ for up to one sweep: the sweep removes it, and no worker takes a slot
whose number its own N excludes).
"""

from __future__ import annotations

import logging
import os
import random
import shutil
from typing import Any, Iterable

from . import fsio
from .layout import TOKEN_SEP, RunLayout, split_private_name, split_running_name

log = logging.getLogger("executioner.slots")
CONFIRM = 5.0  # seconds between the two looks that find a held slot without a claim


def limit_of(spec: dict[str, Any]) -> str | None:
    """The limit a job (or each task of an array) counts against, from its stored spec."""
    name = spec.get("limit")
    return name if isinstance(name, str) and name else None


def limits_of(run_record: dict[str, Any]) -> dict[str, int]:
    """The run's limits (run.json ``"limits"``), name -> N; {} when it has none or they
    are not of the right shape (a hand-edited run.json)."""
    found = run_record.get("limits")
    if type(found) is not dict:
        return {}
    return {k: v for k, v in found.items() if isinstance(k, str) and type(v) is int and v > 0}


def parse_held(name: str) -> tuple[int, str] | None:
    """``<i>@<token>`` -> (i, token); None for anything else (a temp file, a stray)."""
    i, sep, token = name.partition(TOKEN_SEP)
    return (int(i), token) if sep and i.isdigit() and token else None


def _free_numbers(run: RunLayout, name: str) -> list[int]:
    try:
        names = os.listdir(run.slots_free(name))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [int(n) for n in names if n.isdigit()]


def has_free(run: RunLayout, name: str, n: int | None = None) -> bool:
    """One listing of ``free/``: is a slot (numbered below ``n``, when given) free now?"""
    return any(n is None or i < n for i in _free_numbers(run, name))


def take(run: RunLayout, name: str, token: str, n: int | None = None,
         rng: random.Random | None = None) -> int | None:
    """Take a free slot of limit ``name`` for the claim ``token``; its number, or None when
    none is free (or the limit has no folder). Slots numbered ``n`` or more are retired
    (a resume lowered the limit) and never taken."""
    free = [i for i in _free_numbers(run, name) if n is None or i < n]
    (rng or random).shuffle(free)  # workers start at different slots and rarely collide
    for i in free:
        try:
            os.rename(run.slot_free(name, i), run.slot_held(name, i, token))
        except FileNotFoundError:
            continue  # RACE: another claim took this one between our listing and our rename
        return i
    return None


def release(run: RunLayout, name: str, i: int, token: str, n: int | None = None) -> bool:
    """Give back slot ``i`` held by ``token``; False if it was not held by it any more (a
    reaper, the sweep or a resume gave it back first: one rename of the name wins). A slot
    numbered ``n`` or more is retired instead: removed, not made free."""
    held = run.slot_held(name, i, token)
    try:
        if n is not None and i >= n:
            os.unlink(held)
        else:
            # RACE: the reaper may give it back this instant; one rename of `held` wins,
            # the other gets ENOENT. free/<i> cannot exist meanwhile: only this name
            # (held by our token) can become it.
            os.rename(held, run.slot_free(name, i))
    except FileNotFoundError:
        return False
    return True


def held_by(run: RunLayout, name: str, token: str | None = None) -> list[tuple[int, str]]:
    """The held slots of a limit: (i, token), those of ``token`` only when given."""
    try:
        names = os.listdir(run.slots_held(name))
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = [p for p in map(parse_held, names) if p is not None]
    return [p for p in found if token is None or p[1] == token]


def release_token(run: RunLayout, name: str, token: str, n: int | None = None) -> int:
    """Give back every slot of ``name`` held by the claim ``token`` (a reaper took it)."""
    return sum(release(run, name, i, t, n) for i, t in held_by(run, name, token))


def create(run: RunLayout, limits: dict[str, int]) -> None:
    """The slot folders of a new run (before its run.json: nobody reads them yet)."""
    for name, n in limits.items():
        fsio.make_dirs(run.slots_free(name))
        fsio.make_dirs(run.slots_held(name))
        fsio.create_files((run.slot_free(name, i), b"") for i in range(n))


def reconcile(run: RunLayout, limits: dict[str, int], old: dict[str, int] | None = None) -> None:
    """After a resume (run.json already holds ``limits``): create the slots a new or raised
    limit adds, remove the free ones a lowered limit retires. Slots held stay held: their
    claims still run (a lowered limit retires them when they are given back)."""
    for name, n in limits.items():
        if not os.path.isdir(run.limit_dir(name)) and _publish(run, name, n):
            continue
        fsio.make_dirs(run.slots_free(name))
        fsio.make_dirs(run.slots_held(name))
        # RACE: a slot moves between free/ and held/ while we look. Each take or release
        # is one rename, so a slot in motion shows in one of the listings, taken in turn
        # (held, free, held, free); only a whole try starting and ending between two of
        # them (milliseconds) could hide one, and creating it is O_EXCL against free/<i>.
        seen: set[int] = set()
        for _ in range(2):
            seen |= {i for i, _t in held_by(run, name)}
            seen |= set(_free_numbers(run, name))
        start = (old or {}).get(name, 0)
        for i in range(start, n):
            if i not in seen:
                try:
                    fd = os.open(run.slot_free(name, i), os.O_WRONLY | os.O_CREAT | os.O_EXCL, fsio.file_mode())
                    os.close(fd)
                except FileExistsError:
                    pass
        trim(run, name, n)


def _publish(run: RunLayout, name: str, n: int) -> bool:
    """A new limit's folder, built under a temp name and renamed into place whole: until
    then no worker sees a slot of it, so no slot can be in motion while it is made. False
    if another coordinator published one first (RACE: one rename of the name wins)."""
    fsio.make_dirs(run.limits_dir)
    aside = os.path.basename(fsio.temp_name(run.limits_dir))  # built as a limit of this name
    tmp = run.limit_dir(aside)
    fsio.make_dir(tmp)
    try:
        fsio.make_dir(run.slots_free(aside))
        fsio.make_dir(run.slots_held(aside))
        fsio.create_files((run.slot_free(aside, i), b"") for i in range(n))
        os.rename(tmp, run.limit_dir(name))
        return True
    except OSError:
        if not os.path.isdir(run.limit_dir(name)):
            raise
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def repair(run: RunLayout, limits: dict[str, int]) -> None:
    """Make the folder of every limit that has none (a run submitted before limits were
    enforced, or a resume interrupted before it made them); never touches one that exists."""
    for name, n in limits.items():
        if not os.path.isdir(run.limit_dir(name)):
            _publish(run, name, n)


def trim(run: RunLayout, name: str, n: int) -> int:
    """Remove the free slots numbered ``n`` or more (a lowered limit); how many."""
    gone = 0
    for i in _free_numbers(run, name):
        if i >= n:
            try:
                os.unlink(run.slot_free(name, i))
                gone += 1
            except FileNotFoundError:
                pass  # RACE: taken meanwhile (by a worker whose N is older): retired when given back
    return gone


def running_tokens(run: RunLayout) -> set[str]:
    """The tokens of every claim in running/ (and of those being taken out of it)."""
    try:
        names = os.listdir(run.state_dir("running"))
    except FileNotFoundError:
        return set()
    out = set()
    for name in names:
        parsed = split_running_name(name)
        if parsed is not None:
            out.add(parsed[1])
            continue
        private = split_private_name(name)
        if private is not None:
            out.add(private[1])
    return out


def orphans(run: RunLayout, names: Iterable[str]) -> set[tuple[str, int, str]]:
    """Held slots whose token is in no claim of running/: (limit, i, token). held/ is
    listed before running/: a slot is taken after its claim's rename, so a claim that
    holds one is in the running/ listing unless it left running/ meanwhile."""
    held = {(name, i, t) for name in names for i, t in held_by(run, name)}
    if not held:
        return set()
    tokens = running_tokens(run)
    return {h for h in held if h[2] not in tokens}


class OrphanFinder:
    """Frees held slots seen without a claim twice, ``confirm`` seconds apart (a reaper
    takes a claim, then gives its slots back: the slot is without a claim for an instant)."""

    def __init__(self, confirm: float = CONFIRM):
        self.confirm = confirm
        self._seen: dict[str, tuple[set[tuple[str, int, str]], float]] = {}

    def pending(self, run_id: str) -> bool:
        """Held slots of this run were seen without a claim and wait for a second look."""
        return run_id in self._seen

    def check(self, run: RunLayout, limits: dict[str, int], mono: float) -> int:
        """One look; returns the slots freed (retired past a lowered limit's N)."""
        for name, n in limits.items():
            trim(run, name, n)
        found = orphans(run, limits)
        first = self._seen.get(run.run_id)
        if not found:
            self._seen.pop(run.run_id, None)
            return 0
        if first is None or mono - first[1] < self.confirm:
            self._seen[run.run_id] = (found if first is None else first[0] & found, first[1] if first else mono)
            return 0
        self._seen.pop(run.run_id, None)
        freed = 0
        for name, i, token in sorted(first[0] & found):
            if release(run, name, i, token, limits.get(name)):
                log.warning("run %s: slot %d of limit %s was held by %s, a claim no longer running: freed",
                            run.run_id, i, name, token)
                freed += 1
        return freed
