"""The tiny-GPT experiment: four optimizers from the same weights on the same text, the probe
census, the numbers and the figure (tiny settings, seconds)."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from stepsize_lens.errors import UserInputError
from stepsize_lens.experiments import transformer as T

TINY = T.TransformerConfig(
    steps=24,
    warmup=4,
    batch_size=4,
    context=16,
    dim=16,
    depth=1,
    heads=2,
    max_chars=20_000,
    record_every=1,
    eval_every=12,
    eval_batches=1,
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> list[T.TransformerRun]:
    return T.train_all(tmp_path_factory.mktemp("gpt"), TINY)


def test_every_optimizer_trains_from_the_same_weights_with_a_lens_each(trained) -> None:
    from stepsize_lens.run import load

    assert [item.optimizer for item in trained] == ["adamw", "adamp", "adamc", "muon"]
    assert [p.name for p in trained[-1].paths] == ["muon_seed0.pt", "muon_adamw_seed0.pt"]
    runs = [load(item.paths[0]) for item in trained]
    assert [run.meta["optimizer"]["class"] for run in runs] == ["AdamW", "AdamP", "AdamC", "Muon"]
    first = {
        name: value for name, value in zip(runs[0].tensor_names, runs[0].metric("weight_norm")[0])
    }
    for run in runs[1:]:
        for name, value in zip(run.tensor_names, run.metric("weight_norm")[0]):
            assert value == first[name], (run.label, name)
    # Muon holds the blocks' 2-D weights, its AdamW part everything else
    muon, rest = load(trained[-1].paths[0]), load(trained[-1].paths[1])
    assert all(name.startswith("blocks.") for name in muon.tensor_names)
    assert set(muon.tensor_names).isdisjoint(rest.tensor_names)
    assert len(muon.tensor_names) + len(rest.tensor_names) == len(runs[0].tensor_names)
    assert "head.weight" in rest.tensor_names and rest.label == "Muon (adamw part)"
    for run in (*runs, rest):
        assert {"loss", "val_loss"} <= set(run.scalars["name"])
        lr = run.group_field("lr")
        assert lr[-1].max() < lr.max()  # the cosine decayed


def test_probe_verdicts_in_the_runs_name_q_and_k(trained) -> None:
    from stepsize_lens.run import load

    classes = T.probe_classes(load(trained[0].paths[0]))
    invariant = sorted(classes[classes != "none"].index)
    assert invariant == ["blocks.0.attn.k.weight", "blocks.0.attn.q.weight"]
    series = T.invariant_series(load(trained[0].paths[0]))
    assert len(series["steps"]) == len(series["grad_norm"]) == TINY.steps // TINY.record_every
    np.testing.assert_allclose(
        series["scale_free"][0], series["grad_norm"][0] * series["weight_norm"][0], rtol=0.05
    )


def test_table_has_a_row_per_optimizer_and_predictions_for_each(trained) -> None:
    table = T.runs_table(trained)
    assert list(table["label"]) == ["AdamW", "AdamP", "AdamC", "Muon"]
    assert (table["steps"] == TINY.steps).all()
    assert np.isfinite(table[list(T.METRICS)].to_numpy()).all()
    rows = T.table_rows(table)
    assert len(rows) == 4 and all(len(row) == len(T.table_header()) for row in rows)
    assert rows[0][0] == "AdamW" and rows[0][2].endswith("×")


def test_figure_draws_measured_and_predicted(trained) -> None:
    from stepsize_lens.experiments.figures import transformer_figure
    from stepsize_lens.run import load

    runs = {item.label: load(item.paths[0]) for item in trained}
    series = {label: T.invariant_series(run) for label, run in runs.items()}
    predicted = {
        label: {m: c[:2] for m, c in T.predicted_series(run).items()} for label, run in runs.items()
    }
    assert set(predicted["Muon"]) == {"angular_update", "weight_norm", "grad_norm"}
    fig = transformer_figure(series, predicted, windows=(T.MID, T.END), title="tiny")
    axes = fig.get_axes()
    assert len(axes) == 4
    # measured and predicted per optimizer on the norm panel
    assert len(axes[0].get_lines()) == 8
    assert fig.legends and "predicted" in [t.get_text() for t in fig.legends[0].get_texts()]


def test_probe_census_without_and_with_qk_norm() -> None:
    from stepsize_lens.experiments.digits import torch_threads

    with torch_threads(1):  # the probe's many tiny forwards: one thread is fastest
        census = T.probe_census(replace(TINY, depth=2))
    by_tensor = census.set_index("tensor")
    assert by_tensor.loc["blocks.*.attn.q.weight", "with"] == "layer"
    assert by_tensor.loc["blocks.*.attn.k.weight", "with"] == "layer"
    assert (census["without"] == "none").all()
    assert (
        by_tensor.drop(["blocks.*.attn.q.weight", "blocks.*.attn.k.weight"])["with"] == "none"
    ).all()
    assert T.probe_rows(census)[0][0] == "`token_embed.weight`"


def test_bad_input() -> None:
    with pytest.raises(UserInputError, match="unknown optimizer"):
        T.select(["lion"])
    with pytest.raises(UserInputError, match="steps"):
        replace(TINY, steps=0).checked()
    assert replace(TINY, steps=20, warmup=50).checked().warmup == 2


@pytest.mark.slow
def test_reproduce_transformer_writes_tables_and_figure(tmp_path: Path) -> None:
    from rich.console import Console

    from stepsize_lens.experiments import reproduce as R

    console = Console(file=io.StringIO(), width=200)
    census, comparison = R.reproduce_transformer(tmp_path, steps=20, console=console)
    assert census.experiment == "transformer_probe" and comparison.experiment == "transformer"
    for name in ("transformer.png", "transformer.md", "transformer.csv", "transformer_probe.md"):
        assert (tmp_path / name).is_file(), name
    assert (tmp_path / "transformer.md").read_text(encoding="utf-8") == comparison.markdown
    assert len(list((tmp_path / "runs" / "transformer").glob("*.pt"))) == 5
