"""What the CLI prints: aligned tables and "key: value" blocks for people, JSON for scripts.

Text from the server is shown through :func:`clean`, which replaces control characters, so a name
or an error message can never move the cursor or retitle the terminal.  (``bolt exec`` output is the
exception: it is the command's own output and is written byte for byte.)
"""

from __future__ import annotations

import json
import re
from typing import Any, Iterable, Sequence, TextIO

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def clean(value: Any) -> str:
    """``value`` as one line of printable text ('-' for None)."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return _CONTROL.sub("?", str(value)).replace("\n", " ")


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Columns separated by two spaces, headers upper-cased, the last column not padded."""
    cells = [[clean(c) for c in row] for row in rows]
    head = [h.upper() for h in headers]
    widths = [len(h) for h in head]
    for row in cells:
        if len(row) != len(head):
            raise ValueError(f"row has {len(row)} cells for {len(head)} columns")
        widths = [max(w, len(c)) for w, c in zip(widths, row)]
    lines = []
    for row in [head] + cells:
        padded = [c.ljust(w) for c, w in zip(row[:-1], widths[:-1])] + [row[-1]]
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines) + "\n"


def fields(pairs: Sequence[tuple[str, Any]]) -> str:
    """'key:  value' lines, the values aligned."""
    if not pairs:
        return ""
    width = max(len(k) for k, _ in pairs) + 1
    return "".join(f"{(k + ':').ljust(width)}  {clean(v)}\n" for k, v in pairs)


def to_json(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


class Printer:
    """Where a command's result goes: ``json`` mode prints the server's JSON, else the text given."""

    def __init__(self, out: TextIO, json_mode: bool) -> None:
        self.out = out
        self.json = json_mode

    def result(self, data: Any, text: str | None) -> None:
        """Print ``data`` as JSON in json mode, else ``text`` (nothing when it is None or empty)."""
        if self.json:
            self.out.write(to_json(data))
        elif text:
            self.out.write(text if text.endswith("\n") else text + "\n")
        self.out.flush()

    def text(self, text: str) -> None:
        """A line for people only: silent in json mode, so scripts get nothing but JSON on stdout."""
        if not self.json:
            self.out.write(text if text.endswith("\n") else text + "\n")
            self.out.flush()
