"""``stepsize-lens reproduce``: the toys' tables and figures, the digits pipeline, the command."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from stepsize_lens.cli import app
from stepsize_lens.errors import UserInputError
from stepsize_lens.experiments import reproduce as R


def _png_shape(path: Path) -> tuple[int, ...]:
    from matplotlib.image import imread

    return imread(path).shape


def _console():
    from rich.console import Console

    return Console(file=io.StringIO(), width=160)


def test_toy2d_table_matches_the_paper_and_files_are_written(tmp_path: Path) -> None:
    result = R.reproduce_toy2d(tmp_path)
    table = result.table.set_index("method")
    m9, m99 = table.loc["momentum(beta=0.9)"], table.loc["momentum(beta=0.99)"]
    assert m9["final_norm"] == pytest.approx(m9["paper_norm"], rel=0.01)  # 2.94 vs 2.93
    assert m99["final_norm"] == pytest.approx(m99["paper_norm"], rel=0.02)  # 28.28 vs 27.87
    assert table.loc["sgd", "final_norm"] < 1.05 and table.loc["sgdp(beta=0.9)", "final_norm"] < 1.2
    assert (table["lr"] == R.TOY2D_LR).all() and (table["steps"] == R.TOY2D_STEPS).all()
    # the heavy momentum is the slow one
    assert table["steps_to_optimum"].idxmax() == "momentum(beta=0.99)"
    assert [p.name for p in result.files] == [
        "toy2d.png",
        "toy2d.md",
        "toy2d.csv",
        "toy2d_trajectories.csv",
    ]
    assert _png_shape(tmp_path / "toy2d.png")[2] in (3, 4)
    assert (tmp_path / "toy2d.md").read_text(encoding="utf-8") == result.markdown
    assert "| SGD momentum β=0.9 | 0.9 | 2.94 | 2.93 | 74 |" in result.markdown
    saved = pd.read_csv(tmp_path / "toy2d.csv")
    np.testing.assert_allclose(saved["final_norm"], result.table["final_norm"])
    frames = pd.read_csv(tmp_path / "runs" / "toy2d_trajectories.csv")
    assert len(frames) == 4 * (R.TOY2D_STEPS + 1)


def test_toy3d_projection_keeps_the_radius_and_arrives_first(tmp_path: Path) -> None:
    result = R.reproduce_toy3d(tmp_path, steps=3000)
    table = result.table.set_index("method")
    assert table.loc["momentum", "max_radius"] > 2.0
    assert table.loc["momentum_projection", "max_radius"] < 1.2
    # weight decay pulls the radius back down after the momentum burst
    assert table.loc["momentum_wd", "final_radius"] < 0.75 * table.loc["momentum_wd", "max_radius"]
    reached = table["steps_to_optimum"]
    assert reached["momentum_projection"] < 1000
    assert np.isnan(reached["momentum"]) and np.isnan(reached["gd"])  # not within 3000
    assert "not reached" in result.markdown
    assert (table["steps"] == 3000).all()
    assert _png_shape(tmp_path / "toy3d.png")[2] in (3, 4)


def test_reproduce_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="experiment"):
        R.reproduce("cifar", out=tmp_path, console=_console())
    with pytest.raises(UserInputError, match="steps"):
        R.reproduce("toy2d", out=tmp_path, steps=0, console=_console())
    with pytest.raises(UserInputError, match="seeds"):
        R.reproduce("digits", out=tmp_path, seeds=0, console=_console())


@pytest.mark.slow
def test_digits_writes_tables_and_figures_over_seeds(tmp_path: Path) -> None:
    console = _console()
    (result,) = R.reproduce("digits", out=tmp_path, steps=6, seed=3, seeds=2, console=console)
    assert list(result.table["optimizer"]) == ["sgd", "sgd_momentum", "sgdp", "adamw", "adamp"]
    assert (result.table["seeds"] == 2).all() and (result.table["steps"] == 6).all()
    per_run = pd.read_csv(tmp_path / "digits_runs.csv")
    assert sorted(set(per_run["seed"])) == [3, 4] and len(per_run) == 10
    assert sorted(p.name for p in (tmp_path / "runs" / "digits").iterdir())[:2] == [
        "adamp_seed3.pt",
        "adamp_seed4.pt",
    ]
    for name in ("digits_panel.png", "digits_seeds.png"):
        assert _png_shape(tmp_path / name)[2] in (3, 4)
    assert (tmp_path / "digits.md").read_text(encoding="utf-8") == result.markdown
    assert " ± " in result.markdown
    printed = console.file.getvalue()
    assert "mean ± std over seeds (6 steps)" in printed and "digits.md" in printed


def test_cli_reproduce_toy2d_prints_the_table(tmp_path: Path) -> None:
    out = tmp_path / "figs"
    result = CliRunner().invoke(app, ["reproduce", "toy2d", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "28.28" in result.output and "27.87" in result.output
    assert (out / "toy2d.png").is_file()


@pytest.mark.parametrize(
    "args",
    [["reproduce", "toy3d", "--steps", "0"], ["reproduce", "digits", "--seeds", "0"]],
)
def test_cli_reproduce_bad_values_exit_2(tmp_path: Path, args: list[str]) -> None:
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "must be at least 1" in result.output
