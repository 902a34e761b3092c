"""Group testing in the probe: the search on its own, and grouped verdicts against the
per-tensor protocol (``grouped=False``, the probe's original algorithm) on several models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _invariance_models import ConvBNClassifier
from torch import nn

from stepsize_lens import invariance as inv
from stepsize_lens.experiments.models import CifarResNet, tiny_gpt, vit_tiny
from stepsize_lens.invariance._group_search import group_search

# --------------------------------------------------------------------------------------------
# the search with a synthetic measure: a group's change is the sum of its members' own changes
# --------------------------------------------------------------------------------------------


def _counted(changes: dict[str, float]):
    calls: list[list[str]] = []

    def measure(group: list[str]) -> float:
        calls.append(list(group))
        return sum(changes[name] for name in group)

    return measure, calls


def test_every_member_is_classified_and_failures_are_measured_alone():
    rng = np.random.default_rng(0)
    for trial in range(40):
        n = int(rng.integers(1, 40))
        bad = rng.random(n) < rng.choice([0.0, 0.05, 0.3, 0.9])
        changes = {
            f"t{i}": (1.0 + rng.random() if bad[i] else 1e-9 * rng.random()) for i in range(n)
        }
        measure, calls = _counted(changes)
        found = group_search(list(changes), measure, 1e-6)
        assert list(found) != [] and set(found) == set(changes), trial
        for i, name in enumerate(changes):
            change, passed = found[name]
            assert passed == (not bad[i]), (trial, name)
            if bad[i]:
                assert change == changes[name]  # measured alone
            else:
                assert changes[name] <= change <= 1e-6  # the group it passed in


def test_one_failure_costs_about_log2_n_forwards_and_all_failing_about_n():
    for n in (8, 21, 64):
        changes = dict.fromkeys((f"t{i}" for i in range(n)), 0.0)
        changes[f"t{n - 1}"] = 2.0
        measure, calls = _counted(changes)
        group_search(list(changes), measure, 1e-6)
        assert len(calls) <= math.ceil(math.log2(n)) + 2, (n, len(calls))
        everything = dict.fromkeys(changes, 2.0)
        measure, calls = _counted(everything)
        assert not any(ok for _, ok in group_search(list(everything), measure, 1e-6).values())
        assert len(calls) <= n + math.ceil(math.log2(n)) + 1, (n, len(calls))
    measure, calls = _counted({})
    assert group_search([], measure, 1e-6) == {} and calls == []


def test_expected_failures_start_one_by_one_and_groups_grow_as_tensors_pass():
    failing = {f"t{i}": 1.0 for i in range(16)}
    measure, calls = _counted(failing)
    group_search(list(failing), measure, 1e-6, expect_failures=True)
    assert len(calls) == 16 and all(len(group) == 1 for group in calls)
    passing = dict.fromkeys(failing, 0.0)  # a wrong guess costs a few forwards, not one each
    measure, calls = _counted(passing)
    found = group_search(list(passing), measure, 1e-6, expect_failures=True)
    assert all(ok for _, ok in found.values()) and len(calls) <= 6


def test_a_false_alarm_shrinks_the_groups():
    # every tensor passes alone, but any three together fail: groups must shrink, not retry
    changes = dict.fromkeys((f"t{i}" for i in range(32)), 0.1)
    measure, calls = _counted(changes)
    found = group_search(list(changes), measure, 1.0)  # a group passes at 0.25
    assert all(ok for _, ok in found.values())
    assert len(calls) <= 40  # 35; retrying the whole pool after each false alarm takes 50+


def test_nan_fails_and_is_reported_for_the_tensor_alone():
    changes = {"a": 0.0, "b": float("nan"), "c": 0.0}
    measure, _ = _counted(changes)
    found = group_search(list(changes), measure, 1e-6)
    assert found["a"] == (0.0, True) and found["c"] == (0.0, True)
    assert math.isnan(found["b"][0]) and not found["b"][1]


def test_a_member_that_fails_only_with_its_group_passes_alone():
    # 0.6 + 0.6 > 1 together, each alone passes: the split measures both and passes both
    changes = {"a": 0.6, "b": 0.6}
    measure, _ = _counted(changes)
    assert group_search(list(changes), measure, 1.0) == {"a": (0.6, True), "b": (0.6, True)}


def test_a_group_passes_only_with_a_margin_below_the_limit():
    # together 0.5 (under the limit 1, over the group's margin 0.25): split, each measured alone
    changes = {"a": 0.2, "b": 0.3}
    measure, calls = _counted(changes)
    assert group_search(list(changes), measure, 1.0) == {"a": (0.2, True), "b": (0.3, True)}
    assert calls == [["a", "b"], ["a"], ["b"]]
    measure, calls = _counted({"a": 0.1, "b": 0.1})
    assert group_search(["a", "b"], measure, 1.0) == {"a": (0.2, True), "b": (0.2, True)}
    assert len(calls) == 1


# --------------------------------------------------------------------------------------------
# grouped probe == per-tensor probe, verdict for verdict
# --------------------------------------------------------------------------------------------


class WSConv2d(nn.Conv2d):
    def forward(self, x):
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.var((1, 2, 3), keepdim=True) + 1e-5).sqrt()
        return F.conv2d(x, w, self.bias)


class Mixed(nn.Module):
    """Channel (BN), layer (LN; ReLU then BN), weight-standardised, tied and plain tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3, bias=False)
        self.c2 = nn.Conv2d(6, 6, 3, bias=False)
        self.bn = nn.BatchNorm2d(6)
        self.ws = WSConv2d(6, 4, 1)
        self.gn = nn.Sequential(nn.Conv2d(4, 8, 1, bias=False), nn.GroupNorm(2, 8))
        self.lin = nn.Linear(8, 8, bias=False)
        self.ln = nn.LayerNorm(8)
        self.tied = nn.Linear(8, 8, bias=False)
        self.twin = nn.Linear(8, 8, bias=False)
        self.twin.weight = self.tied.weight
        self.bn_tied = nn.BatchNorm1d(8)
        self.scale = nn.Parameter(torch.ones(1, 8))
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = self.bn(self.c2(F.relu(self.c1(x))))
        x = self.gn(F.relu(self.ws(x))).mean((2, 3))
        x = self.ln(self.lin(x)) * self.scale
        x = self.bn_tied(self.tied(x) + self.twin(x * 2))
        return self.head(x)


