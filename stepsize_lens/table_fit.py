"""Rich tables that never lose a column: full width when piped, split in a narrow terminal.

rich fits a table to the console's width by wrapping cells, then cutting them ("opti…"), and
at last by shrinking columns to nothing, silently. `print_table` never lets it get that far:

- the table fits the console: printed as rich prints it;
- the console is not a terminal (``> report.txt``, a pipe, a CI log, a notebook): printed at
  its natural width, however wide, so no cell is cut;
- a terminal narrower than the table: the columns are split into several tables that fit
  (`split_columns`), printed one below the other, each repeating the key columns (the row
  labels). A part that cannot fit even then (the key columns and one more are too wide) wraps
  its cells as rich does.

A leaf module (only rich): the command line (`stepsize_lens.cli.render`) and the text report can
both import it.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from rich.console import Console
from rich.measure import Measurement
from rich.segment import Segments
from rich.table import Table

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
        for part in split_columns(console, table, console.width, key_columns):
            console.print(part)
