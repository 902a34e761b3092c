"""AdamP: Adam whose updates of scale-invariant weights have their radial part removed.

Heo, Chun, Oh, Han, Yun, Kim, Uh, Ha. "AdamP: Slowing Down the Slowdown for Momentum Optimizers
on Scale-invariant Weights", ICLR 2021. Same arguments, defaults and trajectories as the
authors' ``adamp`` package; the test and the projection are in `_projection`,
the blocked multi-tensor engine in `_blocked`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from stepsize_lens._schema import View
from stepsize_lens.errors import UserInputError
from stepsize_lens.optim import _base as B
from stepsize_lens.optim import _blocked
from stepsize_lens.optim import _projection as P

__all__ = ["AdamP", "adamp"]


class AdamP(B.ProjectedOptimizer):
    r"""AdamP (Heo et al., ICLR 2021): Adam with projected updates for scale-invariant weights.

    For every parameter w with gradient g, at step t (lr η, betas β1 β2, weight decay λ)::

        m <- β1 m + (1 - β1) g                    v <- β2 v + (1 - β2) g²
        denom = sqrt(v) / sqrt(1 - β2^t) + eps
        u = m / denom          (nesterov: u = (β1 m + (1 - β1) g) / denom)
        ratio = 1
        if w.ndim > 1:                            # 1-D tensors are never projected
            for view in (channel, layer):         # the test reads the raw gradient g
                if max |cos(w_row, g_row)| < delta / sqrt(row length):
                    u <- u - w_row <w_row, u_row> / (||w_row|| + eps)²   (per row)
                    ratio = wd_ratio
                    break
        w <- w (1 - η λ ratio)                    # decoupled decay, before the update
        w <- w - η / (1 - β1^t) u

    Rows are the slices along dim 0 (channel view) or the whole tensor (layer view); the cosine
    clamps each norm at eps like ``torch.nn.functional.cosine_similarity``. The moments are
    never projected. ``state[p]["projection"]`` holds the view applied at the last step
    (0-dim int64 tensor: 0 none, 1 channel, 2 layer).

    Args:
        params: parameters or parameter groups.
        lr, betas, eps, weight_decay: as in Adam (weight decay is decoupled, as in AdamW).
        delta: threshold δ of the cosine test.
        wd_ratio: factor on the weight decay of projected tensors.
        nesterov: use the Nesterov form of the first moment in the update.
        foreach, fused: the path, with torch's conventions (``_base.PATHS``). All paths give
            the same result up to float rounding, and float16/bfloat16 parameters are
            computed in float32 on every path.

            - ``foreach=False``: the per-tensor reference path above.
            - ``foreach=True`` (and the default ``None`` when every parameter is a plain
              tensor): the multi-tensor path. It never synchronises with the device; on the
              CPU it works on cache-sized blocks of rows, on accelerators in a number of kernel
              launches that depends on the row lengths, not on the number of tensors; without
              nesterov it computes the Adam direction with torch's fused Adam kernel.
            - ``fused=True``: the multi-tensor code compiled by ``torch.compile`` (inductor: C++
              on the CPU, Triton on a GPU), compiled in a background thread from the first step
              on (about a minute on a small CPU); until it is ready, and where it cannot be
              compiled (said once, in one line), the multi-tensor path runs, so no step waits.
              `fused_ready(timeout=None)` waits for it.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        delta: float = 0.1,
        wd_ratio: float = 0.1,
        nesterov: bool = False,
        *,
        foreach: bool | None = None,
        fused: bool | None = None,
    ) -> None:
        B.check_paths("AdamP", foreach, fused)
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            delta=delta,
            wd_ratio=wd_ratio,
            nesterov=nesterov,
            foreach=foreach,
            fused=fused,
        )
        super().__init__(params, defaults)

    def _validate_group(self, group: dict[str, Any]) -> None:
        B.validate_common(group)
        betas = group["betas"]
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise UserInputError(f"invalid betas: {betas!r} (two numbers are needed)")
        for name, beta in zip(("betas[0]", "betas[1]"), betas):
            B.check_number(name, beta)
            if not beta < 1.0:
                raise UserInputError(f"invalid betas: {tuple(betas)}")

    def _init_state(self, p: Tensor, state: dict[str, Any]) -> None:
        if len(state) == 0:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["projection"] = B.new_projection_state(p)
        elif "projection" not in state:  # loaded from the reference package
            state["projection"] = B.new_projection_state(p)
        state["step"] += 1

    def _hyper(self, group: dict[str, Any]) -> _Hyper:
        return _Hyper(
            lr=group["lr"],
            beta1=group["betas"][0],
            beta2=group["betas"][1],
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            delta=group["delta"],
            wd_ratio=group["wd_ratio"],
            nesterov=group["nesterov"],
        )


