"""SGDP: SGD with momentum whose updates of scale-invariant weights have their radial part removed.

Heo, Chun, Oh, Han, Yun, Kim, Uh, Ha. "AdamP: Slowing Down the Slowdown for Momentum Optimizers
on Scale-invariant Weights", ICLR 2021. Same arguments, defaults and trajectories as the
authors' ``adamp`` package; the test and the projection are in `_projection`,
the blocked multi-tensor engine in `_blocked`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import required  # type: ignore[attr-defined]

from stepsize_lens._schema import View
from stepsize_lens.errors import UserInputError
from stepsize_lens.optim import _base as B
from stepsize_lens.optim import _blocked
from stepsize_lens.optim import _projection as P

__all__ = ["SGDP", "sgdp"]


class SGDP(B.ProjectedOptimizer):
    r"""SGDP (Heo et al., ICLR 2021): SGD with projected updates for scale-invariant weights.

    For every parameter w with gradient g (lr η, momentum μ, dampening τ, weight decay λ)::

        buf <- μ buf + (1 - τ) g                  # buf starts at zero, not at g
        d = g + μ buf if nesterov else buf        # without nesterov, d *is* the buffer
        ratio = 1
        if w.ndim > 1:                            # 1-D tensors are never projected
            for view in (channel, layer):         # the test reads the raw gradient g
                if max |cos(w_row, g_row)| < delta / sqrt(row length):
                    d <- d - w_row <w_row, d_row> / (||w_row|| + eps)²   (per row, in place)
                    ratio = wd_ratio
                    break
        w <- w (1 - η λ ratio / (1 - μ))          # decoupled decay, before the update
        w <- w - η d

    Without nesterov the projection is applied in place to the momentum buffer, so the stored
    buffer stays tangential; with nesterov the buffer is left alone. Rows are the slices along
    dim 0 (channel view) or the whole tensor (layer view); the cosine clamps each norm at eps
    like ``torch.nn.functional.cosine_similarity``. ``state[p]["projection"]`` holds the view
    applied at the last step (0-dim int64 tensor: 0 none, 1 channel, 2 layer) and
    ``state[p]["momentum_buffer"]`` the buffer.

    Args:
        params: parameters or parameter groups.
        lr: learning rate (required: here, or in every parameter group).
        momentum, dampening, nesterov: as in SGD.
        weight_decay: decoupled weight decay λ (scaled by 1 / (1 - momentum)).
        eps: the eps of the cosine and of the projection.
        delta: threshold δ of the cosine test.
        wd_ratio: factor on the weight decay of projected tensors.
        foreach, fused: the path, with torch's conventions (``_base.PATHS``). All paths give
            the same result up to float rounding, and float16/bfloat16 parameters are
            computed in float32 on every path.

            - ``foreach=False``: the per-tensor reference path above.
            - ``foreach=True`` (and the default ``None`` when every parameter is a plain
              tensor): the multi-tensor path. It never synchronises with the device; on the
              CPU it works on cache-sized blocks of rows, on accelerators in a number of kernel
              launches that depends on the row lengths, not on the number of tensors.
            - ``fused=True``: the multi-tensor code compiled by ``torch.compile`` (inductor: C++
              on the CPU, Triton on a GPU), compiled in a background thread from the first step
              on; until it is ready, and where it cannot be compiled (said once, in one line),
              the multi-tensor path runs, so no step waits. `fused_ready(timeout=None)` waits.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = required,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float = 0,
        nesterov: bool = False,
        eps: float = 1e-8,
        delta: float = 0.1,
        wd_ratio: float = 0.1,
        *,
        foreach: bool | None = None,
        fused: bool | None = None,
    ) -> None:
        B.check_paths("SGDP", foreach, fused)
        defaults = dict(
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
            eps=eps,
            delta=delta,
            wd_ratio=wd_ratio,
            foreach=foreach,
            fused=fused,
        )
        super().__init__(params, defaults)

    def _validate_group(self, group: dict[str, Any]) -> None:
        B.validate_common(group)
        momentum = group["momentum"]
        if not momentum >= 0.0:
            raise UserInputError(f"invalid momentum: {momentum}")
        if group["weight_decay"] > 0 and momentum >= 1.0:
            raise UserInputError(
                "SGDP scales weight decay by 1/(1 - momentum): momentum must be < 1 in every "
                f"parameter group with weight decay (got momentum {momentum})"
            )

    def _init_state(self, p: Tensor, state: dict[str, Any]) -> None:
        if "momentum" in state:  # loaded from the reference package
            state["momentum_buffer"] = state.pop("momentum")
            state.setdefault("projection", B.new_projection_state(p))
        if len(state) == 0:
            state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["projection"] = B.new_projection_state(p)

    def _hyper(self, group: dict[str, Any]) -> _Hyper:
        return _Hyper(
            lr=group["lr"],
            momentum=group["momentum"],
            dampening=group["dampening"],
            weight_decay=group["weight_decay"],
            nesterov=group["nesterov"],
            eps=group["eps"],
            delta=group["delta"],
            wd_ratio=group["wd_ratio"],
        )


