"""Advice in the user's own optimizer arguments (`analysis.advice`, docs/findings.md): the
argument as the user wrote it, a value inside the documented range, and the effect the
recurrence gives for it under the run's recorded schedule — or no advice at all."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from _runs import healthy_run, record_run

from stepsize_lens.analysis import PLAUSIBLE_WEIGHT_DECAY, find, forecast, tensor_classes
from stepsize_lens.analysis.advice import accepts, optimizer_class


@pytest.fixture(scope="module")
def momentum_run(tmp_path_factory):
    """SGD momentum with a weight decay far too small for 150 steps: the norms grow."""
    path = tmp_path_factory.mktemp("advice") / "sgdm.pt"
    return record_run(
        path,
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-4),
        steps=150,
    )


def _premature(run):
    return next(f for f in find(run) if f.kind == "premature_decay")


def test_advice_names_the_users_argument_and_a_value_in_range(momentum_run) -> None:
    finding = _premature(momentum_run)
    (decay,) = [a for a in finding.advice if a["argument"] == "weight_decay"]
    assert decay["optimizer"] == "SGD" and optimizer_class(momentum_run) is torch.optim.SGD
    assert "weight_decay" in inspect.signature(torch.optim.SGD).parameters
    low, high = PLAUSIBLE_WEIGHT_DECAY["sgd"]
    assert decay["old"] == pytest.approx(1e-4) and low <= decay["new"] <= high
    assert decay["text"].startswith(f"`weight_decay={decay['old']:.3g} → {decay['new']:.3g}`")
    assert f"{decay['effect']['angle_ratio']:.3g}x larger" in decay["text"]
    (switch,) = [a for a in finding.advice if a["switch_to"]]
    assert switch["switch_to"] == "stepsize_lens.SGDP"
    from stepsize_lens.optim import SGDP

    taken = inspect.signature(SGDP).parameters
    assert set(switch["arguments"]) == {"lr", "momentum", "dampening", "weight_decay", "nesterov"}
    assert all(name in taken for name in switch["arguments"])


def test_the_effect_is_the_recurrence_under_the_recorded_schedule(momentum_run) -> None:
    """Recomputed here from `forecast(change=...)`: the mid-run angle ratio."""
    from dataclasses import replace

    finding = _premature(momentum_run)
    (decay,) = [a for a in finding.advice if a["argument"] == "weight_decay"]
    classes = tensor_classes(momentum_run)
    base = forecast(momentum_run, classes)
    changed = forecast(
        momentum_run,
        classes,
        change=lambda h: replace(h, weight_decay=np.full(np.shape(h.lr), decay["new"])),
    )
    steps = base.steps.astype(float)
    span = steps[-1] - steps[0]
    middle = (steps >= steps[0] + span / 3) & (steps <= steps[0] + 2 * span / 3)
    ratio = np.exp(np.mean(np.log(changed.angle[middle] / base.angle[middle]), axis=0))
    assert decay["effect"]["angle_ratio"] == pytest.approx(np.median(ratio), rel=1e-6)
    assert decay["effect"]["angle_ratio"] >= 1.25  # material, or it would not be given
    # more decay, smaller norms: the recurrence's norm at the end is smaller
    assert np.all(changed.sq[-1] < base.sq[-1])


def test_no_advice_outside_the_range_or_without_the_argument(tmp_path) -> None:
    # already at the top of SGD's range: nothing larger to advise
    top = PLAUSIBLE_WEIGHT_DECAY["sgd"][1]
    run = record_run(
        tmp_path / "top.pt",
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=top),
        steps=60,
    )
    assert all(a["argument"] != "weight_decay" for f in find(run) for a in f.advice)
    # a crafted run whose optimizer class cannot be found, with no recorded arguments
    crafted = healthy_run()
    assert not accepts(crafted, "weight_decay")
    assert all(not f.advice for f in find(crafted))


def test_what_ifs_stay_within_their_step_budget(momentum_run, monkeypatch) -> None:
    from stepsize_lens.analysis import advice

    span = int(momentum_run.steps[-1] - momentum_run.steps[0]) + 1
    monkeypatch.setattr(advice, "WHAT_IF_STEPS", span)  # one try: the first candidate only
    finding = _premature(momentum_run)
    tried = [a for a in finding.advice if a["argument"] == "weight_decay"]
    assert not [a for a in finding.advice if a["switch_to"]]
    assert all(a["new"] == pytest.approx(2e-4) for a in tried)  # twice 1e-4, if material
    monkeypatch.setattr(advice, "WHAT_IF_STEPS", 0)
    assert _premature(momentum_run).advice == ()
