"""The shape of the records in a run, checked once, where they are read.

A file in a run can hold valid JSON of the wrong shape (``[1, 2]``, ``"tries": [null]``, a
run.json whose ``workdir`` is a number): written by hand, by a broken tool, or by a storage
fault that kept the syntax. Code that trusts such a record fails far from the read, as a
traceback in ``exec-status``, an "internal error" that fails a job, or a reaper pass that
raises and leaves a dead worker's other claims in running/. So every reader goes through
this module, which checks the keys and types the code relies on, and answers with the
record or with why it cannot be used:

* a job file: :func:`job_problem` (and :func:`load_job` for a single read); a worker, a
  reaper or a sweep quarantines what fails it (see :mod:`executioner.protocol.scrub`), a
  view shows the job with the reason;
* run.json: :func:`load_run`, raising :class:`~executioner.errors.CorruptFileError`; the run
  is shown ``corrupt``, skipped by workers, and a resume says so in one line;
* a claim lock (``logs/<job>.<try>.claim``): :func:`lock_problem`; one of the wrong shape
  is no lock (the claim is judged as never locked, so it is requeued once it stands still);
* an attempt record: :func:`attempt_problem`; one of the wrong shape is treated as absent.

A file this process may not read (EACCES) is unusable in the same way: its reason says so.

**Sizes.** Every read checks the size with ``fstat`` before reading (see
:func:`executioner.protocol.fsio.read_bytes`). A job record is capped at
:data:`JOB_RECORD_MAX` (16 MB), a quarter of the 64 MB general cap: a job that can run at
all holds its command and environment within Linux's exec limits (128 kB per string, a few
MB for all of them; validation caps a job's expanded env at 4 MB), and each try adds about
0.5 kB, so 16 MB leaves room for some 20,000 tries, while the Python objects that parsing
a record makes (about ten times its size) stay well under a gigabyte, even with several
slots reading at once. run.json carries the workflow's env: it gets the same cap.
"""

from __future__ import annotations

import os
from functools import partial
from itertools import chain
from operator import is_not
from typing import Any, Final

from . import fsio
from .units import unit_name
from ..errors import CorruptFileError

JOB_RECORD_MAX: Final = 16 << 20
RUN_RECORD_MAX: Final = 16 << 20
LOCK_MAX: Final = 1 << 16

_INT: Final = "int"
_NUM: Final = "num"
_STR: Final = "str"
_TRY_KEYS: Final = {
    "status": (_STR, False), "try": (_INT, False), "attempt": (_INT, False), "exit_code": (_INT, True),
    "signal": (_STR, True), "reason": (_STR, True), "worker": (_STR, True), "host": (_STR, True),
    "stdout": (_STR, True), "stderr": (_STR, True), "worker_pid": (_INT, True), "pid": (_INT, True),
    "start": (_NUM, True), "end": (_NUM, True), "duration": (_NUM, True), "start_storage": (_NUM, True),
}
_JOB_KEYS: Final = {
    "run_id": (_STR, False), "format": (_INT, False), "attempt": (_INT, False), "last_exit_code": (_INT, True),
    "not_before": (_NUM, True), "retry_delay_s": (_NUM, False), "definition_hash": (_STR, True),
    "reason": (_STR, True),
}
_RUN_KEYS: Final = {
    "workdir": (_STR, False), "run_id": (_STR, False), "name": (_STR, True), "jobs": (_INT, False),
    "attempt": (_INT, False), "format": (_INT, False), "source": (_STR, True), "workflow": (_STR, True),
    "submitted_by": (_STR, True), "created": (_NUM, True),
}


MAX_INT: Final = 2**31 - 1  # try numbers, attempts, pids, exit codes, job counts
MAX_NUM: Final = 1e11  # seconds: times (epoch seconds, year 5138), durations, delays


