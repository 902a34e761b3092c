"""SGDP (stepsize_lens/optim/sgdp.py) against the paper authors' package and on theory."""

from __future__ import annotations

import pytest
import torch
from _optim_cases import (  # noqa: F401 (one_thread: an autouse fixture)
    SGDP_CONFIGS,
    channels_last_matches_reference,
    matches_reference,
    one_thread,
    toy_steps,
)
from torch import nn

from stepsize_lens.errors import UserInputError
from stepsize_lens.optim import SGDP


@pytest.mark.parametrize("kind", ["cnn", "transformer"])
@pytest.mark.parametrize("config", list(SGDP_CONFIGS))
def test_trajectory_matches_the_reference_package(config, kind):
    views = matches_reference("SGDP", config, kind)
    # the runs exercised the projection: channel view on the CNN, layer view on the block
    assert (1 if kind == "cnn" else 2) in views


@pytest.mark.parametrize("foreach", [False, True])
def test_channels_last_matches_the_reference_in_default_format(foreach):
    channels_last_matches_reference("SGDP", foreach)


@pytest.mark.parametrize("foreach", [False, True])
def test_sgdp_grows_the_norm_by_exactly_the_projected_step(foreach):
    lr = 0.5
    for before, after, delta, state in toy_steps(
        lambda p: SGDP(p, lr=lr, momentum=0.9, foreach=foreach)
    ):
        assert int(state["projection"]) == 1
        # ||w'||^2 = ||w||^2 + lr^2 ||Π(p)||^2, Π(p) being the (projected) momentum buffer
        projected = state["momentum_buffer"]
        torch.testing.assert_close(
            after - before, lr**2 * projected.square().sum(), rtol=1e-6, atol=0
        )
        torch.testing.assert_close(delta, -lr * projected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(
    "factory",
    [
        lambda p: torch.optim.SGD(p, lr=0.5, momentum=0.9),
        lambda p: SGDP(p, lr=0.5, momentum=0.9, delta=0.0),  # the test never passes: plain momentum
    ],
    ids=["torch_sgd", "sgdp_unprojected"],
)
def test_momentum_sgd_follows_the_momentum_identity(factory):
    beta, lr = 0.9, 0.5
    steps = toy_steps(factory)
    buf_sq = []
    for t, (before, after, _, state) in enumerate(steps):
        buf_sq.append(state["momentum_buffer"].square().sum())
        excess = sum(beta ** (t - k) * buf_sq[k] for k in range(t))
        expected = lr**2 * buf_sq[t] + 2 * lr**2 * excess
        torch.testing.assert_close(after - before, expected, rtol=1e-6, atol=0)
    # momentum grows the norm much faster than the projected steps would
    assert float(steps[-1][1]) > float(steps[0][0]) * 1.5


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"lr": 0.1, "momentum": -0.5},
        {"lr": 0.1, "momentum": 1.0, "weight_decay": 0.1},
        {"lr": 0.1, "delta": -1.0},
    ],
    ids=["no_lr", "momentum", "momentum_one_with_decay", "delta"],
)
def test_invalid_arguments_raise_user_input_error(kwargs):
    with pytest.raises(UserInputError):
        SGDP([nn.Parameter(torch.randn(3, 3))], **kwargs)
