"""Rich tables that never cut a cell: full width when piped, split or stacked in a narrow terminal.

rich fits a table to the console's width by wrapping cells, then cutting them ("opti…", or
``2.19e-0`` for 2.19e-06 in a ``no_wrap`` column), and at last by shrinking columns to nothing,
silently. A number cut like that reads wrong, which is worse than one not shown.
`print_table` never lets rich get that far:

- the table fits the console: printed as rich prints it;
- the console is not a terminal (``> report.txt``, a pipe, a CI log, a notebook): printed at
  its natural width, however wide, so no cell is cut;
- a terminal narrower than the table: the columns are split into several tables that fit
  (`split_columns`), printed one below the other, each repeating the key columns (the row
  labels) — as many of them as still leave room (all, then fewer, at least the first);
- a terminal too narrow even for that (the first column and one more do not fit): the table
  is stacked (`print_stacked`), one block per row, one line per cell ("header  value"). A
  label wraps between its words; a cell that cannot be shown whole even on a line of its own
  is left out, and a note under the table says how many were.

So every number and shape is shown whole or not at all, at any width.

A leaf module (only rich): the command line (`stepsize_lens.cli.render`) and the text report can
both import it.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from rich.cells import cell_len
from rich.console import Console
from rich.measure import Measurement
from rich.padding import Padding
from rich.segment import Segments
from rich.table import Table
from rich.text import Text

_UNLIMITED = 1_000_000


def natural_width(console: Console, table: Table) -> int:
    """The width ``table`` takes when nothing in it is wrapped or cut."""
    options = console.options.update_width(_UNLIMITED)
    return Measurement.get(console, options, table).maximum


def _part(table: Table, indices: list[int], title: Any, caption: Any) -> Table:
    part = copy.copy(table)
    part.columns = [
        dataclasses.replace(table.columns[index], _index=position)
        for position, index in enumerate(indices)
    ]
    part.title, part.caption = title, caption
    return part


def split_columns(console: Console, table: Table, width: int, key_columns: int = 1) -> list[Table]:
    """``table`` as tables no wider than ``width`` (as far as possible): the first
    ``key_columns`` columns in each, the others in order, as many per table as fit. The first
    part keeps the title, the last the caption; later parts are titled "(continued)"."""
    keys = list(range(min(key_columns, len(table.columns))))
    groups: list[list[int]] = []
    current: list[int] = []
    for index in range(len(keys), len(table.columns)):
        trial = current + [index]
        if current and natural_width(console, _part(table, keys + trial, None, None)) > width:
            groups.append(current)
            trial = [index]
        current = trial
    if current or not groups:
        groups.append(current)
    title = table.title
    parts = []
    for number, group in enumerate(groups):
        heading = title if number == 0 else (f"{title} (continued)" if title else "(continued)")
        caption = table.caption if number == len(groups) - 1 else None
        parts.append(_part(table, keys + group, heading, caption))
    return parts


def print_whole(console: Console, renderable: Any) -> None:
    """Print any renderable; on a console that is not a terminal, at its natural width when
    that is wider than the console (nothing cut), otherwise as rich prints it."""
    if not console.is_terminal:
        options = console.options.update_width(_UNLIMITED)
        width = Measurement.get(console, options, renderable).maximum
        if width > console.width:
            segments = console.render(renderable, console.options.update_width(width))
            console.print(Segments(segments), crop=False)
            return
    console.print(renderable)


def fitting_parts(
    console: Console, table: Table, width: int, key_columns: int = 1
) -> list[Table] | None:
    """``table`` split into parts that each fit ``width`` whole (`split_columns`), repeating
    ``key_columns`` leading columns, or fewer where that is what makes them fit (at least the
    first); None when no split fits."""
    for keys in range(max(1, min(key_columns, len(table.columns))), 0, -1):
        parts = split_columns(console, table, width, keys)
        if all(natural_width(console, part) <= width for part in parts):
            return parts
    return None


def _plain(console: Console, cell: Any) -> str:
    """The text a cell shows (markup applied, as rich renders a string cell)."""
    if isinstance(cell, Text):
        return cell.plain
    if isinstance(cell, str):
        return console.render_str(cell).plain
    return str(cell)


def _header(console: Console, column: Any) -> str:
    return " ".join(_plain(console, column.header).split())


def _longest_word(text: str) -> int:
    return max((cell_len(word) for word in text.split()), default=0)


def print_stacked(console: Console, table: Table, width: int | None = None) -> int:
    """Print ``table`` as one block per row: the row's first cell as a heading, then one
    "header  value" line per other cell (the value on a line of its own when both do not fit
    on one). Text wraps only between words; a cell (other than the heading) with a word wider
    than the line is left out rather than cut, and a note says how many were. Returns that
    number."""
    width = width or console.width
    columns = table.columns
    headers = [_header(console, column) for column in columns]
    label_width = min(max((cell_len(h) for h in headers[1:]), default=0), max(1, width // 2 - 2))
    rows = list(zip(*(list(column.cells) for column in columns))) if columns else []
    left_out = 0
    if table.title:
        console.print(Text(_plain(console, table.title), style="bold"))
    for row in rows:
        cells = [_plain(console, cell) for cell in row]
        console.print()
        # the heading names the row (a tensor, a set): wrapped, and folded only when a single
        # word of it is wider than the terminal
        console.print(Text(cells[0], style="bold", overflow="fold"))
        for header, value in zip(headers[1:], cells[1:]):
            if not value:
                continue
            one_line = 2 + label_width + 2 + cell_len(value)
            if cell_len(header) <= label_width and one_line <= width:
                pad = " " * (label_width - cell_len(header))
                console.print(Text(f"  {header}{pad}  {value}"), no_wrap=True)
            elif 4 + _longest_word(value) <= width and 2 + _longest_word(header) <= width:
                console.print(Padding(Text(header), (0, 0, 0, 2)))
                console.print(Padding(Text(value), (0, 0, 0, 4)))
            else:
                left_out += 1
    console.print()
    if table.caption:
        console.print(Text(_plain(console, table.caption), style="dim"))
    if left_out:
        console.print(
            Text(
                f"({left_out} cell(s) left out: too wide for {width} columns; widen the "
                "terminal or pipe the output to see them)",
                style="dim",
            )
        )
    return left_out


def print_table(console: Console, table: Table, key_columns: int = 1) -> None:
    """Print ``table`` on ``console`` without cutting a cell or dropping a column (see the
    module docstring). ``key_columns``: the leading columns that label a row, repeated in every
    part when a narrow terminal splits the table."""
    if table.expand:  # it takes whatever width it is given: nothing to protect
        console.print(table)
        return
    width = natural_width(console, table)
    if width <= console.width:
        console.print(table)
    elif not console.is_terminal:
        print_whole(console, table)
    else:
        parts = fitting_parts(console, table, console.width, key_columns)
        if parts is None:
            print_stacked(console, table)
            return
        for part in parts:
            console.print(part)
