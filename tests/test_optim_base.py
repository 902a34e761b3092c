"""What AdamP and SGDP share (stepsize_lens/optim/_base.py): the paths, their agreement,
state dicts, closures, gradient checks and the exports."""

from __future__ import annotations

import io

import adamp as reference
import pytest
import torch
import torch.nn.functional as F
from _optim_cases import (  # noqa: F401 (one_thread: an autouse fixture)
    CASES,
    OURS,
    PATH_FLAGS,
    PATHS,
    REFERENCE,
    RTOL,
    STEPS,
    assert_close_params,
    config,
    data,
    groups,
    make,
    model,
    one_thread,
    train,
)
from torch import nn

import stepsize_lens
from stepsize_lens._device_paths import ENV_VAR
from stepsize_lens.errors import UserInputError
from stepsize_lens.optim import SGDP, AdamP, _blocked


@pytest.mark.parametrize(
    "path,block_numel",
    [("multi-tensor", None), ("multi-tensor", 100), ("accelerator", None), ("fused", None)],
    ids=["multi_tensor", "multi_tensor_tiny_blocks", "multi_tensor_accelerator", "fused"],
)
@pytest.mark.parametrize("opt_name,config_name", CASES)
def test_reference_and_other_paths_agree(opt_name, config_name, path, block_numel, monkeypatch):
    """Both paths see the same gradients (those of the per-tensor run) at every step.

    Tiny blocks cut every tensor into many pieces and put several tensors in one block; the
    accelerator mode (forced on the CPU) sums the rows of equal length together. The fused path
    runs here uncompiled (tests/test_optim_compiled.py compiles it).
    """
    if path == "accelerator":
        monkeypatch.setenv(ENV_VAR, "accelerator")
        path = "multi-tensor"
    if block_numel is not None:
        monkeypatch.setattr(_blocked, "BLOCK_NUMEL", block_numel)
        monkeypatch.setattr(_blocked, "CPU", _blocked.Mode("cpu", block_numel))
    kwargs, specs = config(opt_name, config_name)
    x, y = data("cnn")
    net, twin = model("cnn"), model("cnn")
    single = make(opt_name, groups(net, specs), "per-tensor", **kwargs)
    other = make(opt_name, groups(twin, specs), path, **kwargs)
    for _ in range(STEPS):
        single.zero_grad()
        F.cross_entropy(net(x), y).backward()
        for p, q in zip(net.parameters(), twin.parameters()):
            q.grad = p.grad.clone()
        single.step()
        other.step()
        for p, q in zip(net.parameters(), twin.parameters()):
            assert torch.equal(single.state[p]["projection"], other.state[q]["projection"])
    assert_close_params(twin, net)
    for p, q in zip(net.parameters(), twin.parameters()):
        for key, value in single.state[p].items():
            if key != "projection" and isinstance(value, torch.Tensor):
                scale = float(value.norm())
                assert float((other.state[q][key] - value).norm()) <= RTOL * scale, key


@pytest.mark.parametrize("opt_name", ["AdamP", "SGDP"])
def test_default_foreach_is_the_multi_tensor_path(opt_name):
    kwargs, _ = config(opt_name, "nesterov")
    x, y = data("transformer")
    runs = []
    for foreach in (None, True):
        net = model("transformer")
        train(net, OURS[opt_name](net.parameters(), foreach=foreach, **kwargs), x, y, 5)
        runs.append(net)
    for a, b in zip(runs[0].parameters(), runs[1].parameters()):
        assert torch.equal(a, b)


