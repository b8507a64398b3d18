"""Read a workflow file (YAML, or JSON by its ``.json`` suffix) and validate it completely.

Nothing is written here: :func:`load_workflow` returns a frozen :class:`Workflow` or raises
:class:`~executioner.errors.WorkflowErrors` listing every problem, one line each, naming
the file, the job and the key.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Final, Iterable, Literal

from ..errors import WorkflowError, WorkflowErrors
from .arrays import (ARRAY_KEYS, MAX_LINES_BYTES, EACH, TASK_SEP, TaskSet, check_array, check_chunk, check_lines, check_matrix,
                     placeholders, split_task)
from .env import MAX_JOB_ENV, MAX_VALUE, NAME, StoredEnv, expanded_size, expanded_sizes, human, stored_env
from .parse import cut, parse, read, read_bounded, show
from .values import (BAD, JOB_OPTIONS, MAX_COUNT, RESOURCE_NAME, RETRY_STATUSES, SLURM_RESOURCES, NearNames,
                     Problem, check_value, is_number, is_whole, suggest, text_problem, type_name)

JOB_ID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
TOP_KEYS: Final = ("name", "workdir", "env", "limits", "defaults", "jobs")
CHUNK_TAIL: Final = re.compile(r"[0-9]+(-[0-9]+)?")
TryStatus = Literal["done", "failed", "timeout"]
JOB_KEYS: Final = ("id", "command", "dependencies", *ARRAY_KEYS, "chunk", *JOB_OPTIONS)
OWN_KEYS: Final = ("id", "command", "dependencies", *ARRAY_KEYS, "chunk")  # never in defaults
MAX_SHOWN: Final = 100  # problems listed; the rest are counted in one more line
MAX_ID_SUGGESTIONS: Final = 20  # unknown dependencies offered a "did you mean" (see NearNames)


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
    slurm: dict[str, Any] = field(default_factory=dict)  # what only Slurm reads: partition, time, ...
    resources: dict[str, int | float] = field(default_factory=dict)  # of one job, or of each task of an array
    priority: int = 0  # higher is claimed first
    tags: tuple[str, ...] = ()  # a worker must have every one to take the job
    limit: str | None = None  # an entry of the workflow's limits (a pool-wide count of running jobs)
    tasks: TaskSet | None = None  # an array's tasks (see executioner.workflow.arrays)
    elementwise: tuple[str, ...] = ()  # dependencies on task i of an array, for task i

    @property
    def is_array(self) -> bool:
        return self.tasks is not None

    def to_spec(self) -> dict[str, Any]:
        """The definition as stored in the job file (everything but id and dependencies).
        An array's task set and element-wise dependencies are stored only for arrays, so a
        plain job's definition (and hash) is what it was before arrays existed."""
        array = {} if self.tasks is None else {"tasks": self.tasks.describe(),
                                                "elementwise": list(self.elementwise)}
        return {**array,
            "command": list(self.command) if isinstance(self.command, tuple) else self.command,
            "env": stored_env(self.env), "workdir": self.workdir, "timeout": self.timeout,
            "kill_grace": self.kill_grace, "max_retries": self.max_retries, "max_lost": self.max_lost,
            "retry_delay": self.retry_delay, "retry_backoff": self.retry_backoff,
            "retry_jitter": self.retry_jitter,
            "retry_on_exit_codes": None if self.retry_on_exit_codes is None else list(self.retry_on_exit_codes),
            "retry_on_status": list(self.retry_on_status), "max_retry_time": self.max_retry_time,
            "outputs": list(self.outputs), "always_rerun": self.always_rerun, "slurm": self.slurm,
            **self.placement(),
        }

    def placement(self) -> dict[str, Any]:
        """The placement keys that differ from their defaults: a job that sets none is stored
        as it was before they existed (missing keys read as defaults)."""
        out: dict[str, Any] = {}
        if self.resources:
            out["resources"] = dict(self.resources)
        if self.priority:
            out["priority"] = self.priority
        if self.tags:
            out["tags"] = list(self.tags)
        if self.limit is not None:
            out["limit"] = self.limit
        return out


