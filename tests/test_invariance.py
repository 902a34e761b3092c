"""Scale invariance: the paper's test, the functional probe, the census, agreement, `inspect`."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

from stepsize_lens import invariance as inv
from stepsize_lens.errors import UserInputError
from stepsize_lens.models import Attention, cifar_resnet18
from stepsize_lens.run import GROUP_FIELDS, METRICS, VIEWS, Run, RunWriter, validate

NAN = float("nan")


def _repo_root() -> str:
    return str(Path(inv.__file__).resolve().parents[1])


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def make_run(
    tensors: list[dict],
    cos: np.ndarray,
    chan: np.ndarray,
    *,
    skipped: list[bool] | None = None,
    weight_norm: np.ndarray | None = None,
    grad_norm: np.ndarray | None = None,
    applied: np.ndarray | None = None,
    weight_decay: float = 0.0,
    delta: float = 0.1,
) -> Run:
    """A run built through RunWriter from given cosines, one param group."""
    writer = RunWriter(None, {"delta": delta, "label": "synthetic"})
    rows = []
    for index, spec in enumerate(tensors):
        shape = spec["shape"]
        row = {
            "name": spec["name"],
            "group": 0,
            "index": index,
            "shape": list(shape),
            "numel": int(np.prod(shape)),
            "ndim": len(shape),
            "rows": shape[0],
            "module_type": spec.get("module_type", "Linear"),
            "dtype": "float32",
            "aliases": [],
        }
        row.update({k: v for k, v in spec.items() if k.startswith("probe_")})
        rows.append(row)
    writer.add_params(rows)
    writer.set_num_groups(1)
    num_records, num_tensors = cos.shape
    skipped = skipped or [False] * num_records
    for r in range(num_records):
        metrics = torch.full((len(METRICS), num_tensors), NAN)
        metrics[METRICS.index("cos_grad")] = torch.as_tensor(cos[r], dtype=torch.float32)
        metrics[METRICS.index("channel_cos_grad_max")] = torch.as_tensor(chan[r])
        if weight_norm is not None:
            metrics[METRICS.index("weight_norm")] = torch.as_tensor(weight_norm[r])
        if grad_norm is not None:
            metrics[METRICS.index("grad_norm")] = torch.as_tensor(grad_norm[r])
        views = torch.full((len(VIEWS), num_tensors), -1, dtype=torch.int8)
        if applied is not None:
            views[VIEWS.index("applied_view")] = torch.as_tensor(applied[r], dtype=torch.int8)
        groups = torch.zeros(len(GROUP_FIELDS), 1, dtype=torch.float64)
        groups[GROUP_FIELDS.index("weight_decay")] = weight_decay
        writer.append(r * 10, float(r), skipped[r], metrics, views, groups)
    return Run(validate(writer.to_dict()))


def probe_state(model: nn.Module) -> dict:
    return {name: value.clone() for name, value in model.state_dict().items()}


# --------------------------------------------------------------------------------------------
# the paper's test
# --------------------------------------------------------------------------------------------


def test_paper_test_known_cases_numpy():
    # numel 100, rows 10: channel threshold 0.1*sqrt(10/100) = 0.0316, layer threshold 0.01
    cos = np.array([0.5, 0.005, 0.5, NAN, 0.5, NAN, 0.0])
    chan = np.array([0.03, 0.5, 0.5, NAN, 0.0, 0.5, 0.0])
    ndim = np.array([2, 2, 2, 2, 4, 2, 1])
    codes = inv.paper_test(cos, chan, 100, 10, ndim)
    assert codes.dtype == np.int8
    # channel, layer, none, both NaN, channel (4-D), NaN layer but chan fails, 1-D
    assert codes.tolist() == [1, 2, 0, -1, 1, 0, -1]


def test_paper_test_threshold_is_strict_and_delta_scales():
    assert inv.paper_test(0.5, 0.0316, 100, 10, 2).item() == 1
    assert inv.paper_test(0.5, 0.0317, 100, 10, 2).item() == 0
    assert inv.paper_test(0.5, 0.0317, 100, 10, 2, delta=0.2).item() == 1
    assert inv.paper_test(0.0099, 1.0, 100, 10, 2).item() == 2
    assert inv.paper_test(-0.0101, 1.0, 100, 10, 2).item() == 0  # abs() of a signed cosine


def test_paper_test_torch_matches_numpy_and_stays_on_device():
    rng = np.random.default_rng(0)
    cos = rng.normal(0, 0.02, size=(7, 5))
    chan = np.abs(rng.normal(0, 0.05, size=(7, 5)))
    cos[0, 0] = chan[0, 0] = NAN
    numel = np.array([100, 9, 4096, 50, 8])
    rows = np.array([10, 3, 64, 1, 8])
    ndim = np.array([2, 2, 4, 3, 1])
    expected = inv.paper_test(cos, chan, numel, rows, ndim, delta=0.3)
    got = inv.paper_test(
        torch.tensor(cos, dtype=torch.float64),
        torch.tensor(chan, dtype=torch.float64),
        torch.tensor(numel),
        torch.tensor(rows),
        torch.tensor(ndim),
        delta=0.3,
    )
    assert isinstance(got, torch.Tensor) and got.dtype == torch.int8
    np.testing.assert_array_equal(got.numpy(), expected)
    # float32 cosines and plain-list sizes also work
    got32 = inv.paper_test(
        torch.tensor(cos, dtype=torch.float32), torch.tensor(chan), list(numel), rows, ndim, 0.3
    )
    assert got32.shape == (7, 5) and got32.dtype == torch.int8


# --------------------------------------------------------------------------------------------
# recorded test on a run: views, classes, pass rates
# --------------------------------------------------------------------------------------------

TENSORS = [
    {"name": "a", "shape": (10, 10)},
    {"name": "b", "shape": (10,), "module_type": "BatchNorm1d"},
]


def _two_tensor_run(skipped=None, **params) -> Run:
    # tensor a: layer, layer, channel, channel, channel(skipped)
    cos = np.array([[0.001, 0.5]] * 5)
    chan = np.array([[0.5, NAN], [0.5, NAN], [0.001, NAN], [0.001, NAN], [0.001, NAN]])
    tensors = [dict(TENSORS[0], **params), TENSORS[1]]
    return make_run(tensors, cos, chan, skipped=skipped)


def test_recorded_views_and_classes():
    run = _two_tensor_run()
    views = inv.recorded_test_views(run)
    assert views[:, 0].tolist() == [2, 2, 1, 1, 1]
    assert (views[:, 1] == -1).all()  # 1-D: never tested
    classes = inv.classify_tensors(run)
    assert classes.to_dict() == {"a": "channel", "b": "none"}
    assert run.tensor_classes().equals(classes)
    # with a small delta nothing passes
    assert inv.classify_tensors(run, delta=1e-3)["a"] == "none"


def test_classes_ignore_skipped_records_and_break_ties_toward_weaker():
    run = _two_tensor_run(skipped=[False, False, False, False, True])
    counts = inv.view_counts(run)
    assert counts.loc["a", "known"] == 4
    assert counts.loc["a", "channel"] == 0.5 and counts.loc["a", "layer"] == 0.5
    assert inv.classify_tensors(run)["a"] == "layer"  # 2 vs 2: the weaker claim wins


def test_probe_column_overrides_recorded_majority():
    run = _two_tensor_run(probe_verdict="none")
    assert inv.classify_tensors(run)["a"] == "none"


def test_pass_rates_running_and_windowed():
    cos = np.array([[0.0], [0.5], [0.0], [0.5], [0.0]])
    chan = np.array([[0.0], [0.5], [0.5], [0.5], [0.0]])
    run = make_run([{"name": "w", "shape": (10, 10)}], cos, chan, skipped=[0, 0, 0, 0, 1])
    running = run.pass_rates()
    assert list(running.index) == [0, 10, 20, 30, 40]
    np.testing.assert_allclose(running["w"], [1, 0.5, 2 / 3, 0.5, 0.5])
    np.testing.assert_allclose(run.pass_rates(window=2)["w"], [1, 0.5, 0.5, 0.5, 0.0])
    np.testing.assert_allclose(run.pass_rates(view="channel")["w"], [1, 0.5, 1 / 3, 0.25, 0.25])
    np.testing.assert_allclose(run.pass_rates(view="layer")["w"], [0, 0, 1 / 3, 0.25, 0.25])
    with pytest.raises(ValueError):
        run.pass_rates(view="sideways")
    with pytest.raises(ValueError):
        run.pass_rates(window=0)


def test_pass_rates_of_untested_tensors_are_nan():
    run = _two_tensor_run()
    assert run.pass_rates()["b"].isna().all()
    assert run.test_views().shape == (5, 2)


# --------------------------------------------------------------------------------------------
# the probe on hand-built models with known answers
# --------------------------------------------------------------------------------------------


class ConvBNClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, bias=False)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        return self.fc(F.relu(self.bn(self.conv(x))).mean((2, 3)))


def test_conv_batchnorm_is_channel_and_classifier_is_none():
    torch.manual_seed(0)
    result = inv.probe(ConvBNClassifier(), torch.randn(4, 3, 6, 6))
    assert result.verdicts == {
        "conv.weight": "channel",
        "bn.weight": "none",
        "bn.bias": "none",
        "fc.weight": "none",
        "fc.bias": "none",
    }
    table = result.table
    assert table.at["conv.weight", "channel_change"] < 1e-12
    assert table.at["fc.weight", "channel_change"] > 1e-2
    assert table.at["fc.weight", "layer_change"] > 1e-2
    assert not table.at["bn.weight", "tested"]
    assert result.tolerance == 1e-6 and result.settings["noise_floor"] == 0.0


def test_linear_layernorm_is_layer_not_channel():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 6, bias=False), nn.LayerNorm(6))
    result = inv.probe(model, torch.randn(5, 8))
    assert result.verdict("0.weight") == "layer"
    assert result.table.at["0.weight", "channel_change"] > 1e-2
    assert result.table.at["0.weight", "layer_change"] < 1e-12


def test_bias_breaks_invariance():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 6, bias=True), nn.LayerNorm(6))
    nn.init.uniform_(model[0].bias, 0.5, 1.0)
    assert inv.probe(model, torch.randn(5, 8)).verdict("0.weight") == "none"


def test_conv_without_normalisation_is_none():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, bias=False), nn.ReLU(), nn.Flatten())
    assert inv.probe(model, torch.randn(3, 2, 5, 5)).verdict("0.weight") == "none"


def test_positive_homogeneity_through_relu_gives_layer_then_channel():
    # conv1 -> ReLU -> conv2 -> BN: a whole-tensor factor on conv1 passes ReLU and conv2 and is
    # removed by BN; a per-row factor on conv1 gets mixed by conv2, so conv1 is only layer.
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, bias=False),
        nn.ReLU(),
        nn.Conv2d(4, 5, 3, bias=False),
        nn.BatchNorm2d(5),
    )
    verdicts = inv.probe(model, torch.randn(3, 2, 7, 7)).verdicts
    assert verdicts["0.weight"] == "layer" and verdicts["2.weight"] == "channel"


class TwoPaths(nn.Module):
    """One linear weight used by two paths; tuple inputs and tuple outputs."""

    def __init__(self, second_normalised: bool) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 6, bias=False)
        self.bn1 = nn.BatchNorm1d(6)
        self.bn2 = nn.BatchNorm1d(6) if second_normalised else nn.Identity()

    def forward(self, a, b):
        return self.bn1(self.lin(a)), self.bn2(self.lin(b))


def test_weight_shared_by_two_normalised_paths_is_channel():
    torch.manual_seed(0)
    inputs = (torch.randn(4, 8), torch.randn(4, 8))
    assert inv.probe(TwoPaths(True), inputs).verdict("lin.weight") == "channel"
    assert inv.probe(TwoPaths(False), inputs).verdict("lin.weight") == "none"


def test_tied_parameter_is_probed_once_and_found_by_identity():
    torch.manual_seed(0)

    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(8, 6, bias=False)
            self.b = nn.Linear(8, 6, bias=False)
            self.b.weight = self.a.weight
            self.bn_a, self.bn_b = nn.BatchNorm1d(6), nn.BatchNorm1d(6)
            self.head = nn.Linear(6, 2)

        def forward(self, x):
            return self.head(self.bn_a(self.a(x)) + self.bn_b(self.b(x * 2 + 1)))

    model = Tied()
    result = inv.probe(model, torch.randn(4, 8))
    assert "b.weight" not in result.table.index
    assert result.verdict("a.weight") == "channel"
    stray = nn.Parameter(torch.ones(3, 3))
    order = [model.head.weight, model.b.weight, stray]
    columns = inv.probe_param_columns(model, order, result)
    assert set(columns) == set(inv.PROBE_COLUMNS)
    assert columns["probe_verdict"] == ["none", "channel", None]
    assert columns["probe_channel_change"][1] < 1e-12
    assert np.isnan(columns["probe_layer_change"][1])  # implied by channel, not measured
    assert np.isnan(columns["probe_numerical_change"][2])


def test_groupnorm_layer_with_groups_channel_per_channel():
    torch.manual_seed(0)
    grouped = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.GroupNorm(2, 8))
    per_channel = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.GroupNorm(8, 8))
    x = torch.randn(2, 3, 6, 6)
    assert inv.probe(grouped, x).verdict("0.weight") == "layer"
    assert inv.probe(per_channel, x).verdict("0.weight") == "channel"


class WSConv2d(nn.Conv2d):
    """Weight-standardised convolution: each filter normalised over its fan-in."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.eps = 1e-5

    def forward(self, x):
        w = self.weight
        mean = w.mean(dim=(1, 2, 3), keepdim=True)
        var = w.var(dim=(1, 2, 3), keepdim=True, unbiased=False)
        return F.conv2d(x, (w - mean) / torch.sqrt(var + self.eps), self.bias)