@dataclass(frozen=True, slots=True)
class _Hyper:
    """The hyperparameters of one step (a parameter group's)."""

    lr: float
    momentum: float
    dampening: float
    weight_decay: float
    nesterov: bool
    eps: float
    delta: float
    wd_ratio: float

    def decays(self) -> tuple[float, float]:
        """Weight-decay multipliers (no view, a view), written as the reference computes them.

        Both 1 without weight decay (the reference skips the multiplication); with weight
        decay, needs momentum < 1 (every group is checked for it).
        """
        lr, wd, mu = self.lr, self.weight_decay, self.momentum
        if not wd > 0:
            return 1.0, 1.0
        return 1 - lr * wd * 1 / (1 - mu), 1 - lr * wd * self.wd_ratio / (1 - mu)

    def scalars(self, step: int | None = None) -> list[float]:
        """The values that change between steps (`_base.Kernels.scalars`): lr and the decays."""
        return [self.lr, *self.decays()]


def sgdp(
    params: list[Tensor],
    grads: list[Tensor],
    states: list[dict],
    *,
    path: str = B.MULTI_TENSOR,
    **hyper: Any,
) -> None:
    """Functional SGDP step.

    ``path``: one of `_base.PATHS`. ``hyper``: lr, momentum, dampening, weight_decay,
    nesterov, eps, delta, wd_ratio.
    """
    _KERNELS(params, grads, states, _Hyper(**hyper), path=path)


def _single_tensor_sgdp(
    params: list[Tensor], grads: list[Tensor], states: list[dict], h: _Hyper
) -> None:
    """Reference path: one tensor at a time, the algorithm as written in the class docstring."""
    momentum = h.momentum
    for p, g, state in zip(params, grads, states):
        buf = state["momentum_buffer"]
        buf.mul_(momentum).add_(g, alpha=1 - h.dampening)
        d_p = g + momentum * buf if h.nesterov else buf

        decay: float | Tensor = 0.0
        if h.weight_decay > 0:
            decay = h.decays()[0]
        if P.projectable(p):
            view, projected = P.project_(d_p, p, g, delta=h.delta, eps=h.eps)
            state["projection"].copy_(view)
            if h.weight_decay > 0:
                decay = P.pick(projected, *h.decays(), P.stats_dtype(p.dtype))
        if h.weight_decay > 0:
            p.mul_(decay)
        p.add_(d_p, alpha=-h.lr)


def _sgd_directions(
    grads: list[Tensor], bufs: list[Tensor], h: _Hyper, *, one_pass: bool = False
) -> list[Tensor]:
    """Update the buffers in place; return the directions (the buffers unless nesterov).

    ``one_pass``: without dampening, buf <- g + μ buf in one op per tensor rather than two
    foreach ops (worth it on the few large pieces of a CPU block, not on many tensors).
    """
    if one_pass and h.dampening == 0:
        for g, buf in zip(grads, bufs):
            torch.add(g, buf, alpha=h.momentum, out=buf)
    else:
        torch._foreach_mul_(bufs, h.momentum)
        torch._foreach_add_(bufs, grads, alpha=1 - h.dampening)
    if h.nesterov:
        return torch._foreach_add(grads, bufs, alpha=h.momentum)
    return bufs


