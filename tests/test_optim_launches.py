"""A multi-tensor step of AdamP and SGDP in at most 3 kernel launches per tensor + 50, none that
makes a GPU host wait, on two model sizes (issue 22). Counted with a TorchDispatchMode
(`stepsize_lens._launches`) around real steps, with the accelerator paths forced on the CPU
(``STEPSIZE_LENS_DEVICE_PATHS=accelerator``)."""

from __future__ import annotations

import pytest
import torch
from _lens_models import imagenet_resnet18, vit_tiny_224
from torch import nn

from stepsize_lens._device_paths import ENV_VAR
from stepsize_lens._launches import Launches, count_launches
from stepsize_lens.optim import SGDP, AdamP

OPTIMIZERS = {
    "AdamP": lambda p: AdamP(p, lr=1e-3, weight_decay=1e-2),
    "AdamP nesterov": lambda p: AdamP(p, lr=1e-3, weight_decay=1e-2, nesterov=True),
    "SGDP": lambda p: SGDP(p, lr=0.1, momentum=0.9, weight_decay=1e-4),
    "SGDP nesterov, no wd": lambda p: SGDP(p, lr=0.1, momentum=0.9, nesterov=True),
}


def limit(num_tensors: int) -> int:
    return 3 * num_tensors + 50


def _tangential_grads(params: list[nn.Parameter], gen: torch.Generator) -> None:
    """Random gradients, with tangential rows where ndim > 1: those tensors are projected."""
    for p in params:
        noise = torch.randn(p.shape, generator=gen)
        if p.ndim > 1:
            w, n = p.detach().reshape(p.shape[0], -1), noise.reshape(p.shape[0], -1)
            noise = n - w * (w * n).sum(1, keepdim=True) / w.square().sum(1, keepdim=True)
            noise = noise.reshape(p.shape)
        p.grad = noise


def step_launches(model: nn.Module, factory) -> tuple[Launches, torch.optim.Optimizer]:
    params = list(model.parameters())
    gen = torch.Generator().manual_seed(0)
    optimizer = factory(params)
    _tangential_grads(params, gen)
    optimizer.step()  # state exists from here on
    _tangential_grads(params, gen)
    with count_launches() as launches:
        optimizer.step()
    return launches, optimizer


@pytest.fixture(autouse=True)
def accelerator_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, "accelerator")


@pytest.mark.parametrize("name", list(OPTIMIZERS))
@pytest.mark.parametrize("build", [imagenet_resnet18, vit_tiny_224], ids=["resnet18", "vit"])
def test_a_multi_tensor_step_takes_few_launches_and_never_waits(build, name):
    torch.manual_seed(0)
    model = build()
    launches, optimizer = step_launches(model, OPTIMIZERS[name])
    tensors = len(list(model.parameters()))
    assert 10 < launches.total <= limit(tensors), launches.ops.most_common(12)
    assert not launches.waiting, launches.waiting
    views = [int(s["projection"]) for s in optimizer.state.values() if "projection" in s]
    assert views.count(1) > tensors // 8  # real work: the channel view passes and projects


def _stack(layers: int) -> nn.Module:
    torch.manual_seed(0)
    blocks = []
    for _ in range(layers):
        blocks += [nn.Linear(48, 48, bias=False), nn.LayerNorm(48), nn.Conv1d(48, 48, 3)]
    return nn.Sequential(*blocks)


@pytest.mark.parametrize("name", ["AdamP", "SGDP"])
def test_launches_depend_on_row_lengths_not_on_the_number_of_tensors(name):
    few, _ = step_launches(_stack(2), OPTIMIZERS[name])
    many, _ = step_launches(_stack(12), OPTIMIZERS[name])
    assert many.total == few.total, (few.ops - many.ops, many.ops - few.ops)