def test_weight_standardised_conv_is_channel_without_a_norm_layer():
    torch.manual_seed(0)
    model = nn.Sequential(WSConv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16, 2))
    verdicts = inv.probe(model, torch.randn(2, 3, 6, 6)).verdicts
    assert verdicts["0.weight"] == "channel" and verdicts["3.weight"] == "none"


def test_attention_block_runs_and_projections_are_not_invariant():
    torch.manual_seed(0)

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = nn.LayerNorm(8)
            self.attn = Attention(8, heads=2, dropout=0.2)

        def forward(self, x):
            return x + self.attn(self.norm(x))

    result = inv.probe(Block(), torch.randn(2, 5, 8))
    assert result.verdict("attn.qkv.weight") == "none"
    assert result.verdict("attn.proj.weight") == "none"
    assert result.settings["noise_floor"] == 0.0  # attention dropout replayed


def test_dropout_is_replayed_and_dict_outputs_and_kwargs_work():
    torch.manual_seed(0)

    class DictModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 6, 3, bias=False)
            self.drop = nn.Dropout(0.5)
            self.bn = nn.BatchNorm2d(6)
            self.fc = nn.Linear(6, 3)

        def forward(self, image, shift=0.0):
            features = self.bn(self.drop(self.conv(image)))
            return {"features": features, "logits": self.fc(features.mean((2, 3)) + shift)}

    result = inv.probe(DictModel(), {"image": torch.randn(4, 3, 6, 6), "shift": 0.5})
    assert result.verdict("conv.weight") == "channel"
    assert result.verdict("fc.weight") == "none"
    assert result.settings["noise_floor"] == 0.0
    assert result.settings["numerical_noise_floor"] == 0.0