def _kind_ok(kind: str, value: Any) -> bool:
    """Bounded, so that nothing overflows later (a pid of 10**30 in psutil, a time of 1e300
    in time.localtime in exec-status)."""
    if isinstance(value, bool):
        return False
    if kind == _INT:
        return isinstance(value, int) and -MAX_INT <= value <= MAX_INT
    if kind == _NUM:  # JSON as orjson reads it has no NaN nor infinity
        return isinstance(value, (int, float)) and -MAX_NUM <= value <= MAX_NUM
    return isinstance(value, str)


def _typed(record: dict[str, Any], keys: dict[str, tuple[str, bool]], where: str) -> str | None:
    """The first key of ``keys`` present in ``record`` with a value of the wrong kind."""
    for key, (kind, nullable) in keys.items():
        if key in record and not (record[key] is None and nullable) and not _kind_ok(kind, record[key]):
            what = {_INT: "a whole number", _NUM: "a number of seconds", _STR: "a string"}[kind]
            return f"{where}{key} is {_show(record[key])}, not {what}{'' if kind == _STR else ' in range'}"
    return None


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def env_problem(env: Any, where: str) -> str | None:
    """A stored env level: a mapping of names to strings, ``[[name, value], ...]``, or null."""
    if env is None:
        return None
    if isinstance(env, dict):
        pairs = list(env.items())
    elif isinstance(env, list) and all(isinstance(p, list) and len(p) == 2 for p in env):
        pairs = [(p[0], p[1]) for p in env]
    else:
        return f"{where}env is {_show(env)}, not a mapping of names to strings"
    bad = next(((n, v) for n, v in pairs if not isinstance(n, str) or not isinstance(v, str)), None)
    return f"{where}env has {_show(bad[0])}: {_show(bad[1])}, not a name and a string" if bad else None


# spec key -> (kind, null allowed); checked as kinds only, not against validation's bounds:
# a run written by an older version (before a bound existed) must stay readable.
_SPEC_KEYS: Final = {
    "workdir": (_STR, True), "timeout": ("any_num", True), "max_retry_time": ("any_num", True),
    "kill_grace": ("any_num", False), "retry_delay": ("any_num", False), "retry_jitter": ("any_num", False),
    "retry_backoff": ("pos_num", False), "max_retries": ("any_int", False), "max_lost": ("any_int", False),
    "retry_on_exit_codes": ("int_list", True), "retry_on_status": ("str_list", False),
    "outputs": ("str_list", False), "always_rerun": ("bool", False), "slurm": ("object", True),
    "resources": ("object", False), "priority": ("any_int", False), "tags": ("str_list", False),
    "limit": (_STR, True),
}


def _spec_kind_ok(kind: str, value: Any) -> bool:
    if kind in ("any_num", "pos_num"):  # JSON as orjson reads it has no NaN nor infinity
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok and (kind == "any_num" or value > 0)  # a backoff <= 0 has no logarithm
    if kind == "any_int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "int_list":
        return isinstance(value, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in value)
    if kind == "str_list":
        return isinstance(value, list) and all(isinstance(x, str) for x in value)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "object":
        return isinstance(value, dict)
    return isinstance(value, str)


def spec_problem(spec: Any) -> str | None:
    if not isinstance(spec, dict):
        return "spec is not an object"
    command = spec.get("command")
    if not (isinstance(command, str) and command) and not (
            isinstance(command, list) and command and all(isinstance(a, str) for a in command)):
        return "spec has no command" if "command" not in spec else \
            f"spec.command is {_show(command)}, not a string or a list of strings"
    if (problem := env_problem(spec.get("env"), "spec.")) is not None:
        return problem
    for key, (kind, nullable) in _SPEC_KEYS.items():
        if key in spec and not (spec[key] is None and nullable) and not _spec_kind_ok(kind, spec[key]):
            what = {"any_num": "a number", "pos_num": "a number > 0", "any_int": "a whole number",
                    "int_list": "a list of whole numbers", "str_list": "a list of strings", "bool": "true or false",
                    "object": "an object", _STR: "a string"}[kind]
            return f"spec.{key} is {_show(spec[key])}, not {what}"
    return None


