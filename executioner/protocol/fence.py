"""Taking a job out of ``running/`` without ever writing into a file someone else can reach.

Every exit from ``running/`` with new content goes through :func:`leave`, called only by
:func:`executioner.protocol.store.transition`:

1. ``mkdir running/<job>@<token>+<who>/``: a folder only we know (``who`` carries a fresh
   random part, our intent, pid and host);
2. the **fence**: ``rename(running/<job>@<token>.json, <folder>/<job>.json)``. Exactly one
   process can move the claim; everyone else gets ENOENT and writes nothing;
3. the new record is written to a fresh temp file (whole, checked, fsynced) and renamed
   over ``<folder>/<job>.json``;
4. ``rename(<folder>/<job>.json, <dst>/<job>.json)``; then the empty folder is removed.

A chunk of an array may leave as several *pieces* (see executioner.protocol.pieces):
each is written whole into the folder as ``<state>~<unit>.json``; then the fenced chunk
file is unlinked (the commit point: from then on the folder holds the complete set);
then each piece is renamed out to ``<state>/<unit>.json``. A recoverer that finds the
chunk file still there discards any piece (the set may be incomplete) and decides
afresh; one that finds it gone renames the remaining pieces out.

Steps 3 and 4 are renames *into or out of* our folder. A checker that finds a private
folder standing still (its process gone, or unchanged for ``--stale-after``) renames the
whole folder to a private name of its own first (:func:`recover`), so the stalled owner's
later renames fail: it can neither complete the job nor place a second copy. The job file
inside is either the claim as it was or the owner's complete new record (a rename swaps
it in whole), never torn; a result that was written but not committed is recorded as a
``lost`` try, except that a finished result (``done``/``failed``/a retry) whose intent the
folder names is completed as its owner meant. A job file that is torn anyway (a storage
fault) is rebuilt from the run's workflow copy with a ``lost`` try: a job may lose
history, never its place.
"""

from __future__ import annotations

import logging
import os
import random
import secrets
import stat
import time
from dataclasses import dataclass
from typing import Any, Callable

import psutil

from . import fsio, records
from .layout import STATES, RunLayout, split_private_name
from .scrub import check_record, quarantine
from .units import parse_unit

log = logging.getLogger("executioner.fence")
# build(content, private) -> (state, record); or, for a chunk, [(state, unit, record), ...]
# (its pieces, see executioner.protocol.pieces); or None: put the claim back untouched.
Build = Callable[[dict[str, Any] | None, "Private"], "tuple[str, dict[str, Any]] | list[tuple[str, str, dict[str, Any]]] | None"]
MAX_TASKS = 1 << 62  # more positions than any array has
INTENTS = ("done", "failed", "queued", "waiting", "pieces", "take", "recover")


def _pause_hook() -> float:
    """Tests and scripts/chaos.py: ``EXEC_TEST_COMMIT_PAUSE=SECONDS[:FRACTION]`` pauses that
    long inside a fraction of commits, between the fence and the final rename, so that a
    SIGSTOP or SIGKILL can land there. Off unless set."""
    spec = os.environ.get("EXEC_TEST_COMMIT_PAUSE")
    if not spec:
        return 0.0
    seconds, _, fraction = spec.partition(":")
    return float(seconds) if random.random() < float(fraction or 1.0) else 0.0


def who(intent: str) -> str:
    host = "".join(c if c.isalnum() or c in "._-" else "_" for c in fsio.HOST)
    return f"{intent}-{secrets.token_hex(3)}-{os.getpid()}-{host}"


@dataclass(frozen=True)
class Private:
    """A private folder in running/: ``<job>@<token>+<intent>-<rand>-<pid>-<host>``."""

    run: RunLayout
    name: str
    job_id: str
    token: str
    intent: str
    pid: int | None
    host: str

    @classmethod
    def parse(cls, run: RunLayout, name: str) -> "Private | None":
        parts = split_private_name(name)
        if parts is None:
            return None
        job_id, token, rest = parts
        intent, _, rest = rest.partition("-")
        _, _, rest = rest.partition("-")
        pid, _, host = rest.partition("-")
        return cls(run, name, job_id, token, intent, int(pid) if pid.isdigit() else None, host)

    @property
    def path(self) -> str:
        return os.path.join(self.run.state_dir("running"), self.name)

    @property
    def job_file(self) -> str:
        return self.run.private_job(self.path, self.job_id)

    def is_folder(self) -> bool:
        """A real folder (a symlink named like one is not followed: scrub quarantines it)."""
        try:
            return stat.S_ISDIR(os.lstat(self.path).st_mode)
        except FileNotFoundError:
            return False

    def owner_dead_here(self) -> bool:
        """Its process is gone (same host only: a pid means nothing elsewhere)."""
        host = "".join(c if c.isalnum() or c in "._-" else "_" for c in fsio.HOST)
        return self.host == host and self.pid is not None and self.pid != os.getpid() \
            and not psutil.pid_exists(self.pid)

    def stamp(self) -> float:
        """Changes with every step its owner makes (each one adds or removes an entry)."""
        st = os.stat(self.path)
        return st.st_mtime + st.st_ctime * 1e-3


