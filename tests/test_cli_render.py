"""`cli.render`: the rich tables of `stepsize-lens inspect` (census, probe verdicts, summary)."""

from __future__ import annotations

import ast
import io
from pathlib import Path

import pandas as pd
import pytest
import torch
from _invariance_models import ConvBNClassifier
from rich.console import Console
from typer.testing import CliRunner

import stepsize_lens
from stepsize_lens import invariance as inv
from stepsize_lens.cli.render import print_census, print_inspection


def _text(render, *args, **kwargs) -> str:
    console = Console(width=120, record=True)
    render(*args, console=console, **kwargs)
    return console.export_text()


def test_inspect_builtin_prints_census():
    from stepsize_lens.cli import app

    result = CliRunner().invoke(app, ["inspect", "digits_cnn", "--batch-size", "2", "--draws", "1"])
    assert result.exit_code == 0, result.output
    assert "census of digits_cnn" in result.stdout
    assert "Conv2d" in result.stdout and "98.4% of parameters" in result.stdout


def test_print_inspection_of_a_probe_with_every_tensor():
    torch.manual_seed(0)
    result = inv.probe(ConvBNClassifier(), torch.randn(4, 3, 6, 6))
    text = _text(print_inspection, result, spec="toy", tensors=True)
    assert "census of toy" in text and "conv.weight" in text and "Conv2d" in text
    assert "probe verdicts" in text
    without = _text(print_inspection, result, spec="toy")
    assert "probe verdicts" not in without and "census of toy" in without


@pytest.mark.parametrize("terminal", [False, True])
def test_narrow_output_keeps_every_column_and_cell(terminal):
    torch.manual_seed(0)
    result = inv.probe(ConvBNClassifier(), torch.randn(4, 3, 6, 6))
    width = 44
    console = Console(file=io.StringIO(), width=width, force_terminal=terminal, color_system=None)
    print_inspection(result, spec="toy", tensors=True, console=console)
    text = console.file.getvalue()
    assert "…" not in text
    headers = ("tensor", "module", "shape", "verdict", "chan Δ", "layer Δ", "eps Δ", "scope")
    for header in (*headers, "tensors", "params", *inv.CLASSES):
        assert header in text
    assert "6x3x3x3" in text and "BatchNorm2d" in text
    table = inv.census(result)
    cells = [f"{100 * table.at['all', f'params_{c}']:.1f} / " for c in inv.CLASSES]
    all_rows = [line for line in text.splitlines() if line.strip().startswith("all ")]
    for cell in cells:
        assert any(cell in line for line in all_rows)
    if terminal:  # split into parts that fit
        tables = [line for line in text.splitlines() if "─" in line]
        assert max(len(line) for line in tables) <= width and len(all_rows) >= 2
    else:  # piped: one table, every cell of a row on its line
        assert len(all_rows) == 1 and all(cell in all_rows[0] for cell in cells)


def test_print_census_cells_and_counts():
    table = pd.DataFrame(
        {
            "class": ["channel"] * 3 + ["none"],
            "numel": [2_000_000, 500_000, 30_000, 12],
            "module_type": ["Conv2d", "Conv2d", "Linear", "BatchNorm2d"],
        }
    )
    text = _text(print_census, inv.census(table), title="census")
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line.strip()}
    assert rows["all"][1:3] == ["4", "2.5M"]  # tensors, parameters in human units
    assert rows["Conv2d"][2] == "2.5M" and rows["Linear"][2] == "30.0k"
    assert rows["BatchNorm2d"][2] == "12"
    assert " ".join(rows["Conv2d"][3:]) == "100.0 / 100 0.0 / 0 0.0 / 0"
    for cls in inv.CLASSES:
        assert cls in text


def test_the_invariance_package_renders_nothing_and_leaves_sys_path_alone():
    package = Path(stepsize_lens.__file__).parent / "invariance"
    for path in package.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = {
            alias.name.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        } | {
            (node.module or "").split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom)
        }
        assert not imported & {"rich", "sys", "importlib"}, path.name