def try_problem(entry: Any, i: int) -> str | None:
    if not isinstance(entry, dict):
        return f"tries[{i}] is {_show(entry)}, not an object"
    if not isinstance(entry.get("status"), str):
        return f"tries[{i}].status is {_show(entry.get('status'))}, not a string"
    return _typed(entry, _TRY_KEYS, f"tries[{i}].")


def job_problem(record: Any, job_id: str) -> str | None:
    """Why ``record`` is not a job record of ``job_id`` that the code can use; None when it is.
    The common case, a plain job's record of the right shape, is passed by a quick check
    (:func:`_plain_job_ok`); anything it does not pass is judged, and explained, in full."""
    if _plain_job_ok(record, job_id):
        return None
    return full_job_problem(record, job_id)


def full_job_problem(record: Any, job_id: str) -> str | None:
    """:func:`job_problem` without the quick check: every rule, one at a time, so that the
    first one broken can be named."""
    if not isinstance(record, dict):
        return "not a JSON object"
    missing = [k for k in ("spec", "tries", "dependencies", "dependents") if k not in record]
    if missing:
        return f"missing {', '.join(missing)}"
    if record.get("id") != job_id:
        return f"the file of job {job_id!r} holds job {record.get('id')!r}"
    if (problem := spec_problem(record["spec"])) is not None:
        return problem
    for key in ("dependencies", "dependents"):
        value = record[key]
        if not isinstance(value, list) or not all(isinstance(d, str) for d in value):
            return f"{key} is {_show(value)}, not a list of job ids"
    tries = record["tries"]
    if not isinstance(tries, list):
        return f"tries is {_show(tries)}, not a list"
    for i, entry in enumerate(tries):
        if (problem := try_problem(entry, i)) is not None:
            return problem
    if (problem := _typed(record, _JOB_KEYS, "")) is not None:
        return problem
    if "held" in record and not isinstance(record["held"], bool):
        return f"held is {_show(record['held'])}, not true or false"
    for key in ("skipped", "slurm"):
        if record.get(key) is not None and not isinstance(record[key], dict):
            return f"{key} is {_show(record[key])}, not an object"
    if "tasks" in record or "job" in record:
        return chunk_problem(record)
    return None


# ---- the quick check ----------------------------------------------------------------------
# The same rules as above, as tables of exact types (JSON as orjson reads it makes only
# dict, list, str, int, float, bool and None, so ``type(v) in allowed`` says what the
# isinstance checks say, bool apart from int) and bounds. Nothing here explains a refusal:
# a record it does not pass goes through the full check, which names the problem (or finds
# none: the quick check may refuse more, never less; tests/test_scale.py checks this on
# every key of a record set to every kind of value).
_NONE: Final = type(None)


def _quick_table(keys: dict[str, tuple[str, bool]]) -> dict[str, tuple[tuple[type, ...], float]]:
    out: dict[str, tuple[tuple[type, ...], float]] = {}
    for key, (kind, nullable) in keys.items():
        types, bound = {_INT: ((int,), MAX_INT), _NUM: ((int, float), MAX_NUM), _STR: ((str,), 0)}[kind]
        out[key] = (types + (_NONE,) if nullable else types, bound)
    return out


_QUICK_JOB: Final = _quick_table(_JOB_KEYS)
_QUICK_TRY: Final = _quick_table(_TRY_KEYS)
_QUICK_SPEC: Final = {  # spec key -> allowed types, and what the values of a list must be
    key: ({"any_num": (int, float), "pos_num": (int, float), "any_int": (int,), "int_list": (list,),
           "str_list": (list,), "bool": (bool,), "object": (dict,), _STR: (str,)}[kind] + ((_NONE,) if nullable else ()),
          {"int_list": int, "str_list": str}.get(kind), kind == "pos_num")
    for key, (kind, nullable) in _SPEC_KEYS.items()
}


