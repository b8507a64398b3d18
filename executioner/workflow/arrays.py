"""Task arrays: one job definition, many tasks (``matrix``, ``array``, ``each_line``).

A job with exactly one of these keys is an *array*; its tasks are numbered by position
0..N-1 and named ``<job>:<index>``:

- ``array: N`` gives tasks 0..N-1, ``{index}`` = the position; ``array: {start, stop,
  step}`` gives the values of ``range(start, stop, step)``, and then ``{index}`` (and the
  task's name) is the value, as Slurm's ``--array=start-stop:step`` would number it.
- ``matrix: {key: [values], ...}`` gives the cartesian product, the first key varying
  slowest (as nested loops written in that order); ``{<key>}`` is the task's value and
  ``{index}`` its position.
- ``each_line: FILE`` gives one task per non-empty line of FILE (relative to the workflow
  file, read when the workflow is read): ``{line}`` is the line without its line break,
  ``{index}`` its position among the non-empty lines.

Placeholders (:class:`Template`) are ``{name}`` with ``name`` an identifier, not preceded
by ``$`` (so ``${VAR}`` is the environment's): they are substituted in ``command``, ``env``
values, ``workdir`` and ``outputs``. Every other brace is left as written (``awk '{print
$1}'``, JSON, ``}}`` closing nested JSON); ``{{name}}`` gives a literal ``{name}``. A
placeholder naming nothing is a validation error. Plain jobs have no placeholders. In a
string command (run by ``/bin/sh -c``) each value is quoted for the shell, as GNU parallel
quotes its replacement strings: ``gzip -k {line}`` is safe for a line ``my file; rm -rf ~``;
do not put quotes around a placeholder. In a list command, env, workdir and outputs the
value is inserted as it is.

Nothing here materialises a million tasks: a :class:`TaskSet` computes a task's values
from its position.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
import shlex
from dataclasses import dataclass, field
from typing import Any, Final, Iterator, Literal

from .parse import cut, show
from .values import Problem, is_number, is_whole, text_problem, type_name

MAX_TASKS: Final = 10_000_000  # per array: 10 M tasks are a few thousand chunk files
MAX_LINES_BYTES: Final = 1_000_000_000  # an each_line file is read whole at submit
MAX_CHUNK: Final = 100_000
MAX_LINE: Final = 100_000  # characters of one each_line line (it becomes an argument)
ARRAY_KEYS: Final = ("matrix", "array", "each_line")
TASK_SEP: Final = ":"  # sim:4 names task 4 of array sim
EACH: Final = "{index}"  # "sim:{index}": element-wise dependency on task i of sim
IDENT: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
RESERVED: Final = ("index", "line")  # placeholders every array has or each_line has
# {{name}} (a literal {name}), or {name} not after a '$'
_PLACEHOLDER: Final = re.compile(r"\{\{([A-Za-z_][A-Za-z0-9_]*)\}\}|(?<!\$)\{([A-Za-z_][A-Za-z0-9_]*)\}")
Kind = Literal["matrix", "array", "each_line"]


@dataclass(frozen=True)
class Template:
    """A string with placeholders, split once: literal parts between placeholder names."""

    parts: tuple[str, ...]  # literal, name, literal, name, ..., literal
    text: str

    @classmethod
    def parse(cls, text: str) -> "Template":
        return _parse(text)

    @classmethod
    def _split(cls, text: str) -> "Template":
        parts: list[str] = []
        at = 0
        literal = ""
        for m in _PLACEHOLDER.finditer(text):
            literal += text[at:m.start()]
            if m.group(1) is not None:  # {{name}}: the literal {name}
                literal += "{" + m.group(1) + "}"
            else:
                parts += [literal, m.group(2)]
                literal = ""
            at = m.end()
        parts.append(literal + text[at:])
        return cls(tuple(parts), text)

    @property
    def names(self) -> tuple[str, ...]:
        return self.parts[1::2]

    def render(self, values: dict[str, str], shell: bool = False) -> str:
        """The text with each placeholder's value; with ``shell`` (a string command), each
        value quoted for /bin/sh as GNU parallel does, so that a line holding spaces, quotes
        or ``;`` is one word and never code (a value of safe characters is unchanged)."""
        if len(self.parts) == 1:
            return self.parts[0]
        out = []
        for i, part in enumerate(self.parts):
            out.append((shlex.quote(values[part]) if shell else values[part]) if i % 2 else part)
        return "".join(out)


@functools.lru_cache(maxsize=1024)
def _parse(text: str) -> Template:
    """Parsed once per text: every task of a chunk renders the same few templates."""
    return Template._split(text)


def placeholders(text: str) -> tuple[str, ...]:
    """The placeholder names ``text`` uses."""
    return Template.parse(text).names


@dataclass(frozen=True)
class TaskSet:
    """The tasks of an array job, computed from a task's position."""

    kind: Kind
    count: int
    start: int = 0  # array: {index} = start + step * position
    step: int = 1
    keys: tuple[str, ...] = ()  # matrix: its keys in written order
    values: tuple[tuple[str, ...], ...] = ()  # matrix: each key's values, as text
    lines: tuple[str, ...] = ()  # each_line: the non-empty lines
    source: str | None = None  # each_line: the file as written in the workflow
    raw: bytes = field(default=b"", repr=False)  # each_line: the file's bytes, copied into the run
    chunk: int | None = None  # tasks claimed together; None: automatic (see chunk_size)

    def __len__(self) -> int:
        return self.count

    @property
    def names(self) -> tuple[str, ...]:
        """The placeholders a task of this array has."""
        if self.kind == "matrix":
            return ("index", *self.keys)
        return ("index", "line") if self.kind == "each_line" else ("index",)

    def index(self, position: int) -> int:
        """The task's number: its name is ``<job>:<index>``."""
        return self.start + self.step * position if self.kind == "array" else position

    def position(self, index: int) -> int | None:
        """The position of the task numbered ``index``, or None if there is none."""
        if self.kind != "array":
            return index if 0 <= index < self.count else None
        offset = index - self.start
        if offset % self.step:
            return None
        pos = offset // self.step
        return pos if 0 <= pos < self.count else None

    def params(self, position: int) -> dict[str, str]:
        """The values of a task's placeholders (``index`` included), all text."""
        out = {"index": str(self.index(position))}
        if self.kind == "matrix":
            rest = position
            picked = []
            for values in reversed(self.values):  # the last key varies fastest
                rest, i = divmod(rest, len(values))
                picked.append(values[i])
            out.update(zip(self.keys, reversed(picked)))
        elif self.kind == "each_line":
            out["line"] = self.lines[position]
        return out

    def describe(self) -> dict[str, Any]:
        """How the job file and the definition hash store the task set (lines by count and
        content hash: the lines themselves are in the run's copy of the file)."""
        out: dict[str, Any] = {"kind": self.kind, "count": self.count, "chunk": self.chunk}
        if self.kind == "array":
            out.update(start=self.start, step=self.step)
        elif self.kind == "matrix":
            out["matrix"] = {k: list(v) for k, v in zip(self.keys, self.values)}
        else:
            out.update(source=self.source, sha256=hashlib.sha256(self.raw).hexdigest())
        return out


