"""AdamP: Adam whose updates of scale-invariant weights have their radial part removed.

Heo, Chun, Oh, Han, Yun, Kim, Uh, Ha. "AdamP: Slowing Down the Slowdown for Momentum Optimizers
on Scale-invariant Weights", ICLR 2021. Same arguments, defaults and trajectories as the
authors' ``adamp`` package; the test and the projection are in `_projection`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, cast

import torch
from torch import Tensor
from torch.optim import Optimizer

from stepsize_lens.errors import UserInputError
from stepsize_lens.optim import _projection as P

__all__ = ["AdamP", "adamp"]


class AdamP(Optimizer):
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
        foreach: True for the multi-tensor path, False for the per-tensor reference path,
            None (default) for the multi-tensor path whenever all parameters are plain tensors.
            Both give the same result up to float rounding; the multi-tensor path never
            synchronises with the device, works on cache-sized blocks of rows and, on CPU and
            CUDA without nesterov, computes the Adam direction with torch's fused Adam kernel.
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
    ) -> None:
        P.validate_common(lr=lr, eps=eps, weight_decay=weight_decay, delta=delta, wd_ratio=wd_ratio)
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise UserInputError(f"invalid betas: {betas}")
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            delta=delta,
            wd_ratio=wd_ratio,
            nesterov=nesterov,
            foreach=foreach,
        )
        super().__init__(params, defaults)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("foreach", None)
            group.setdefault("nesterov", False)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        P.restore_projection_dtype(self.state)

    def _init_group(self, group: dict[str, Any]) -> tuple[list[Tensor], list[Tensor], list[dict]]:
        params, grads, states = [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            P.check_grad("AdamP", p, p.grad)
            state = self.state[p]
            if len(state) == 0:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["projection"] = P.new_projection_state(p)
            elif "projection" not in state:  # loaded from the reference package
                state["projection"] = P.new_projection_state(p)
            state["step"] += 1
            params.append(p)
            grads.append(p.grad)
            states.append(state)
        return params, grads, states

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One optimisation step; ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, states = self._init_group(group)
            if params:
                adamp(
                    params,
                    grads,
                    states,
                    lr=group["lr"],
                    beta1=group["betas"][0],
                    beta2=group["betas"][1],
                    eps=group["eps"],
                    weight_decay=group["weight_decay"],
                    delta=group["delta"],
                    wd_ratio=group["wd_ratio"],
                    nesterov=group["nesterov"],
                    foreach=P.use_multi_tensor(group["foreach"], params),
                )
        return loss


def adamp(
    params: list[Tensor],
    grads: list[Tensor],
    states: list[dict],
    *,
    foreach: bool,
    **hyper: Any,
) -> None:
    """Functional AdamP step over parameters whose states already count this step."""
    if foreach:
        _multi_tensor_adamp(params, grads, states, **hyper)
    else:
        _single_tensor_adamp(params, grads, states, **hyper)


def _single_tensor_adamp(
    params: list[Tensor],
    grads: list[Tensor],
    states: list[dict],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    delta: float,
    wd_ratio: float,
    nesterov: bool,
) -> None:
    """Reference path: one tensor at a time, the algorithm as written in the class docstring."""
    for p, g, state in zip(params, grads, states):
        m, v, step = state["exp_avg"], state["exp_avg_sq"], state["step"]
        m.mul_(beta1).add_(g, alpha=1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        denom = (v.sqrt() / math.sqrt(1 - beta2**step)).add_(eps)
        perturb = (beta1 * m + (1 - beta1) * g) / denom if nesterov else m / denom

        decay: float | Tensor = 1 - lr * weight_decay
        if P.projectable(p):
            view, projected = P.project_(perturb, p, g, delta=delta, eps=eps)
            state["projection"].copy_(view)
            decays = (1 - lr * weight_decay, 1 - lr * weight_decay * wd_ratio)
            decay = P.pick(projected, *decays, P.stats_dtype(p.dtype))
        if weight_decay > 0:
            p.mul_(decay)
        p.add_(perturb, alpha=-lr / (1 - beta1**step))


def _fused_kernel_ok(p: Tensor, nesterov: bool) -> bool:
    """torch's fused Adam kernel computes our direction on CPU and CUDA (not the Nesterov form)."""
    return not nesterov and p.device.type in ("cpu", "cuda")