def _quick_typed(record: dict[str, Any], table: dict[str, tuple[tuple[type, ...], float]]) -> bool:
    for key, value in record.items():
        rule = table.get(key)
        if rule is not None:
            kind = type(value)
            if kind not in rule[0] or (rule[1] and kind is not _NONE and not -rule[1] <= value <= rule[1]):
                return False
    return True


def _plain_job_ok(record: Any, job_id: str) -> bool:
    """True when ``record`` is certainly a usable record of the plain job ``job_id``; False
    when the full check must decide (a chunk, an env stored as pairs, anything odd)."""
    if type(record) is not dict or record.get("id") != job_id or "tasks" in record or "job" in record:
        return False
    spec, tries = record.get("spec"), record.get("tries")
    deps, dependents = record.get("dependencies"), record.get("dependents")
    if type(spec) is not dict or type(tries) is not list or type(deps) is not list or type(dependents) is not list:
        return False
    for ids in (deps, dependents):
        for d in ids:
            if type(d) is not str:
                return False
    if not _quick_typed(record, _QUICK_JOB):
        return False
    if "held" in record and type(record["held"]) is not bool:
        return False
    for key in ("skipped", "slurm"):
        kind = type(record.get(key))
        if kind is not _NONE and kind is not dict:
            return False
    command, env = spec.get("command"), spec.get("env")
    if type(command) is str:
        if not command:
            return False
    elif type(command) is list and command:
        for a in command:
            if type(a) is not str:
                return False
    else:
        return False
    if type(env) is dict:
        for v in env.values():
            if type(v) is not str:
                return False
    elif env is not None:
        return False
    for key, value in spec.items():
        rule = _QUICK_SPEC.get(key)
        if rule is None:
            continue
        kind = type(value)
        if kind not in rule[0]:
            return False
        if rule[1] is not None and kind is list:
            for x in value:
                if type(x) is not rule[1]:
                    return False
        elif rule[2] and value <= 0:
            return False
    for entry in tries:
        if type(entry) is not dict or type(entry.get("status")) is not str or not _quick_typed(entry, _QUICK_TRY):
            return False
    return True


def chunk_problem(record: dict[str, Any]) -> str | None:
    """What a chunk of an array (executioner.protocol.pieces) needs beyond a job record."""
    tasks, job = record.get("tasks"), record.get("job")
    if not isinstance(job, str):
        return f"job is {_show(job)}, not the array's id"
    if not (isinstance(tasks, list) and len(tasks) == 2 and all(_whole(t) and t >= 0 for t in tasks)
            and tasks[0] <= tasks[1]):
        return f"tasks is {_show(tasks)}, not [first, last] positions"
    if record.get("id") != unit_name(job, tasks[0], tasks[1]):
        # The name is what every listing counts (views, coverage, promotion): a chunk that
        # runs other tasks than its name says would run some twice and leave others out.
        return f"tasks {_show(tasks)} of array {_show(job)} are not what its name {_show(record.get('id'))} says"
    described = record["spec"].get("tasks")
    if not isinstance(described, dict) or described.get("kind") not in ("matrix", "array", "each_line") \
            or not _whole(described.get("count")) or tasks[1] >= described["count"]:
        return f"spec.tasks is {_show(described)}, not an array of at least {tasks[1] + 1} tasks"
    lines = record.get("lines")
    if described["kind"] == "each_line" and not (
            isinstance(lines, list) and len(lines) == tasks[1] - tasks[0] + 1 and all(isinstance(x, str) for x in lines)):
        return "lines is not the chunk's lines (one string per task)"
    for i, entry in enumerate(record["tries"]):
        results = entry.get("results")
        if results is None:
            continue
        if not isinstance(results, dict) or not _whole(results.get("first")) \
                or not isinstance(results.get("status"), list):
            return f"tries[{i}].results is {_show(results)}, not per-task columns"
        if (problem := _columns_problem(results)) is not None:
            return f"tries[{i}].results.{problem}"
    return None


