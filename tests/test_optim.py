"""AdamP and SGDP against the paper authors' package, between our two paths, and on theory.

The reference is ``adamp==0.3.0`` (test-only dependency). Trajectories are compared after 30
real forward/backward steps on a BatchNorm CNN and on a LayerNorm transformer block.
"""

from __future__ import annotations

import io

import adamp as reference
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import stepsize_lens
from stepsize_lens.errors import UserInputError
from stepsize_lens.optim import SGDP, AdamP
from stepsize_lens.optim import _projection as projection

STEPS = 30
RTOL = 1e-6


@pytest.fixture(autouse=True)
def _one_thread():
    """Small models run fastest on one thread, whatever else shares the machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


def _data(kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    x = (
        torch.randn(16, 3, 8, 8, generator=gen)
        if kind == "cnn"
        else torch.randn(8, 5, 6, generator=gen)
    )
    return x, torch.randint(0, 5, (x.shape[0],), generator=gen)


def _model(kind: str) -> nn.Module:
    torch.manual_seed(0)
    return bn_cnn() if kind == "cnn" else LNBlock()


def _train(
    model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, steps: int
):
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()


def _groups(model: nn.Module, specs: list[dict] | None) -> list:
    params = list(model.parameters())
    if specs is None:
        return params
    half = len(params) // 2
    return [dict(params=params[:half], **specs[0]), dict(params=params[half:], **specs[1])]


@torch.no_grad()
def _assert_close_params(actual: nn.Module, expected: nn.Module, rtol: float = RTOL) -> None:
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
CASES = [("AdamP", name) for name in ADAMP_CONFIGS] + [("SGDP", name) for name in SGDP_CONFIGS]
OURS = {"AdamP": AdamP, "SGDP": SGDP}
REFERENCE = {"AdamP": reference.AdamP, "SGDP": reference.SGDP}


def _config(opt_name: str, config: str) -> tuple[dict, list | None]:
    return (ADAMP_CONFIGS if opt_name == "AdamP" else SGDP_CONFIGS)[config]


@pytest.mark.parametrize("kind", ["cnn", "transformer"])
@pytest.mark.parametrize("opt_name,config", CASES)
def test_trajectory_matches_the_reference_package(opt_name, config, kind):
    kwargs, specs = _config(opt_name, config)
    x, y = _data(kind)
    expected = _model(kind)
    _train(expected, REFERENCE[opt_name](_groups(expected, specs), **kwargs), x, y, STEPS)
    views = set()
    for foreach in (False, True):
        model = _model(kind)
        opt = OURS[opt_name](_groups(model, specs), foreach=foreach, **kwargs)
        _train(model, opt, x, y, STEPS)
        _assert_close_params(model, expected)
        views |= {int(state["projection"]) for state in opt.state.values()}
    # the runs exercised the projection: channel view on the CNN, layer view on the block
    assert (1 if kind == "cnn" else 2) in views


@pytest.mark.parametrize("opt_name", ["AdamP", "SGDP"])
@pytest.mark.parametrize("foreach", [False, True])
def test_channels_last_matches_the_reference_in_default_format(opt_name, foreach):
    kwargs, _ = _config(opt_name, "nesterov")
    x, y = _data("cnn")
    expected = _model("cnn")
    _train(expected, REFERENCE[opt_name](expected.parameters(), **kwargs), x, y, STEPS)
    model = _model("cnn").to(memory_format=torch.channels_last)
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    opt = OURS[opt_name](model.parameters(), foreach=foreach, **kwargs)
    _train(model, opt, x.to(memory_format=torch.channels_last), y, STEPS)
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    _assert_close_params(model, expected, rtol=1e-5)
    assert int(opt.state[model[3].weight]["projection"]) == 1


@pytest.mark.parametrize("block_numel", [None, 100], ids=["default_blocks", "tiny_blocks"])
@pytest.mark.parametrize("opt_name,config", CASES)
def test_reference_and_multi_tensor_paths_agree(opt_name, config, block_numel, monkeypatch):
    """Both paths see the same gradients (those of the per-tensor run) at every step.

    Tiny blocks cut every tensor into many pieces and put several tensors in one block.
    """
    if block_numel is not None:
        monkeypatch.setattr(
            projection,
            "row_blocks",
            lambda shapes: projection.RowBlocks(shapes, block_numel),
        )
    kwargs, specs = _config(opt_name, config)
    x, y = _data("cnn")
    model, twin = _model("cnn"), _model("cnn")
    single = OURS[opt_name](_groups(model, specs), foreach=False, **kwargs)
    multi = OURS[opt_name](_groups(twin, specs), foreach=True, **kwargs)
    for _ in range(STEPS):
        single.zero_grad()
        F.cross_entropy(model(x), y).backward()
        for p, q in zip(model.parameters(), twin.parameters()):
            q.grad = p.grad.clone()
        single.step()
        multi.step()
        for p, q in zip(model.parameters(), twin.parameters()):
            assert torch.equal(single.state[p]["projection"], multi.state[q]["projection"])
    _assert_close_params(twin, model)
    for p, q in zip(model.parameters(), twin.parameters()):
        for key, value in single.state[p].items():
            if key != "projection" and isinstance(value, torch.Tensor):
                scale = float(value.norm())
                assert float((multi.state[q][key] - value).norm()) <= RTOL * scale, key


@pytest.mark.parametrize("opt_name", ["AdamP", "SGDP"])
def test_default_foreach_is_the_multi_tensor_path(opt_name):
    kwargs, _ = _config(opt_name, "nesterov")
    x, y = _data("transformer")
    runs = []
    for foreach in (None, True):
        model = _model("transformer")
        _train(model, OURS[opt_name](model.parameters(), foreach=foreach, **kwargs), x, y, 5)
        runs.append(model)
    for a, b in zip(runs[0].parameters(), runs[1].parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("opt_name", ["AdamP", "SGDP"])
@pytest.mark.parametrize("foreach", [False, True])
def test_state_dict_round_trip_mid_training_continues_identically(opt_name, foreach):
    kwargs, specs = _config(opt_name, "groups")
    x, y = _data("cnn")
    model = _model("cnn")
    opt = OURS[opt_name](_groups(model, specs), foreach=foreach, **kwargs)
    _train(model, opt, x, y, 10)

    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed = _model("cnn")
    resumed.load_state_dict(saved["model"])
    opt2 = OURS[opt_name](_groups(resumed, specs), foreach=foreach, **kwargs)
    opt2.load_state_dict(saved["opt"])
    for state in opt2.state.values():
        assert state["projection"].dtype == torch.long and state["projection"].dim() == 0

    _train(model, opt, x, y, 10)
    _train(resumed, opt2, x, y, 10)
    for a, b in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("opt_name", ["AdamP", "SGDP"])
def test_state_saved_by_the_reference_package_loads_and_continues(opt_name):
    kwargs, _ = _config(opt_name, "nesterov")
    x, y = _data("cnn")
    expected = _model("cnn")
    ref = REFERENCE[opt_name](expected.parameters(), **kwargs)
    _train(expected, ref, x, y, 10)
    model = _model("cnn")
    model.load_state_dict(expected.state_dict())
    ours = OURS[opt_name](model.parameters(), **kwargs)
    buffer = io.BytesIO()
    torch.save(ref.state_dict(), buffer)
    buffer.seek(0)
    ours.load_state_dict(torch.load(buffer, weights_only=True))
    _train(expected, ref, x, y, 10)
    _train(model, ours, x, y, 10)
    _assert_close_params(model, expected)


class _NormalisedRows(nn.Module):
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


def _toy_steps(opt_factory, steps: int = 20):
    """Per step: (||w||^2 before, ||w||^2 after, step Δ, optimizer state of w after)."""
    toy = _NormalisedRows()
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


@pytest.mark.parametrize("foreach", [False, True])
def test_sgdp_grows_the_norm_by_exactly_the_projected_step(foreach):
    lr = 0.5
    for before, after, delta, state in _toy_steps(
        lambda p: SGDP(p, lr=lr, momentum=0.9, foreach=foreach)
    ):
        assert int(state["projection"]) == 1
        # ||w'||^2 = ||w||^2 + lr^2 ||Π(p)||^2, Π(p) being the (projected) momentum buffer
        projected = state["momentum_buffer"]
        torch.testing.assert_close(
            after - before, lr**2 * projected.square().sum(), rtol=1e-6, atol=0
        )
        torch.testing.assert_close(delta, -lr * projected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("foreach", [False, True])
def test_adamp_steps_are_tangential_on_the_toy(foreach):
    for before, after, delta, state in _toy_steps(lambda p: AdamP(p, lr=0.05, foreach=foreach)):
        assert int(state["projection"]) == 1
        torch.testing.assert_close(after - before, delta.square().sum(), rtol=1e-6, atol=0)


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
    steps = _toy_steps(factory)
    buf_sq = []
    for t, (before, after, _, state) in enumerate(steps):
        buf_sq.append(state["momentum_buffer"].square().sum())
        excess = sum(beta ** (t - k) * buf_sq[k] for k in range(t))
        expected = lr**2 * buf_sq[t] + 2 * lr**2 * excess
        torch.testing.assert_close(after - before, expected, rtol=1e-6, atol=0)
    # momentum grows the norm much faster than the projected steps would
    assert float(steps[-1][1]) > float(steps[0][0]) * 1.5


def test_one_dim_tensors_are_never_projected():
    model = _model("cnn")
    opt = AdamP(model.parameters(), delta=1e9)  # every tested tensor passes the test
    x, y = _data("cnn")
    _train(model, opt, x, y, 2)
    for p in model.parameters():
        assert int(opt.state[p]["projection"]) == (1 if p.ndim > 1 else 0)


@pytest.mark.parametrize("opt_name", ["AdamP", "SGDP"])
def test_odd_layouts_and_float64_use_the_fallback_correctly(opt_name):
    kwargs, _ = _config(opt_name, "weight_decay" if opt_name == "AdamP" else "dampening")
    gen = torch.Generator().manual_seed(4)
    base = [
        torch.randn(8, 6, generator=gen).t(),  # dim 0 not outermost: per-tensor fallback
        torch.randn(5, 4, 3, generator=gen, dtype=torch.float64),
        torch.randn(7, generator=gen),
    ]
    grads = [torch.randn(b.shape, generator=gen, dtype=b.dtype) for b in base]
    results = []
    for foreach in (False, True):
        params = [nn.Parameter(b.clone()) for b in base]
        opt = OURS[opt_name](params, foreach=foreach, **kwargs)
        for _ in range(3):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            opt.step()
        results.append(params)
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("opt_name", ["AdamP", "SGDP"])
def test_channels_last_weights_with_contiguous_gradients(opt_name):
    """Rows of w, g and the update must be compared element for element whatever the layouts."""
    kwargs, _ = _config(opt_name, "nesterov")
    gen = torch.Generator().manual_seed(5)
    w0 = torch.randn(6, 4, 3, 3, generator=gen)
    noise = [torch.randn(6, 36, generator=gen) for _ in range(4)]

    def tangential(p: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        rows = p.detach().reshape(6, -1)  # the channel view passes
        return (
            g - rows * (rows * g).sum(1, keepdim=True) / rows.square().sum(1, keepdim=True)
        ).reshape(p.shape)

    results = []
    for fmt, foreach in [
        (torch.contiguous_format, False),
        (torch.channels_last, False),
        (torch.channels_last, True),
    ]:
        p = nn.Parameter(w0.clone().to(memory_format=fmt))
        opt = OURS[opt_name]([p], foreach=foreach, **kwargs)
        for g in noise:
            p.grad = tangential(p, g).contiguous()  # whatever the parameter's layout
            opt.step()
        assert int(opt.state[p]["projection"]) == 1
        results.append(p.detach())
    torch.testing.assert_close(results[1], results[0], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(results[2], results[0], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("opt_name", ["AdamP", "SGDP"])
def test_bfloat16_parameters_follow_the_reference(opt_name):
    kwargs, _ = _config(opt_name, "weight_decay" if opt_name == "AdamP" else "dampening")
    gen = torch.Generator().manual_seed(6)
    base = [torch.randn(8, 5, generator=gen), torch.randn(8, generator=gen)]
    grads = [[torch.randn(b.shape, generator=gen) for b in base] for _ in range(5)]
    runs = []
    for make in (
        REFERENCE[opt_name],
        lambda p, **kw: OURS[opt_name](p, foreach=False, **kw),
        lambda p, **kw: OURS[opt_name](p, foreach=True, **kw),
    ):
        params = [nn.Parameter(b.to(torch.bfloat16)) for b in base]
        opt = make(params, **kwargs)
        for step in grads:
            for p, g in zip(params, step):
                p.grad = g.to(torch.bfloat16)
            opt.step()
        runs.append([p.detach().float() for p in params])
    for ours in runs[1:]:
        for a, b in zip(ours, runs[0]):
            torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("opt_name", ["AdamP", "SGDP"])
def test_multi_tensor_path_never_reads_tensor_values_on_the_host(opt_name, monkeypatch):
    kwargs, _ = _config(opt_name, "groups")
    model = _model("cnn")
    x, y = _data("cnn")
    opt = OURS[opt_name](model.parameters(), foreach=True, **kwargs)
    F.cross_entropy(model(x), y).backward()

    def forbidden(*args, **kw):
        raise AssertionError("host synchronisation in the multi-tensor path")

    for name in ("__bool__", "item", "tolist", "__int__", "__float__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    opt.step()
    monkeypatch.undo()
    assert any(int(s["projection"]) == 1 for s in opt.state.values())


@pytest.mark.parametrize("opt_name", ["AdamP", "SGDP"])
@pytest.mark.parametrize("foreach", [False, True])
def test_nan_and_zero_gradients_never_crash(opt_name, foreach):
    nan_p, zero_p = nn.Parameter(torch.randn(4, 3)), nn.Parameter(torch.randn(4, 3))
    opt = OURS[opt_name]([nan_p, zero_p], lr=0.1, foreach=foreach)
    nan_p.grad = torch.full((4, 3), float("nan"))
    zero_p.grad = torch.zeros(4, 3)
    before = zero_p.detach().clone()
    opt.step()
    assert int(opt.state[nan_p]["projection"]) == 0  # a NaN cosine fails both views
    assert int(opt.state[zero_p]["projection"]) == 1  # cos = 0 passes; nothing to remove
    assert torch.equal(zero_p, before)


@pytest.mark.parametrize("opt_name", ["AdamP", "SGDP"])
def test_closure_is_evaluated_with_grad_and_its_loss_returned(opt_name):
    model = _model("cnn")
    x, y = _data("cnn")
    opt = OURS[opt_name](model.parameters(), lr=0.01)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert isinstance(loss, torch.Tensor) and loss.requires_grad


@pytest.mark.parametrize("opt_name", ["AdamP", "SGDP"])
def test_parameters_without_gradient_are_left_alone(opt_name):
    a, b = nn.Parameter(torch.randn(4, 3)), nn.Parameter(torch.randn(4, 3))
    opt = OURS[opt_name]([a, b], lr=0.1)
    before = b.detach().clone()
    a.grad = torch.randn(4, 3)
    opt.step()
    assert torch.equal(b, before) and b not in opt.state


@pytest.mark.parametrize("opt_name", ["AdamP", "SGDP"])
def test_sparse_gradients_raise_a_clear_error(opt_name):
    emb = nn.Embedding(10, 4, sparse=True)
    opt = OURS[opt_name](emb.parameters(), lr=0.1)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(UserInputError, match="sparse gradients"):
        opt.step()


@pytest.mark.parametrize(
    "make",
    [
        lambda p: AdamP(p, lr=-1.0),
        lambda p: AdamP(p, betas=(1.0, 0.999)),
        lambda p: AdamP(p, weight_decay=-0.1),
        lambda p: SGDP(p),
        lambda p: SGDP(p, lr=0.1, momentum=-0.5),
        lambda p: SGDP(p, lr=0.1, momentum=1.0, weight_decay=0.1),
        lambda p: SGDP(p, lr=0.1, delta=-1.0),
    ],
)
def test_invalid_arguments_raise_user_input_error(make):
    with pytest.raises(UserInputError):
        make([nn.Parameter(torch.randn(3, 3))])


def test_defaults_match_the_reference_and_top_level_exports():
    assert stepsize_lens.AdamP is AdamP and stepsize_lens.SGDP is SGDP
    p = [nn.Parameter(torch.randn(2, 2))]
    ours, ref = AdamP(p).defaults, reference.AdamP(p).defaults
    assert {k: ours[k] for k in ref} == ref and ours["foreach"] is None
    ours, ref = SGDP(p, lr=0.1).defaults, reference.SGDP(p, lr=0.1).defaults
    assert {k: ours[k] for k in ref} == ref and ours["foreach"] is None