def _step_tensors(steps: list[int], device: torch.device) -> list[Tensor]:
    """Step counts as the float32 device tensors the fused kernel reads (filled, no copy)."""
    made: dict[int, Tensor] = {}
    for t in set(steps):
        made[t] = torch.full((), float(t), dtype=torch.float32, device=device)
    return [made[t] for t in steps]


def _adam_directions(
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    steps: list[int],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    nesterov: bool,
) -> list[Tensor]:
    """Update the moments in place; return the Adam steps d = -lr/(1-β1^t) * u as new tensors.

    Without Nesterov, torch's fused Adam kernel does it in one pass (applied to zeros, its
    "parameter" update is d); otherwise ``torch._foreach_*`` ops follow the reference formula.
    """
    if _fused_kernel_ok(grads[0], nesterov):
        out = [torch.zeros_like(g) for g in grads]
        torch._fused_adam_(
            out,
            grads,
            exp_avgs,
            exp_avg_sqs,
            [],
            _step_tensors(steps, grads[0].device),
            lr=lr,
            beta1=beta1,
            beta2=beta2,
            weight_decay=0.0,
            eps=eps,
            amsgrad=False,
            maximize=False,
        )
        return out
    torch._foreach_mul_(exp_avgs, beta1)
    torch._foreach_add_(exp_avgs, grads, alpha=1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denom, [math.sqrt(1 - beta2**t) for t in steps])
    torch._foreach_add_(denom, eps)
    if nesterov:
        out = torch._foreach_mul(exp_avgs, beta1)
        torch._foreach_add_(out, grads, alpha=1 - beta1)
        torch._foreach_div_(out, denom)
    else:
        out = torch._foreach_div(exp_avgs, denom)
    del denom
    torch._foreach_mul_(out, [-lr / (1 - beta1**t) for t in steps])
    return out


def _plain_adamw(
    params: list[Tensor],
    grads: list[Tensor],
    states: list[dict],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    nesterov: bool,
) -> None:
    """Tensors that are never projected: decoupled decay, then the Adam step."""
    exp_avgs = [s["exp_avg"] for s in states]
    exp_avg_sqs = [s["exp_avg_sq"] for s in states]
    steps = [s["step"] for s in states]
    if _fused_kernel_ok(params[0], nesterov):
        torch._fused_adamw_(
            params,
            grads,
            exp_avgs,
            exp_avg_sqs,
            [],
            _step_tensors(steps, params[0].device),
            lr=lr,
            beta1=beta1,
            beta2=beta2,
            weight_decay=weight_decay,
            eps=eps,
            amsgrad=False,
            maximize=False,
        )
        return
    directions = _adam_directions(
        grads,
        exp_avgs,
        exp_avg_sqs,
        steps,
        lr=lr,
        beta1=beta1,
        beta2=beta2,
        eps=eps,
        nesterov=nesterov,
    )
    if weight_decay > 0:
        torch._foreach_mul_(params, 1 - lr * weight_decay)
    torch._foreach_add_(params, directions)


