"""`table_fit`: tables keep every column and cell, piped (full width) or in a narrow terminal
(split into parts that repeat the key column)."""

from __future__ import annotations

import io
import re

import pytest
from rich import box
from rich.console import Console
from rich.table import Table

from stepsize_lens.table_fit import (
    fitting_parts,
    natural_width,
    print_stacked,
    print_table,
    split_columns,
)

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


# --------------------------------------------------------------------------------------------
# Too narrow even for a split: fewer repeated keys, then one block per row; never a cut number
# --------------------------------------------------------------------------------------------

WIDE_HEADERS = ["tensor", "class", "shape", "Δθ early", "Δθ late", "‖w‖ part", "exponent"]
WIDE_ROWS = [
    ["layer1.0.downsample.0.weight", "channel", "128×64×1×1", "0.00089", "2.19e-06", "12×", "-4.9"],
    ["layer3.1.conv2.weight", "channel", "256×256×3×3", "0.0071", "2.73e-06", "1.63×", "-0.5"],
]
NUMBER = re.compile(r"\d+(?:[.,×]\d+)*(?:e[-+]?\d*)?")


def _wide_table(title: str = "strongest decay", caption: str = "a caption") -> Table:
    table = Table(box=box.SIMPLE_HEAD, title=title, caption=caption)
    for number, header in enumerate(WIDE_HEADERS):
        table.add_column(header, justify="left" if number < 3 else "right", no_wrap=True)
    for row in WIDE_ROWS:
        table.add_row(*row)
    return table


def _wide_printed(width: int) -> str:
    console = _console(width, terminal=True)
    print_table(console, _wide_table(), key_columns=3)
    return console.file.getvalue()


def test_too_narrow_for_every_key_repeats_fewer():
    width = 60  # tensor + class + shape + one number do not fit; tensor + a number do
    text = _wide_printed(width)
    assert "…" not in text and max(map(len, text.splitlines())) <= width
    for row in WIDE_ROWS:
        for cell in row:
            assert cell in text
    parts = fitting_parts(_console(width, True), _wide_table(), width, key_columns=3)
    assert parts is not None and len(parts) >= 2
    assert all(part.columns[0].header == "tensor" for part in parts)
    assert [c.header for c in parts[1].columns][:3] != WIDE_HEADERS[:3]


def test_too_narrow_for_any_split_stacks_one_block_per_row():
    width = 30
    text = _wide_printed(width)
    lines = text.splitlines()
    assert "…" not in text and max(map(len, lines)) <= width
    assert text.count("a caption") == 1
    for row in WIDE_ROWS:
        assert any(line.strip() == row[0] for line in lines)  # the row's heading
        for header, cell in zip(WIDE_HEADERS[1:], row[1:]):
            assert any(line.split() == [*header.split(), cell] for line in lines), (header, cell)


@pytest.mark.parametrize("width", [8, 12, 16, 20, 24, 28, 34, 40, 48, 56, 60, 72, 90, 120])
def test_at_any_width_a_number_is_whole_or_not_shown(width):
    text = _wide_printed(width)
    assert "…" not in text
    whole = {token for row in WIDE_ROWS for cell in row for token in NUMBER.findall(cell)}
    note = text.find("(")  # the note on left-out cells quotes its own counts
    shown = set(NUMBER.findall(text if note < 0 else text[:note]))
    assert shown <= whole, sorted(shown - whole)
    missing = [cell for row in WIDE_ROWS for cell in row[1:] if cell not in text]
    words = " ".join(text.split())
    if missing:  # left out rather than cut, and said so
        assert "left out" in words
    else:
        assert "left out" not in words


def test_stacked_leaves_out_a_cell_it_cannot_show_whole():
    console = _console(10, terminal=True)
    assert print_stacked(console, _wide_table(caption=None)) > 0
    text = console.file.getvalue()
    assert "128×64×1×1" not in text and "left out" in text
    assert print_stacked(_console(60, terminal=True), _wide_table()) == 0
