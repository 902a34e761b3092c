"""The digits CNN comparison: the paper's qualitative claims on real data, and the tables."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from stepsize_lens.errors import UserInputError
from stepsize_lens.experiments import digits
from stepsize_lens.invariance import classify_tensors

QUICK_STEPS = 100


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[digits.DigitsRun], pd.DataFrame]:
    """All five optimizers, 100 steps (about 5 epochs), seed 0."""
    trained = digits.train_all(
        tmp_path_factory.mktemp("digits"), steps=QUICK_STEPS, seeds=[0], threads=1
    )
    return trained, digits.runs_table(trained).set_index("optimizer")


@pytest.mark.slow
def test_paper_claims_hold_on_the_quick_setting(quick) -> None:
    """Momentum grows the scale-invariant norms much faster than plain SGD (measured 1.30x vs
    1.007x); SGDP and AdamP keep them within 5% of their start (measured 1.022x, 1.004x); SGD
    momentum's effective step decays faster than SGDP's, both as the angular update and as
    η/‖w‖² (measured 6.2x vs 4.1x and 1.71x vs 1.05x), and it halves sooner."""
    _, table = quick
    growth = table["norm_growth"]
    assert growth["sgd_momentum"] > 1.2
    assert growth["sgd_momentum"] - 1 > 10 * (growth["sgd"] - 1)
    for name in ("sgdp", "adamp"):
        assert 1.0 <= growth[name] < 1.05, name
    # the projection is what keeps them flat: their unprojected twins grow more
    assert growth["sgdp"] < growth["sgd_momentum"] and growth["adamp"] < growth["adamw"]
    assert table.loc["sgd_momentum", "angular_decay"] > table.loc["sgdp", "angular_decay"]
    assert table.loc["sgd_momentum", "half_step"] < table.loc["sgdp", "half_step"]
    assert table.loc["sgd_momentum", "effective_lr_decay"] > 1.5
    assert table.loc["sgdp", "effective_lr_decay"] < 1.1
    assert (table["test_accuracy"] > 0.9).all()
    assert (table["steps"] == QUICK_STEPS).all()


@pytest.mark.slow
def test_every_optimizer_starts_from_the_same_weights_and_batches(quick) -> None:
    from stepsize_lens.run import load

    trained, _ = quick
    runs = [load(item.path) for item in trained]
    assert [item.optimizer for item in trained] == list(digits.OPTIMIZER_NAMES)
    norms = np.stack([run.metric("weight_norm")[0] for run in runs])
    grads = np.stack([run.metric("grad_norm")[0] for run in runs])
    np.testing.assert_array_equal(norms, np.broadcast_to(norms[0], norms.shape))
    np.testing.assert_allclose(grads, np.broadcast_to(grads[0], grads.shape), rtol=1e-6)
    for run in runs:
        names = set(run.scalars["name"])
        assert {"loss", "test_accuracy"} <= names
        # the six conv weights are the scale-invariant ones
        classes = classify_tensors(run)
        invariant = sorted(classes[classes.isin(["channel", "layer"])].index)
        assert len(invariant) == 6 and all(name.endswith("weight") for name in invariant)


def _table(values: dict[str, list[float]]) -> pd.DataFrame:
    rows = []
    for name, series in values.items():
        for seed, value in enumerate(series):
            rows.append(
                {
                    "optimizer": name,
                    "label": name.upper(),
                    "seed": seed,
                    "steps": 10,
                    **{metric: value for metric in digits.METRICS},
                }
            )
    return pd.DataFrame(rows)


def test_aggregate_is_mean_and_sample_std_over_seeds() -> None:
    summary = digits.aggregate(_table({"b": [1.0, 2.0, 6.0], "a": [2.0]}))
    assert list(summary["optimizer"]) == ["b", "a"]  # the table's order
    b = summary.iloc[0]
    assert b["seeds"] == 3 and b["norm_growth_mean"] == pytest.approx(3.0)
    assert b["norm_growth_std"] == pytest.approx(np.std([1.0, 2.0, 6.0], ddof=1))
    assert math.isnan(summary.iloc[1]["loss_std"])


def test_markdown_table_formats_mean_plus_minus_std() -> None:
    table = _table({"sgd": [1.2, 1.4], "one": [0.5]})
    text = digits.markdown_table(digits.aggregate(table))
    lines = text.splitlines()
    assert lines[0] == "| " + " | ".join(digits.table_header()) + " |"
    assert lines[2] == (
        "| SGD | 130.0% ± 14.1% | 1.300 ± 0.141× | 1.300 ± 0.141× | 1 ± 0× | 1 ± 0 |"
    )
    assert lines[3] == "| ONE | 50.0% | 0.500× | 0.500× | 0× | 0 |"
    never = digits.aggregate(_table({"x": [float("nan"), 2.0]}))
    assert digits.table_rows(never)[0][1:] == ["–"] * 5


def test_caption_explains_the_dash_for_one_seed_and_for_several() -> None:
    assert "(–: never)" in digits.caption(1)
    assert "not in every seed" in digits.caption(3)
    one_seed = pd.DataFrame(
        {"optimizer": ["sgd"], "label": ["SGD"], "seed": [0], "steps": [10]}
        | {metric: [float("nan")] for metric in digits.METRICS}
    )
    table = digits.rich_table(digits.aggregate(one_seed), "title")
    assert "not in every seed" not in str(table.caption)


def test_select_and_train_all_reject_bad_input(tmp_path: Path) -> None:
    assert [spec.name for spec in digits.select(["adamp", "sgd"])] == ["adamp", "sgd"]
    with pytest.raises(UserInputError, match="unknown optimizer"):
        digits.select(["lion"])
    with pytest.raises(UserInputError, match="steps"):
        digits.train_all(tmp_path, steps=0)
    with pytest.raises(UserInputError, match="seed"):
        digits.train_all(tmp_path, steps=1, seeds=[])


def test_torch_threads_restores_the_setting() -> None:
    before = torch.get_num_threads()
    with digits.torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_run_metrics_needs_a_scale_invariant_tensor(tmp_path: Path) -> None:
    import stepsize_lens

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with stepsize_lens.attach(model, optimizer, path=tmp_path / "run.pt") as lens:
        for _ in range(3):
            optimizer.zero_grad()
            model(torch.randn(8, 4)).pow(2).sum().backward()
            optimizer.step()
            lens.log(loss=1.0)
    with pytest.raises(ValueError, match="no scale-invariant tensor"):
        digits.run_metrics(stepsize_lens.load(tmp_path / "run.pt"))


def test_demo_module_reexports_the_training_function() -> None:
    from stepsize_lens.experiments import demo

    assert demo.train_digits_run is digits.train_digits_run
