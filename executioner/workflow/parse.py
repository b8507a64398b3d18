"""Turn a workflow file's bytes into plain data, refusing what would hurt to read.

YAML is read by a strict safe loader (libyaml's parser when PyYAML has it, else PyYAML's
own): a key given twice in one mapping is refused, merge keys (``<<: *base``) work, aliases
may not expand a document past ``max(MAX_EXPANSION, EXPANSION_RATIO x its written nodes)``
(the "billion laughs"), nor contain themselves, and nothing may nest deeper than
``MAX_DEPTH``. JSON is read by the standard library, with the same depth bound, the same
refusal of duplicate keys, and no NaN, Infinity or numbers too long to convert. Every
refusal is one :class:`WorkflowError` with a line and column where the format gives one.
:func:`show` is how any value from the file is quoted in a message.
"""

from __future__ import annotations

import codecs
import json
import os
import re
import reprlib
from typing import Any, Final

import yaml

from ..errors import WorkflowError, WorkflowErrors

MAX_DEPTH: Final = 100  # collections inside collections, counted through aliases
MAX_EXPANSION: Final = 100_000  # nodes a document may always expand to through aliases ...
EXPANSION_RATIO: Final = 10  # ... or this many times the nodes it writes, if more
MAX_INT_BITS: Final = 1000  # about 300 digits; longer numbers cannot even be printed safely
SHOWN_CHARS: Final = 80  # a value quoted in a message is cut to this many characters
MAX_FILE_BYTES: Final = 100_000_000  # a workflow of a million jobs is about 50 MB of JSON

_PLACEHOLDER_BYTES: Final = re.compile(rb"(?<!\$)\{[A-Za-z_][A-Za-z0-9_]*\}")
_MERGE_TAG: Final = "tag:yaml.org,2002:merge"
_STR_TAG: Final = "tag:yaml.org,2002:str"
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 3, SHOWN_CHARS, SHOWN_CHARS
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 5


def cut(text: str, limit: int = SHOWN_CHARS) -> str:
    """``text``, or its first ``limit`` characters and "…"."""
    return text if len(text) <= limit else text[:limit] + "…"


def show(value: Any) -> str:
    """``value`` quoted for a message (like ``repr``), never longer than about 80 characters."""
    if isinstance(value, str):
        return repr(value[:SHOWN_CHARS]) + ("…" if len(value) > SHOWN_CHARS else "")
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > MAX_INT_BITS:
        return "<a number too large to print>"
    return cut(_REPR.repr(value))


def read(path: str | bytes | os.PathLike[str] | os.PathLike[bytes],
         recorded: bool = True) -> tuple[str, bytes]:
    """The workflow's path as shown in messages, and its bytes; or WorkflowErrors. A path
    that will be ``recorded`` in JSON must be UTF-8."""
    shown = os.fsdecode(path)  # bytes that are not UTF-8 become lone surrogates
    problem = _path_problem(shown, recorded)
    if problem:
        raise _one(problem, _printable(shown))
    try:
        raw = read_bounded(shown, MAX_FILE_BYTES)
    except OSError as e:
        raise _one(f"cannot read: {e.strerror}", shown) from None
    if len(raw) > MAX_FILE_BYTES:
        raise _one(f"larger than {MAX_FILE_BYTES // 1000:,} kB: not read", shown)
    return shown, raw


def read_bounded(path: str, limit: int) -> bytes:
    """The bytes of ``path``, at most ``limit`` + 1 of them (more means too large). Read in
    pieces: ``read(limit + 1)`` would reserve the whole limit first, whatever the file's size."""
    parts = []
    size = 0
    with open(path, "rb") as f:
        while size <= limit:
            part = f.read(min(1 << 20, limit + 1 - size))
            if not part:
                break
            parts.append(part)
            size += len(part)
    return b"".join(parts)


