"""The fused AdamP/SGDP CPU kernel (stepsize_lens/optim/cpu_kernel.cpp): float64 steps equal the
reference path's to rounding on every kind of tensor (long rows cut into segments, 1-D, 0-D and
empty tensors, several dtypes in one step), results do not depend on the thread count, and
inputs are checked before anything is written."""

from __future__ import annotations

import types

import pytest
import torch
from _optim_cases import one_thread  # noqa: F401 (an autouse fixture)

from stepsize_lens.optim import _cpu_kernel
from stepsize_lens.optim.adamp import adamp
from stepsize_lens.optim.sgdp import sgdp

LONG = 3 * (1 << 14) + 7  # longer than a task: the row is summed in segments
SHAPES = [(6, 3, 3, 3), (5, LONG), (7,), (), (0, 4), (0,), (40, 12)]

HYPER = {
    "AdamP": dict(
        lr=0.02, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.1, delta=0.1, wd_ratio=0.1
    ),
    "SGDP": dict(
        lr=0.05, momentum=0.9, dampening=0.1, eps=1e-8, weight_decay=0.01, delta=0.1, wd_ratio=0.1
    ),
}
STEP = {"AdamP": adamp, "SGDP": sgdp}


@pytest.fixture
def kernel() -> types.ModuleType:
    module = _cpu_kernel.wait(timeout=600)
    if module is None:
        pytest.skip(f"the fused CPU kernel is unavailable: {_cpu_kernel.status().error}")
    return module


def _tensors(dtype: torch.dtype, seed: int = 0) -> tuple[list, list]:
    """Weights and four steps of gradient noise."""
    gen = torch.Generator().manual_seed(seed)
    weights = [torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES]
    noise = [[torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES] for _ in range(4)]
    return [w.to(dtype) for w in weights], noise


def _gradient(w: torch.Tensor, noise: torch.Tensor, tangential: bool) -> torch.Tensor:
    """``noise``, made tangential to the rows of ``w`` (the channel view then passes)."""
    if not tangential or w.ndim < 2 or w.numel() == 0:
        return noise.to(w.dtype)
    rows, n = w.double().reshape(w.shape[0], -1), noise.reshape(w.shape[0], -1)
    n = n - rows * (rows * n).sum(1, keepdim=True) / rows.square().sum(1, keepdim=True)
    return n.reshape(w.shape).to(w.dtype)


def _state(opt: str, w: torch.Tensor) -> dict:
    state = {"step": 0, "projection": torch.zeros((), dtype=torch.long)}
    keys = ("exp_avg", "exp_avg_sq") if opt == "AdamP" else ("momentum_buffer",)
    for key in keys:
        state[key] = torch.zeros_like(w)
    return state


def _run(opt: str, path: str, nesterov: bool, dtype: torch.dtype) -> tuple[list, list]:
    weights, noise = _tensors(dtype)
    states = [_state(opt, w) for w in weights]
    for step in noise:
        for state in states:
            state["step"] += 1
        last = len(weights) - 1  # its gradient is not tangential: no view passes
        grads = [_gradient(w, n, i != last) for i, (w, n) in enumerate(zip(weights, step))]
        STEP[opt](weights, grads, states, path=path, nesterov=nesterov, **HYPER[opt])
    return weights, states


