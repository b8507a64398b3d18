"""Read a workflow file (YAML, or JSON by its ``.json`` suffix) and validate it completely.

Nothing is written here: :func:`load_workflow` returns a frozen :class:`Workflow` or raises
:class:`~executioner.errors.WorkflowErrors` listing every problem, one line each, naming
the file, the job and the key.
"""

from __future__ import annotations

import difflib
import graphlib
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from .errors import WorkflowError, WorkflowErrors
from .wfenv import NAME, StoredEnv, stored_env
from .wfparse import SHOWN_CHARS, cut, parse, show

JOB_ID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
TOP_KEYS: Final = ("name", "workdir", "env", "defaults", "jobs")
RETRY_STATUSES: Final = ("failed", "timeout")
TryStatus = Literal["done", "failed", "timeout"]

# key -> (kind, default). Kinds are checked by _check_value.
JOB_OPTIONS: Final[dict[str, tuple[str, Any]]] = {
    "env": ("env", {}),
    "workdir": ("str", None),
    "timeout": ("pos_number_or_null", None),
    "kill_grace": ("nonneg_number", 5.0),
    "max_retries": ("nonneg_int", 0),
    "max_lost": ("pos_int", 3),
    "retry_delay": ("nonneg_number", 0.0),
    "retry_backoff": ("pos_number", 1.0),
    "retry_jitter": ("fraction", 0.0),
    "retry_on_exit_codes": ("int_list_or_null", None),
    "retry_on_status": ("status_list", list(RETRY_STATUSES)),
    "max_retry_time": ("pos_number_or_null", None),
    "outputs": ("str_list", []),
    "always_rerun": ("bool", False),
    "slurm": ("slurm", {}),
}
SLURM_KEYS: Final = ("partition", "time", "cpus", "mem_gb", "gpus", "additional_parameters")
JOB_KEYS: Final = ("id", "command", "dependencies", *JOB_OPTIONS)


@dataclass(frozen=True)
class JobSpec:
    """One job of a workflow, with defaults applied."""

    id: str
    command: str | tuple[str, ...]
    dependencies: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    workdir: str | None = None
    timeout: float | None = None
    kill_grace: float = 5.0
    max_retries: int = 0
    max_lost: int = 3
    retry_delay: float = 0.0
    retry_backoff: float = 1.0
    retry_jitter: float = 0.0
    retry_on_exit_codes: tuple[int, ...] | None = None
    retry_on_status: tuple[str, ...] = RETRY_STATUSES
    max_retry_time: float | None = None
    outputs: tuple[str, ...] = ()
    always_rerun: bool = False
    slurm: dict[str, Any] = field(default_factory=dict)  # resources for the Slurm-DAG backend

    def to_spec(self) -> dict[str, Any]:
        """The definition as stored in the job file (everything but id and dependencies)."""
        return {
            "command": list(self.command) if isinstance(self.command, tuple) else self.command,
            "env": stored_env(self.env), "workdir": self.workdir, "timeout": self.timeout,
            "kill_grace": self.kill_grace, "max_retries": self.max_retries, "max_lost": self.max_lost,
            "retry_delay": self.retry_delay, "retry_backoff": self.retry_backoff,
            "retry_jitter": self.retry_jitter,
            "retry_on_exit_codes": None if self.retry_on_exit_codes is None else list(self.retry_on_exit_codes),
            "retry_on_status": list(self.retry_on_status), "max_retry_time": self.max_retry_time,
            "outputs": list(self.outputs), "always_rerun": self.always_rerun, "slurm": self.slurm,
        }


