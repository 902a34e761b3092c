"""The functional probe on hand-built models with known answers, and its side effects."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from _invariance_models import ConvBNClassifier
from torch import nn

from stepsize_lens import invariance as inv
from stepsize_lens.experiments.models import Attention, cifar_resnet18


def probe_state(model: nn.Module) -> dict:
    return {name: value.clone() for name, value in model.state_dict().items()}


# --------------------------------------------------------------------------------------------
# the probe on hand-built models with known answers
# --------------------------------------------------------------------------------------------


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


def test_a_compiled_model_is_probed_under_the_plain_models_names():
    torch.manual_seed(0)
    model = ConvBNClassifier()
    inputs = torch.randn(4, 3, 6, 6)
    plain = inv.probe(model, inputs)
    compiled = inv.probe(torch.compile(model), inputs)  # only wraps: nothing is compiled
    assert compiled.verdicts == plain.verdicts
    params = list(model.parameters())
    columns = inv.probe_param_columns(torch.compile(model), params, compiled)
    assert columns["probe_verdict"] == [plain.verdicts[n] for n, _ in model.named_parameters()]


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
