"""Scale-invariant toy layers fed noise-dominated gradients, for the theory's simulation tests.

Every replica is one scale-invariant weight: a row w_r of a [replicas, dim] array (for the
elementwise optimizers) or a [rows, cols] matrix of a [replicas, rows, cols] array (for Muon).
Its gradient is pure noise projected off w and scaled by 1/‖w‖, g = Π_w(ξ)/‖w‖ with ξ ~ N(0, I):
orthogonal to w, uncorrelated across steps, E‖g‖² = (numel − 1)/‖w‖² (scale-free norm
g̃² = numel − 1). The optimizers are written out in numpy, float64, each step exactly as the
library's (checked step by step against torch.optim.SGD, AdamW, Adam, lion_pytorch.Lion,
torch.optim.Muon and stepsize_lens's SGDP and AdamP in tests/test_analysis_theory_recurrence.py),
so that a hundred thousand steps of many replicas with their own lr and weight decay run in
seconds. ``lr`` is [steps, replicas]: each replica follows its own schedule.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from stepsize_lens.analysis.theory import newton_schulz as NS


@dataclass
class Sphere:
    """``norms`` ‖w_t‖ for t = 0..T, ``angles`` angle(w_t, w_{t+1}) and ``scale_free_sq``
    ‖w_t‖²‖g_t‖² for t = 0..T−1, each with one column per replica."""

    norms: np.ndarray
    angles: np.ndarray
    scale_free_sq: np.ndarray


def _unit(w: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    return w / np.sqrt((w * w).sum(axis=axes, keepdims=True))


def noise_gradient(w: np.ndarray, rng: np.random.Generator, axes: tuple[int, ...]) -> np.ndarray:
    """g = Π_w(ξ)/‖w‖ per replica (over ``axes``)."""
    xi = rng.standard_normal(w.shape)
    unit = _unit(w, axes)
    norm = np.sqrt((w * w).sum(axis=axes, keepdims=True))
    return (xi - unit * (xi * unit).sum(axis=axes, keepdims=True)) / norm


def _angle(a: np.ndarray, b: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    ua, ub = _unit(a, axes), _unit(b, axes)
    diff = np.sqrt(((ua - ub) ** 2).sum(axis=axes))
    total = np.sqrt(((ua + ub) ** 2).sum(axis=axes))
    return 2.0 * np.arctan2(diff, total)


# --------------------------------------------------------------------------------------------
# One step of each optimizer, numpy, float64 (state in a dict); lr, wd broadcast per replica
# --------------------------------------------------------------------------------------------


def _col(x, ndim: int) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x.reshape(x.shape + (1,) * (ndim - x.ndim)) if x.ndim else x


def sgd_step(w, g, state, lr, wd, momentum=0.0, dampening=0.0, nesterov=False):
    """torch.optim.SGD: coupled L2, buffer = d_p at the first step (with momentum 0 the buffer
    is d_p itself, which is SGD's step without dampening)."""
    lr, wd, momentum = _col(lr, w.ndim), _col(wd, w.ndim), _col(momentum, w.ndim)
    d_p = g + wd * w
    if "buf" not in state:
        state["buf"] = d_p.copy()
    else:
        state["buf"] = momentum * state["buf"] + (1 - dampening) * d_p
    return w - lr * (d_p + momentum * state["buf"] if nesterov else state["buf"])


def adam_step(w, g, state, lr, wd, beta1=0.9, beta2=0.999, eps=1e-8, decoupled=True):
    """torch.optim.AdamW (decoupled) or torch.optim.Adam (coupled L2, ``decoupled=False``)."""
    lr, wd = _col(lr, w.ndim), _col(wd, w.ndim)
    beta1, beta2 = _col(beta1, w.ndim), _col(beta2, w.ndim)
    t = state["t"] = state.get("t", 0) + 1
    if decoupled:
        w = w * (1 - lr * wd)
    else:
        g = g + wd * w
    state["m"] = beta1 * state.get("m", 0.0) + (1 - beta1) * g
    state["v"] = beta2 * state.get("v", 0.0) + (1 - beta2) * g * g
    denom = np.sqrt(state["v"]) / np.sqrt(1 - beta2**t) + eps
    return w - lr / (1 - beta1**t) * state["m"] / denom


def adamc_step(w, g, state, lr, wd, max_lr, **kwargs):
    """AdamC on a normalized tensor (Defazio 2025): AdamW with weight decay λ·η_t/η_max."""
    corrected = np.asarray(wd) * np.asarray(lr) / np.asarray(max_lr)
    return adam_step(w, g, state, lr, corrected, **kwargs)


def lion_step(w, g, state, lr, wd, beta1=0.9, beta2=0.99):
    """lion_pytorch.Lion / timm's Lion: decoupled decay, sign of the interpolated moment."""
    lr, wd = _col(lr, w.ndim), _col(wd, w.ndim)
    beta1, beta2 = _col(beta1, w.ndim), _col(beta2, w.ndim)
    m = state.get("m", np.zeros_like(w))
    w = w * (1 - lr * wd) - lr * np.sign(beta1 * m + (1 - beta1) * g)
    state["m"] = beta2 * m + (1 - beta2) * g
    return w


def _project(w, d, eps, axes):
    norm = np.sqrt((w * w).sum(axis=axes, keepdims=True)) + eps
    return d - w * (w * d).sum(axis=axes, keepdims=True) / norm**2


def sgdp_step(
    w, g, state, lr, wd, momentum=0.0, dampening=0.0, nesterov=False, wd_ratio=0.1, eps=1e-8
):
    """stepsize_lens.SGDP on a tensor it projects (channel view; a replica is one row)."""
    lr, wd, momentum = _col(lr, w.ndim), _col(wd, w.ndim), _col(momentum, w.ndim)
    axes = tuple(range(1, w.ndim))
    buf = state["buf"] = momentum * state.get("buf", 0.0) + (1 - dampening) * g
    if nesterov:
        d = _project(w, g + momentum * buf, eps, axes)
    else:
        d = state["buf"] = _project(w, buf, eps, axes)
    w = w * (1 - lr * wd * wd_ratio / (1 - momentum))
    return w - lr * d


def adamp_step(w, g, state, lr, wd, beta1=0.9, beta2=0.999, eps=1e-8, wd_ratio=0.1, nesterov=False):
    """stepsize_lens.AdamP on a tensor it projects (channel view; a replica is one row)."""
    lr, wd = _col(lr, w.ndim), _col(wd, w.ndim)
    beta1, beta2 = _col(beta1, w.ndim), _col(beta2, w.ndim)
    axes = tuple(range(1, w.ndim))
    t = state["t"] = state.get("t", 0) + 1
    state["m"] = beta1 * state.get("m", 0.0) + (1 - beta1) * g
    state["v"] = beta2 * state.get("v", 0.0) + (1 - beta2) * g * g
    denom = np.sqrt(state["v"]) / np.sqrt(1 - beta2**t) + eps
    m = beta1 * state["m"] + (1 - beta1) * g if nesterov else state["m"]
    u = _project(w, m / denom, eps, axes)
    w = w * (1 - lr * wd * wd_ratio)
    return w - lr / (1 - beta1**t) * u


def newton_schulz(x: np.ndarray, steps: int = 5, eps: float = 1e-7) -> np.ndarray:
    """torch.optim.Muon's orthogonalization on a batch [replicas, rows, cols], in float64
    (torch runs it in bfloat16)."""
    a, b, c = newton_schulz_coefficients()
    wide = x.shape[-2] > x.shape[-1]
    y = np.swapaxes(x, -1, -2) if wide else x
    y = y / np.maximum(np.sqrt((y * y).sum(axis=(-2, -1), keepdims=True)), eps)
    for _ in range(steps):
        gram = y @ np.swapaxes(y, -1, -2)
        update = b * gram + c * gram @ gram
        y = a * y + update @ y
    return np.swapaxes(y, -1, -2) if wide else y


def newton_schulz_coefficients() -> tuple[float, float, float]:
    return NS.COEFFICIENTS


def muon_step(w, g, state, lr, wd, momentum=0.95, nesterov=True, adjust_lr_fn=None):
    """torch.optim.Muon on a batch of matrices [replicas, rows, cols]."""
    lr, wd, momentum = _col(lr, w.ndim), _col(wd, w.ndim), _col(momentum, w.ndim)
    buf = state["buf"] = momentum * state.get("buf", 0.0) + (1 - momentum) * g
    update = (1 - momentum) * g + momentum * buf if nesterov else buf
    scale = NS.adjusted_scale(w.shape[-2], w.shape[-1], adjust_lr_fn)
    return w * (1 - lr * wd) - lr * scale * newton_schulz(update)


STEPS: dict[str, Callable] = {
    "sgd": sgd_step,
    "adamw": adam_step,
    "adam": lambda w, g, s, lr, wd, **k: adam_step(w, g, s, lr, wd, decoupled=False, **k),
    "adamc": adamc_step,
    "lion": lion_step,
    "sgdp": sgdp_step,
    "adamp": adamp_step,
    "muon": muon_step,
}


def simulate(
    family: str,
    lr: np.ndarray,
    wd: np.ndarray,
    *,
    dim: int | tuple[int, int] = 64,
    initial_norm: float | np.ndarray = 1.0,
    seed: int = 0,
    **hyper,
) -> Sphere:
    """Run ``family`` (a key of `STEPS`) for ``lr.shape[0]`` steps on ``lr.shape[1]`` replicas
    (each with its lr column and its weight decay ``wd``), from random directions with norm
    ``initial_norm``. ``dim``: the length of a row, or (rows, cols) of a matrix (Muon).
    ``hyper``: the optimizer's settings, each a number or one value per replica."""
    lr = np.asarray(lr, dtype=np.float64)
    steps, replicas = lr.shape
    shape = (replicas, *((dim,) if isinstance(dim, int) else dim))
    axes = tuple(range(1, len(shape)))
    rng = np.random.default_rng(seed)
    w = _unit(rng.standard_normal(shape), axes) * _col(initial_norm, len(shape))
    norms = np.empty((steps + 1, replicas))
    angles = np.empty((steps, replicas))
    scale_free = np.empty((steps, replicas))
    norms[0] = np.sqrt((w * w).sum(axis=axes))
    state: dict = {}
    do_step = STEPS[family]
    wd = np.broadcast_to(np.asarray(wd, dtype=np.float64), (replicas,))
    for t in range(steps):
        g = noise_gradient(w, rng, axes)
        scale_free[t] = (w * w).sum(axis=axes) * (g * g).sum(axis=axes)
        after = do_step(w, g, state, lr[t], wd, **hyper)
        angles[t] = _angle(w, after, axes)
        w = after
        norms[t + 1] = np.sqrt((w * w).sum(axis=axes))
    return Sphere(norms=norms, angles=angles, scale_free_sq=scale_free)
