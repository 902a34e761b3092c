"""`report.compare_tables`: the comparison's schedule-aware sections and tables, on crafted runs
and on the digits CNN trained with SGD momentum and SGDP under warmup + cosine."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from _runs import DEFAULT_TENSORS, crafted_run
from rich.console import Console

import stepsize_lens
from stepsize_lens.report import compare_data, compare_report
from stepsize_lens.report.compare_tables import headline

T = len(DEFAULT_TENSORS)
SECTIONS = ("norm_growth", "windows", "premature_decay", "premature_decay_tensors", "headline")


def _cosine(records: int) -> np.ndarray:
    t = np.arange(records, dtype=np.float64)
    return 0.1 * np.where(t < 5, (t + 1) / 5, 0.5 * (1 + np.cos(np.pi * (t - 5) / (records - 5))))


def _crafted_pair():
    records = 80
    lr = np.stack([_cosine(records)] * 2, axis=1)
    growing = lambda r: (1 + r / 40) * np.ones((1, T))  # noqa: E731
    base = crafted_run(
        records=records,
        groups={"lr": lr},
        weight_norm=growing,
        angular_update=0.01,
        label="momentum",
    )
    other = crafted_run(
        records=records, groups={"lr": lr}, weight_norm=1.0, angular_update=0.03, label="projected"
    )
    return base, other


def test_sections_are_strict_json_and_the_headline_quotes_them():
    runs = _crafted_pair()
    data = compare_data(list(runs))
    json.dumps({k: data[k] for k in SECTIONS}, allow_nan=False)
    (line,) = data["headline"]
    assert line == headline(data, "projected", "momentum")
    growth = {
        r["run"]: r for r in data["norm_growth"] if r["set_by"] == "invariant"
    }  # norms 1 → 2.975 for the reference, flat for the other
    assert growth["momentum"]["peak_growth"] == pytest.approx(1 + 79 / 40)
    assert growth["projected"]["peak_growth"] == pytest.approx(1.0)
    (step,) = [
        r
        for r in data["windows"]
        if r["set_by"] == "invariant"
        and r["window"] == "active"
        and r["run"] == "projected"
        and r["metric"] == "angular_update"
    ]
    assert step["ratio"] == pytest.approx(3.0)
    assert "scale-invariant tensors" in line
    grew = f"{growth['momentum']['peak_growth']:.3g}×"
    assert f"norm growth 1× at its peak and 1× at the end, against {grew} and {grew}" in line
    assert "effective step (angular update) 3× the reference's" in line
    premature = {r["run"]: r for r in data["premature_decay"] if r["set_by"] == "invariant"}
    assert premature["momentum"]["verdict"] == "premature"
    assert premature["projected"]["verdict"] == "none"
    tensors = {(r["set"], r["run"]): r for r in data["premature_decay_tensors"]}
    invariant = [t.name for t in DEFAULT_TENSORS if t.cls in ("channel", "layer")]
    assert {name for name, _ in tensors} == set(invariant)
    assert all(tensors[(name, "momentum")]["verdict"] == "premature" for name in invariant)


def test_text_shows_the_tables_and_the_headline_first():
    console = Console(file=io.StringIO(), width=250, color_system=None)
    compare_report(list(_crafted_pair()), figures=False, console=console)
    text = console.file.getvalue()
    order = [
        "headline",
        "Runs",
        "Effective step over the schedule's windows",
        "Norm growth per set: peak and last over first",
        "Premature step-size decay per set",
        "Premature step-size decay per tensor",
        "Side by side, ratios to momentum (ref)",
    ]
    positions = [text.index(title) for title in order]
    assert positions == sorted(positions)
    for window in ("lr ≥ 10% of peak", "warmup", "peak lr (≥ 90%)", "decay (10–90%)"):
        assert window in text


def test_markdown_and_html_carry_the_same_headline_and_tables(tmp_path):
    runs = list(_crafted_pair())
    quiet = Console(file=io.StringIO(), width=120, color_system=None)
    markdown = compare_report(runs, out=tmp_path, format="markdown", figures=False, console=quiet)
    page = compare_report(runs, out=tmp_path, format="html", figures=False, console=quiet).page
    html = page.read_text(encoding="utf-8")
    (line,) = markdown.data["headline"]
    assert f"- **headline**: {line}" in markdown.text
    assert line.replace("'", "&#x27;") in html
    for title in (
        "Effective step over the schedule's windows",
        "Premature step-size decay per set",
    ):
        assert f"## {title}" in markdown.text and title.replace("'", "&#x27;") in html


def _train(folder: Path, name: str, steps: int) -> Path:
    import torch

    from stepsize_lens.experiments.digits import select, train_digits_run

    (spec,) = select([name])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train_digits_run(
            folder / f"{name}.pt",
            spec.build,
            steps=steps,
            seed=0,
            label=spec.label,
            batch_size=32,
            lr_schedule="cosine",
        )
    finally:
        torch.set_num_threads(threads)


def _row(text: str, *starts: str) -> list[str]:
    """The cells (split on runs of 2+ spaces) of the first line that holds every ``starts``."""
    line = next(x for x in text.splitlines() if all(s in x for s in starts))
    return re.split(r"\s{2,}", line.strip())


def _section(text: str, title: str, until: str) -> str:
    start = text.index(title)
    return text[start : text.index(until, start)]


def _times(cell: str) -> float:
    assert cell.endswith("×"), cell
    return float(cell[:-1])


@pytest.mark.slow
def test_sgd_momentum_against_sgdp_on_digits_under_warmup_cosine(tmp_path):
    """The paper's point, in the tables of the text report: SGDP's effective step is larger
    (geometric mean over the steps where the lr counts, and in the decay window), momentum's
    norms grow more (peak and end); and the ratio table is not read where the lr is ~0."""
    paths = [_train(tmp_path, name, steps=60) for name in ("sgd_momentum", "sgdp")]
    console = Console(file=io.StringIO(), width=250, color_system=None)
    result = compare_report(paths, figures=False, console=console)
    text = console.file.getvalue()
    ref, other = "SGD momentum 0.9", "SGDP"

    # effective step over the schedule's windows: set, window, steps, Δθ of each run, then
    # SGDP's Δθ ÷ ref and η/‖w‖² ÷ ref; both > 1
    windows = _section(text, "Effective step over the schedule's windows", "Norm growth per set")
    for window in ("lr ≥ 10% of peak", "decay (10–90%)"):
        cells = _row(windows, "scale-invariant", window)
        assert len(cells) == 7, cells
        assert _times(cells[-2]) > 1.05 and _times(cells[-1]) > 1.05, cells

    # norm growth: momentum's peak and last over first above SGDP's
    norms = _section(text, "Norm growth per set", "Premature step-size decay per set")
    growth = {}
    for label in (ref, other):
        cells = _row(norms, "scale-invariant", label)
        growth[label] = (_times(cells[-2]), _times(cells[-1]))
    assert growth[ref][0] > growth[other][0] + 0.05 and growth[ref][1] > growth[other][1] + 0.05
    assert growth[ref][0] > 1.05

    # premature decay per set: momentum's norm-growth part is the larger
    decay = _section(
        text, "Premature step-size decay per set", "Premature step-size decay per tensor"
    )
    parts = {label: _times(_row(decay, "scale-invariant", label)[3]) for label in (ref, other)}
    assert parts[ref] > parts[other]

    # the headline, one line, states both
    (line,) = result.data["headline"]
    assert f"norm growth {growth[other][0]:.3g}× at its peak" in line
    assert f"against {growth[ref][0]:.3g}×" in line
    assert "effective step (angular update)" in " ".join(text.split())

    # the ratio table's values are taken where every run's lr is ≥ 10% of its peak
    run = stepsize_lens.load(paths[0])
    lr = run.group_field("lr")[:, 0]
    share = dict(zip(run.steps.tolist(), (lr / lr.max()).tolist()))
    assert lr[-1] / lr.max() < 0.1  # the schedule does end near 0
    assert all(share[int(r["x"])] >= 0.1 for r in result.data["comparison"])