def chunk_size(count: int, chunk: int | None = None) -> int:
    """Tasks per chunk file: ``chunk`` if the workflow sets it, else at least 256 chunks of
    at most 64 tasks while that is possible (so 100 tasks on 100 workers are 100 claims),
    and never more than 2,000 chunks (a million tasks: 2,000 files of 500 tasks)."""
    if chunk:
        return max(1, min(chunk, count))
    return max(1, math.ceil(count / 2000), min(64, math.ceil(count / 256)))


def chunks(count: int, size: int) -> Iterator[tuple[int, int]]:
    """The chunks' position ranges, first and last position included."""
    for lo in range(0, count, size):
        yield lo, min(lo + size, count) - 1


def check_array(value: Any) -> TaskSet | Problem:
    """``array: N`` or ``array: {start, stop, step}``."""
    if is_whole(value, 1, MAX_TASKS):
        return TaskSet("array", value)
    if isinstance(value, dict):
        unknown = [k for k in value if k not in ("start", "stop", "step")]
        if unknown:
            return Problem(f"unknown key {show(unknown[0])} (an array range has start, stop and step)")
        start, stop, step = value.get("start", 0), value.get("stop"), value.get("step", 1)
        if stop is None:
            return Problem("a range needs 'stop' (the first value not included, as in Python's range)")
        for name, v in (("start", start), ("stop", stop), ("step", step)):
            if not is_whole(v, -10**15, 10**15):
                return Problem(f"{name} must be a whole number, not {show(v)}")
        if step == 0:
            return Problem("step cannot be 0")
        count = len(range(start, stop, step))
        if count == 0:
            return Problem(f"range({start}, {stop}, {step}) has no values")
        if count > MAX_TASKS:
            return Problem(f"range({start}, {stop}, {step}) has {count:,} values; an array may have at most {MAX_TASKS:,}")
        return TaskSet("array", count, start=start, step=step)
    return Problem(f"must be a number of tasks (1 to {MAX_TASKS:,}) or a mapping {{start, stop, step}}, "
                   f"not {show(value)}")