def _multi_tensor_adamp(
    params: list[Tensor],
    grads: list[Tensor],
    states: list[dict],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    delta: float,
    wd_ratio: float,
    nesterov: bool,
) -> None:
    """Multi-tensor path: blocks of ``torch._foreach_*`` ops and batched reductions, no host sync.

    Per device and dtype: tensors that are never projected take a plain multi-tensor AdamW
    step. The others are cut into cache-sized blocks of rows (`RowBlocks`). Pass 1, per
    block: the row statistics of the test on (w, g), the moments and the Adam step
    d = -lr/(1-β1^t) u, and <w_r, d_r>. Then, for all tensors at once with tensor ops: the view
    and the per-row coefficient c_r of the projection d <- d - c_r w_r. Pass 2, per block:
    w <- w * (decay - c_r) + d, with decay = 1 - lr λ ratio chosen by the view.
    """
    hyper = dict(
        lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, nesterov=nesterov
    )
    grouped = Optimizer._group_tensors_by_device_and_dtype([params, grads], with_indices=True)  # type: ignore[arg-type]
    for (dev_params, dev_grads), indices in grouped.values():
        ps, gs = dev_params, cast(list[Tensor], dev_grads)
        sts = [states[i] for i in indices]
        route = P.Partition(ps)
        if route.fallback:
            _single_tensor_adamp(
                [ps[i] for i in route.fallback],
                [gs[i] for i in route.fallback],
                [sts[i] for i in route.fallback],
                delta=delta,
                wd_ratio=wd_ratio,
                **hyper,
            )
        if route.plain:
            _plain_adamw(
                [ps[i] for i in route.plain],
                [gs[i] for i in route.plain],
                [sts[i] for i in route.plain],
                **hyper,
            )
        if route.blocked:
            ids = route.blocked
            _blocked_adamp(
                [ps[i] for i in ids],
                [route.rows[i] for i in ids],
                [route.grad_rows(i, ps[i], gs[i]) for i in ids],
                [sts[i] for i in ids],
                [route.state_rows(i, ps[i], sts[i], "exp_avg") for i in ids],
                [route.state_rows(i, ps[i], sts[i], "exp_avg_sq") for i in ids],
                delta=delta,
                wd_ratio=wd_ratio,
                **hyper,
            )


def _blocked_adamp(
    params: list[Tensor],
    w_rows: list[Tensor],
    g_rows: list[Tensor],
    states: list[dict],
    m_rows: list[Tensor],
    v_rows: list[Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    delta: float,
    wd_ratio: float,
    nesterov: bool,
) -> None:
    blocks = P.row_blocks(tuple(p.shape for p in params))
    layout = blocks.layout
    w, g = blocks.cut(w_rows), blocks.cut(g_rows)
    m, v = blocks.cut(m_rows), blocks.cut(v_rows)
    steps = [states[piece.t]["step"] for piece in blocks.pieces]
    stats = torch.empty(
        4, layout.total_rows, dtype=P.stats_dtype(params[0].dtype), device=w[0].device
    )
    w_dot_g, w_norm, g_norm, w_dot_d = (blocks.split(row) for row in stats)

    d: list[Tensor] = []
    for a, b in blocks.blocks:
        P.invariance_stats(w, g, w_dot_g, w_norm, g_norm, a, b)
        d_block = _adam_directions(
            g[a:b],
            m[a:b],
            v[a:b],
            steps[a:b],
            lr=lr,
            beta1=beta1,
            beta2=beta2,
            eps=eps,
            nesterov=nesterov,
        )
        P.update_dot_stats(w, d_block, w_dot_d, a, b)
        d += d_block

    views = P.choose_views(stats[0], stats[1], stats[2], layout, delta, eps)
    scale = P.projection_coefs(stats[3], stats[1], views, layout, eps).neg_()
    if weight_decay > 0:
        decays = (1 - lr * weight_decay, 1 - lr * weight_decay * wd_ratio)
        scale += layout.expand(P.pick(views != P.NONE, *decays, stats.dtype))
    else:
        scale += 1
    scales = blocks.split(scale[:, None])
    for a, b in reversed(blocks.blocks):  # the last blocks of pass 1 are still in cache
        torch._foreach_mul_(w[a:b], scales[a:b])
        torch._foreach_add_(w[a:b], d[a:b])
    torch._foreach_copy_([s["projection"] for s in states], list(views.unbind(0)))