def _plain_sgd(
    params: list[Tensor],
    grads: list[Tensor],
    states: list[dict],
    h: _Hyper,
    scalars: Tensor | None,
) -> None:
    """Tensors that are never projected: momentum, decoupled decay, then the step."""
    directions = _sgd_directions(grads, [s["momentum_buffer"] for s in states], h)
    if h.weight_decay > 0:
        torch._foreach_mul_(params, h.decays()[0] if scalars is None else scalars[1])
    if scalars is None:
        torch._foreach_add_(params, directions, alpha=-h.lr)
    else:
        torch._foreach_add_(params, torch._foreach_mul(directions, -scalars[0]))


def _blocked_sgdp(part: _blocked.BlockedTensors, h: _Hyper, scalars: Tensor | None) -> Tensor:
    """Multi-tensor path of the projectable tensors (`_blocked`); returns the views.

    Pass 1 (`BlockedTensors.first_pass`), per block: the buffer update and the direction d,
    then the row sums of the test on (w, g) and <w_r, d_r>; then the views and the per-row
    projection coefficients c_r. Pass 2, per block: d <- d - c_r w_r (in the buffer without
    nesterov), w <- w * decay, w <- w - lr d.
    """
    buf = part.state["momentum_buffer"]
    one_pass = part.mode.block_numel is not None  # the CPU's blocks hold few, large pieces
    traced = scalars is not None

    def direction(a: int, b: int) -> list[Tensor]:
        if not traced:
            return _sgd_directions(part.g[a:b], buf[a:b], h, one_pass=one_pass)
        # traced: the new buffer as a value, written back once in pass 2
        new = torch._foreach_add(
            torch._foreach_mul(buf[a:b], h.momentum), part.g[a:b], alpha=1 - h.dampening
        )
        return torch._foreach_add(part.g[a:b], new, alpha=h.momentum) if h.nesterov else new

    d, views, coefs = part.first_pass(direction, delta=h.delta, eps=h.eps)
    neg_coefs = part.blocks.split(coefs.neg_()[:, None])
    decay = None
    if h.weight_decay > 0:
        decays = h.decays() if scalars is None else (scalars[1], scalars[2])
        per_tensor = P.pick(views != int(View.NONE), *decays, coefs.dtype)
        decay = part.blocks.split(part.layout.expand(per_tensor)[:, None])
    w = part.w
    if scalars is not None:  # traced: one expression per tensor, each written once
        for i, (wi, gi, bi) in enumerate(zip(w, part.g, buf)):
            # the direction again from (buf, g), so that the compiler need not store it
            new = bi * h.momentum + gi * (1 - h.dampening)
            di = gi + new * h.momentum if h.nesterov else new
            projected = di + neg_coefs[i] * wi
            decayed = wi if decay is None else wi * decay[i]
            wi.copy_(decayed - scalars[0] * projected)
            bi.copy_(new if h.nesterov else projected)
        return views
    for a, b in reversed(part.blocks.blocks):  # the last blocks of pass 1 are still in cache
        torch._foreach_addcmul_(d[a:b], w[a:b], neg_coefs[a:b])
        if decay is not None:
            torch._foreach_mul_(w[a:b], decay[a:b])
        torch._foreach_add_(w[a:b], d[a:b], alpha=-h.lr)
    return views


#: The per-tensor reference; the multi-tensor engine's two parts (tensors never projected:
#: momentum SGD; the others: `_blocked_sgdp`), which ``fused=True`` compiles.
_KERNELS = B.Kernels(
    reference=_single_tensor_sgdp,
    plain=_plain_sgd,
    blocked=_blocked_sgdp,
    state_keys=("momentum_buffer",),
    scalars=lambda h, step: h.scalars(step),
)

SGDP._kernels = _KERNELS
