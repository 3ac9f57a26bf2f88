"""How the command line prints: tables, amounts, ages.

A table is a Rich table on a terminal and plain columns otherwise: a pipe, a file or a test
gets the same lines as ever (a header, a rule of dashes, one line a row, no colour, nothing
cut to fit a width), so scripts that read them keep working."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from app.domain.values import money as money  # an amount as people read it: shared with the console
from app.operations.story import took as took  # how long a step took: shared with the HTTP API

if TYPE_CHECKING:
    from rich.table import Table

#: One cell of a table: anything with a readable ``str``; None prints as nothing.
Cell = object


def interactive() -> bool:
    """Whether stdout is a terminal a person reads (not a pipe, a file or a test's capture)."""
    isatty = getattr(sys.stdout, "isatty", None)
    return bool(isatty and isatty())


def plain_table(rows: Sequence[Sequence[Cell]], headers: Sequence[str]) -> str:
    """Columns padded to their widest cell, the header underlined with dashes."""
    cells = [[str(h) for h in headers]] + [[("" if c is None else str(c)) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def print_table(rows: Sequence[Sequence[Cell]], headers: Sequence[str]) -> None:
    """The rows under their headers on stdout: Rich on a terminal, plain columns otherwise."""
    if not interactive():
        print(plain_table(rows, headers))
        return
    from rich.console import Console

    texts = [["" if c is None else str(c) for c in row] for row in rows]
    console = Console(highlight=False)
    # Prose wraps at spaces. An id, a task name or a URL keeps its line: each column is as
    # wide as its widest word, but for the columns with the widest words (prose, most
    # likely) where the terminal is too narrow for all; those fold long words. Nothing is cut.
    words: list[int | None] = [
        max(len(word) for text in [h, *(row[i] for row in texts)] for word in [*text.split(), ""])
        for i, h in enumerate(headers)
    ]
    table = _rich_table(texts, headers, words)
    for widest in sorted(range(len(words)), key=lambda i: -(words[i] or 0)):
        if _fits(table, texts, headers, console.width):
            break
        words[widest] = None
        table = _rich_table(texts, headers, words)
    console.print(table)


def _rich_table(texts: list[list[str]], headers: Sequence[str], min_widths: list[int | None]) -> Table:
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")
    for i, header in enumerate(headers):
        table.add_column(header, overflow="fold", min_width=min_widths[i])
    for row in texts:
        table.add_row(*row)
    return table


def _fits(table: Table, texts: list[list[str]], headers: Sequence[str], width: int) -> bool:
    """Whether the table drawn ``width`` wide shows every character of its cells (none cropped)."""
    import io

    from rich.console import Console

    out = io.StringIO()
    Console(file=out, width=width, color_system=None, highlight=False).print(table)
    shown = sum(1 for char in out.getvalue() if not char.isspace() and char != "─")
    given = sum(
        1 for text in [*headers, *(cell for row in texts for cell in row)] for char in text if not char.isspace()
    )
    return shown >= given


def ago(moment: datetime) -> str:
    """How long ago an aware moment was, in its largest whole unit: 42s, 5m, 3h, 2d."""
    seconds = int((datetime.now(UTC) - moment).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def counts(counter: dict[str, int]) -> str:
    """``{"b": 2, "a": 1}`` -> ``a 1, b 2``."""
    return ", ".join(f"{name} {n}" for name, n in sorted(counter.items()))
