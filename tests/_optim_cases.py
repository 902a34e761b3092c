"""Models, data and configurations shared by the AdamP/SGDP tests (tests/test_optim_*.py).

The reference is the paper authors' package ``adamp==0.3.0`` (test-only dependency).
Trajectories are compared after 30 real forward/backward steps on a BatchNorm CNN and on a
LayerNorm transformer block.
"""

from __future__ import annotations

import adamp as reference
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from stepsize_lens.optim import SGDP, AdamP

STEPS = 30
RTOL = 1e-6


def bn_cnn() -> nn.Module:
    """Smooth activations: a ReLU kink would turn float rounding into O(1e-4) differences."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.SiLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.SiLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 5),
    )


class LNBlock(nn.Module):
    """Pre-norm attention + MLP block; fc1 feeds a LayerNorm, so it is layer-wise invariant."""

    def __init__(self, dim: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.embed = nn.Linear(6, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)  # a key bias gets no gradient
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 2 * dim, bias=False)
        self.norm3 = nn.LayerNorm(2 * dim)
        self.fc2 = nn.Linear(2 * dim, dim)
        self.head = nn.Linear(dim, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        b, t, d = h.shape
        qkv = self.qkv(self.norm1(h)).reshape(b, t, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        att = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, d)
        h = h + self.proj(att)
        h = h + self.fc2(F.gelu(self.norm3(self.fc1(self.norm2(h)))))
        return self.head(h.mean(1))


def data(kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    x = (
        torch.randn(16, 3, 8, 8, generator=gen)
        if kind == "cnn"
        else torch.randn(8, 5, 6, generator=gen)
    )
    return x, torch.randint(0, 5, (x.shape[0],), generator=gen)


def model(kind: str) -> nn.Module:
    torch.manual_seed(0)
    return bn_cnn() if kind == "cnn" else LNBlock()


def train(
    net: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, steps: int
) -> None:
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()


def groups(net: nn.Module, specs: list[dict] | None) -> list:
    params = list(net.parameters())
    if specs is None:
        return params
    half = len(params) // 2
    return [dict(params=params[:half], **specs[0]), dict(params=params[half:], **specs[1])]


@torch.no_grad()
def assert_close_params(actual: nn.Module, expected: nn.Module, rtol: float = RTOL) -> None:
    """||a - b|| <= rtol ||b|| for every parameter tensor."""
    for (name, a), b in zip(actual.named_parameters(), expected.parameters()):
        err = float((a - b).norm())
        assert err <= rtol * float(b.norm()), (
            f"{name}: difference {err:.2e}, norm {float(b.norm()):.2e}"
        )


ADAMP_CONFIGS = {
    "defaults": ({}, None),
    "weight_decay": ({"lr": 1e-2, "weight_decay": 0.1}, None),
    "nesterov": ({"lr": 1e-2, "weight_decay": 0.05, "nesterov": True}, None),
    "groups": (
        {"lr": 3e-3},
        [
            {"lr": 1e-2, "weight_decay": 0.1, "wd_ratio": 0.2, "delta": 0.2},
            {"betas": (0.8, 0.99), "eps": 1e-6, "nesterov": True, "weight_decay": 0.01},
        ],
    ),
}
SGDP_CONFIGS = {
    "momentum0": ({"lr": 0.05}, None),
    "momentum0.9": ({"lr": 0.05, "momentum": 0.9}, None),
    "dampening": ({"lr": 0.05, "momentum": 0.9, "dampening": 0.1, "weight_decay": 1e-2}, None),
    "nesterov": ({"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-2}, None),
    "nesterov_dampening": (
        {"lr": 0.05, "momentum": 0.9, "dampening": 0.1, "nesterov": True, "weight_decay": 1e-2},
        None,
    ),
    "groups": (
        {"lr": 0.05, "momentum": 0.9},
        [
            {"weight_decay": 1e-2, "wd_ratio": 0.3, "delta": 0.2},
            {"lr": 0.02, "momentum": 0.5, "nesterov": True, "eps": 1e-6, "weight_decay": 1e-3},
        ],
    ),
}
CONFIGS = {"AdamP": ADAMP_CONFIGS, "SGDP": SGDP_CONFIGS}
CASES = [(name, config) for name, configs in CONFIGS.items() for config in configs]
OURS = {"AdamP": AdamP, "SGDP": SGDP}
REFERENCE = {"AdamP": reference.AdamP, "SGDP": reference.SGDP}


#: The three paths of `stepsize_lens.optim._base.PATHS`, as constructor flags.
PATH_FLAGS = {
    "per-tensor": {"foreach": False},
    "multi-tensor": {"foreach": True},
    "fused": {"fused": True},
}
PATHS = list(PATH_FLAGS)


def config(opt_name: str, name: str) -> tuple[dict, list | None]:
    return CONFIGS[opt_name][name]


def make(opt_name: str, params, path: str, **kwargs) -> torch.optim.Optimizer:
    """Our optimizer on ``path``. The suite does not compile (tests/conftest.py), so the fused
    path runs its multi-tensor fallback here; tests/test_optim_compiled.py compiles it."""
    return OURS[opt_name](params, **PATH_FLAGS[path], **kwargs)


def matches_reference(opt_name: str, config_name: str, kind: str) -> set[int]:
    """Train the reference and each of our paths; assert equal trajectories, return the views.

    Raises if a path's parameters differ from the reference's by more than `RTOL`.
    """
    kwargs, specs = config(opt_name, config_name)
    x, y = data(kind)
    expected = model(kind)
    train(expected, REFERENCE[opt_name](groups(expected, specs), **kwargs), x, y, STEPS)
    views: set[int] = set()
    for path in PATHS:
        net = model(kind)
        opt = make(opt_name, groups(net, specs), path, **kwargs)
        train(net, opt, x, y, STEPS)
        assert_close_params(net, expected)
        views |= {int(state["projection"]) for state in opt.state.values()}
    return views


def channels_last_matches_reference(opt_name: str, path: str) -> None:
    kwargs, _ = config(opt_name, "nesterov")
    x, y = data("cnn")
    expected = model("cnn")
    train(expected, REFERENCE[opt_name](expected.parameters(), **kwargs), x, y, STEPS)
    net = model("cnn").to(memory_format=torch.channels_last)
    assert net[0].weight.is_contiguous(memory_format=torch.channels_last)
    opt = make(opt_name, net.parameters(), path, **kwargs)
    train(net, opt, x.to(memory_format=torch.channels_last), y, STEPS)
    assert net[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert_close_params(net, expected, rtol=1e-5)
    assert int(opt.state[net[3].weight]["projection"]) == 1


class NormalisedRows(nn.Module):
    """y = (W / ||W_r||) x: exactly invariant to scaling any row of W (float64)."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(3)
        self.weight = nn.Parameter(torch.randn(4, 12, generator=gen, dtype=torch.float64))
        self.x = torch.randn(12, 32, generator=gen, dtype=torch.float64)
        self.target = torch.randn(4, 32, generator=gen, dtype=torch.float64)

    def loss(self) -> torch.Tensor:
        w = self.weight / self.weight.norm(dim=1, keepdim=True)
        return ((w @ self.x - self.target) ** 2).mean()


def toy_steps(opt_factory, steps: int = 20) -> list:
    """Per step: (||w||^2 before, ||w||^2 after, step Δ, optimizer state of w after)."""
    toy = NormalisedRows()
    opt = opt_factory([toy.weight])
    out = []
    for _ in range(steps):
        opt.zero_grad()
        toy.loss().backward()
        before = toy.weight.detach().clone()
        opt.step()
        after = toy.weight.detach().clone()
        state = {
            k: v.clone() if isinstance(v, torch.Tensor) else v
            for k, v in opt.state[toy.weight].items()
        }
        out.append((before.square().sum(), after.square().sum(), after - before, state))
    return out


@pytest.fixture(autouse=True)
def one_thread():
    """Small models run fastest on one thread, whatever else shares the machine.

    Autouse in every test module that imports it.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