@dataclass(frozen=True, slots=True)
class _Hyper:
    """The hyperparameters of one step (a parameter group's, betas split)."""

    lr: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    delta: float
    wd_ratio: float
    nesterov: bool

    def decays(self) -> tuple[float, float]:
        """Weight-decay multipliers (no view, a view): 1 - η λ and 1 - η λ wd_ratio."""
        return 1 - self.lr * self.weight_decay, 1 - self.lr * self.weight_decay * self.wd_ratio

    def scalars(self, step: int | None) -> list[float]:
        """The values of step t that change between steps, in double like the reference:
        lr / (1 - β1^t), sqrt(1 - β2^t) and the two decays (`_base.Kernels.scalars`)."""
        assert step is not None
        return [
            self.lr / (1 - self.beta1**step),
            math.sqrt(1 - self.beta2**step),
            *self.decays(),
        ]


def adamp(
    params: list[Tensor],
    grads: list[Tensor],
    states: list[dict],
    *,
    path: str = B.MULTI_TENSOR,
    **hyper: Any,
) -> None:
    """Functional AdamP step over parameters whose states already count this step.

    ``path``: one of `_base.PATHS`. ``hyper``: lr, beta1, beta2, eps, weight_decay, delta,
    wd_ratio, nesterov.
    """
    _KERNELS(params, grads, states, _Hyper(**hyper), path=path)


def _single_tensor_adamp(
    params: list[Tensor], grads: list[Tensor], states: list[dict], h: _Hyper
) -> None:
    """Reference path: one tensor at a time, the algorithm as written in the class docstring."""
    for p, g, state in zip(params, grads, states):
        m, v, step = state["exp_avg"], state["exp_avg_sq"], state["step"]
        m.mul_(h.beta1).add_(g, alpha=1 - h.beta1)
        v.mul_(h.beta2).addcmul_(g, g, value=1 - h.beta2)
        denom = (v.sqrt() / math.sqrt(1 - h.beta2**step)).add_(h.eps)
        perturb = (h.beta1 * m + (1 - h.beta1) * g) / denom if h.nesterov else m / denom

        decay: float | Tensor = h.decays()[0]
        if P.projectable(p):
            view, projected = P.project_(perturb, p, g, delta=h.delta, eps=h.eps)
            state["projection"].copy_(view)
            decay = P.pick(projected, *h.decays(), P.stats_dtype(p.dtype))
        if h.weight_decay > 0:
            p.mul_(decay)
        p.add_(perturb, alpha=-h.lr / (1 - h.beta1**step))


#: Devices where torch has a fused Adam kernel (``torch._fused_adam_``/``_fused_adamw_``).
FUSED_ADAM_DEVICES = frozenset({"cpu", "cuda"})


def _fused_kernel_ok(p: Tensor, h: _Hyper, scalars: Tensor | None) -> bool:
    """torch's fused Adam kernel computes our direction (not the Nesterov form); a traced
    step writes the formula instead, which the compiler fuses with the row sums."""
    return scalars is None and not h.nesterov and p.device.type in FUSED_ADAM_DEVICES


def _step_tensors(steps: list[int], device: torch.device) -> list[Tensor]:
    """Step counts as the float32 device tensors the fused kernel reads (filled, no copy)."""
    made: dict[int, Tensor] = {}
    for t in set(steps):
        made[t] = torch.full((), float(t), dtype=torch.float32, device=device)
    return [made[t] for t in steps]


def _fused_adam_kernel(
    kernel: Any,
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    steps: list[int],
    h: _Hyper,
    weight_decay: float,
) -> None:
    """``torch._fused_adam_`` or ``torch._fused_adamw_`` with our hyperparameters."""
    kernel(
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        [],
        _step_tensors(steps, grads[0].device),
        lr=h.lr,
        beta1=h.beta1,
        beta2=h.beta2,
        weight_decay=weight_decay,
        eps=h.eps,
        amsgrad=False,
        maximize=False,
    )


def _zeros_like(tensors: list[Tensor]) -> list[Tensor]:
    """Zero tensors shaped like ``tensors``, views of one buffer (one launch, not one each)."""
    numels = [t.numel() for t in tensors]
    flat = torch.zeros(sum(numels), dtype=tensors[0].dtype, device=tensors[0].device)
    return [x.view(t.shape) for x, t in zip(flat.split(numels), tensors)]


