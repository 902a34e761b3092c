"""AdamP (stepsize_lens/optim/adamp.py) against the paper authors' package and on theory."""

from __future__ import annotations

import pytest
import torch
from _optim_cases import (  # noqa: F401 (one_thread: an autouse fixture)
    ADAMP_CONFIGS,
    PATHS,
    channels_last_matches_reference,
    data,
    make,
    matches_reference,
    model,
    one_thread,
    toy_steps,
    train,
)
from torch import nn

from stepsize_lens.errors import UserInputError
from stepsize_lens.optim import AdamP


@pytest.mark.parametrize("kind", ["cnn", "transformer"])
@pytest.mark.parametrize("config", list(ADAMP_CONFIGS))
def test_trajectory_matches_the_reference_package(config, kind):
    views = matches_reference("AdamP", config, kind)
    # the runs exercised the projection: channel view on the CNN, layer view on the block
    assert (1 if kind == "cnn" else 2) in views


@pytest.mark.parametrize("path", PATHS)
def test_channels_last_matches_the_reference_in_default_format(path):
    channels_last_matches_reference("AdamP", path)


@pytest.mark.parametrize("path", PATHS)
def test_adamp_steps_are_tangential_on_the_toy(path):
    for before, after, delta, state in toy_steps(lambda p: make("AdamP", p, path, lr=0.05)):
        assert int(state["projection"]) == 1
        torch.testing.assert_close(after - before, delta.square().sum(), rtol=1e-6, atol=0)


def test_one_dim_tensors_are_never_projected():
    net = model("cnn")
    opt = AdamP(net.parameters(), delta=1e9)  # every tested tensor passes the test
    x, y = data("cnn")
    train(net, opt, x, y, 2)
    for p in net.parameters():
        assert int(opt.state[p]["projection"]) == (1 if p.ndim > 1 else 0)


@pytest.mark.parametrize(
    "kwargs",
    [{"lr": -1.0}, {"betas": (1.0, 0.999)}, {"weight_decay": -0.1}],
    ids=["lr", "betas", "weight_decay"],
)
def test_invalid_arguments_raise_user_input_error(kwargs):
    with pytest.raises(UserInputError):
        AdamP([nn.Parameter(torch.randn(3, 3))], **kwargs)