def leave(run: RunLayout, job_id: str, token: str, intent: str, build: Build, give_back: bool = True,
          read: bool = True) -> str | None:
    """Take claim ``running/<job>@<token>.json`` out of running/ through a private folder.

    ``build(content, private)`` gets the claim's content as fenced (None if unreadable) and
    returns ``(dst, record)``, or None to put the claim back untouched. Returns the state the
    job went to; None if the claim was gone (someone else took it: we wrote nothing).
    OSError from writing the record (a full disk) propagates. The claim's own worker
    (``give_back``) then puts it back under its own name, untouched, to try again later.
    Anyone else leaves it in its private folder: the claim's worker may have seen it go and
    given up on it, so its name must not come back; the folder is recovered (by anyone,
    once it stands still) when the disk has room again. ``read=False``: ``build`` ignores the
    content (the claim's own worker, which read it when it claimed), so it is not read again.
    """
    claim_path = run.running(job_id, token)
    for _ in range(3):
        private = Private.parse(run, os.path.basename(run.private(job_id, token, who(intent))))
        assert private is not None
        try:
            fsio.make_dir(private.path)
        except FileNotFoundError:
            return None  # no running/ folder: not a run any more
        try:
            os.rename(claim_path, private.job_file)  # the fence
        except FileNotFoundError:
            _rmdir(private.path)
            # RACE: a checker may have judged our fresh, still empty folder stale (our pid
            # reused, a long stall) and taken it: the claim itself is still in place, so try
            # again with a new folder. Otherwise the claim is gone: someone else took it.
            if os.path.exists(claim_path):
                continue
            return None
        return _publish(private, build, claim_path if give_back else None, read)
    return None


def _publish(private: Private, build: Build, put_back: str | None, read: bool = True) -> str | None:
    """The fenced job file is ours: build its new record and place it; see :func:`leave`."""
    run = private.run
    content = None
    if read:
        try:
            content = _read(private.job_file)
        except FileNotFoundError:
            _rmdir(private.path)  # RACE: taken from our folder by a checker that judged us stale
            return None
    # Unread, a folder taken meanwhile is noticed by the first rename into it (_into_folder).
    decided = build(content, private)
    if decided is None:
        _undo(private, put_back)
        return None
    if isinstance(decided, list):
        return _publish_pieces(private, decided, put_back)
    dst, record = decided
    try:
        tmp = fsio.write_temp(run.state_dir("running"), fsio.dumps(record))
    except OSError:
        _undo(private, put_back)
        raise
    pause = _pause_hook()
    if pause:
        time.sleep(pause)
    if not _into_folder(tmp, private.job_file):
        return None
    if pause:
        time.sleep(pause)
    if dst == "removed":
        fsio.make_dir(run.removed_dir, exist_ok=True)  # never the run's own folder: a removed run stays removed
    try:
        os.rename(private.job_file, run.job(private.job_id, dst))  # RACE: as above
    except FileNotFoundError:
        return None
    _rmdir(private.path)
    return dst


def _publish_pieces(private: Private, pieces: list[tuple[str, str, dict[str, Any]]],
                    put_back: str | None) -> str | None:
    """Commit a chunk's pieces (see the module docstring); returns the first piece's state."""
    run = private.run
    placed = []
    try:
        for dst, unit, record in pieces:
            tmp = fsio.write_temp(run.state_dir("running"), fsio.dumps(record))
            piece = run.piece(private.path, unit, dst)
            if not _into_folder(tmp, piece):
                return None
            placed.append((piece, run.job(unit, dst)))
    except OSError:
        for piece, _ in placed:
            fsio.unlink_quietly(piece)
        _undo(private, put_back)
        raise
    pause = _pause_hook()
    if pause:
        time.sleep(pause)
    try:
        os.unlink(private.job_file)  # the commit point: the folder now holds every piece
    except FileNotFoundError:
        return None  # RACE: taken from our folder by a checker that judged us stale
    if pause:
        time.sleep(pause)
    if _place_pieces(private, placed) is None:
        return None
    return pieces[0][0] if pieces else None


def _place_pieces(private: Private, placed: list[tuple[str, str]]) -> str | None:
    """Rename committed pieces out of the folder, then remove it; None if it was taken."""
    if any(os.path.dirname(dst) == private.run.removed_dir for _, dst in placed):
        fsio.make_dir(private.run.removed_dir, exist_ok=True)  # with the run's mode, as _publish makes it
    for piece, dst in placed:
        try:
            os.rename(piece, dst)  # RACE: as in _publish
        except FileNotFoundError:
            return None
    _rmdir(private.path)
    return "placed"