def _path_problem(shown: str, recorded: bool) -> str | None:
    """Why the workflow's path cannot be used, if it cannot. A run records the workflow's
    absolute path and working directory in JSON, which holds only UTF-8: a name in another
    encoding (a lone surrogate once decoded) is refused here, before anything is written,
    rather than stored in a form other readers would have to undo."""
    if "\0" in shown:
        return "the path contains a NUL character"
    try:
        absolute = os.path.abspath(shown)
    except OSError as e:  # the current directory was removed
        return f"cannot resolve the path: {e.strerror}"
    if _utf8(absolute) or not recorded:
        return None
    whose = "this path" if not _utf8(shown) else f"its full path {_printable(absolute)}"
    return (f"{whose} is not valid UTF-8 (a directory or file name in another encoding), and a run "
            "records it in JSON: rename it, or work from a directory whose path is UTF-8")


def _utf8(text: str) -> bool:
    """Whether ``text`` can be written as UTF-8 (it holds no lone surrogate)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _printable(path: str) -> str:
    """``path`` with the bytes that are not UTF-8 shown as ``\\xNN``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def parse(raw: bytes, shown: str) -> Any:
    """The data in ``raw`` (JSON when ``shown`` ends in ``.json``, else YAML), or WorkflowErrors."""
    try:
        if shown.endswith(".json"):
            data = _parse_json(raw)
        else:
            data = _load_yaml(raw)
    except RecursionError:  # PyYAML's own composer, without libyaml, recurses per level
        raise _one(f"nested too deeply (more than {MAX_DEPTH} levels)", shown) from None
    except _Refused as e:
        raise _one(str(e), shown) from None
    except yaml.YAMLError as e:
        raise _one(_yaml_message(e, raw), shown) from None
    return data


_PLAIN_YAML_REFUSES: Final = (b"*", b"<<", b"!")  # an alias, a merge key, a tag


def _load_yaml(raw: bytes) -> Any:
    """YAML through the strict loader. A document without an alias, a merge key or a tag
    (none of ``*``, ``<<``, ``!`` anywhere in it: the usual workflow) is one tree whose data
    nests exactly as its nodes do, so its aliases need no check (it has none) and its depth
    is checked on the data (:func:`_too_deep`), not node by node: at 100,000 jobs that
    walk of a million nodes cost more than the parse. A document too deep is loaded again
    the long way, which refuses it with its line and column."""
    if not any(mark in raw for mark in _PLAIN_YAML_REFUSES):
        data = yaml.load(raw, Loader=_PLAIN[_LOADER])  # noqa: S506 - a SafeLoader (safe) subclass
        if not _too_deep(data):
            return data
    return yaml.load(raw, Loader=_LOADER)  # noqa: S506 - a SafeLoader (safe) subclass


def _too_deep(data: Any) -> bool:
    """Whether ``data`` (from a document without aliases, merges or tags) has a node deeper
    than MAX_DEPTH, counted as :func:`check_nodes` counts: a scalar is one level, and a
    collection one more than its deepest key or item."""
    level = [data] if type(data) in (dict, list) else []
    for depth in range(1, MAX_DEPTH + 1):
        below: list[Any] = []
        for value in level:
            if depth == MAX_DEPTH and value:  # its keys or items are one level too deep
                return True
            for x in value.values() if type(value) is dict else value:
                if type(x) is dict or type(x) is list:
                    below.append(x)
        if not below:
            return False
        level = below
    return False


class _Refused(Exception):
    """A problem found while reading, already phrased as a message."""


def _one(message: str, shown: str) -> WorkflowErrors:
    """One problem of the whole file."""
    return WorkflowErrors([WorkflowError(message, shown)])


def _position(raw: bytes, offset: int) -> str:
    """The words " at line L, column C" for a byte offset into ``raw`` (a column counts
    characters)."""
    start = raw.rfind(b"\n", 0, offset) + 1
    line = raw.count(b"\n", 0, offset) + 1
    column = len(raw[start:offset].decode("utf-8-sig" if start == 0 else "utf-8", "replace")) + 1
    return f" at line {line}, column {column}"


# ---- JSON -----------------------------------------------------------------------------------
def _parse_json(raw: bytes) -> Any:
    """JSON through the standard library, which lets every object be checked for a key given
    twice (orjson keeps the last silently) in the same single pass."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        where = _position(raw, e.start)
        raise _Refused(f"not valid JSON{where}: byte 0x{raw[e.start]:02x} is not UTF-8") from None
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant,
                          parse_int=_json_int)
    except json.JSONDecodeError as e:
        raise _Refused(f"not valid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    _check_depth(data)
    return data


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, refused when a key appears twice in it."""
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        twice = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise _Refused(f"not valid JSON: key {show(twice)} appears twice in one object")
    return out


