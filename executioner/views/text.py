"""A run's job table as plain aligned text: one line per job, whatever the terminal's width.

rich lays a table out cell by cell (about 2 ms per row here, minutes for 100,000 jobs), and
wraps long reasons over several lines; this is linear, costs microseconds per row, and
keeps every job on one line, so ``exec-status POOL RUN | grep failed`` finds them all.
Text from files (reasons, hosts) has its control characters shown as ``\\xNN``: a job file
cannot move the terminal's cursor or change its colours.

:func:`write_json` writes the run view's ``--json`` row by row, byte for byte what one
``orjson.dumps(data, option=OPT_INDENT_2)`` of the whole would be.
"""

from __future__ import annotations

import re
from typing import IO, Any, Final, Iterable, Sequence

import orjson

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# ANSI colours of the states (SGR codes), used only when writing to a terminal
COLORS = {"corrupt": "31", "done": "32", "failed": "31", "blocked": "35", "running": "36", "queued": "33",
          "held": "34", "skipped": "32", "lost": "33", "timeout": "31"}


def clean(text: object) -> str:
    """``text`` with control characters (escape sequences included) shown as ``\\xNN``."""
    s = "" if text is None else str(text)
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", s) if _CONTROL.search(s) else s


def render(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]], color_column: int | None = None,
           color: bool = False) -> str:
    """``title``, then the header and one line per row, columns aligned by padding; the last
    column is not padded. With ``color``, the cells of ``color_column`` are painted by state."""
    cells = [[clean(c) for c in row] if _CONTROL.search("".join(row)) else row for row in rows]
    widths = [max(len(h), max(map(len, column), default=0)) for h, column in zip(headers, zip(*cells))] \
        if cells else [len(h) for h in headers]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths[:-1]) + "  {}"
    lines = [clean(title), fmt.format(*headers).rstrip()]
    if color and color_column is not None:
        def paint(row: Sequence[str]) -> str:
            text = fmt.format(*row).rstrip()
            state = row[color_column]
            if state not in COLORS:
                return text
            at = sum(widths[:color_column]) + 2 * color_column  # the cell's column in the line
            return f"{text[:at]}\x1b[{COLORS[state]}m{state}\x1b[0m{text[at + len(state):]}"
        lines += [paint(row) for row in cells]
    else:
        lines += [fmt.format(*row).rstrip() for row in cells]
    return "\n".join(lines) + "\n"


_INDENT: Final = orjson.OPT_INDENT_2
_JOBS: Final = b'\n  "jobs": []'  # where the rows go in the document without them
_BATCH: Final = 1000  # rows per write


def write_json(data: dict[str, Any], out: IO[bytes]) -> None:
    """``data`` (a run view, whose ``jobs`` may be an iterator) as indented JSON on ``out``,
    its rows made and written a batch at a time. Two spaces deep, a row is its own indented
    JSON with every line break followed by four more spaces (a string in JSON holds no raw
    line break, so only the layout's are shifted)."""
    head = orjson.dumps({**data, "jobs": []}, option=_INDENT)
    before, found, after = head.partition(_JOBS)
    assert found, "a run view has a top-level jobs key"  # a string value cannot hold it: its quotes are escaped
    rows: Iterable[dict[str, Any]] = data["jobs"]
    batch: list[bytes] = []
    written = False
    out.write(before)
    for row in rows:
        batch.append(orjson.dumps(row, option=_INDENT).replace(b"\n", b"\n    "))
        if len(batch) == _BATCH:
            out.write((b",\n    " if written else b'\n  "jobs": [\n    ') + b",\n    ".join(batch))
            written, batch = True, []
    if batch:
        out.write((b",\n    " if written else b'\n  "jobs": [\n    ') + b",\n    ".join(batch))
        written = True
    out.write((b"\n  ]" if written else _JOBS) + after + b"\n")
