"""stepsize_lens.plots: every figure on real recorded runs, its content, and how it saves."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _runs import crafted_run
from matplotlib.collections import PolyCollection, QuadMesh
from matplotlib.figure import Figure
from matplotlib.text import Text
from PIL import Image

import stepsize_lens
from stepsize_lens import plots
from stepsize_lens.analysis import tensor_classes
from stepsize_lens.plots import _series
from stepsize_lens.run import Run, validate


@pytest.fixture(scope="module")
def runs(report_runs):
    return {name: stepsize_lens.load(path) for name, path in report_runs.items()}


@pytest.fixture(scope="module")
def lr_drop(report_lr_drop_run):
    return stepsize_lens.load(report_lr_drop_run)


def _legend_texts(fig: Figure) -> list[str]:
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    legends += list(fig.legends)
    return [t.get_text() for legend in legends for t in legend.get_texts()]


def _assert_legible(fig: Figure) -> None:
    """Paper-size legibility: every visible text at least 6 pt, figure 7 in wide."""
    assert fig.get_figwidth() == pytest.approx(plots._style.WIDTH)
    sizes = [t.get_fontsize() for t in fig.findobj(Text) if t.get_visible() and t.get_text()]
    assert sizes and min(sizes) >= 6


def _save_and_decode(fig: Figure, tmp_path: Path, name: str) -> np.ndarray:
    paths = plots.save_figure(fig, tmp_path / name, formats=("png", "pdf"))
    assert [p.suffix for p in paths] == [".png", ".pdf"]
    assert paths[1].read_bytes()[:5] == b"%PDF-"
    with Image.open(paths[0]) as image:
        image.load()
        assert image.format == "PNG"
        return np.asarray(image)


ALL_FIGURES = {
    "norm_growth": lambda run: plots.norm_growth(run),
    "effective_step": lambda run: plots.effective_step(run),
    "paper_panel": lambda run: plots.paper_panel(run),
    "cos_threshold": lambda run: plots.cos_threshold(run),
    "theory_overlay": lambda run: plots.theory_overlay(run),
    "decay_split": lambda run: plots.decay_split(run),
    "step_heatmap": lambda run: plots.step_heatmap(run),
    "metric_facets": lambda run: plots.metric_facets(run),
}


@pytest.mark.parametrize("name", sorted(ALL_FIGURES))
@pytest.mark.parametrize("optimizer", ["sgd_momentum", "adamp"])
def test_every_figure_draws_saves_and_is_legible(runs, tmp_path, name, optimizer):
    fig = ALL_FIGURES[name](runs[optimizer])
    assert isinstance(fig, Figure)
    _assert_legible(fig)
    pixels = _save_and_decode(fig, tmp_path, name)
    assert pixels.shape[1] >= 1000  # 7 in at 200 dpi
    assert pixels.std() > 0  # not a blank canvas


def test_norm_growth_one_line_per_class_with_the_reduced_values(runs):
    run = runs["sgd_momentum"]
    fig = plots.norm_growth(run, by="class")
    (ax,) = fig.axes
    lines = {line.get_label(): line for line in ax.get_lines()}
    classes = set(tensor_classes(run))
    assert set(lines) == classes
    channel = np.asarray(tensor_classes(run)) == "channel"
    expected = np.nanmean(run.metric("weight_norm")[:, channel], axis=1)
    np.testing.assert_allclose(lines["channel"].get_ydata(), expected, rtol=1e-6)
    np.testing.assert_array_equal(lines["channel"].get_xdata(), run.steps)


def test_norm_growth_by_group_and_relative(runs):
    fig = plots.norm_growth(runs["sgd"], by="group", relative=True)
    (line,) = fig.axes[0].get_lines()
    assert line.get_label() == "group 0"
    assert line.get_ydata()[0] == pytest.approx(1.0)


def test_several_runs_are_told_apart_by_colour_and_labelled_from_metadata(runs):
    chosen = [runs["sgd_momentum"], runs["sgdp"]]
    fig = plots.norm_growth(chosen, by="class")
    labels = _legend_texts(fig)
    assert "SGD momentum 0.9: channel" in labels and "SGDP: channel" in labels
    colours = {line.get_label(): line.get_color() for line in fig.axes[0].get_lines()}
    assert colours["SGD momentum 0.9: channel"] != colours["SGDP: channel"]
    assert colours["SGDP: channel"] == colours["SGDP: none"]


def test_effective_step_is_log_scaled_and_marks_the_lr_drop(lr_drop):
    assert list(plots.lr_changes(lr_drop)) == [16]  # StepLR(15): step 16 runs at lr × 0.1
    fig = plots.effective_step(lr_drop)
    assert len(fig.axes) == 2
    for ax in fig.axes:
        assert ax.get_yscale() == "log"
        marks = [line for line in ax.get_lines() if line.get_label() == "lr change"]
        assert len(marks) == 1 and list(marks[0].get_xdata()) == [16, 16]


def test_effective_step_draws_the_lr_curve_when_the_lr_moves_every_record(report_runs):
    data = stepsize_lens.load(report_runs["sgd"]).to_dict()
    decay = 0.1 * 0.97 ** np.arange(data["records"]["step"].shape[0])
    data["groups"]["lr"][:] = torch.from_numpy(decay)[:, None]  # a smooth schedule
    run = Run(validate(data))
    fig = plots.effective_step(run)
    twins = [ax for ax in fig.axes if ax.get_ylabel() == "lr (faint line)"]
    assert len(twins) == 2  # one per panel, instead of 39 dotted lines
    np.testing.assert_allclose(twins[0].get_lines()[0].get_ydata(), decay)
    assert not [
        line for ax in fig.axes for line in ax.get_lines() if line.get_label() == "lr change"
    ]


def test_paper_panel_adds_loss_and_accuracy_when_logged(runs, lr_drop):
    fig = plots.paper_panel([runs["sgd_momentum"], runs["sgdp"]])
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["Weight norm", "Effective step", "Loss", "Accuracy"]
    assert _legend_texts(fig) == ["SGD momentum 0.9", "SGDP"]
    accuracy = fig.axes[3].get_lines()[0]
    _, logged = runs["sgd_momentum"].scalar("test_accuracy")
    np.testing.assert_allclose(accuracy.get_ydata(), logged)
    only_loss = plots.paper_panel(lr_drop)
    assert [ax.get_title() for ax in only_loss.axes] == ["Weight norm", "Effective step", "Loss"]


def test_cos_threshold_ticks_sit_at_delta_over_sqrt_dim(runs):
    run = runs["sgd_momentum"]
    params = run.params
    tested = params[params["ndim"] >= 2]
    for delta in (0.1, 0.2):
        fig = plots.cos_threshold(run, delta=delta)
        (ax,) = fig.axes
        assert [t.get_text() for t in ax.get_yticklabels()] == list(tested["name"])
        ticks = [
            line for line in ax.get_lines() if line.get_marker() == "|" and len(line.get_xdata())
        ]
        channel, layer = (np.asarray(t.get_xdata()) for t in ticks)
        numel = tested["numel"].to_numpy(float)
        np.testing.assert_allclose(layer, delta / np.sqrt(numel))
        np.testing.assert_allclose(channel, delta / np.sqrt(numel / tested["rows"].to_numpy(float)))


def test_cos_threshold_caps_the_number_of_tensors(runs):
    fig = plots.cos_threshold(runs["sgd"], max_tensors=3)
    assert len(fig.axes[0].get_yticklabels()) == 3
    assert "first 3 of 7" in fig.axes[0].get_title()


def test_theory_overlay_draws_the_adamw_equilibrium_band(runs):
    fig = plots.theory_overlay(runs["adamw"])
    angle_ax = fig.axes[1]
    eq = [line for line in angle_ax.get_lines() if "equilibrium" in line.get_label()]
    assert eq, "no equilibrium line"
    lr, wd, beta1 = 1e-3, 0.05, 0.9
    expected = np.sqrt(2 * lr * wd * (1 - beta1) / (1 + beta1))
    np.testing.assert_allclose(eq[0].get_ydata(), expected, rtol=1e-6)
    assert any(isinstance(c, PolyCollection) for c in angle_ax.collections)  # the ±25% band
    labels = _legend_texts(fig)
    assert "channel: measured" in labels and "channel: predicted" in labels


def test_theory_overlay_draws_the_recurrence_of_predict(runs):
    from stepsize_lens.analysis import predict

    run = runs["sgd_momentum"]
    fig = plots.theory_overlay(run)
    (line,) = [line for line in fig.axes[0].get_lines() if line.get_label() == "channel: predicted"]
    frame = predict(run)
    rows = frame[(frame["set"] == "channel") & (frame["metric"] == "weight_norm")]
    np.testing.assert_allclose(line.get_ydata(), rows["predicted"].to_numpy())
    # no weight decay: no equilibrium to draw, the recurrence alone
    assert not [label for label in _legend_texts(fig) if "equilibrium" in label]


def test_theory_overlay_reuses_a_given_forecast(runs):
    from stepsize_lens.analysis import forecast

    run = runs["adamw"]
    own = plots.theory_overlay(run)
    shared = plots.theory_overlay(run, forecasted=forecast(run))
    for mine, theirs in zip(own.axes, shared.axes, strict=True):
        assert [line.get_label() for line in mine.get_lines()] == [
            line.get_label() for line in theirs.get_lines()
        ]
        for a, b in zip(mine.get_lines(), theirs.get_lines(), strict=True):
            np.testing.assert_array_equal(a.get_ydata(), b.get_ydata())


def test_theory_overlay_says_when_there_is_no_theory(runs):
    run = crafted_run(records=20, optimizer="Shampoo")
    fig = plots.theory_overlay(run)
    texts = [t.get_text() for t in fig.findobj(Text)]
    assert any("no derived prediction for Shampoo" in t for t in texts)


def test_decay_split_draws_three_factors_whose_product_is_the_fall(runs):
    fig = plots.decay_split(runs["sgd_momentum"])
    ax = fig.axes[0]
    lines = {line.get_label(): line.get_ydata() for line in ax.get_lines()}
    total = lines["Δθ / Δθ early"]
    assert "η/‖w‖²" in fig._suptitle.get_text()
    product = (
        lines["norm growth: (‖w‖ early/‖w‖)^k"]
        * lines["lr: η/η early"]
        * lines["scale-free gradient (the rest)"]
    )
    np.testing.assert_allclose(product, total, rtol=1e-4)
    assert "η/‖w‖ " in plots.decay_split(runs["adamw"])._suptitle.get_text()
    with pytest.raises(ValueError, match="by"):
        plots.decay_split(runs["adamw"], by="group")


def test_heatmap_has_one_row_per_tensor_and_bins_records(lr_drop):
    fig = plots.step_heatmap(lr_drop, max_columns=7)
    strip, heat = fig.axes[:2]
    (mesh,) = [c for c in heat.collections if isinstance(c, QuadMesh)]
    data = mesh.get_array()
    assert data.shape == (lr_drop.num_tensors, 7)
    first = lr_drop.metric("angular_update")[:4, 0].astype(float)  # 30 records: bins of 4-5
    assert data[0, 0] == pytest.approx(np.mean(first[first > 0]))
    assert np.isfinite(data).all()


def test_save_figure_formats(runs, tmp_path):
    fig = plots.norm_growth(runs["sgd"])
    (svg,) = plots.save_figure(fig, tmp_path / "sub" / "norm", formats=("svg",))
    assert svg.read_text()[:200].lstrip().startswith("<?xml")
    with pytest.raises(ValueError, match="unknown figure format"):
        plots.save_figure(fig, tmp_path / "norm", formats=("gif",))


def test_thinning_and_envelope_keep_the_ends_and_the_spread():
    idx = _series.thin(10_000, limit=100)
    assert len(idx) <= 100 and idx[0] == 0 and idx[-1] == 9_999
    assert list(_series.thin(5)) == [0, 1, 2, 3, 4]
    x = np.arange(8.0)
    y = np.array([1.0, 5.0, np.nan, 2.0, -1.0, 0.0, 3.0, 3.0])
    bx, lo, hi = _series.envelope(x, y, bins=2)
    assert list(bx) == [0.0, 4.0] and list(lo) == [1.0, -1.0] and list(hi) == [5.0, 3.0]


def test_metric_facets_grid_holds_the_set_means(runs):
    from stepsize_lens.analysis import reduce

    chosen = [runs["sgd_momentum"], runs["sgdp"]]
    metrics = ["weight_norm", "angular_update"]
    fig = plots.metric_facets(chosen, metrics=metrics, by="class", smooth=None)
    classes = list(dict.fromkeys(tensor_classes(chosen[0])))
    grid = fig.axes[: len(metrics) * len(classes)]
    assert [ax.get_title() for ax in grid[: len(classes)]] == classes
    assert [ax.get_yscale() for ax in grid[len(classes) :]] == ["log"] * len(classes)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["SGD momentum 0.9", "SGDP"]
    # first panel: the channel-class mean ‖w‖ of each run, as analysis.reduce computes it
    lines = grid[0].get_lines()
    assert len(lines) == 2
    for line, run in zip(lines, chosen):
        wide = reduce(run, by="class", metrics=["weight_norm"], form="wide")
        expected = wide.loc[wide["class"] == "channel", "weight_norm"].to_numpy()
        np.testing.assert_allclose(line.get_ydata(), expected)


def test_metric_facets_leave_pyplot_and_the_rc_params_alone(runs):
    import matplotlib
    import matplotlib.pyplot as plt

    before = {k: v for k, v in matplotlib.rcParams.items() if k != "backend"}
    colors = dict(matplotlib.colors.colorConverter.colors)
    figures = plt.get_fignums()
    plots.metric_facets([runs["sgd"], runs["adamw"]], by="group", on="step")
    assert plt.get_fignums() == figures  # the figure never went through pyplot
    assert {k: v for k, v in matplotlib.rcParams.items() if k != "backend"} == before
    assert dict(matplotlib.colors.colorConverter.colors) == colors


def test_facet_frame_smooths_thins_and_drops_what_a_log_axis_cannot_show():
    from stepsize_lens.plots.facets import facet_frame

    run = crafted_run(records=5000)
    frame = facet_frame([run], ["weight_norm", "angular_update"], by="all", smooth=None)
    counts = frame.groupby("metric").size()
    assert (counts <= _series.MAX_POINTS).all() and frame["x"].iloc[0] == 1.0
    angle = crafted_run(records=50).metric("angular_update").astype(float)
    angle[10] = 0.0  # not drawable on a log axis
    run = crafted_run(records=50, angular_update=angle)
    frame = facet_frame([run], ["angular_update"], by="all", smooth=None)
    assert 11 not in set(frame["step"]) and len(frame) == 49
    smoothed = facet_frame([crafted_run(records=50)], ["angular_update"], by="all", smooth=5)
    assert np.isfinite(smoothed["value"]).all()


def test_plots_never_touch_pyplot_or_the_backend(tmp_path):
    code = (
        "import sys\n"
        "from tests._runs import crafted_run\n"
        "from stepsize_lens import plots\n"
        "run = crafted_run(records=30)\n"
        "for draw in (plots.paper_panel, plots.effective_step, plots.theory_overlay,\n"
        "             plots.cos_threshold, plots.step_heatmap, plots.norm_growth,\n"
        "             plots.decay_split):\n"
        "    draw(run).savefig(sys.argv[1])\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'\n"
    )
    out = tmp_path / "figure.png"
    subprocess.run(
        [sys.executable, "-c", code, str(out)], check=True, cwd=Path(__file__).parents[1]
    )