def _eps_sensitive_model_and_inputs():
    # a depthwise conv feeding BatchNorm(eps=1e-5); input channel 0 has a tiny variance
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 4, 3, groups=4, bias=False), nn.BatchNorm2d(4))
    x = torch.randn(4, 4, 6, 6)
    x[:, 0] *= 1e-3
    return model, x


def test_real_eps_deviation_is_reported_apart_from_structural_verdict():
    model, x = _eps_sensitive_model_and_inputs()
    result = inv.probe(model, x)
    assert result.verdict("0.weight") == "channel"  # structural: float64, eps -> 1e-30
    assert result.table.at["0.weight", "numerical_change"] > 1e-2
    assert bool(result.table.at["0.weight", "approximate"])
    numerical_only = inv.probe(model, x, structural=False)
    assert numerical_only.verdict("0.weight") == "none"
    assert numerical_only.tolerance == 1e-3


def test_probe_leaves_model_and_rng_bitwise_unchanged():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, bias=False),
        nn.Dropout(0.3),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 16, 3),
    )
    model[2].running_mean.uniform_()
    model.eval()
    model[1].train()  # mixed flags must come back as they were
    before = probe_state(model)
    params_before = [id(p) for p in model.parameters()]
    random.seed(1)
    np.random.seed(1)
    torch_rng, py_rng, np_rng = torch.get_rng_state(), random.getstate(), np.random.get_state()

    inv.probe(model, torch.randn(4, 3, 6, 6, generator=torch.Generator().manual_seed(3)))

    after = model.state_dict()
    assert before.keys() == after.keys()
    for name, value in before.items():
        assert value.dtype == after[name].dtype and torch.equal(value, after[name]), name
    assert [id(p) for p in model.parameters()] == params_before
    assert torch.equal(torch.get_rng_state(), torch_rng)
    assert random.getstate() == py_rng
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), np_rng, strict=True))
    assert [m.training for m in model.modules()] == [False, False, True, False, False, False, False]
    assert all(p.grad is None for p in model.parameters())