_COLUMN_KINDS: Final = {"status": _STR, "exit": _INT, "signal": _STR, "start": _NUM, "duration": _NUM,
                        "reason": _STR, "out": "span", "err": "span"}


def _columns_problem(results: dict[str, Any]) -> str | None:
    """A try's per-task columns (see executioner.protocol.pieces): each a list as long as
    ``status`` (or absent, or null), of values of its kind or null; views and retries read
    them value by value (a duration that is text was a traceback in ``--job sim``)."""
    length = len(results["status"])
    for column, kind in _COLUMN_KINDS.items():
        values = results.get(column)
        if values is None:
            continue
        if not isinstance(values, list) or len(values) != length:
            return f"{column} is {_show(values)}, not one value per task"
        if _column_fast_ok(kind, values):
            continue
        for v in values:
            if v is None:
                continue
            ok = (isinstance(v, list) and (v == [] or len(v) == 2 and all(_whole(x) and x >= 0 for x in v))
                  if kind == "span" else _kind_ok(kind, v))
            if not ok:
                return f"{column} holds {_show(v)}, not {'[offset, length]' if kind == 'span' else kind}"
    return None


_FAST_TYPES: Final = {_STR: {str, type(None)}, _INT: {int, type(None)}, _NUM: {int, float, type(None)}}
_BOUND: Final = {_INT: MAX_INT, _NUM: MAX_NUM}


def _column_fast_ok(kind: str, values: list[Any]) -> bool:
    """True if every value of a column is of its kind, checked a column at a time in C (the
    value by value loop took 8 s for the 2,000 chunk files of a 1,000,000-task array). False
    says nothing: the caller's loop then finds the value and names it. ``type()``, not
    isinstance: a bool is not a number here."""
    if kind == "span":
        spans = list(filter(None, values))  # null and [] are fine
        if not set(map(type, spans)) <= {list} or not set(map(len, spans)) <= {2}:
            return False
        flat = list(chain.from_iterable(spans))
        return set(map(type, flat)) <= {int} and min(flat, default=0) >= 0
    if not set(map(type, values)) <= _FAST_TYPES[kind]:
        return False
    if kind not in _BOUND:
        return True
    numbers = list(filter(partial(is_not, None), values))
    return -_BOUND[kind] <= min(numbers, default=0) and max(numbers, default=0) <= _BOUND[kind]


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_job(path: str, job_id: str) -> tuple[dict[str, Any] | None, str | None]:
    """One read of a job file: (record, None), or (None, why it cannot be used).
    FileNotFoundError if it is gone (moved on: not broken)."""
    try:
        record = fsio.read_json(path, JOB_RECORD_MAX)
    except IsADirectoryError:
        return None, "a directory"
    except PermissionError as e:
        return None, f"cannot be read: {e.strerror or e}"
    except ValueError as e:
        if str(e) in (fsio.NOT_REGULAR, fsio.SYMLINK) or str(e).startswith("too large"):
            return None, str(e)
        return None, f"not valid JSON: {e}" if os.path.getsize(path) else "empty file"
    problem = job_problem(record, job_id)
    return (record, None) if problem is None else (None, problem)


def load_job(path: str, job_id: str) -> dict[str, Any]:
    """A job record for a view: CorruptFileError saying why it cannot be used (one read;
    FileNotFoundError if it is gone, other OSErrors as they come)."""
    record, problem = read_job(path, job_id)
    if record is None:
        raise CorruptFileError(problem or "unusable", path)
    return record


def run_problem(record: Any) -> str | None:
    """Why ``record`` is not a run.json the code can use; None when it is."""
    if not isinstance(record, dict):
        return "not a JSON object"
    missing = [k for k in ("workdir", "env") if k not in record]
    if missing:
        return f"missing {', '.join(missing)}"
    if (problem := _typed(record, _RUN_KEYS, "")) is not None:
        return problem
    if (problem := env_problem(record["env"], "")) is not None:
        return problem
    if record.get("backend") not in (None, "workers", "slurm"):
        return f"backend is {_show(record['backend'])}, not workers or slurm"
    if isinstance(record.get("jobs"), int) and record["jobs"] < 0:
        return f"jobs is {record['jobs']}, not a count"
    return None


