"""`table_fit`: tables keep every column and cell, piped (full width) or in a narrow terminal
(split into parts that repeat the key column)."""

from __future__ import annotations

import io

import pytest
from rich import box
from rich.console import Console
from rich.table import Table

from stepsize_lens.table_fit import natural_width, print_table, split_columns

HEADERS = ["set", "optimizer", "‖w‖ first", "‖w‖ last", "Δθ early", "Δθ late", "½ at step"]
ROWS = [
    ["channel", "SGD momentum 0.9", "1.000", "2.913", "0.0213", "0.0021", "1,250"],
    ["none", "AdamP (projection)", "1.000", "1.004", "0.0190", "0.0187", "-"],
]


def _table(**settings) -> Table:
    table = Table(box=box.SIMPLE_HEAD, **settings)
    for number, header in enumerate(HEADERS):
        table.add_column(header, justify="left" if number < 2 else "right", no_wrap=number > 0)
    for row in ROWS:
        table.add_row(*row)
    return table


def _console(width: int, terminal: bool) -> Console:
    return Console(file=io.StringIO(), width=width, force_terminal=terminal, color_system=None)


def _printed(width: int, terminal: bool, **settings) -> str:
    console = _console(width, terminal)
    print_table(console, _table(**settings))
    return console.file.getvalue()


def test_a_table_that_fits_prints_as_rich_prints_it():
    plain = _console(200, terminal=True)
    plain.print(_table(title="t"))
    assert _printed(200, terminal=True, title="t") == plain.file.getvalue()


def test_piped_output_is_full_width_however_narrow_the_console():
    text = _printed(40, terminal=False, caption="a caption")
    assert "…" not in text
    for row in ROWS:  # each row on one line, every cell whole
        line = next(line for line in text.splitlines() if line.strip().startswith(row[0] + " "))
        assert line.split() == " ".join(row).split()
    assert max(map(len, text.splitlines())) == natural_width(_console(40, False), _table())


def test_a_narrow_terminal_splits_the_columns_and_repeats_the_key():
    width = 44
    text = _printed(width, terminal=True, title="summary", caption="a caption")
    lines = text.splitlines()
    assert max(map(len, lines)) <= width and "…" not in text
    for header in HEADERS:
        assert header in text
    for row in ROWS:
        for cell in row[1:]:
            assert cell in text
        assert sum(line.strip().startswith(row[0] + " ") for line in lines) >= 2  # repeated key
    assert text.count("summary") == text.count("(continued)") + 1 >= 2
    assert text.count("a caption") == 1 and text.rstrip().endswith("a caption")


def test_split_columns_keeps_the_order_and_each_column_once():
    console = _console(44, terminal=True)
    parts = split_columns(console, _table(), 44, key_columns=1)
    assert len(parts) >= 2
    headers = [[column.header for column in part.columns] for part in parts]
    assert all(names[0] == "set" for names in headers)
    assert [name for names in headers for name in names[1:]] == HEADERS[1:]
    for part in parts:
        assert [column._index for column in part.columns] == list(range(len(part.columns)))
        assert all(len(list(column.cells)) == len(ROWS) for column in part.columns)


@pytest.mark.parametrize("terminal", [False, True])
def test_an_expanding_table_is_left_to_rich(terminal):
    text = _printed(300, terminal=terminal, expand=True)
    assert max(map(len, text.splitlines())) == 300