def _no_constant(name: str) -> Any:
    """NaN, Infinity and -Infinity: not JSON, and not a usable number."""
    raise _Refused(f"not valid JSON: {name} is not a JSON number")


def _json_int(digits: str) -> int:
    """An integer, refused before ``int()`` when too long to convert or to print."""
    if len(digits) > MAX_INT_BITS // 3:
        raise _Refused("not valid JSON: a number this long is not accepted (quote it to make it a string)")
    return int(digits)


def _check_depth(data: Any) -> None:
    """Refuse data nested deeper than MAX_DEPTH, walked level by level (no recursion)."""
    level = [data] if type(data) in (dict, list) else []
    for _ in range(MAX_DEPTH):
        below: list[Any] = []
        for value in level:
            for x in value.values() if type(value) is dict else value:
                if type(x) is dict or type(x) is list:
                    below.append(x)
        if not below:
            return
        level = below
    raise _Refused(f"nested too deeply (more than {MAX_DEPTH} levels)")


# ---- YAML -----------------------------------------------------------------------------------
def _yaml_message(e: yaml.YAMLError, raw: bytes) -> str:
    """The message "not valid YAML at line L, column C: problem" for any PyYAML or libyaml
    error."""
    if isinstance(e, yaml.reader.ReaderError):
        return f"not valid YAML{_reader_message(e, raw)}"
    mark = getattr(e, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(e, "problem", None) or "syntax error"
    if "nesting depth" in str(problem):  # libyaml's own bound (1000 levels)
        problem = f"nested too deeply (more than {MAX_DEPTH} levels)"
    return f"not valid YAML{where}: {cut(str(problem), 200)}{_brace_hint(e, raw)}"


def _brace_hint(e: yaml.YAMLError, raw: bytes) -> str:
    """A placeholder such as ``{index}`` in an unquoted value inside ``[...]`` or ``{...}``
    (or at the start of a value) is YAML syntax, not text: say so when the line has one."""
    marks = [m for m in (getattr(e, "context_mark", None), getattr(e, "problem_mark", None)) if m]
    lines = raw.split(b"\n")
    for mark in marks:
        if mark.line < len(lines) and _PLACEHOLDER_BYTES.search(lines[mark.line]):
            return " (if a {placeholder} is meant there, quote the value: 'out/{index}.json')"
    return ""


def _reader_message(e: yaml.reader.ReaderError, raw: bytes) -> str:
    """Where and what: PyYAML says "special characters", libyaml "control characters" for a
    character it refuses; else a byte is not UTF-8, found again here because libyaml names the
    byte after a broken sequence and PyYAML, with a BOM, counts characters."""
    if e.encoding == "unicode" or "control" in str(e.reason):
        code = e.character if isinstance(e.character, int) else ord(e.character)
        return (f"{_reader_position(e, raw)}: character U+{code:04X} is not allowed (in a "
                "double-quoted string, write it as an escape such as \\x01)")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as bad:
        return f"{_position(raw, bad.start)}: byte 0x{raw[bad.start]:02x} is not UTF-8"
    return f"{_reader_position(e, raw)}: {e.reason}"  # UTF-16 that does not decode


def _reader_position(e: yaml.reader.ReaderError, raw: bytes) -> str:
    """PyYAML counts characters (and a BOM as one) for a bad character; libyaml counts bytes."""
    if e.encoding != "unicode":
        return _position(raw, e.position)
    for bom, codec in ((codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be")):
        if raw.startswith(bom):
            text = raw.decode(codec, "replace")
            break
    else:
        text = raw.decode("utf-8", "replace")
    line_start = text.rfind("\n", 0, e.position) + 1
    line = text.count("\n", 0, e.position) + 1
    column = e.position - line_start + 1 - (line == 1 and text.startswith("\ufeff"))
    return f" at line {line}, column {column}"


def _children(node: yaml.Node) -> list[yaml.Node]:
    """The nodes directly inside ``node`` (a mapping's keys and values)."""
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def check_nodes(root: yaml.Node) -> None:
    """Refuse a composed document whose aliases contain themselves, expand it too much, or
    nest it too deeply. Aliases make the node graph share nodes; sizes and depths are those of
    the tree it expands to, computed once per node (no recursion, no expansion)."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    nodes: list[yaml.Node] = []  # each once, children before parents
    open_: set[int] = set()  # started, not finished: the ancestors of the node at hand
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            open_.discard(key)
            kids = _children(node)
            size[key] = 1 + sum(size[id(k)] for k in kids)
            depth[key] = 1 + max((depth[id(k)] for k in kids), default=0)
            if depth[key] > MAX_DEPTH:
                raise _refuse(f"nested too deeply (more than {MAX_DEPTH} levels, counting what "
                              "aliases stand for)", node)
            nodes.append(node)
            continue
        if key in size:
            continue
        if key in open_:
            raise _refuse("an alias here stands for a collection that contains itself", node)
        open_.add(key)
        stack.append((node, True))
        stack.extend((k, False) for k in _children(node) if id(k) not in size)
    limit = max(MAX_EXPANSION, EXPANSION_RATIO * len(nodes))
    if size[id(root)] > limit:
        culprit = next(n for n in nodes if size[id(n)] > limit)  # the first: its parts are within
        raise _refuse(f"aliases expand this to {_count(size[id(culprit)])} values (a document of "
                      f"{len(nodes)} written values may expand to {limit})", culprit)


def _count(n: int) -> str:
    """A count in a few characters (``:g`` alone would overflow on a count past 1e308)."""
    return f"{n:.3g}" if n.bit_length() < 1000 else "more than 1e+300"


def _refuse(problem: str, at: yaml.Node | yaml.Event) -> _Refused:
    """A refusal of what starts at ``at``, naming its line and column."""
    mark = at.start_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return _Refused(where + problem)


class _Strict:
    """What both loaders add to PyYAML's safe loader."""

    def get_single_node(self) -> yaml.Node | None:
        node = super().get_single_node()  # type: ignore[misc]
        if node is not None:
            check_nodes(node)
        return node

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        """Refuse a key written twice in one mapping (the last would silently win). Keys that
        a merge (``<<``) brings in may be overridden: that is what a merge is for."""
        seen: set[Any] = set()
        for key_node, _ in node.value:
            tag = key_node.tag
            if tag == _STR_TAG and isinstance(key_node, yaml.ScalarNode):  # a plain key is its text
                key: Any = key_node.value
            elif tag == _MERGE_TAG:
                key = "<<"
            else:
                key = self.construct_object(key_node, deep=deep)  # type: ignore[attr-defined]
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {show(key)} appears twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)  # type: ignore[misc,no-any-return]

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        """An int, refused with its line when too long to work with (``int()`` would raise)."""
        try:
            value: int = super().construct_yaml_int(node)  # type: ignore[misc]
        except ValueError:
            value = 1 << (MAX_INT_BITS + 1)
        if value.bit_length() > MAX_INT_BITS:
            raise yaml.constructor.ConstructorError(
                None, None, "a number this long is not accepted (quote it to make it a string)",
                node.start_mark)
        return value


class _PyLoader(_Strict, yaml.SafeLoader):
    """PyYAML's own parser: its composer recurses, so depth is bounded while composing."""

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _refuse(f"nested too deeply (more than {MAX_DEPTH} levels)", self.peek_event())
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


_loaders: list[type] = [_PyLoader]
if yaml.__with_libyaml__:
    class _CLoader(_Strict, yaml.CSafeLoader):  # type: ignore[misc]
        """libyaml's parser (about four times faster; it bounds nesting at 1000 itself)."""

    _loaders.append(_CLoader)
for _loader in _loaders:
    _loader.add_constructor("tag:yaml.org,2002:int", _Strict.construct_yaml_int)  # type: ignore[attr-defined]
_LOADER: type = _loaders[-1]


def _plain(loader: type) -> type:
    """``loader`` for a document without aliases (see :func:`_load_yaml`): nothing to check
    node by node once composed."""
    def get_single_node(self: Any) -> yaml.Node | None:
        return super(_Strict, self).get_single_node()  # type: ignore[no-any-return]

    return type(f"_Plain{loader.__name__}", (loader,), {"get_single_node": get_single_node})


_PLAIN: dict[type, type] = {loader: _plain(loader) for loader in _loaders}