def _into_folder(tmp: str, target: str) -> bool:
    """Rename our fresh temp file to ``target`` inside our private folder; False (the temp
    removed) if the folder is gone."""
    try:
        # RACE: a checker that took our folder meanwhile makes this rename fail (the folder
        # path no longer exists): we then hold nothing, and write nothing more.
        os.rename(tmp, target)
        return True
    except FileNotFoundError:
        fsio.unlink_quietly(tmp)
        return False


def _undo(private: Private, put_back: str | None) -> None:
    """Give the fenced claim back under its own name, untouched (or leave the folder to be
    recovered, when there is no name to give it back to)."""
    if put_back is not None:
        try:
            os.rename(private.job_file, put_back)
        except FileNotFoundError:
            pass  # RACE: taken from our folder meanwhile: it is the taker's now
    _rmdir(private.path)


def _read(path: str) -> dict[str, Any] | None:
    """The job file's content; None if it is no usable object (torn, foreign, too large,
    unreadable): ``build`` then judges it with :func:`valid`. FileNotFoundError if gone."""
    try:
        record = fsio.read_json(path, records.JOB_RECORD_MAX)
    except (ValueError, PermissionError, IsADirectoryError):
        return None
    return record if isinstance(record, dict) else None


def _rmdir(path: str) -> None:
    """Remove our folder once empty. One that still holds a job file is left to be recovered."""
    try:
        os.rmdir(path)
    except OSError:
        pass


def recover(private: Private, build: Build) -> str | None:
    """Take a stalled private folder over: rename it to a folder of our own (the fence on its
    owner), then place its job with ``build`` as :func:`leave` would. Returns the state the
    job went to; None if there was nothing to take (the owner finished, or someone else
    took the folder first), or the folder was empty."""
    run = private.run
    # Our folder keeps the owner's intent: should we stall after our swap, the next checker
    # still completes a finished result rather than turning it into a loss.
    intent = private.intent if private.intent in STATES else "recover"
    mine = Private.parse(run, os.path.basename(run.private(private.job_id, private.token, who(intent))))
    assert mine is not None
    try:
        # RACE: the owner finishing or another checker recovering at the same moment: one
        # rename of the folder (or the owner's final rename out of it) wins.
        os.rename(private.path, mine.path)
    except FileNotFoundError:
        return None
    except OSError as e:  # ENOTEMPTY/EEXIST: a folder of that name exists (cannot be ours)
        log.warning("run %s: cannot take over %s: %s", run.run_id, private.name, e)
        return None
    pieces = pieces_in(mine, refuse=True)
    if not os.path.exists(mine.job_file):
        if pieces:  # a chunk's pieces, committed: finish placing them
            state = pieces[0][2]
            return state if _place_pieces(mine, [(p, d) for p, d, _ in pieces]) else None
        # The owner died after making its folder and before its fence (its claim is still
        # in running/, judged on its own), or after its final rename: nothing to place.
        _rmdir(mine.path)
        return None
    for piece, _, _ in pieces:  # not committed: perhaps not all there; decided afresh below
        fsio.unlink_quietly(piece)
    return _publish(mine, build, None)


def pieces_in(private: Private, refuse: bool = False) -> list[tuple[str, str, str]]:
    """Pieces written into a private folder: (path, destination, state). Only pieces of the
    folder's own chunk count: one of another array, past the chunk's range or a plain job's
    (a hand's or a tool's) would be placed as done without ever running; with ``refuse``
    (the recoverer, about to place them) it is quarantined, else only left out (readers,
    exec-status among them, write nothing)."""
    out: list[tuple[str, str, str]] = []
    try:
        names = sorted(os.listdir(private.path))
    except OSError:
        return out
    # Judged by names alone, not by run.json's sizes (a cached size may predate a growth).
    job = private.job_id.rpartition(".")[0]
    arrays = {job: MAX_TASKS} if job else {}
    own = parse_unit(private.job_id, arrays)
    for name in names:
        parsed = private.run.parse_piece(name)
        if parsed is None:
            continue
        state, unit = parsed
        path = os.path.join(private.path, name)
        piece = parse_unit(unit, arrays)
        if own is None or piece is None or piece.job != own.job or not own.lo <= piece.lo <= piece.hi <= own.hi:
            if not refuse:
                continue
            try:
                quarantine(private.run, path, f"refused piece: {unit} is not a piece of chunk {private.job_id}")
            except OSError as e:
                log.warning("run %s: cannot quarantine %s: %s", private.run.run_id, path, e)
            continue
        out.append((path, private.run.job(unit, state), state))
    return out


def valid(record: dict[str, Any] | None, job_id: str) -> bool:
    return record is not None and check_record(record, job_id) is None


def completed(record: dict[str, Any] | None, private: Private, claimed_try: int | None) -> bool:
    """Does the folder hold its owner's finished result, written whole and meant for a state?"""
    return (private.intent in STATES and private.intent != "running" and record is not None
            and isinstance(claimed_try, int) and isinstance(record.get("tries"), list)
            and len(record["tries"]) >= claimed_try >= 1
            and record["tries"][claimed_try - 1].get("status") != "lost")