def _models():
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    eps_sensitive = nn.Sequential(nn.Conv2d(4, 4, 3, groups=4, bias=False), nn.BatchNorm2d(4))
    faint = torch.randn(4, 4, 6, 6, generator=gen)
    faint[:, 0] *= 1e-3
    post_norm = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.1, batch_first=True)
    pre_norm = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True, norm_first=True)
    yield "conv-bn", ConvBNClassifier(), torch.randn(4, 3, 6, 6, generator=gen)
    yield "mixed", Mixed(), torch.randn(4, 3, 8, 8, generator=gen)
    yield "eps-sensitive", eps_sensitive, faint
    resnet = CifarResNet((2, 2, 2, 2), widths=(4, 8, 8, 16))  # ResNet-18's 62 tensors, narrow
    yield "resnet18-like", resnet, torch.randn(4, 3, 8, 8, generator=gen)
    vit = vit_tiny(dim=16, depth=2, heads=2, image_size=8, patch_size=4)
    yield "vit-tiny-like", vit, torch.randn(2, 3, 8, 8, generator=gen)
    yield "gpt", tiny_gpt(vocab_size=11, context=8, dim=16), torch.randint(0, 11, (2, 8))
    gpt_qk = tiny_gpt(vocab_size=11, context=8, dim=16, qk_norm=True)
    yield "gpt-qk-norm", gpt_qk, torch.randint(0, 11, (2, 8), generator=gen)
    yield "post-norm encoder", post_norm, torch.randn(2, 5, 16, generator=gen)
    yield "pre-norm encoder", pre_norm, torch.randn(2, 5, 16, generator=gen)


@pytest.fixture
def one_thread():
    """Tiny models: one intra-op thread is faster, and immune to a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("structural", [True, False])
def test_grouped_probe_agrees_with_the_per_tensor_probe(structural, one_thread):
    counts: dict[str, int] = {}
    for label, model, inputs in _models():
        grouped = inv.probe(model, inputs, structural=structural)
        alone = inv.probe(model, inputs, structural=structural, grouped=False)
        new, old = grouped.table, alone.table
        assert list(new.index) == list(old.index), label
        assert new["verdict"].tolist() == old["verdict"].tolist(), label
        assert new["approximate"].tolist() == old["approximate"].tolist(), label
        assert grouped.settings.keys() == alone.settings.keys(), label
        for key, value in grouped.settings.items():
            other = alone.settings[key]
            assert value == other or (value != value and other != other), key
        limit = grouped.tolerance if structural else grouped.numerical_tolerance
        for column in ("channel_change", "layer_change"):
            measured = old[column].notna() | new[column].notna()
            failed = measured & ~(old[column] <= limit)
            # a failure is measured alone, as before; a pass reports its group's change
            np.testing.assert_array_equal(new.loc[failed, column], old.loc[failed, column])
            assert (new.loc[measured & ~failed, column] <= limit).all(), (label, column)
        assert new["numerical_change"].isna().tolist() == old["numerical_change"].isna().tolist()
        for verdict in new["verdict"]:
            counts[verdict] = counts.get(verdict, 0) + 1
    assert min(counts.get(cls, 0) for cls in inv.CLASSES) >= 3, counts  # all three seen