def _saved(net: nn.Module, opt: torch.optim.Optimizer) -> dict:
    buffer = io.BytesIO()
    torch.save({"model": net.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("opt_name", ["AdamP", "SGDP"])
@pytest.mark.parametrize("path", PATHS)
def test_state_dict_round_trip_mid_training_continues_identically(opt_name, path):
    kwargs, specs = config(opt_name, "groups")
    x, y = data("cnn")
    net = model("cnn")
    opt = make(opt_name, groups(net, specs), path, **kwargs)
    train(net, opt, x, y, 10)

    saved = _saved(net, opt)
    resumed = model("cnn")
    resumed.load_state_dict(saved["model"])
    opt2 = make(opt_name, groups(resumed, specs), path, **kwargs)
    opt2.load_state_dict(saved["opt"])
    for state in opt2.state.values():
        assert state["projection"].dtype == torch.long and state["projection"].dim() == 0

    train(net, opt, x, y, 10)
    train(resumed, opt2, x, y, 10)
    for a, b in zip(net.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("opt_name", ["AdamP", "SGDP"])
@pytest.mark.parametrize(
    "saved_on,loaded_on",
    [(a, b) for a in PATHS for b in PATHS if a != b],
    ids=lambda p: p.replace("-", "_"),
)
def test_state_saved_on_one_path_continues_on_another(opt_name, saved_on, loaded_on):
    """Same state layout on every path: a checkpoint moves between them (issue 15)."""
    kwargs, specs = config(opt_name, "groups")
    x, y = data("cnn")
    net = model("cnn")
    opt = make(opt_name, groups(net, specs), saved_on, **kwargs)
    train(net, opt, x, y, 10)
    saved = _saved(net, opt)
    train(net, opt, x, y, 10)  # the uninterrupted run, on the first path

    resumed = model("cnn")
    resumed.load_state_dict(saved["model"])
    opt2 = make(opt_name, groups(resumed, specs), loaded_on, **kwargs)
    opt2.load_state_dict(saved["opt"])
    for group in opt2.param_groups:  # the loading optimizer keeps its own path
        assert all(group[k] == v for k, v in PATH_FLAGS[loaded_on].items())
    assert {k: type(v) for k, v in opt2.state[resumed[0].weight].items()} == {
        k: type(v) for k, v in opt.state[net[0].weight].items()
    }
    train(resumed, opt2, x, y, 10)
    assert_close_params(resumed, net)


@pytest.mark.parametrize("opt_name", ["AdamP", "SGDP"])
def test_state_saved_by_the_reference_package_loads_and_continues(opt_name):
    kwargs, _ = config(opt_name, "nesterov")
    x, y = data("cnn")
    expected = model("cnn")
    ref = REFERENCE[opt_name](expected.parameters(), **kwargs)
    train(expected, ref, x, y, 10)
    net = model("cnn")
    net.load_state_dict(expected.state_dict())
    ours = OURS[opt_name](net.parameters(), **kwargs)
    buffer = io.BytesIO()
    torch.save(ref.state_dict(), buffer)
    buffer.seek(0)
    ours.load_state_dict(torch.load(buffer, weights_only=True))
    train(expected, ref, x, y, 10)
    train(net, ours, x, y, 10)
    assert_close_params(net, expected)


@pytest.mark.parametrize("opt_name", ["AdamP", "SGDP"])
def test_odd_layouts_and_float64_use_the_fallback_correctly(opt_name):
    kwargs, _ = config(opt_name, "weight_decay" if opt_name == "AdamP" else "dampening")
    gen = torch.Generator().manual_seed(4)
    base = [
        torch.randn(8, 6, generator=gen).t(),  # dim 0 not outermost: per-tensor fallback
        torch.randn(5, 4, 3, generator=gen, dtype=torch.float64),
        torch.randn(7, generator=gen),
    ]
    grads = [torch.randn(b.shape, generator=gen, dtype=b.dtype) for b in base]
    results = []
    for path in PATHS:
        params = [nn.Parameter(b.clone()) for b in base]
        opt = make(opt_name, params, path, **kwargs)
        for _ in range(3):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            opt.step()
        results.append(params)
    for other in results[1:]:
        for a, b in zip(other, results[0]):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("opt_name", ["AdamP", "SGDP"])
def test_long_rows_cut_into_pieces_on_the_fused_path(opt_name):
    """Rows longer than the compiled step's piece limit (2 and 3 pieces, a row with no split)
    and longer than a CPU block."""
    kwargs, _ = config(opt_name, "nesterov")
    gen = torch.Generator().manual_seed(9)
    shapes = [(3, 2, 48, 48), (4, 9000), (2, 4099 * 2), (2, 3 * (1 << 14) + 5)]
    base = [torch.randn(s, generator=gen) for s in shapes]

    def tangential(w: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        rows, n = w.reshape(w.shape[0], -1), noise.reshape(w.shape[0], -1)
        return n - rows * (rows * n).sum(1, keepdim=True) / rows.square().sum(1, keepdim=True)

    noise = [[torch.randn(s, generator=gen) for s in shapes] for _ in range(4)]
    runs = []
    for path in ("per-tensor", "fused"):
        params = [nn.Parameter(b.clone()) for b in base]
        opt = make(opt_name, params, path, **kwargs)
        for step in noise:
            for p, n in zip(params, step):
                p.grad = tangential(p.detach(), n).reshape(p.shape)
            opt.step()
        assert [int(opt.state[p]["projection"]) for p in params] == [1, 1, 1, 1]
        runs.append(params)
    for a, b in zip(*runs):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("opt_name", ["AdamP", "SGDP"])
def test_channels_last_weights_with_contiguous_gradients(opt_name):
    """Rows of w, g and the update must be compared element for element whatever the layouts."""
    kwargs, _ = config(opt_name, "nesterov")
    gen = torch.Generator().manual_seed(5)
    w0 = torch.randn(6, 4, 3, 3, generator=gen)
    noise = [torch.randn(6, 36, generator=gen) for _ in range(4)]

    def tangential(p: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        rows = p.detach().reshape(6, -1)  # the channel view passes
        return (
            g - rows * (rows * g).sum(1, keepdim=True) / rows.square().sum(1, keepdim=True)
        ).reshape(p.shape)

    results = []
    for fmt, path in [
        (torch.contiguous_format, "per-tensor"),
        (torch.channels_last, "per-tensor"),
        (torch.channels_last, "multi-tensor"),
        (torch.channels_last, "fused"),
    ]:
        p = nn.Parameter(w0.clone().to(memory_format=fmt))
        opt = make(opt_name, [p], path, **kwargs)
        for g in noise:
            p.grad = tangential(p, g).contiguous()  # whatever the parameter's layout
            opt.step()
        assert int(opt.state[p]["projection"]) == 1
        results.append(p.detach())
    for other in results[1:]:
        torch.testing.assert_close(other, results[0], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("opt_name", ["AdamP", "SGDP"])
def test_bfloat16_parameters_follow_the_reference(opt_name):
    kwargs, _ = config(opt_name, "weight_decay" if opt_name == "AdamP" else "dampening")
    gen = torch.Generator().manual_seed(6)
    base = [torch.randn(8, 5, generator=gen), torch.randn(8, generator=gen)]
    grads = [[torch.randn(b.shape, generator=gen) for b in base] for _ in range(5)]
    runs = []
    for path in ["reference", *PATHS]:
        params = [nn.Parameter(b.to(torch.bfloat16)) for b in base]
        if path == "reference":
            opt = REFERENCE[opt_name](params, **kwargs)
        else:
            opt = make(opt_name, params, path, **kwargs)
        for step in grads:
            for p, g in zip(params, step):
                p.grad = g.to(torch.bfloat16)
            opt.step()
        runs.append([p.detach().float() for p in params])
    for ours in runs[1:]:
        for a, b in zip(ours, runs[0]):
            torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2)


def _half_run(opt_name: str, dtype: torch.dtype, path: str, steps: int = 30) -> list:
    """A conv, a linear and a bias weight in ``dtype`` after ``steps`` steps; returns them as
    float32. The conv weight's gradient is tangential to its rows (the channel view passes)."""
    kwargs, _ = config(opt_name, "nesterov")
    gen = torch.Generator().manual_seed(8)
    shapes = [(16, 3, 3, 3), (10, 16), (16,)]
    params = [nn.Parameter(torch.randn(s, generator=gen).to(dtype)) for s in shapes]
    noise = [[torch.randn(s, generator=gen) for s in shapes] for _ in range(steps)]
    opt = make(opt_name, params, path, **kwargs)
    for step in noise:
        w = params[0].detach().float().reshape(16, -1)
        g = step[0].reshape(16, -1)
        g = g - w * (w * g).sum(1, keepdim=True) / w.square().sum(1, keepdim=True)
        grads = [g.reshape(shapes[0]), *step[1:]]
        for p, grad in zip(params, grads):
            p.grad = grad.to(dtype)
        opt.step()
    assert int(opt.state[params[0]]["projection"]) == 1
    return [p.detach().float() for p in params]


@pytest.mark.parametrize("opt_name", ["AdamP", "SGDP"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_half_precision_paths_agree_and_compute_in_float32(opt_name, dtype):
    """Issue 15: every path computes half-precision tensors in float32 and rounds once per
    write, as torch's fused kernels do (the per-tensor path used to reach NaN on float16:
    eps = 1e-8 underflows to 0 in float16 and 0/0 follows)."""
    runs = {path: _half_run(opt_name, dtype, path) for path in PATHS}
    exact = _half_run(opt_name, torch.float32, "per-tensor")
    eps = torch.finfo(dtype).eps  # |a - b| <= k eps (1 + |b|): a few roundings apart
    for path, weights in runs.items():
        for a, b, c in zip(weights, exact, runs["per-tensor"]):
            assert torch.isfinite(a).all(), path
            torch.testing.assert_close(a, b, rtol=8 * eps, atol=8 * eps)
            torch.testing.assert_close(a, c, rtol=2 * eps, atol=2 * eps)


@pytest.mark.parametrize("opt_name", ["AdamP", "SGDP"])
def test_multi_tensor_path_never_reads_tensor_values_on_the_host(opt_name, monkeypatch):
    kwargs, _ = config(opt_name, "groups")
    net = model("cnn")
    x, y = data("cnn")
    opt = OURS[opt_name](net.parameters(), foreach=True, **kwargs)
    F.cross_entropy(net(x), y).backward()

    def forbidden(*args, **kw):
        raise AssertionError("host synchronisation in the multi-tensor path")

    for name in ("__bool__", "item", "tolist", "__int__", "__float__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    opt.step()
    monkeypatch.undo()
    assert any(int(s["projection"]) == 1 for s in opt.state.values())


@pytest.mark.parametrize("opt_name", ["AdamP", "SGDP"])
@pytest.mark.parametrize("path", PATHS)
def test_nan_and_zero_gradients_never_crash(opt_name, path):
    nan_p, zero_p = nn.Parameter(torch.randn(4, 3)), nn.Parameter(torch.randn(4, 3))
    opt = make(opt_name, [nan_p, zero_p], path, lr=0.1)
    nan_p.grad = torch.full((4, 3), float("nan"))
    zero_p.grad = torch.zeros(4, 3)
    before = zero_p.detach().clone()
    opt.step()
    assert int(opt.state[nan_p]["projection"]) == 0  # a NaN cosine fails both views
    assert int(opt.state[zero_p]["projection"]) == 1  # cos = 0 passes; nothing to remove
    assert torch.equal(zero_p, before)


@pytest.mark.parametrize("opt_name", ["AdamP", "SGDP"])
def test_closure_is_evaluated_with_grad_and_its_loss_returned(opt_name):
    net = model("cnn")
    x, y = data("cnn")
    opt = OURS[opt_name](net.parameters(), lr=0.01)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(net(x), y)
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


@pytest.mark.parametrize("opt_name", ["AdamP", "SGDP"])
def test_shared_hyperparameters_are_validated(opt_name):
    for bad in ({"eps": -1.0}, {"weight_decay": -0.1}, {"delta": -1.0}, {"wd_ratio": -0.5}):
        with pytest.raises(UserInputError):
            OURS[opt_name]([nn.Parameter(torch.randn(3, 3))], lr=0.1, **bad)


def test_defaults_match_the_reference_and_top_level_exports():
    assert stepsize_lens.AdamP is AdamP and stepsize_lens.SGDP is SGDP
    p = [nn.Parameter(torch.randn(2, 2))]
    ours, ref = AdamP(p).defaults, reference.AdamP(p).defaults
    assert {k: ours[k] for k in ref} == ref and ours["foreach"] is ours["fused"] is None
    ours, ref = SGDP(p, lr=0.1).defaults, reference.SGDP(p, lr=0.1).defaults
    assert {k: ours[k] for k in ref} == ref and ours["foreach"] is ours["fused"] is None


@pytest.mark.parametrize("opt_name", ["AdamP", "SGDP"])
def test_fused_and_foreach_follow_torchs_rules(opt_name):
    p = nn.Parameter(torch.randn(3, 3))
    with pytest.raises(UserInputError, match="cannot be `True` together"):
        OURS[opt_name]([p], lr=0.1, foreach=True, fused=True)
    with pytest.raises(UserInputError, match="floating-point"):
        OURS[opt_name]([torch.zeros(3, 3, dtype=torch.long)], lr=0.1, fused=True)
    opt = OURS[opt_name]([p], lr=0.1, fused=False)
    with pytest.raises(UserInputError, match="floating-point"):
        opt.add_param_group({"params": [torch.zeros(2, dtype=torch.long)], "fused": True})
    assert len(opt.param_groups) == 1
