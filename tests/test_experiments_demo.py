"""``stepsize-lens demo``: trains the six optimizers, writes runs, report and figures."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stepsize_lens.cli import app


@pytest.mark.slow
def test_demo_writes_runs_report_and_figures_and_says_where(tmp_path: Path) -> None:
    from rich.console import Console

    from stepsize_lens.experiments.demo import run_demo
    from stepsize_lens.run import load

    console = Console(file=io.StringIO(), width=200)
    result = run_demo(tmp_path / "out", steps=8, seed=1, console=console)
    assert [p.name for p in result.runs] == [
        "sgd_seed1.pt",
        "sgd_momentum_seed1.pt",
        "sgdp_seed1.pt",
        "adamw_seed1.pt",
        "adamp_seed1.pt",
        "adamc_seed1.pt",
    ]
    labels = [load(path).label for path in result.runs]
    assert labels == ["SGD", "SGD momentum 0.9", "SGDP", "AdamW", "AdamP", "AdamC"]
    assert result.report == tmp_path / "out" / "compare" / "report.html"
    assert result.report.is_file()
    pngs = [p for paths in result.figures.values() for p in paths if p.suffix == ".png"]
    assert pngs and all(p.is_file() and p.parent == result.report.parent for p in pngs)
    assert list(result.table["steps"]) == [8] * 6
    printed = console.file.getvalue()
    for expected in ("‖w‖ grew", "SGD momentum 0.9", str(result.report), "paper_panel.png"):
        assert expected in printed
    # at a constant lr AdamC is AdamW bit for bit, and the demo says so
    rows = result.table.set_index("optimizer")
    numbers = ["norm_growth", "angular_decay", "effective_lr_decay", "loss"]
    assert rows.loc["adamc", numbers].tolist() == rows.loc["adamw", numbers].tolist()
    assert "AdamC's row is AdamW's" in printed
    # the comparison's reference is SGD momentum, the run the paper's diagnosis is about
    html = result.report.read_text(encoding="utf-8")
    assert "ratios to SGD momentum 0.9" in html


def test_demo_rejects_zero_steps(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["demo", "--steps", "0", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "steps" in result.output