@pytest.mark.parametrize("nesterov", [False, True], ids=["plain", "nesterov"])
@pytest.mark.parametrize("opt", ["AdamP", "SGDP"])
def test_float64_steps_equal_the_reference_path(kernel, opt, nesterov):
    fused, fused_states = _run(opt, "fused", nesterov, torch.float64)
    reference, reference_states = _run(opt, "per-tensor", nesterov, torch.float64)
    views = [int(s["projection"]) for s in fused_states]
    assert views == [int(s["projection"]) for s in reference_states]
    assert views[:2] == [1, 1] and views[-1] == 0  # projected and not
    for a, b in zip(fused, reference):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    for sa, sb in zip(fused_states, reference_states):
        for key, value in sb.items():
            if isinstance(value, torch.Tensor):
                torch.testing.assert_close(sa[key], value, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("opt", ["AdamP", "SGDP"])
def test_results_do_not_depend_on_the_thread_count(kernel, opt):
    runs = []
    for threads in (1, 2, 3):
        torch.set_num_threads(threads)
        runs.append(_run(opt, "fused", False, torch.float32)[0])
    for other in runs[1:]:
        for a, b in zip(other, runs[0]):
            assert torch.equal(a, b)


def test_inputs_are_checked_before_anything_is_written(kernel):
    w = [torch.randn(4, 3), torch.randn(2, 5)]
    g = [torch.randn(4, 3), torch.randn(5, 2)]  # the second does not match its weight
    m, v = [torch.zeros(4, 3), torch.zeros(2, 5)], [torch.zeros(4, 3), torch.zeros(2, 5)]
    slots = [torch.zeros((), dtype=torch.long) for _ in w]
    hyper = torch.tensor([[0.9, 0.99, 0.1, 0.1, 1e-8, 1.0, 1.0, 0.05, 0.03]] * 2).double()
    conv = torch.randn(3, 2, 2, 2).to(memory_format=torch.channels_last)
    before = [t.clone() for t in (*w, *m, *v, conv)]
    with pytest.raises(RuntimeError, match="gradient 1 must match its weight"):
        kernel.adamp_step(w, g, m, v, slots, hyper, False)
    with pytest.raises(RuntimeError, match="hyper must be"):
        kernel.adamp_step(w, w, m, v, slots, hyper[:, :8], False)
    with pytest.raises(RuntimeError, match="dim 0 outermost"):
        kernel.sgdp_step([w[0].t()], [g[0].t()], [m[0].t()], slots[:1], hyper[:1, :8], False)
    with pytest.raises(RuntimeError, match="sizes, strides"):  # a contiguous buffer
        kernel.sgdp_step([conv], [conv], [torch.zeros(3, 2, 2, 2)], slots[:1], hyper[:1, :8], False)
    for a, b in zip((*w, *m, *v, conv), before):
        assert torch.equal(a, b)


def test_one_call_steps_each_dtype_and_leaves_untested_slots_alone(kernel):
    """Parameters of several dtypes: one call per dtype, each in its own arithmetic."""
    gen = torch.Generator().manual_seed(2)
    base = [torch.randn(8, 6, generator=gen), torch.randn(8, generator=gen)]
    dtypes = (torch.float32, torch.float64, torch.bfloat16)
    weights = [b.to(dt) for dt in dtypes for b in base]
    grads = [torch.randn(w.shape, generator=gen).to(w.dtype) for w in weights]
    results = {}
    for path in ("fused", "per-tensor"):
        ws = [w.clone() for w in weights]
        states = [_state("AdamP", w) for w in ws]
        for state in states:
            state["step"] = 1
            state["projection"].fill_(7)  # untested tensors keep whatever is there
        adamp(ws, [g.clone() for g in grads], states, path=path, nesterov=False, **HYPER["AdamP"])
        results[path] = ws
        assert [int(s["projection"]) for s in states][1::2] == [7, 7, 7]
    for a, b in zip(results["fused"], results["per-tensor"]):
        eps = torch.finfo(a.dtype).eps
        torch.testing.assert_close(a, b, rtol=4 * eps, atol=4 * eps)


@pytest.mark.parametrize("opt", ["AdamP", "SGDP"])
def test_a_fused_step_counts_as_an_in_place_write_for_autograd(kernel, opt):
    """As for torch's own in-place kernels: a graph that saved a weight before the step refuses
    to run backward after it, instead of silently using the new values."""
    from stepsize_lens.optim import SGDP, AdamP

    w = torch.nn.Parameter(torch.randn(4, 3))
    b = torch.nn.Parameter(torch.randn(4))
    optimizer = (AdamP if opt == "AdamP" else SGDP)([w, b], lr=0.1, fused=True)
    assert optimizer.fused_ready(timeout=600)
    x = torch.randn(2, 3)
    (x @ w.t() + b).square().sum().backward()
    saved = (w * w).sum()  # saves w for its backward
    versions = [w._version, b._version]
    optimizer.step()
    assert w._version > versions[0] and b._version > versions[1]
    state = optimizer.state[w]
    key = "exp_avg" if opt == "AdamP" else "momentum_buffer"
    before = state[key]._version
    optimizer.step()
    assert state[key]._version > before
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        saved.backward()