def test_probe_restores_state_when_the_forward_fails():
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    before = probe_state(model)
    with pytest.raises(RuntimeError):
        inv.probe(model, torch.randn(2, 5))
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name])
    assert model.training


def test_probe_arguments():
    model = nn.Sequential(nn.Linear(4, 3, bias=False), nn.LayerNorm(3))
    x = torch.randn(3, 4)
    assert list(inv.probe(model, x, names=["0.weight"]).table.index) == ["0.weight"]
    with pytest.raises(KeyError):
        inv.probe(model, x, names=["nope"])
    with pytest.raises(ValueError):
        inv.probe(model, x, draws=0)
    with pytest.raises(ValueError, match="floating-point"):
        inv.probe(nn.Sequential(nn.Flatten()), torch.arange(6).reshape(2, 3))
    a = inv.probe(model, x, seed=5).table
    b = inv.probe(model, x, seed=5).table
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.slow
def test_resnet18_convs_are_channel_invariant_and_census_above_90_percent():
    torch.manual_seed(0)
    model = cifar_resnet18()
    before = probe_state(model)
    inputs = torch.randn(4, 3, 8, 8)
    rng = torch.get_rng_state()
    result = inv.probe(model, inputs, draws=2)
    table = result.table
    convs = table[table["module_type"] == "Conv2d"]
    assert len(convs) == 20 and (convs["verdict"] == "channel").all()
    assert result.verdict("linear.weight") == "none"
    share = inv.census(result).loc["all", "params_invariant"]
    assert share > 0.9
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