def _adam_directions(
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    steps: list[int],
    h: _Hyper,
    scalars: Tensor | None,
) -> list[Tensor]:
    """Update the moments in place; return the Adam steps d = -lr/(1-β1^t) * u as new tensors.

    Eager, without Nesterov: torch's fused Adam kernel in one pass (applied to zeros, its
    "parameter" update is d). Otherwise ``torch._foreach_*`` ops follow the reference formula,
    with the bias corrections of ``scalars`` when given (the compiled path: one step count).
    """
    beta1, beta2 = h.beta1, h.beta2
    if _fused_kernel_ok(grads[0], h, scalars):
        out = _zeros_like(grads)
        _fused_adam_kernel(torch._fused_adam_, out, grads, exp_avgs, exp_avg_sqs, steps, h, 0.0)
        return out
    torch._foreach_mul_(exp_avgs, beta1)
    torch._foreach_add_(exp_avgs, grads, alpha=1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
    denom = torch._foreach_sqrt(exp_avg_sqs)
    if scalars is None:
        torch._foreach_div_(denom, [math.sqrt(1 - beta2**t) for t in steps])
    else:
        torch._foreach_div_(denom, scalars[1])
    torch._foreach_add_(denom, h.eps)
    if h.nesterov:
        out = torch._foreach_mul(exp_avgs, beta1)
        torch._foreach_add_(out, grads, alpha=1 - beta1)
        torch._foreach_div_(out, denom)
    else:
        out = torch._foreach_div(exp_avgs, denom)
    del denom
    if scalars is None:
        torch._foreach_mul_(out, [-h.lr / (1 - beta1**t) for t in steps])
    else:
        torch._foreach_mul_(out, -scalars[0])
    return out


def _plain_adamw(
    params: list[Tensor],
    grads: list[Tensor],
    states: list[dict],
    h: _Hyper,
    scalars: Tensor | None,
) -> None:
    """Tensors that are never projected: decoupled decay, then the Adam step."""
    exp_avgs = [s["exp_avg"] for s in states]
    exp_avg_sqs = [s["exp_avg_sq"] for s in states]
    steps = [s.get("step") for s in states]
    if _fused_kernel_ok(params[0], h, scalars):
        _fused_adam_kernel(
            torch._fused_adamw_, params, grads, exp_avgs, exp_avg_sqs, steps, h, h.weight_decay
        )
        return
    directions = _adam_directions(grads, exp_avgs, exp_avg_sqs, steps, h, scalars)
    if h.weight_decay > 0:
        torch._foreach_mul_(params, h.decays()[0] if scalars is None else scalars[2])
    torch._foreach_add_(params, directions)


def _blocked_adamp(part: _blocked.BlockedTensors, h: _Hyper, scalars: Tensor | None) -> Tensor:
    """Multi-tensor path of the projectable tensors (`_blocked`); returns the views.

    Pass 1 (`BlockedTensors.first_pass`), per block: the moments and the Adam step
    d = -lr/(1-β1^t) u, then the row sums of the test on (w, g) and <w_r, d_r>; then the views
    and the per-row coefficients c_r of the projection d <- d - c_r w_r. Pass 2, per block:
    w <- w * (decay - c_r) + d, with decay = 1 - lr λ ratio chosen by the view.
    """
    m, v = part.state["exp_avg"], part.state["exp_avg_sq"]
    steps = part.per_piece("step")
    d, views, coefs = part.first_pass(
        lambda a, b: _adam_directions(part.g[a:b], m[a:b], v[a:b], steps[a:b], h, scalars),
        delta=h.delta,
        eps=h.eps,
    )
    scale = coefs.neg_()
    if h.weight_decay > 0:
        decays = h.decays() if scalars is None else (scalars[2], scalars[3])
        scale += part.layout.expand(P.pick(views != int(View.NONE), *decays, scale.dtype))
    else:
        scale += 1
    scales, w = part.blocks.split(scale[:, None]), part.w
    for a, b in reversed(part.blocks.blocks):  # the last blocks of pass 1 are still in cache
        torch._foreach_mul_(w[a:b], scales[a:b])
        torch._foreach_add_(w[a:b], d[a:b])
    return views


#: The per-tensor reference; the multi-tensor engine's two parts (tensors never projected:
#: AdamW; the others: `_blocked_adamp`), which ``fused=True`` compiles.
_KERNELS = B.Kernels(
    reference=_single_tensor_adamp,
    plain=_plain_adamw,
    blocked=_blocked_adamp,
    state_keys=("exp_avg", "exp_avg_sq"),
    scalars=lambda h, step: h.scalars(step),
)

AdamP._kernels = _KERNELS
