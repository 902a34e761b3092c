"""SGDP (stepsize_lens/optim/sgdp.py) against the paper authors' package and on theory."""

from __future__ import annotations

import pytest
import torch
from _optim_cases import (  # noqa: F401 (one_thread: an autouse fixture)
    PATHS,
    SGDP_CONFIGS,
    channels_last_matches_reference,
    make,
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


@pytest.mark.parametrize("path", PATHS)
def test_channels_last_matches_the_reference_in_default_format(path):
    channels_last_matches_reference("SGDP", path)


@pytest.mark.parametrize("path", PATHS)
def test_sgdp_grows_the_norm_by_exactly_the_projected_step(path):
    lr = 0.5
    for before, after, delta, state in toy_steps(
        lambda p: make("SGDP", p, path, lr=lr, momentum=0.9)
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


def test_learning_rate_given_only_per_group_is_accepted_like_torch_and_the_reference():
    """Issue 14: SGDP([{"params": a, "lr": 0.1}, {"params": b, "lr": 0.01}], momentum=0.9)."""
    import adamp as reference

    gen = torch.Generator().manual_seed(7)
    base = [torch.randn(4, 3, generator=gen), torch.randn(5, generator=gen)]
    grads = [torch.randn(b.shape, generator=gen) for b in base]
    results = []
    for factory in (SGDP, reference.SGDP, torch.optim.SGD):
        a, b = (nn.Parameter(x.clone()) for x in base)
        opt = factory([{"params": [a], "lr": 0.1}, {"params": [b], "lr": 0.01}], momentum=0.9)
        assert [g["lr"] for g in opt.param_groups] == [0.1, 0.01]
        for _ in range(3):
            a.grad, b.grad = grads[0].clone(), grads[1].clone()
            opt.step()
        results.append((a.detach(), b.detach()))
    torch.testing.assert_close(results[0][1], results[2][1])  # 1-D: plain momentum SGD
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])


def test_a_group_without_any_learning_rate_is_one_clear_error():
    a, b = nn.Parameter(torch.randn(3)), nn.Parameter(torch.randn(3))
    with pytest.raises(UserInputError, match="every parameter group its own 'lr'"):
        SGDP([{"params": [a], "lr": 0.1}, {"params": [b]}], momentum=0.9)


def test_momentum_one_with_weight_decay_is_rejected_per_group():
    """Issue 14: it used to pass and then divide by zero at the step."""
    a, b = nn.Parameter(torch.randn(3, 3)), nn.Parameter(torch.randn(3, 3))
    with pytest.raises(UserInputError, match="momentum must be < 1"):
        SGDP([{"params": [a]}, {"params": [b], "momentum": 1.0}], lr=0.1, weight_decay=0.1)
    opt = SGDP([a], lr=0.1, momentum=0.9, weight_decay=0.1)
    with pytest.raises(UserInputError, match="momentum must be < 1"):
        opt.add_param_group({"params": [b], "momentum": 1.0})
    assert len(opt.param_groups) == 1  # the rejected group was not kept
    opt.add_param_group({"params": [b], "momentum": 1.0, "weight_decay": 0.0})  # no decay: fine
    a.grad, b.grad = torch.randn(3, 3), torch.randn(3, 3)
    opt.step()
    assert torch.isfinite(b).all()