@dataclass(frozen=True)
class Workflow:
    name: str
    path: str  # absolute path of the source file
    raw: bytes  # the file's bytes, copied verbatim into the run
    workdir: str  # absolute
    env: StoredEnv  # as run.json stores it (see executioner.wfenv); read it with env_items()
    jobs: tuple[JobSpec, ...]

    @property
    def suffix(self) -> str:
        return ".json" if self.path.endswith(".json") else ".yaml"

    def dependents(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {j.id: [] for j in self.jobs}
        for j in self.jobs:
            for d in j.dependencies:
                out[d].append(j.id)
        return out


def load_workflow(path: str) -> Workflow:
    """Parse and validate ``path``; raise WorkflowErrors with every problem found."""
    shown = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise WorkflowErrors([WorkflowError(f"cannot read: {e.strerror}", shown)]) from None
    data = parse(raw, shown)
    return _Validator(shown, raw).workflow(data)


def _suggest(key: str, choices: tuple[str, ...]) -> str:
    """" (did you mean 'x'?)" when one of ``choices`` is close to ``key``."""
    if len(key) > 2 * SHOWN_CHARS:
        return ""
    close = difflib.get_close_matches(key, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _key(key: Any) -> str:
    """A key from the file as a message names it: itself if a string, cut short."""
    return cut(key) if isinstance(key, str) else show(key)


def _type_name(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(value), type(value).__name__)


class _Validator:
    def __init__(self, file: str, raw: bytes):
        self.file = file
        self.raw = raw
        self.errors: list[WorkflowError] = []

    def err(self, message: str, job: str | None = None, key: str | None = None) -> None:
        self.errors.append(WorkflowError(message, self.file, job, key))

    def workflow(self, data: Any) -> Workflow:
        if not isinstance(data, dict):
            self.err(f"the top level must be a mapping with a 'jobs' list, not {_type_name(data)}")
            raise WorkflowErrors(self.errors)
        for key in data:
            if key not in TOP_KEYS:
                self.err(f"unknown key{_suggest(str(key), TOP_KEYS)}", key=_key(key))
        stem = os.path.splitext(os.path.basename(self.file))[0]
        name = data.get("name", re.sub(r"[^A-Za-z0-9_.-]", "_", stem).lstrip("._-") or "run")
        if not isinstance(name, str) or not JOB_ID_RE.fullmatch(name):
            self.err(f"must match {JOB_ID_RE.pattern} (it names the run's directory)", key="name")
            name = "run"
        base = os.path.dirname(os.path.abspath(self.file))
        workdir = data.get("workdir", ".")
        if not isinstance(workdir, str):
            self.err(f"must be a string, not {_type_name(workdir)}", key="workdir")
            workdir = "."
        env = self.env(data.get("env", {}), None)
        defaults = data.get("defaults", {})
        if not isinstance(defaults, dict):
            self.err(f"must be a mapping, not {_type_name(defaults)}", key="defaults")
            defaults = {}
        for key in list(defaults):
            if key in ("id", "command", "dependencies"):
                self.err("cannot be set in defaults", key=f"defaults.{_key(key)}")
            elif key not in JOB_OPTIONS:
                self.err(f"unknown key{_suggest(str(key), tuple(JOB_OPTIONS))}", key=f"defaults.{_key(key)}")
            else:
                self.value(key, defaults[key], None, f"defaults.{key}")
        jobs = self.jobs(data.get("jobs"), defaults)
        if not self.errors:
            self.cycles(jobs)
        if self.errors:
            raise WorkflowErrors(self.errors)
        return Workflow(name=name, path=os.path.abspath(self.file), raw=self.raw,
                        workdir=os.path.normpath(os.path.join(base, workdir)), env=stored_env(env),
                        jobs=tuple(jobs))

    def jobs(self, items: Any, defaults: dict[str, Any]) -> list[JobSpec]:
        if items is None:
            self.err("missing: a workflow needs a 'jobs' list", key="jobs")
            return []
        if not isinstance(items, list):
            self.err(f"must be a list of jobs, not {_type_name(items)}", key="jobs")
            return []
        if not items:
            self.err("is empty: a workflow needs at least one job", key="jobs")
            return []
        specs: list[JobSpec] = []
        seen: set[str] = set()
        named = {item.get("id") for item in items if isinstance(item, dict) and isinstance(item.get("id"), str)}
        for index, item in enumerate(items):
            spec = self.job(index, item, defaults)
            if spec is None:
                continue
            if spec.id in seen:
                self.err("duplicate job id", job=spec.id, key="id")
                continue
            seen.add(spec.id)
            specs.append(spec)
        for spec in specs:
            for dep in spec.dependencies:
                if dep not in seen and dep not in named:
                    self.err(f"unknown dependency {show(dep)}{_suggest(dep, tuple(sorted(seen)))}",
                             job=spec.id, key="dependencies")
                elif dep == spec.id:
                    self.err("a job cannot depend on itself", job=spec.id, key="dependencies")
        return specs

    def job(self, index: int, item: Any, defaults: dict[str, Any]) -> JobSpec | None:
        label = f"#{index + 1}"
        if not isinstance(item, dict):
            self.err(f"must be a mapping, not {_type_name(item)}", job=label)
            return None
        job_id = item.get("id")
        if job_id is None:
            self.err("missing", job=label, key="id")
            return None
        if not isinstance(job_id, str) or not JOB_ID_RE.fullmatch(job_id):
            self.err(f"{show(job_id)} must match {JOB_ID_RE.pattern} (no '/', no spaces; it becomes a file name)",
                     job=label, key="id")
            return None
        ok = True
        for key in item:
            if key not in JOB_KEYS:
                self.err(f"unknown key{_suggest(str(key), JOB_KEYS)}", job=job_id, key=_key(key))
                ok = False
        command = item.get("command")
        if command is None:
            self.err("missing", job=job_id, key="command")
            ok = False
        elif isinstance(command, str):
            if not command.strip():
                self.err("is empty", job=job_id, key="command")
                ok = False
        elif isinstance(command, list):
            if not command or not all(isinstance(a, (str, int, float)) and not isinstance(a, bool)
                                      for a in command):
                self.err("a list command must be a non-empty list of strings", job=job_id, key="command")
                ok = False
            else:
                command = tuple(str(a) for a in command)
        else:
            self.err(f"must be a string or a list of strings, not {_type_name(command)}",
                     job=job_id, key="command")
            ok = False
        deps = item.get("dependencies", [])
        if deps is None:
            deps = []
        if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
            self.err("must be a list of job ids", job=job_id, key="dependencies")
            ok = False
        options: dict[str, Any] = {}
        for key, (_, default) in JOB_OPTIONS.items():
            if key in item:
                value = self.value(key, item[key], job_id, key)
                ok = ok and value is not _BAD
            elif key in defaults:
                value = self.value(key, defaults[key], None, f"defaults.{key}", report=False)
            else:
                value = default
            options[key] = value
        if not ok or any(v is _BAD for v in options.values()):
            return None
        if "slurm" in item and isinstance(defaults.get("slurm"), dict):  # per key, over the defaults
            base = _check_value("slurm", defaults["slurm"])
            if isinstance(base, dict):
                extra = {**base.get("additional_parameters", {}), **options["slurm"].get("additional_parameters", {})}
                options["slurm"] = {**base, **options["slurm"]}
                if extra:
                    options["slurm"]["additional_parameters"] = extra
        assert isinstance(command, (str, tuple))
        return JobSpec(id=job_id, command=command, dependencies=tuple(dict.fromkeys(deps)), **options)

    def value(self, key: str, value: Any, job: str | None, shown_key: str, report: bool = True) -> Any:
        kind = JOB_OPTIONS[key][0]
        result = _check_value(kind, value)
        if isinstance(result, _Problem):
            if report:
                self.err(result.message, job=job, key=shown_key)
            return _BAD
        if kind == "env":
            return self.env(value, job, shown_key) if report else self.env_quiet(value)
        return result

    def env(self, value: Any, job: str | None, key: str = "env") -> dict[str, str]:
        if not isinstance(value, dict):
            self.err(f"must be a mapping of names to strings, not {_type_name(value)}", job=job, key=key)
            return {}
        out: dict[str, str] = {}
        for name, v in value.items():
            if not isinstance(name, str) or not NAME.fullmatch(name):
                self.err(f"{show(name)} is not a valid variable name", job=job, key=key)
            elif isinstance(v, bool) or not isinstance(v, (str, int, float)):
                self.err(f"{cut(str(name))} must be a string or number, not {_type_name(v)}", job=job, key=key)
            else:
                out[name] = str(v)
        return out

    def env_quiet(self, value: Any) -> dict[str, str]:
        """An env already reported on (from defaults): keep only its valid entries."""
        before = len(self.errors)
        out = self.env(value, None)
        del self.errors[before:]
        return out

    def cycles(self, jobs: list[JobSpec]) -> None:
        sorter = graphlib.TopologicalSorter({j.id: j.dependencies for j in jobs})
        try:
            sorter.prepare()
        except graphlib.CycleError as e:
            # graphlib lists each node before the one that needs it; print "needs" order.
            path = list(reversed(e.args[1]))
            self.err(f"dependency cycle: {' -> '.join(path)} (each job depends on the next)",
                     job=path[0], key="dependencies")


class _Problem:
    def __init__(self, message: str):
        self.message = message


_BAD: Final = object()


def _is_number(v: Any) -> bool:
    """A finite int or float (not a bool, not inf or nan: they cannot be stored in JSON)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_value(kind: str, v: Any) -> Any:
    """The normalised value, or a _Problem saying what is wrong with it."""
    if kind == "env":
        return v
    if kind == "str":
        return v if isinstance(v, str) else _Problem(f"must be a string, not {_type_name(v)}")
    if kind in ("pos_number", "pos_number_or_null"):
        if v is None and kind.endswith("_or_null"):
            return None
        return float(v) if _is_number(v) and v > 0 else _Problem(f"must be a number > 0, not {show(v)}")
    if kind == "nonneg_number":
        return float(v) if _is_number(v) and v >= 0 else _Problem(f"must be a number >= 0, not {show(v)}")
    if kind == "nonneg_int":
        return v if isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 1_000_000 else _Problem(
            f"must be a whole number from 0 to 1000000, not {show(v)}")
    if kind == "pos_int":
        return v if isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 1_000_000 else _Problem(
            f"must be a whole number from 1 to 1000000, not {show(v)}")
    if kind == "fraction":
        return float(v) if _is_number(v) and 0 <= v <= 1 else _Problem(f"must be a number from 0 to 1, not {show(v)}")
    if kind == "int_list_or_null":
        if v is None:
            return None
        ok = isinstance(v, list) and all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255
                                         for c in v)
        return tuple(v) if ok else _Problem("must be a list of exit codes (whole numbers 0 to 255)")
    if kind == "status_list":
        if isinstance(v, list) and all(s in RETRY_STATUSES for s in v):
            return tuple(v)
        return _Problem(f"must be a list of {', '.join(RETRY_STATUSES)}")
    if kind == "slurm":
        return _check_slurm(v)
    if kind == "bool":
        return v if isinstance(v, bool) else _Problem(f"must be true or false, not {show(v)}")
    if kind == "str_list":
        ok = isinstance(v, list) and all(isinstance(s, str) and s for s in v)
        return tuple(v) if ok else _Problem("must be a list of file paths")
    raise AssertionError(kind)


def _check_slurm(v: Any) -> Any:
    """A ``slurm:`` mapping: resources of a job's own Slurm job (Slurm-DAG backend)."""
    if not isinstance(v, dict):
        return _Problem(f"must be a mapping of {', '.join(SLURM_KEYS)}, not {_type_name(v)}")
    for k, x in v.items():
        if k not in SLURM_KEYS:
            return _Problem(f"unknown key {show(k)}{_suggest(str(k), SLURM_KEYS)}")
        if k == "partition" and not isinstance(x, str):
            return _Problem("partition must be a string")
        if k in ("time", "cpus", "gpus") and (not isinstance(x, int) or isinstance(x, bool) or x < 1):
            return _Problem(f"{k} must be a whole number >= 1{' (minutes)' if k == 'time' else ''}")
        if k == "mem_gb" and not (_is_number(x) and x > 0):
            return _Problem("mem_gb must be a number > 0")
        if k == "additional_parameters":
            if not isinstance(x, dict):
                return _Problem(f"additional_parameters must be a mapping of sbatch options to values, "
                                f"not {_type_name(x)}")
            bad = [p for p, y in x.items() if not isinstance(p, str) or not isinstance(y, (str, int, float, bool))]
            if bad:
                return _Problem(f"additional_parameters: {show(bad[0])} must name an sbatch option with a "
                                "string, number or true")
    return dict(v)