# --------------------------------------------------------------------------------------------
# census
# --------------------------------------------------------------------------------------------


def test_census_fractions_overall_and_per_module_type():
    table = pd.DataFrame(
        {
            "class": ["channel", "channel", "layer", "none", "none"],
            "numel": [600, 200, 100, 90, 10],
            "module_type": ["Conv2d", "Conv2d", "Linear", "Linear", "BatchNorm2d"],
        }
    )
    out = inv.census(table)
    assert list(out.index) == ["all", "Conv2d", "Linear", "BatchNorm2d"]
    overall = out.loc["all"]
    assert overall["tensors"] == 5 and overall["parameters"] == 1000
    assert overall["tensors_channel"] == pytest.approx(0.4)
    assert overall["tensors_none"] == pytest.approx(0.4)
    assert overall["params_channel"] == pytest.approx(0.8)
    assert overall["params_layer"] == pytest.approx(0.1)
    assert overall["params_invariant"] == pytest.approx(0.9)
    assert out.loc["Linear", "params_layer"] == pytest.approx(100 / 190)
    assert out.loc["BatchNorm2d", "tensors_none"] == 1.0
    with pytest.raises(ValueError):
        inv.census(table.drop(columns="numel"))


def test_census_of_a_run_uses_its_classes():
    out = inv.census(_two_tensor_run())
    assert out.loc["all", "params_channel"] == pytest.approx(100 / 110)
    assert out.loc["BatchNorm1d", "tensors_none"] == 1.0