def check_matrix(value: Any) -> TaskSet | Problem:
    """``matrix: {key: [values], ...}``: the cartesian product, first key slowest."""
    if not isinstance(value, dict) or not value:
        return Problem(f"must be a mapping of names to lists of values, not {show(value) if value == {} else type_name(value)}")
    keys: list[str] = []
    values: list[tuple[str, ...]] = []
    count = 1
    for key, items in value.items():
        if not isinstance(key, str) or not IDENT.fullmatch(key):
            return Problem(f"{show(key)} is not a placeholder name (a letter or _, then letters, digits, _)")
        if key in RESERVED:
            return Problem(f"{key!r} is reserved ({{{key}}} is set for every task)")
        if not isinstance(items, list) or not items:
            return Problem(f"{cut(key)} must be a non-empty list of values, not {show(items)}")
        texts = []
        for v in items:
            if not (isinstance(v, str) or is_number(v)):
                return Problem(f"{cut(key)}: {show(v)} is not a string or a number")
            text = v if isinstance(v, str) else str(v)
            if problem := text_problem(text):
                return Problem(f"{cut(key)}: {problem}")
            texts.append(text)
        if len(set(texts)) != len(texts):
            dup = next(t for t in texts if texts.count(t) > 1)
            return Problem(f"{cut(key)} lists {show(dup)} twice (two tasks would be the same)")
        keys.append(key)
        values.append(tuple(texts))
        count *= len(texts)
        if count > MAX_TASKS:
            return Problem(f"makes more than {MAX_TASKS:,} tasks")
    return TaskSet("matrix", count, keys=tuple(keys), values=tuple(values))


def check_lines(source: Any, raw: bytes | None, why: str | None) -> TaskSet | Problem:
    """``each_line: FILE``, with the file's bytes (or why they could not be read)."""
    if not isinstance(source, str) or not source or text_problem(source):
        return Problem(f"must be the path of a file of inputs, one per line, not {show(source)}")
    if raw is None:
        return Problem(f"{show(source)}: {why}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        return Problem(f"{show(source)} line {line}: not UTF-8")
    lines = []
    for number, line in enumerate(text.split("\n"), 1):
        line = line[:-1] if line.endswith("\r") else line
        if not line.strip():
            continue
        if "\0" in line:
            return Problem(f"{show(source)} line {number}: contains a NUL character (\\0)")
        if len(line) > MAX_LINE:
            return Problem(f"{show(source)} line {number}: longer than {MAX_LINE:,} characters")
        lines.append(line)
    if not lines:
        return Problem(f"{show(source)} has no non-empty line (no task)")
    if len(lines) > MAX_TASKS:
        return Problem(f"{show(source)} has {len(lines):,} lines; an array may have at most {MAX_TASKS:,}")
    return TaskSet("each_line", len(lines), lines=tuple(lines), source=source, raw=raw)


def check_chunk(value: Any) -> int | Problem:
    return value if is_whole(value, 1, MAX_CHUNK) else Problem(
        f"must be a whole number of tasks from 1 to {MAX_CHUNK:,}, not {show(value)}")


def split_task(name: str) -> tuple[str, str | None]:
    """``sim:4`` -> ("sim", "4"); ``sim`` -> ("sim", None)."""
    job, sep, rest = name.partition(TASK_SEP)
    return (job, rest) if sep else (name, None)
