"""docs/experiments.md's numbers ("Reproducing the paper") are the ones the committed command
produces.

The toy tables are re-run here and compared cell by cell with the document's; the digits,
schedules and transformer tables (minutes to train) must equal the committed
``figures/<name>.md`` and be the formatting of the committed ``figures/<name>.csv``. Tables sit
between ``<!-- reproduce:NAME -->`` and ``<!-- /reproduce:NAME -->`` in
docs/experiments.md.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from stepsize_lens.experiments import digits
from stepsize_lens.experiments import reproduce as R
from stepsize_lens.experiments.toys import rosenbrock3d_all, toy2d_all

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = (ROOT / "docs" / "experiments.md").read_text(encoding="utf-8")
FIGURES = ROOT / "figures"


def _rows(markdown: str) -> list[list[str]]:
    """The cells of a markdown table's header and body rows (the alignment row dropped)."""
    lines = [line.strip() for line in markdown.splitlines() if line.strip().startswith("|")]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    return [row for row in rows if not all(re.fullmatch(r":?-+:?", cell) for cell in row)]


def _doc_table(name: str) -> list[list[str]]:
    match = re.search(
        rf"<!-- reproduce:{name} -->(.*?)<!-- /reproduce:{name} -->", EXPERIMENTS, flags=re.S
    )
    assert match, f"docs/experiments.md has no <!-- reproduce:{name} --> table"
    rows = _rows(match.group(1))
    assert len(rows) >= 2, f"the {name} table in docs/experiments.md is empty"
    return rows


def test_experiments_toy2d_table_is_what_the_command_computes() -> None:
    runs = toy2d_all(lr=R.TOY2D_LR, steps=R.TOY2D_STEPS)
    fresh = R.toy2d_markdown(R.toy2d_table(runs))
    table = _doc_table("toy2d")
    assert table == _rows(fresh)
    by_label = {row[0]: row for row in table[1:]}
    # the paper's column is the paper's numbers, beside ours
    assert by_label["SGD momentum β=0.9"][2:4] == [
        f"{runs['momentum(beta=0.9)'].final_norm:.2f}",
        "2.93",
    ]
    assert by_label["SGD momentum β=0.99"][3] == "27.87"
    assert (FIGURES / "toy2d.md").read_text(encoding="utf-8") == fresh


def test_experiments_toy3d_table_is_what_the_command_computes() -> None:
    fresh = R.toy3d_markdown(R.toy3d_table(rosenbrock3d_all(steps=R.TOY3D_STEPS)))
    assert _doc_table("toy3d") == _rows(fresh)
    assert (FIGURES / "toy3d.md").read_text(encoding="utf-8") == fresh


def test_experiments_digits_table_is_the_committed_output() -> None:
    committed = (FIGURES / "digits.md").read_text(encoding="utf-8")
    assert _doc_table("digits") == _rows(committed)
    summary = pd.read_csv(FIGURES / "digits.csv")
    assert digits.markdown_table(summary) == committed
    assert (summary["seeds"] == digits.SEEDS).all()
    assert (summary["steps"] == digits.FULL_STEPS).all()


def test_experiments_transformer_tables_are_the_committed_output() -> None:
    from stepsize_lens.experiments import transformer
    from stepsize_lens.report.text import markdown_table

    probe = (FIGURES / "transformer_probe.md").read_text(encoding="utf-8")
    assert _doc_table("transformer_probe") == _rows(probe)
    census = pd.read_csv(FIGURES / "transformer_probe.csv")
    assert markdown_table(transformer.PROBE_HEADER, transformer.probe_rows(census)) == probe
    committed = (FIGURES / "transformer.md").read_text(encoding="utf-8")
    assert _doc_table("transformer") == _rows(committed)
    summary = pd.read_csv(FIGURES / "transformer.csv")
    assert markdown_table(transformer.table_header(), transformer.table_rows(summary)) == committed
    assert list(summary["optimizer"]) == [spec.name for spec in transformer.OPTIMIZERS]
    assert (summary["steps"] == transformer.TransformerConfig().steps).all()


def test_experiments_schedules_table_is_the_committed_output() -> None:
    from stepsize_lens.experiments import digits_schedules
    from stepsize_lens.report.text import markdown_table

    committed = (FIGURES / "digits_schedules.md").read_text(encoding="utf-8")
    assert _doc_table("digits_schedules") == _rows(committed)
    table = pd.read_csv(FIGURES / "digits_schedules.csv")
    rows = digits_schedules.table_rows(table)
    assert markdown_table(digits_schedules.HEADER, rows) == committed
    assert (table["steps"] == digits.FULL_STEPS).all()
    # the bar on noise-dominated gradients, in the committed numbers
    shuffled = table[table["shuffled"]]
    assert len(shuffled) == 3 and (abs(shuffled["angle_agreement"] - 1) < 0.2).all()


@pytest.mark.parametrize(
    "name",
    ["toy2d", "toy3d", "digits_panel", "digits_seeds", "digits_schedules", "transformer"],
)
def test_experiments_shows_each_committed_figure(name: str) -> None:
    assert f"(../figures/{name}.png)" in EXPERIMENTS
    assert (FIGURES / f"{name}.png").is_file()