def test_census_of_probe_result_and_printing():
    from rich.console import Console

    torch.manual_seed(0)
    result = inv.probe(ConvBNClassifier(), torch.randn(4, 3, 6, 6))
    out = result.census()
    assert out.loc["Conv2d", "params_channel"] == 1.0
    assert out.loc["Linear", "params_none"] == 1.0
    console = Console(width=100, record=True)
    inv.print_inspection(result, spec="toy", tensors=True, console=console)
    text = console.export_text()
    assert "census of toy" in text and "conv.weight" in text and "Conv2d" in text


# --------------------------------------------------------------------------------------------
# agreement
# --------------------------------------------------------------------------------------------


def test_agreement_lists_and_explains_disagreements():
    # numel 100, rows 10: channel threshold 0.0316, layer threshold 0.01
    tensors = [
        {"name": "ok", "shape": (10, 10), "probe_verdict": "channel"},
        {"name": "decayed", "shape": (10, 10), "probe_verdict": "channel"},
        {"name": "lucky", "shape": (10, 10), "probe_verdict": "none"},
        {"name": "rows", "shape": (10, 10), "probe_verdict": "channel"},
        {"name": "gain", "shape": (10,), "probe_verdict": "none"},
    ]
    records = 6
    # decayed: g = g_tangential + 0.01 w with |w| = 10, |g| = 1 -> cos = 0.1
    cos = np.tile([0.0, 0.1, 0.001, 0.005, 0.5], (records, 1))
    chan = np.tile([0.01, 0.3, 0.001, 0.2, NAN], (records, 1))
    weight_norm = np.tile([1.0, 10.0, 1.0, 1.0, 1.0], (records, 1))
    grad_norm = np.ones((records, 5))
    applied = np.tile([2, 0, 0, 1, -1], (records, 1))
    run = make_run(
        tensors,
        cos,
        chan,
        weight_norm=weight_norm,
        grad_norm=grad_norm,
        applied=applied,
        weight_decay=0.01,
    )
    table = inv.agreement(run)
    assert list(table.index) == ["ok", "decayed", "lucky", "rows"]  # 1-D tensors left out
    assert table.loc["ok", "agree"] and table.loc["ok", "pass_rate"] == 1.0
    assert "applied the layer view" in table.loc["ok", "explanation"]
    assert table.loc["decayed", "recorded"] == "none"
    assert "weight decay" in table.loc["decayed", "explanation"]
    assert table.loc["lucky", "recorded"] == "channel"
    assert "passed in 100%" in table.loc["lucky", "explanation"]
    assert table.loc["rows", "recorded"] == "layer"
    assert "channel test failed" in table.loc["rows", "explanation"]
    assert list(inv.disagreements(run).index) == ["decayed", "lucky", "rows"]


def test_agreement_outward_radial_gradient_without_weight_decay():
    cos = np.full((4, 1), 0.2)
    run = make_run(
        [{"name": "w", "shape": (10, 10), "probe_verdict": "layer"}],
        cos,
        np.full((4, 1), 0.5),
        weight_norm=np.ones((4, 1)),
        grad_norm=np.ones((4, 1)),
    )
    explanation = inv.agreement(run).loc["w", "explanation"]
    assert "points outward" in explanation and "non-invariant path" in explanation


def test_agreement_with_a_probe_result_and_without_verdicts():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 10, bias=False), nn.LayerNorm(10))
    result = inv.probe(model, torch.randn(4, 10))
    run = make_run([{"name": "0.weight", "shape": (10, 10)}], np.zeros((3, 1)), np.ones((3, 1)))
    table = inv.agreement(run, result)
    assert table.loc["0.weight", "probe"] == "layer" and table.loc["0.weight", "agree"]
    with pytest.raises(UserInputError, match="no probe verdicts"):
        inv.agreement(run)


