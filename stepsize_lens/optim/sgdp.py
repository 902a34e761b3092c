"""SGDP: SGD with momentum whose updates of scale-invariant weights have their radial part removed.

Heo, Chun, Oh, Han, Yun, Kim, Uh, Ha. "AdamP: Slowing Down the Slowdown for Momentum Optimizers
on Scale-invariant Weights", ICLR 2021. Same arguments, defaults and trajectories as the
authors' ``adamp`` package; the test and the projection are in `_projection`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, cast

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.optimizer import required  # type: ignore[attr-defined]

from stepsize_lens.errors import UserInputError
from stepsize_lens.optim import _projection as P

__all__ = ["SGDP", "sgdp"]


class SGDP(Optimizer):
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
        lr: learning rate (required).
        momentum, dampening, nesterov: as in SGD.
        weight_decay: decoupled weight decay λ (scaled by 1 / (1 - momentum)).
        eps: the eps of the cosine and of the projection.
        delta: threshold δ of the cosine test.
        wd_ratio: factor on the weight decay of projected tensors.
        foreach: True for the multi-tensor path, False for the per-tensor reference path,
            None (default) for the multi-tensor path whenever all parameters are plain tensors.
            Both give the same result up to float rounding; the multi-tensor path never
            synchronises with the device.
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
    ) -> None:
        if lr is required:
            raise UserInputError("SGDP needs a learning rate: SGDP(params, lr=...)")
        P.validate_common(lr=lr, eps=eps, weight_decay=weight_decay, delta=delta, wd_ratio=wd_ratio)
        if not momentum >= 0.0:
            raise UserInputError(f"invalid momentum: {momentum}")
        if weight_decay > 0 and momentum >= 1.0:
            raise UserInputError(
                "SGDP scales weight decay by 1/(1 - momentum): momentum must be < 1"
            )
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
            P.check_grad("SGDP", p, p.grad)
            state = self.state[p]
            if "momentum" in state:  # loaded from the reference package
                state["momentum_buffer"] = state.pop("momentum")
                state.setdefault("projection", P.new_projection_state(p))
            if len(state) == 0:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["projection"] = P.new_projection_state(p)
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
                sgdp(
                    params,
                    grads,
                    states,
                    lr=group["lr"],
                    momentum=group["momentum"],
                    dampening=group["dampening"],
                    weight_decay=group["weight_decay"],
                    nesterov=group["nesterov"],
                    eps=group["eps"],
                    delta=group["delta"],
                    wd_ratio=group["wd_ratio"],
                    foreach=P.use_multi_tensor(group["foreach"], params),
                )
        return loss


def sgdp(
    params: list[Tensor],
    grads: list[Tensor],
    states: list[dict],
    *,
    foreach: bool,
    **hyper: Any,
) -> None:
    """Functional SGDP step."""
    if foreach:
        _multi_tensor_sgdp(params, grads, states, **hyper)
    else:
        _single_tensor_sgdp(params, grads, states, **hyper)


def _decays(
    lr: float, weight_decay: float, wd_ratio: float, momentum: float
) -> tuple[float, float]:
    """Weight-decay multipliers (no view, a view), written as the reference computes them."""
    return (
        1 - lr * weight_decay * 1 / (1 - momentum),
        1 - lr * weight_decay * wd_ratio / (1 - momentum),
    )


def _single_tensor_sgdp(
    params: list[Tensor],
    grads: list[Tensor],
    states: list[dict],
    *,
    lr: float,
    momentum: float,
    dampening: float,
    weight_decay: float,
    nesterov: bool,
    eps: float,
    delta: float,
    wd_ratio: float,
) -> None:
    """Reference path: one tensor at a time, the algorithm as written in the class docstring."""
    for p, g, state in zip(params, grads, states):
        buf = state["momentum_buffer"]
        buf.mul_(momentum).add_(g, alpha=1 - dampening)
        d_p = g + momentum * buf if nesterov else buf

        decay: float | Tensor = 0.0
        if weight_decay > 0:
            decay = _decays(lr, weight_decay, wd_ratio, momentum)[0]
        if P.projectable(p):
            view, projected = P.project_(d_p, p, g, delta=delta, eps=eps)
            state["projection"].copy_(view)
            if weight_decay > 0:
                decays = _decays(lr, weight_decay, wd_ratio, momentum)
                decay = P.pick(projected, *decays, P.stats_dtype(p.dtype))
        if weight_decay > 0:
            p.mul_(decay)
        p.add_(d_p, alpha=-lr)


def _multi_tensor_sgdp(
    params: list[Tensor],
    grads: list[Tensor],
    states: list[dict],
    *,
    lr: float,
    momentum: float,
    dampening: float,
    weight_decay: float,
    nesterov: bool,
    eps: float,
    delta: float,
    wd_ratio: float,
) -> None:
    """Multi-tensor path: ``torch._foreach_*`` ops over cache-sized blocks, no host sync.

    Per device and dtype: tensors that are never projected take a plain foreach step. The
    others are cut into blocks of rows (`RowBlocks`). Pass 1, per block: the row statistics of
    the test on (w, g), the buffer update, the direction d and <w_r, d_r>. Then, for all
    tensors at once with tensor ops: the view and the per-row projection coefficients.
    Pass 2, per block: d <- d - c_r w_r (in the buffer without nesterov), w <- w * decay,
    w <- w - lr d.
    """
    hyper = dict(
        lr=lr,
        momentum=momentum,
        dampening=dampening,
        weight_decay=weight_decay,
        nesterov=nesterov,
        eps=eps,
        delta=delta,
        wd_ratio=wd_ratio,
    )
    grouped = Optimizer._group_tensors_by_device_and_dtype([params, grads], with_indices=True)  # type: ignore[arg-type]
    for (dev_params, dev_grads), indices in grouped.values():
        ps, gs = dev_params, cast(list[Tensor], dev_grads)
        sts = [states[i] for i in indices]
        route = P.Partition(ps)
        if route.fallback:
            _single_tensor_sgdp(
                [ps[i] for i in route.fallback],
                [gs[i] for i in route.fallback],
                [sts[i] for i in route.fallback],
                **hyper,
            )
        if route.plain:
            p_list = [ps[i] for i in route.plain]
            d_list = _sgd_directions(
                [gs[i] for i in route.plain],
                [sts[i]["momentum_buffer"] for i in route.plain],
                momentum=momentum,
                dampening=dampening,
                nesterov=nesterov,
            )
            if weight_decay > 0:
                torch._foreach_mul_(p_list, _decays(lr, weight_decay, wd_ratio, momentum)[0])
            torch._foreach_add_(p_list, d_list, alpha=-lr)
        if route.blocked:
            ids = route.blocked
            _blocked_sgdp(
                [ps[i] for i in ids],
                [route.rows[i] for i in ids],
                [route.grad_rows(i, ps[i], gs[i]) for i in ids],
                [sts[i] for i in ids],
                [route.state_rows(i, ps[i], sts[i], "momentum_buffer") for i in ids],
                **hyper,
            )


def _sgd_directions(
    grads: list[Tensor],
    bufs: list[Tensor],
    *,
    momentum: float,
    dampening: float,
    nesterov: bool,
    one_pass: bool = False,
) -> list[Tensor]:
    """Update the buffers in place; return the directions (the buffers unless nesterov).

    ``one_pass``: without dampening, buf <- g + μ buf in one op per tensor rather than two
    foreach ops (worth it on the few large pieces of a block, not on many small tensors).
    """
    if one_pass and dampening == 0:
        for g, buf in zip(grads, bufs):
            torch.add(g, buf, alpha=momentum, out=buf)
    else:
        torch._foreach_mul_(bufs, momentum)
        torch._foreach_add_(bufs, grads, alpha=1 - dampening)
    if nesterov:
        return torch._foreach_add(grads, bufs, alpha=momentum)
    return bufs


def _blocked_sgdp(
    params: list[Tensor],
    w_rows: list[Tensor],
    g_rows: list[Tensor],
    states: list[dict],
    buf_rows: list[Tensor],
    *,
    lr: float,
    momentum: float,
    dampening: float,
    weight_decay: float,
    nesterov: bool,
    eps: float,
    delta: float,
    wd_ratio: float,
) -> None:
    blocks = P.row_blocks(tuple(p.shape for p in params))
    layout = blocks.layout
    w, g, buf = blocks.cut(w_rows), blocks.cut(g_rows), blocks.cut(buf_rows)
    stats = torch.empty(
        4, layout.total_rows, dtype=P.stats_dtype(params[0].dtype), device=w[0].device
    )
    w_dot_g, w_norm, g_norm, w_dot_d = (blocks.split(row) for row in stats)

    d: list[Tensor] = []
    for a, b in blocks.blocks:
        P.invariance_stats(w, g, w_dot_g, w_norm, g_norm, a, b)
        d_block = _sgd_directions(
            g[a:b],
            buf[a:b],
            momentum=momentum,
            dampening=dampening,
            nesterov=nesterov,
            one_pass=True,
        )
        P.update_dot_stats(w, d_block, w_dot_d, a, b)
        d += d_block

    views = P.choose_views(stats[0], stats[1], stats[2], layout, delta, eps)
    coefs = P.projection_coefs(stats[3], stats[1], views, layout, eps)
    neg_coefs = blocks.split(coefs.neg_()[:, None])
    decay = None
    if weight_decay > 0:
        per_tensor = P.pick(
            views != P.NONE, *_decays(lr, weight_decay, wd_ratio, momentum), stats.dtype
        )
        decay = blocks.split(layout.expand(per_tensor)[:, None])
    for a, b in reversed(blocks.blocks):  # the last blocks of pass 1 are still in cache
        torch._foreach_addcmul_(d[a:b], w[a:b], neg_coefs[a:b])
        if decay is not None:
            torch._foreach_mul_(w[a:b], decay[a:b])
        torch._foreach_add_(w[a:b], d[a:b], alpha=-lr)
    torch._foreach_copy_([s["projection"] for s in states], list(views.unbind(0)))