@dataclass(frozen=True)
class Workflow:
    """A validated workflow: what a run is made of."""

    name: str
    path: str  # absolute path of the source file
    raw: bytes  # the file's bytes, copied verbatim into the run
    workdir: str  # absolute
    env: StoredEnv  # as run.json stores it (see executioner.workflow.env); read it with env_items()
    jobs: tuple[JobSpec, ...]
    limits: dict[str, int] = field(default_factory=dict)  # name -> running jobs at once, pool-wide

    @property
    def suffix(self) -> str:
        return ".json" if self.path.endswith(".json") else ".yaml"

    def needs(self) -> dict[str, list[str]]:
        """job -> the jobs it depends on."""
        return {j.id: list(j.dependencies) for j in self.jobs}

    def dependents(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {j.id: [] for j in self.jobs}
        for j in self.jobs:
            for d in j.dependencies:
                out[d].append(j.id)
        return out


def load_workflow(path: str | bytes | os.PathLike[str] | os.PathLike[bytes], *,
                  recorded: bool = True, inputs: Callable[[str, str], str] | None = None) -> Workflow:
    """Read, parse and validate ``path``; raise WorkflowErrors with every problem found.

    ``recorded``: the run will record this file's path and directory (a submit, or a resume
    given a file), so a path that is not UTF-8 is refused. False for a run's own copy of its
    workflow, whose recorded path and workdir the caller keeps (the pool may be anywhere).
    ``inputs(job, written path)``: where to read an ``each_line`` file (a run reads its own
    copies); by default the written path, relative to the workflow file."""
    shown, raw = read(path, recorded)
    return _Validator(shown, raw, inputs).workflow(parse(raw, shown))


def _key(key: Any) -> str:
    """A key from the file as a message names it: itself if a string, cut short."""
    return cut(key) if isinstance(key, str) else show(key)


@dataclass
class _Entry:
    """A job as far as it could be read: its id and dependencies, and its spec if valid."""

    id: str
    dependencies: tuple[str, ...]
    spec: JobSpec | None = None
    elementwise: tuple[str, ...] = ()
    tasks: TaskSet | None = None  # None: a plain job (or an array whose tasks are wrong)
    array: bool = False  # written as an array (even if its task set is wrong)


class _Validator:
    """One pass over a parsed workflow that records every problem (see ``err``)."""

    def __init__(self, file: str, raw: bytes, inputs: Callable[[str, str], str] | None = None):
        self.file = file
        self.raw = raw
        self.inputs = inputs
        self.errors: list[WorkflowError] = []
        self.top_sizes: dict[str, int] = {}  # what the workflow's env values expand to
        self.top_total = 0
        self._levels: dict[int, tuple[dict[str, int], bool]] = {}  # see level_sizes
        self._id_suggestions = 0
        self._ids: NearNames | None = None
        self.bad_defaults = False  # a default is BAD: jobs that do not override it are too
        self.limits: dict[str, int] = {}

    def err(self, message: str, job: str | None = None, key: str | None = None) -> None:
        self.errors.append(WorkflowError(message, self.file, job, key))

    def failure(self) -> WorkflowErrors:
        """Every problem found: the first MAX_SHOWN, and a line counting the others."""
        shown = self.errors[:MAX_SHOWN]
        if len(self.errors) > MAX_SHOWN:
            shown.append(WorkflowError(f"… and {len(self.errors) - MAX_SHOWN} more problems", self.file))
        return WorkflowErrors(shown)

    def suggest(self, key: Any, choices: tuple[str, ...]) -> str:
        """A "did you mean", for a problem that will be shown (the others are only counted)."""
        return suggest(str(key), choices) if len(self.errors) < MAX_SHOWN else ""

    def suggest_id(self, dep: str, ids: Iterable[str]) -> str:
        """A "did you mean" among the job ids, for the first MAX_ID_SUGGESTIONS unknown ones
        (each costs a few milliseconds however many ids there are)."""
        self._id_suggestions += 1
        if self._id_suggestions > MAX_ID_SUGGESTIONS or len(self.errors) >= MAX_SHOWN:
            return ""
        if self._ids is None:
            self._ids = NearNames(ids)
        return self._ids.suggest(dep)

    # ---- the top level ----------------------------------------------------------------------
    def workflow(self, data: Any) -> Workflow:
        """The Workflow ``data`` describes, or WorkflowErrors with every problem in it."""
        if not isinstance(data, dict):
            self.err(f"the top level must be a mapping with a 'jobs' list, not {type_name(data)}")
            raise self.failure()
        for key in data:
            if key not in TOP_KEYS:
                self.err(f"unknown key{self.suggest(key, TOP_KEYS)}", key=_key(key))
        stem = os.path.splitext(os.path.basename(self.file))[0]
        name = data.get("name", re.sub(r"[^A-Za-z0-9_.-]", "_", stem).lstrip("._-") or "run")
        if not isinstance(name, str) or not JOB_ID_RE.fullmatch(name):
            self.err(f"must match {JOB_ID_RE.pattern} (it names the run's directory)", key="name")
        workdir = check_value("str", data.get("workdir", "."))
        if isinstance(workdir, Problem):
            self.err(workdir.message, key="workdir")
        env = self.top_env(data.get("env", {}))
        self.limits = self.top_limits(data.get("limits", {}))
        jobs = self.jobs(data.get("jobs"), self.defaults(data.get("defaults", {})))
        if self.errors:
            raise self.failure()
        here = os.path.dirname(os.path.abspath(self.file))
        return Workflow(name=name, path=os.path.abspath(self.file), raw=self.raw,
                        workdir=os.path.normpath(os.path.join(here, workdir)), env=stored_env(env),
                        jobs=tuple(jobs), limits=self.limits)

    def top_limits(self, value: Any) -> dict[str, int]:
        """``limits: {name: N}``: at most N jobs naming it in ``limit`` run at once, pool-wide."""
        if not isinstance(value, dict):
            self.err(f"must be a mapping of names to whole numbers, such as {{download: 4}}, not {type_name(value)}",
                     key="limits")
            return {}
        out: dict[str, int] = {}
        for name, n in value.items():
            if not isinstance(name, str) or not RESOURCE_NAME.fullmatch(name):
                self.err(f"{show(name)} is not a limit name ({RESOURCE_NAME.pattern})", key="limits")
            elif not is_whole(n, 1, MAX_COUNT):
                self.err(f"must be a whole number from 1 to {MAX_COUNT} (jobs at once), not {show(n)}",
                         key=f"limits.{name}")
            else:
                out[name] = n
        return out

    def check_limit(self, limit: Any, job: str | None, key: str) -> bool:
        """Whether ``limit`` (a checked value: a name or None) names an entry of ``limits``."""
        if limit is None or limit is BAD or limit in self.limits:
            return True
        have = f"the workflow's limits are {', '.join(sorted(self.limits))}" if self.limits else \
            "the workflow has no limits: mapping at its top level"
        self.err(f"{show(limit)} names no entry of limits ({have}){self.suggest(limit, tuple(self.limits))}",
                 job=job, key=key)
        return False

    def both_given(self, given: Any, job: str | None, prefix: str) -> bool:
        """One level (a job, or defaults) may give cpus, gpus and mem_gb in ``slurm:`` (their
        old spelling) or in ``resources:``, not both (which would win is no one's guess).
        False when both name the same one (reported)."""
        slurm, resources = given.get("slurm"), given.get("resources")
        if not isinstance(slurm, dict) or not isinstance(resources, dict):
            return False
        both = [k for k in SLURM_RESOURCES if k in slurm and k in resources]
        if both:
            self.err(f"{both[0]} is given in both slurm and resources: give it in resources only (both "
                     "backends read it there; slurm keeps partition, time and additional_parameters)",
                     job=job, key=f"{prefix}slurm.{both[0]}")
        return bool(both)

    def top_env(self, value: Any) -> dict[str, str]:
        """The workflow's env, checked and sized."""
        env = self.env(value, None)
        self.top_sizes = self.sizes(env, (), None, "env")
        self.top_total = sum(self.top_sizes.values())
        if self.top_total > MAX_JOB_ENV:
            self.err(f"would expand to {human(self.top_total)} in all; a job's env and the workflow's "
                     f"may expand to at most {human(MAX_JOB_ENV)} together", key="env")
            self.top_total = 0  # reported here, not again for every job
        return env

    def defaults(self, value: Any) -> dict[str, Any]:
        """Every option's value for a job that does not set it (BAD where the default given is
        wrong: reported here, once)."""
        if not isinstance(value, dict):
            self.err(f"must be a mapping, not {type_name(value)}", key="defaults")
            value = {}
        base = {key: default for key, (_, default) in JOB_OPTIONS.items()}
        for key, v in value.items():
            if key in OWN_KEYS:
                self.err("cannot be set in defaults", key=f"defaults.{_key(key)}")
            elif key not in JOB_OPTIONS:
                self.err(f"unknown key{self.suggest(key, tuple(JOB_OPTIONS))}", key=f"defaults.{_key(key)}")
            else:
                base[key] = self.value(key, v, None, f"defaults.{key}")
        if isinstance(base["env"], dict) and "env" in value:
            self.level_sizes(base["env"], None, "defaults.env")  # reported once, not per job
        if isinstance(value, dict) and self.both_given(value, None, "defaults."):
            base["resources"] = BAD
        if not self.check_limit(base["limit"], None, "defaults.limit"):
            base["limit"] = BAD
        self.bad_defaults = any(v is BAD for v in base.values())
        return base

    # ---- jobs ---------------------------------------------------------------------------------
    def jobs(self, items: Any, base: dict[str, Any]) -> list[JobSpec]:
        """Every job. Dependencies are checked for every job with a usable id, and cycles
        among the jobs that are otherwise valid, so that one pass reports every problem."""
        if items is None or not isinstance(items, list) or not items:
            problem = ("missing: a workflow needs a 'jobs' list" if items is None else
                       f"must be a list of jobs, not {type_name(items)}" if not isinstance(items, list) else
                       "is empty: a workflow needs at least one job")
            self.err(problem, key="jobs")
            return []
        entries: dict[str, _Entry] = {}
        folded: dict[str, str] = {}  # lower case -> the id first written so
        for index, item in enumerate(items):
            entry = self.job(index, item, base)
            if entry is None:
                continue
            if entry.id in entries:
                self.err("duplicate job id", job=entry.id, key="id")
                continue
            first = folded.setdefault(entry.id.lower(), entry.id)
            if first != entry.id:  # one file on a case-insensitive export (macOS, some NAS)
                self.err(f"ids {first!r} and {entry.id!r} differ only by case (a case-insensitive "
                         "filesystem would give them one file)", job=entry.id, key="id")
                continue
            entries[entry.id] = entry
        named = {item.get("id") for item in items if isinstance(item, dict) and isinstance(item.get("id"), str)}
        for entry in entries.values():
            for dep in entry.dependencies:
                if dep not in entries and dep not in named:
                    self.err(f"unknown dependency {show(dep)}{self.suggest_id(dep, entries)}",
                             job=entry.id, key="dependencies")
                elif dep == entry.id:
                    self.err("a job cannot depend on itself", job=entry.id, key="dependencies")
            for dep in entry.elementwise:
                self.check_elementwise(entry, entries.get(dep))
        arrays = {e.id for e in entries.values() if e.array}
        for entry in entries.values():  # a chunk of array A is the file A.<lo>-<hi>.json
            stem, dot, tail = entry.id.rpartition(".")
            if dot and stem in arrays and CHUNK_TAIL.fullmatch(tail):
                self.err(f"looks like a chunk of array {stem!r} (its files are {stem}.<first>-<last>.json): "
                         "rename the job", job=entry.id, key="id")
        specs = [e.spec for e in entries.values() if e.spec is not None]
        cycle = _find_cycle({s.id: s.dependencies for s in specs})
        if cycle:
            shown = cycle if len(cycle) <= 12 else [*cycle[:6], f"… ({len(cycle) - 10} more)", *cycle[-4:]]
            self.err(f"dependency cycle: {' -> '.join(shown)} (each job depends on the next)",
                     job=cycle[0], key="dependencies")
        return specs

    def check_elementwise(self, entry: _Entry, upstream: _Entry | None) -> None:
        """``dependencies: ["sim:{index}"]``: both arrays, of the same length."""
        if upstream is None:
            return  # unknown: reported already
        key, dep = "dependencies", f"{upstream.id}{TASK_SEP}{EACH}"
        if not entry.array:
            self.err(f"{show(dep)}: only an array (matrix, array or each_line) can depend on another "
                     f"array's tasks one by one; depend on {show(upstream.id)} to wait for all of it",
                     job=entry.id, key=key)
        elif not upstream.array:
            self.err(f"{show(dep)}: {show(upstream.id)} is not an array; depend on {show(upstream.id)}",
                     job=entry.id, key=key)
        elif entry.tasks is not None and upstream.tasks is not None and len(entry.tasks) != len(upstream.tasks):
            self.err(f"{show(dep)}: task i waits for task i of {show(upstream.id)}, but this array has "
                     f"{len(entry.tasks):,} tasks and {show(upstream.id)} has {len(upstream.tasks):,}",
                     job=entry.id, key=key)

    def dependencies(self, deps: Any, job_id: str) -> tuple[tuple[str, ...], tuple[str, ...], bool]:
        """The upstream job ids, those of them depended on task by task, and whether all is well."""
        deps = [] if deps is None else deps
        if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
            self.err("must be a list of job ids", job=job_id, key="dependencies")
            return (), (), False
        if not any(TASK_SEP in d for d in deps):  # job ids only (the usual case)
            return tuple(dict.fromkeys(deps)), (), True
        ids: list[str] = []
        each: list[str] = []
        ok = True
        for dep in deps:
            upstream, task = split_task(dep)
            if task is None:
                ids.append(dep)
            elif task == EACH:
                ids.append(upstream)
                each.append(upstream)
            else:
                self.err(f"{show(dep)}: a dependency names a job, or {show(upstream + TASK_SEP + EACH)} for "
                         "task i of an array (one task of another array is not a dependency)",
                         job=job_id, key="dependencies")
                ok = False
        whole = set(deps)  # written as a job id: waits for all of it, task by task or not
        return tuple(dict.fromkeys(ids)), tuple(e for e in dict.fromkeys(each) if e not in whole), ok

    def tasks(self, item: dict[str, Any], job_id: str) -> tuple[bool, TaskSet | None]:
        """Whether the job is an array, and its checked task set (None: reported, or plain)."""
        given = [k for k in ARRAY_KEYS if k in item]
        if not given:
            if "chunk" in item:
                self.err("only an array (matrix, array or each_line) is claimed in chunks", job=job_id, key="chunk")
            return False, None
        if len(given) > 1:
            self.err(f"a job may have one of {', '.join(ARRAY_KEYS)}, not {' and '.join(given)}",
                     job=job_id, key=given[1])
            return True, None
        key = given[0]
        if key == "array":
            tasks = check_array(item[key])
        elif key == "matrix":
            tasks = check_matrix(item[key])
        else:
            tasks = check_lines(item[key], *self.read_lines(job_id, item[key]))
        if isinstance(tasks, Problem):
            self.err(tasks.message, job=job_id, key=key)
            return True, None
        if "chunk" in item:
            chunk = check_chunk(item["chunk"])
            if isinstance(chunk, Problem):
                self.err(chunk.message, job=job_id, key="chunk")
                return True, None
            tasks = dataclasses.replace(tasks, chunk=chunk)
        return True, tasks

    def read_lines(self, job_id: str, source: Any) -> tuple[bytes | None, str | None]:
        """The bytes of an ``each_line`` file (or why not), read once, with a bound."""
        if not isinstance(source, str) or not source or text_problem(source):
            return None, None
        if self.inputs is not None:
            path = self.inputs(job_id, source)
        else:
            path = os.path.join(os.path.dirname(os.path.abspath(self.file)), source)
        # A run reads its own copy: a problem names that copy (the user's file is not read).
        copy = "" if self.inputs is None else f"the run's copy of it, {path}, "
        try:
            raw = read_bounded(path, MAX_LINES_BYTES)
        except FileNotFoundError:
            return None, f"{copy}is missing" if copy else \
                "no such file (an each_line path is relative to the workflow file)"
        except IsADirectoryError:
            return None, f"{copy}is a directory"
        except OSError as e:
            return None, f"{copy}cannot be read ({e.strerror})"
        if len(raw) > MAX_LINES_BYTES:
            return None, f"larger than {MAX_LINES_BYTES // 1_000_000:,} MB: not read"
        return raw, None

    def check_placeholders(self, spec: JobSpec) -> bool:
        """Every placeholder of an array names something the array has; a plain job has none
        (its braces are left alone)."""
        if spec.tasks is None:
            return True
        have = spec.tasks.names
        texts: list[tuple[str, str]] = []
        texts += [("command", a) for a in ((spec.command,) if isinstance(spec.command, str) else spec.command)]
        texts += [("env", v) for v in spec.env.values()]
        texts += [("workdir", spec.workdir)] if spec.workdir else []
        texts += [("outputs", o) for o in spec.outputs]
        ok = True
        for key, text in texts:
            for name in placeholders(text):
                if name not in have:
                    shown = ", ".join("{" + n + "}" for n in have)
                    self.err(f"placeholder {{{name}}} names nothing (this array has {shown}; write "
                             f"{{{{{name}}}}} for a literal {{{name}}})", job=spec.id, key=key)
                    ok = False
                    break
        return ok

    def job(self, index: int, item: Any, base: dict[str, Any]) -> _Entry | None:
        """Job ``index`` (its id, dependencies and, when nothing else is wrong, its spec), or
        None when it has no usable id. Every problem is reported."""
        label = f"#{index + 1}"
        if not isinstance(item, dict):
            self.err(f"must be a mapping, not {type_name(item)}", job=label)
            return None
        job_id = item.get("id")
        if job_id is None:
            self.err("missing", job=label, key="id")
            return None
        if not isinstance(job_id, str) or not JOB_ID_RE.fullmatch(job_id):
            self.err(f"{show(job_id)} must match {JOB_ID_RE.pattern} (no '/', no spaces; it becomes a "
                     "file name)", job=label, key="id")
            return None
        options = dict(base)
        ok = True
        for key, value in item.items():
            if key in JOB_OPTIONS:
                options[key] = self.value(key, value, job_id, key)
                ok = ok and options[key] is not BAD
            elif key not in OWN_KEYS:
                self.err(f"unknown key{self.suggest(key, JOB_KEYS)}", job=job_id, key=_key(key))
                ok = False
        command = self.command(item.get("command"), job_id)
        deps, each, deps_ok = self.dependencies(item.get("dependencies"), job_id)
        array, tasks = self.tasks(item, job_id)
        entry = _Entry(job_id, deps, elementwise=each, tasks=tasks, array=array)
        ok = ok and deps_ok and (tasks is not None or not array)
        if not ok or command is None or (self.bad_defaults and any(v is BAD for v in options.values())):
            return entry
        if "limit" in item and not self.check_limit(options["limit"], job_id, "limit"):
            return entry
        if self.both_given(item, job_id, ""):
            return entry
        own = options["resources"] if "resources" in item else {}
        if "slurm" in item:  # per key, over the defaults
            options["slurm"] = _over(base["slurm"], options["slurm"])
        if array:  # slurm's cpus, gpus and mem_gb are a Slurm element's, for several tasks at once
            options["resources"] = {**base["resources"], **own}
        else:  # one resources for both backends: slurm's (the old spelling) moved in, per level
            old = [_moved(base["slurm"]), base["resources"], _moved(options["slurm"] if "slurm" in item else {}), own]
            options["resources"] = {k: v for level in old for k, v in level.items()}
            options["slurm"] = {k: v for k, v in options["slurm"].items() if k not in SLURM_RESOURCES}
        spec = JobSpec(id=job_id, command=command, dependencies=entry.dependencies, tasks=tasks,
                       elementwise=each, **options)
        if self.job_sizes(spec, own_env="env" in item) and self.check_placeholders(spec):
            entry.spec = spec
        return entry

    def command(self, command: Any, job_id: str) -> str | tuple[str, ...] | None:
        """The checked command, or None (reported)."""
        if command is None:
            self.err("missing", job=job_id, key="command")
            return None
        if isinstance(command, str):
            problem = "is empty" if not command.strip() else text_problem(command)
        elif isinstance(command, list):
            problem = None if command else "a list command must be a non-empty list of strings"
            for i, a in enumerate(command, 1):
                if not (isinstance(a, str) or is_number(a)):
                    problem = "a list command must be a non-empty list of strings"
                elif bad := text_problem(str(a)):
                    problem = f"argument {i}: {bad}"
                if problem:
                    break
            else:
                command = tuple(str(a) for a in command)
        else:
            problem = f"must be a string or a list of strings, not {type_name(command)}{_flow_hint(command)}"
        # A job record is read with a cap (executioner.protocol.records.JOB_RECORD_MAX): a command
        # that would make one past it would be quarantined at its first read, rebuilt, and again.
        # Linux runs no argument longer than 128 kB anyway.
        if not problem and isinstance(command, str) and len(command) > MAX_VALUE:
            problem = f"is {human(len(command))} long; a command may be at most {human(MAX_VALUE)}"
        elif not problem and isinstance(command, tuple) and (size := sum(map(len, command))) > MAX_JOB_ENV:
            problem = f"its arguments are {human(size)} together; at most {human(MAX_JOB_ENV)}"
        if problem:
            self.err(problem, job=job_id, key="command")
            return None
        return command  # type: ignore[no-any-return]

    def value(self, key: str, value: Any, job: str | None, shown_key: str) -> Any:
        """The checked value of option ``key``, or BAD (reported)."""
        kind = JOB_OPTIONS[key][0]
        result = check_value(kind, value)
        if isinstance(result, Problem):
            self.err(result.message, job=job, key=shown_key)
            return BAD
        if kind == "env":
            before = len(self.errors)
            env = self.env(value, job, shown_key)
            return env if len(self.errors) == before else BAD
        return result

    # ---- environments ---------------------------------------------------------------------------
    def env(self, value: Any, job: str | None, key: str = "env") -> dict[str, str]:
        """An env level (names to strings, in written order), its problems reported."""
        if not isinstance(value, dict):
            self.err(f"must be a mapping of names to strings, not {type_name(value)}", job=job, key=key)
            return {}
        out: dict[str, str] = {}
        for name, v in value.items():
            if not isinstance(name, str) or not NAME.fullmatch(name):
                self.err(f"{show(name)} is not a valid variable name", job=job, key=key)
            elif not (isinstance(v, str) or is_number(v)):
                self.err(f"{cut(name)} must be a string or a finite number, not {show(v)}", job=job, key=key)
            elif problem := text_problem(str(v)):
                self.err(f"{cut(name)}: {problem}", job=job, key=key)
            else:
                out[name] = str(v)
        return out

    def sizes(self, env: dict[str, str], outer: tuple[dict[str, int], ...], job: str | None,
              key: str) -> dict[str, int]:
        """What each value of ``env`` expands to (see executioner.workflow.env), a value past
        MAX_VALUE reported and then counted as empty, so that what refers to it is not."""
        sizes, over = expanded_sizes(env, *outer, limit=MAX_VALUE)
        for name, size in over:
            self.err(f"{cut(name)} would expand to {human(size)}; a value may expand to at most "
                     f"{human(MAX_VALUE)}", job=job, key=key)
        return sizes

    def level_sizes(self, env: dict[str, str], job: str | None, key: str) -> tuple[dict[str, int], bool]:
        """The sizes of a job level over the workflow's env, and whether it is within bounds.
        A shared level (``defaults: {env}``, ``job`` None) is computed and reported once."""
        cached = self._levels.get(id(env)) if job is None else None
        if cached is None:
            before = len(self.errors)
            sizes = self.sizes(env, (self.top_sizes,), job, key)
            total = self.top_total
            for name, size in sizes.items():
                total += size - self.top_sizes.get(name, 0)
            if total > MAX_JOB_ENV:
                self.err(f"would expand to {human(total)} with the workflow's env; a job's env and the "
                         f"workflow's may expand to at most {human(MAX_JOB_ENV)} together", job=job, key=key)
            cached = (sizes, len(self.errors) == before)
            if job is None:
                self._levels[id(env)] = cached
        return cached

    def job_sizes(self, spec: JobSpec, own_env: bool) -> bool:
        """Refuse (and report) a job whose env or list command expands past the bounds."""
        sizes, ok = self.level_sizes(spec.env, spec.id if own_env else None, "env" if own_env else "defaults.env")
        if isinstance(spec.command, tuple):
            for i, arg in enumerate(spec.command, 1):
                if "${" in arg and (size := expanded_size(arg, sizes, self.top_sizes)) > MAX_VALUE:
                    self.err(f"argument {i} would expand to {human(size)}; at most {human(MAX_VALUE)}",
                             job=spec.id, key="command")
                    ok = False
        return ok


def _flow_hint(value: Any) -> str:
    """Unquoted, ``command: {index}`` is a YAML mapping {"index": null}: say so."""
    if isinstance(value, dict) and len(value) == 1 and next(iter(value.values())) is None:
        return f" (unquoted, YAML reads {{{_key(next(iter(value)))}}} as a mapping: quote the value)"
    return ""


def _over(base: Any, own: dict[str, Any]) -> dict[str, Any]:
    """A job's ``slurm`` over the defaults' (``base``), key by key, additional_parameters too."""
    if not isinstance(base, dict):
        return own
    extra = {**base.get("additional_parameters", {}), **own.get("additional_parameters", {})}
    merged = {**base, **own}
    if extra:
        merged["additional_parameters"] = extra
    return merged


def _moved(slurm: Any) -> dict[str, Any]:
    """The cpus, gpus and mem_gb of a ``slurm:`` mapping."""
    return {k: slurm[k] for k in SLURM_RESOURCES if k in slurm} if isinstance(slurm, dict) else {}


def _find_cycle(needs: dict[str, tuple[str, ...]]) -> list[str] | None:
    """A dependency cycle among ``needs`` (job -> the distinct jobs it needs; other names and
    the job itself are ignored), as a path in which each job needs the next, or None. Jobs
    whose needs can all be met are peeled off (Kahn); every job left needs another one left,
    so following needs from any of them comes back to a job already on the path. No
    recursion; O(jobs + edges)."""
    waiting: dict[str, int] = {}
    needed_by: dict[str, list[str]] = {}
    for j, ds in needs.items():
        count = 0
        for d in ds:
            if d in needs and d != j:
                count += 1
                needed_by.setdefault(d, []).append(j)
        waiting[j] = count
    ready = [j for j, n in waiting.items() if n == 0]
    while ready:
        for k in needed_by.get(ready.pop(), ()):
            waiting[k] -= 1
            if waiting[k] == 0:
                ready.append(k)
    left = {j for j, n in waiting.items() if n > 0}
    if not left:
        return None
    path: list[str] = []
    position: dict[str, int] = {}
    at = min(left)
    while at not in position:
        position[at] = len(path)
        path.append(at)
        at = next(d for d in needs[at] if d in left and d != at)
    return path[position[at]:] + [at]