def test_recorded_run_with_probe_columns_end_to_end():
    import stepsize_lens
    from stepsize_lens.models import digits_cnn

    torch.manual_seed(0)
    model = digits_cnn(width=8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    lens = stepsize_lens.attach(model, optimizer, path=None, schedule=1)
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))
    for _ in range(12):
        optimizer.zero_grad()
        # an L2 penalty on one invariant weight adds a radial term to its gradient
        penalty = 5e-3 * model.block1.conv1.weight.square().sum() / 2
        (F.cross_entropy(model(x), y) + penalty).backward()
        optimizer.step()
    result = inv.probe(model, x[:8])
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for column, values in inv.probe_param_columns(model, params, result).items():
        lens.set_param_column(column, values)
    run = lens.run()
    lens.close()
    classes = inv.classify_tensors(run)
    assert (classes[[n for n in run.tensor_names if "conv" in n]] == "channel").all()
    assert classes["linear.weight"] == "none"
    table = inv.agreement(run)
    assert list(inv.disagreements(run).index) == ["block1.conv1.weight"]
    assert "points outward" in table.loc["block1.conv1.weight", "explanation"]
    assert table.loc["conv1.weight", "pass_rate"] == 1.0


# --------------------------------------------------------------------------------------------
# `stepsize-lens inspect`
# --------------------------------------------------------------------------------------------


@pytest.fixture
def user_models(tmp_path, monkeypatch):
    (tmp_path / "lens_user_models.py").write_text(
        textwrap.dedent(
            """
            from torch import nn

            not_callable = 3

            def raises():
                raise RuntimeError("cannot build this model")

            def small():
                return nn.Sequential(nn.Linear(6, 4, bias=False), nn.BatchNorm1d(4))

            def not_a_module():
                return "a string"
            """
        )
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "lens_user_models", raising=False)
    yield
    sys.modules.pop("lens_user_models", None)


def _invoke(*args: str):
    from stepsize_lens.cli import app

    return CliRunner().invoke(app, ["inspect", *args])


def test_inspect_builtin_prints_census():
    result = _invoke("digits_cnn", "--batch-size", "2", "--draws", "1")
    assert result.exit_code == 0, result.output
    assert "census of digits_cnn" in result.stdout
    assert "Conv2d" in result.stdout and "98.4% of parameters" in result.stdout


def test_inspect_factory_from_current_folder(user_models):
    result = _invoke("lens_user_models:small", "--input-shape", "6", "--tensors")
    assert result.exit_code == 0, result.output
    assert "0.weight" in result.stdout and "channel" in result.stdout


@pytest.mark.parametrize(
    ("spec", "extra", "message"),
    [
        ("no_such_module_xyz:factory", [], "cannot import module 'no_such_module_xyz'"),
        ("lens_user_models:missing", ["--input-shape", "6"], "has no attribute 'missing'"),
        ("lens_user_models:not_callable", ["--input-shape", "6"], "is not callable"),
        ("lens_user_models:raises", ["--input-shape", "6"], "cannot build this model"),
        ("lens_user_models:not_a_module", ["--input-shape", "6"], "not a torch.nn.Module"),
        ("lens_user_models:small", ["--input-shape", "7"], "does not fit model"),
        ("lens_user_models:small", [], "pass --input-shape"),
        ("lens_user_models:small", ["--input-shape", "6,a"], "not a list of integers"),
        ("resnet", [], "unknown model 'resnet'"),
        ("resnet18", ["--input-shape", "1,8,8"], "does not fit model"),
        ("mlp", ["--batch-size", "1"], "batch size must be at least 2"),
        ("mlp", ["--draws", "0"], "draws must be at least 1"),
    ],
)
def test_inspect_bad_model_is_one_line_and_exit_2(user_models, spec, extra, message):
    result = _invoke(spec, *extra)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0] and "Traceback" not in result.output


def test_inspect_bad_model_through_the_console_script(user_models):
    code = "from stepsize_lens.cli import main; main()"
    proc = subprocess.run(
        [sys.executable, "-c", code, "inspect", "lens_user_models:raises", "--input-shape", "6"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": _repo_root()},
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "cannot build this model" in proc.stderr