def load_run(path: str) -> dict[str, Any]:
    """run.json; CorruptFileError if it cannot be used (FileNotFoundError if absent)."""
    try:
        record = fsio.read_json(path, RUN_RECORD_MAX)
    except PermissionError as e:
        raise CorruptFileError(f"cannot be read: {e.strerror or e}", path) from None
    except IsADirectoryError:
        raise CorruptFileError("a directory", path) from None
    except ValueError as e:
        raise CorruptFileError(f"not valid JSON: {e}" if str(e) else "empty", path) from None
    problem = run_problem(record)
    if problem is not None:
        raise CorruptFileError(problem, path)
    return record


def lock_problem(lock: Any) -> str | None:
    """Why a claim lock cannot be used (then the claim counts as never locked)."""
    if not isinstance(lock, dict):
        return "not a JSON object"
    keys = {"token": (_STR, False), "worker": (_STR, False), "host": (_STR, False), "pid": (_INT, False),
            "pid_start": (_NUM, False), "try": (_INT, False), "claimed_at": (_NUM, True), "job": (_STR, False)}
    return _typed(lock, keys, "")


def attempt_problem(record: Any) -> str | None:
    """Why an attempt record cannot be used (then it counts as absent)."""
    if not isinstance(record, dict):
        return "not a JSON object"
    problem = _typed(record, {"attempt": (_INT, False), "time": (_NUM, True), "who": (_STR, True),
                              "why": (_STR, True), "sha256": (_STR, True), "workflow_copy": (_STR, True),
                              "parent": (_INT, True)}, "")
    if problem is not None:
        return problem
    for key in ("plan", "changes", "checks"):
        value = record.get(key, [])
        if not isinstance(value, list) or not all(isinstance(x, dict) for x in value):
            return f"{key} is not a list of objects"
    if not all(isinstance(s.get("job"), str) for s in record.get("plan", [])):
        return "plan has a step without a job id"
    flags = record.get("flags", {})
    if not isinstance(flags, dict) or not all(
            v is None or isinstance(v, (bool, str)) or isinstance(v, list) and all(isinstance(x, str) for x in v)
            for v in flags.values()):
        return "flags is not an object of switches and job ids"
    return None


def slurm_ids(data: Any) -> dict[str, list[str]]:
    """slurm.json (``{"workers": [ids], "dag": [ids]}``) with whatever is not a list of ids left out."""
    if not isinstance(data, dict):
        return {}
    return {k: [i for i in v if isinstance(i, str)] for k, v in data.items()
            if k in ("workers", "dag") and isinstance(v, list)}


def cancelled_info(data: Any) -> dict[str, Any] | None:
    """slurm-cancelled.json (``{"at": epoch, "by": "user@host", "ids": [Slurm ids]}``), or
    None if it is not of that shape (a broken marker says nothing)."""
    if not isinstance(data, dict) or not _kind_ok(_NUM, data.get("at")) or not isinstance(data.get("ids"), list):
        return None
    return {"at": data["at"], "by": data.get("by") if isinstance(data.get("by"), str) else None,
            "ids": [i for i in data["ids"] if isinstance(i, str)]}


def holder_info(data: Any) -> dict[str, Any] | None:
    """coordinator.json with only the keys of the right kind kept (a key of the wrong kind
    reads as unknown, shown as ``?``); None if it is not an object."""
    if not isinstance(data, dict):
        return None
    kinds = {"user": _STR, "host": _STR, "pid": _INT, "pid_start": _NUM, "since": _NUM, "action": _STR,
             "token": _STR}
    return {k: v for k, v in data.items() if k not in kinds or _kind_ok(kinds[k], v)}
