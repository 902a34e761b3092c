"""AdamC: AdamW whose weight decay on scale-invariant tensors follows the lr schedule.

Defazio, "Why Gradients Rapidly Increase Near the End of Training" (2025). On a normalised
(scale-invariant) weight AdamW's decoupled decay η_t·λ drives ‖g‖/‖w‖ towards sqrt(2λ/η_t), so
the gradient norm climbs as a schedule decays η_t. AdamC multiplies the decay of those tensors by
η_t/η_max, which keeps that ratio steady; every other tensor decays exactly as in AdamW.
The update itself is torch's own AdamW kernel (`torch.optim.adamw.adamw`), so foreach, fused,
amsgrad, maximize and capturable behave as in `torch.optim.AdamW`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim.adamw import adamw as adamw_functional
from torch.optim.optimizer import _get_scalar_dtype, _use_grad_for_differentiable

try:  # torch >= 2.4 checks fused support per parameter; the kernel itself raises otherwise
    from torch.optim.optimizer import _device_dtype_check_for_fused
except ImportError:  # pragma: no cover - older torch

    def _device_dtype_check_for_fused(p: Tensor) -> None:
        return None


from stepsize_lens._rows import as_rows, row_order
from stepsize_lens._schema import DEFAULT_DELTA, View
from stepsize_lens.errors import UserInputError
from stepsize_lens.paper_test import paper_test

__all__ = ["AdamC", "TEST_STEPS"]

TEST_STEPS = 10
"""Default number of first steps on which the paper's test must pass for ``normalized="auto"``."""

_AUTO = "auto"


class AdamC(torch.optim.AdamW):
    r"""AdamW with corrected weight decay on scale-invariant tensors (Defazio 2025).

    For every parameter w with gradient g of a group (lr η_t at step t, betas β1 β2, eps ε,
    weight decay λ)::

        η_max = max_lr                              if the group sets max_lr
              = max(initial_lr, peak_lr, η_t)       otherwise
        c_t   = η_t / η_max                         (1 while η_t is at its peak)
        λ_t   = λ c_t   if w is corrected,   λ otherwise
        w <- w (1 - η_t λ_t)        # corrected: w (1 - η_t² λ / η_max); else AdamW's w (1 - η_t λ)
        m <- β1 m + (1 - β1) g                       v <- β2 v + (1 - β2) g²
        w <- w - η_t / (1 - β1^t) · m / (sqrt(v / (1 - β2^t)) + ε)

    ``initial_lr`` is what every torch ``LRScheduler`` stores in each group when it is created
    (the schedule's base lr, its peak for warmup + cosine or WSD), and ``peak_lr`` is the η_max
    of the previous step, so without an explicit ``max_lr`` the factor c_t never exceeds 1 and
    AdamC under a constant lr *is* AdamW. The lines after the decay are AdamW's (amsgrad,
    maximize as there); the whole step runs through torch's AdamW kernel, the corrected tensors
    as their own call with weight decay λ c_t.

    Which tensors are corrected is per group (``normalized``):

    - ``True``: every tensor of the group (timm's ``adamc`` corrects every tensor; this is it);
    - ``False``: none: the group is plain AdamW;
    - ``"auto"`` (default): a real tensor with ndim >= 2 whose raw gradient passes the paper's
      scale-invariance test (`stepsize_lens.paper_test`, channel view or layer view, δ =
      ``delta``) at each of its first ``test_steps`` steps with a gradient is corrected from then
      on; a single failure, or ndim < 2, leaves it to AdamW for good. Until its verdict the
      tensor decays as in AdamW (these steps usually fall inside warmup, where both decays are
      small).

    Why "auto" decides once and asks for every one of ``test_steps`` passes: Defazio's
    steady state needs ⟨w, g⟩ = 0, i.e. a normalised weight, which is exactly what the test
    checks; on a tensor that is not invariant one test still passes with probability about 8%
    (layer view: |cos| < δ/sqrt(numel) where cos is about N(0, 1/numel)), ten in a row make such
    a false verdict negligible, and a verdict that never changes keeps "the tensors AdamC leaves
    alone" well defined: they follow AdamW bit for bit. To choose tensors yourself (from
    `stepsize_lens.invariance.probe`, say), put them in a group with ``normalized=True`` and the
    rest in one with ``normalized=False``.

    State: ``state[p]["normalized"]`` is True (corrected), False (left alone) or None (still
    being tested; ``state[p]["test_passes"]`` counts its passes); each group's ``peak_lr`` is the
    η_max of its last step and ``decay_scale`` the factor c_t applied there, so
    λ·decay_scale is the weight decay the corrected tensors received. The moments and step
    counters are AdamW's, under AdamW's names: an AdamW state dict loads into AdamC.

    Cost: with ``normalized`` True or False a step costs what AdamW's does (two kernel calls per
    group instead of one). "auto" adds a few reductions and one device-to-host transfer per step
    while some tensor of the group is still being tested, i.e. only during the first
    ``test_steps`` steps.

    Args:
        params: parameters or parameter groups (groups may set max_lr, normalized, delta,
            test_steps).
        lr, betas, eps, weight_decay, amsgrad: as in `torch.optim.AdamW`.
        max_lr: η_max; None (default): the group's ``initial_lr`` or the largest lr seen.
        normalized: True, False or "auto" (above).
        delta: δ of the paper's test.
        test_steps: steps the test must pass on before "auto" corrects a tensor.
        maximize, foreach, capturable, differentiable, fused: as in `torch.optim.AdamW`.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        max_lr: float | None = None,
        normalized: bool | str = _AUTO,
        delta: float = DEFAULT_DELTA,
        test_steps: int = TEST_STEPS,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        _check_options(max_lr=max_lr, normalized=normalized, delta=delta, test_steps=test_steps)
        options = dict(max_lr=max_lr, normalized=normalized, delta=delta, test_steps=test_steps)
        self._extra_defaults = dict(options, peak_lr=None, decay_scale=1.0)
        super().__init__(
            params,
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            maximize=maximize,
            foreach=foreach,
            capturable=capturable,
            differentiable=differentiable,
            fused=fused,
        )
        self.defaults.update(options)  # what the lens records as the optimizer's defaults

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        extra = getattr(self, "_extra_defaults", None)
        if extra is not None:  # torch's __init__ adds the first groups before defaults exist
            for key, value in extra.items():
                param_group.setdefault(key, value)
            _check_options(
                max_lr=param_group["max_lr"],
                normalized=param_group["normalized"],
                delta=param_group["delta"],
                test_steps=param_group["test_steps"],
            )
        super().add_param_group(param_group)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._extra_defaults = {
            key: self.defaults.get(key, value)
            for key, value in dict(
                max_lr=None,
                normalized=_AUTO,
                delta=DEFAULT_DELTA,
                test_steps=TEST_STEPS,
                peak_lr=None,
                decay_scale=1.0,
            ).items()
        }
        for group in self.param_groups:
            for key, value in self._extra_defaults.items():
                group.setdefault(key, value)

    def _gather(self, group: dict[str, Any]) -> tuple[list[list[Tensor]], bool]:
        """AdamW's state per parameter with a gradient, created as torch's AdamW creates it.

        Returns (params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps) and
        whether any parameter is complex."""
        lists: list[list[Tensor]] = [[], [], [], [], [], []]
        has_complex = False
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("AdamC does not support sparse gradients")
            has_complex |= torch.is_complex(p)
            state = self.state[p]
            if "step" not in state:
                if group["fused"]:
                    _device_dtype_check_for_fused(p)
                on_device = group["capturable"] or group["fused"]
                state["step"] = (
                    torch.zeros(
                        (), dtype=_get_scalar_dtype(is_fused=group["fused"]), device=p.device
                    )
                    if on_device
                    else torch.tensor(0.0, dtype=_get_scalar_dtype())
                )
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                if group["amsgrad"]:
                    state["max_exp_avg_sq"] = torch.zeros_like(
                        p, memory_format=torch.preserve_format
                    )
            if group["amsgrad"] and "max_exp_avg_sq" not in state:
                state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if group["foreach"] and torch.is_tensor(group["lr"]) and not group["capturable"]:
                raise RuntimeError(
                    "lr as a Tensor is not supported for capturable=False and foreach=True"
                )
            lists[0].append(p)
            lists[1].append(p.grad)
            lists[2].append(state["exp_avg"])
            lists[3].append(state["exp_avg_sq"])
            if group["amsgrad"]:
                lists[4].append(state["max_exp_avg_sq"])
            lists[5].append(state["step"])
        return lists, has_complex

    def _corrected(
        self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]
    ) -> list[bool]:
        """Per parameter: does its decay follow the schedule at this step (see the class doc)."""
        setting = group["normalized"]
        if setting is True or setting is False:
            for p in params:
                self.state[p]["normalized"] = setting
            return [setting] * len(params)
        verdicts: list[bool] = []
        testing: list[int] = []
        for i, p in enumerate(params):
            state = self.state[p]
            if state.get("normalized") is None:
                testable = p.ndim >= 2 and p.numel() > 0 and not torch.is_complex(p)
                if not testable or group["test_steps"] < 1:
                    state["normalized"] = testable
                else:
                    state.setdefault("normalized", None)
                    state.setdefault("test_passes", 0)
                    testing.append(i)
            verdicts.append(bool(state.get("normalized")))
        if testing:
            passed = invariance_test(
                [params[i] for i in testing], [grads[i] for i in testing], group["delta"]
            )
            for i, ok in zip(testing, passed):
                state = self.state[params[i]]
                if not ok:
                    state["normalized"] = False
                    continue
                state["test_passes"] += 1
                if state["test_passes"] >= group["test_steps"]:
                    state["normalized"] = True
        return verdicts

    @_use_grad_for_differentiable
    def step(self, closure: Any = None) -> Any:
        """One AdamC step (see the class docstring); returns the closure's loss if given."""
        check = getattr(self, "_accelerator_graph_capture_health_check", None) or getattr(
            self, "_cuda_graph_capture_health_check", None
        )
        if check is not None:
            check()
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            (params, grads, exp_avgs, exp_avg_sqs, max_sqs, steps), has_complex = self._gather(
                group
            )
            if not params:
                continue
            scale = decay_scale(group)
            corrected = self._corrected(group, params, grads)
            beta1, beta2 = group["betas"]
            for flag, weight_decay in (
                (False, group["weight_decay"]),
                (True, group["weight_decay"] * scale),
            ):
                chosen = [i for i, c in enumerate(corrected) if c is flag]
                if not chosen:
                    continue
                adamw_functional(
                    [params[i] for i in chosen],
                    [grads[i] for i in chosen],
                    [exp_avgs[i] for i in chosen],
                    [exp_avg_sqs[i] for i in chosen],
                    [max_sqs[i] for i in chosen] if group["amsgrad"] else [],
                    [steps[i] for i in chosen],
                    amsgrad=group["amsgrad"],
                    has_complex=has_complex,
                    beta1=beta1,
                    beta2=beta2,
                    lr=group["lr"],
                    weight_decay=weight_decay,
                    eps=group["eps"],
                    maximize=group["maximize"],
                    foreach=group["foreach"],
                    capturable=group["capturable"],
                    differentiable=group["differentiable"],
                    fused=group["fused"],
                    grad_scale=getattr(self, "grad_scale", None),
                    found_inf=getattr(self, "found_inf", None),
                )
        return loss


def decay_scale(group: dict[str, Any]) -> float:
    """c_t = η_t / η_max for a group, updating its ``peak_lr`` (η_max) and ``decay_scale``.

    η_max is the group's ``max_lr`` when set, else the largest of its ``initial_lr`` (set by
    torch's LR schedulers), its previous ``peak_lr`` and its lr now. 1 when η_max is 0."""
    lr = float(group["lr"])
    if group.get("max_lr") is not None:
        peak = float(group["max_lr"])
    else:
        candidates = [lr, group.get("initial_lr"), group.get("peak_lr")]
        peak = max(float(c) for c in candidates if c is not None)
    group["peak_lr"] = peak
    group["decay_scale"] = lr / peak if peak > 0 else 1.0
    return group["decay_scale"]


def invariance_test(params: list[Tensor], grads: list[Tensor], delta: float) -> list[bool]:
    """Does the paper's test (channel or layer view) pass for each (w, g) pair, ndim >= 2.

    Cosines in float64 with norms clamped at 1e-8 like ``F.cosine_similarity``; one
    device-to-host transfer for the whole list."""
    codes = []
    for p, g in zip(params, grads):
        order = row_order(p)
        w_rows = as_rows(p.detach(), order).double()
        g_rows = as_rows(g.detach(), order).double()
        dots = (w_rows * g_rows).sum(dim=1)
        w_norms, g_norms = w_rows.norm(dim=1), g_rows.norm(dim=1)
        channel = (dots / (w_norms.clamp(min=1e-8) * g_norms.clamp(min=1e-8))).abs().max()
        layer = dots.sum() / (
            w_norms.square().sum().sqrt().clamp(min=1e-8)
            * g_norms.square().sum().sqrt().clamp(min=1e-8)
        )
        codes.append(paper_test(layer, channel, p.numel(), p.shape[0], p.ndim, delta=delta))
    views = torch.stack(codes).tolist()
    return [view in (View.CHANNEL, View.LAYER) for view in views]


def _check_options(
    *, max_lr: float | None, normalized: bool | str, delta: float, test_steps: int
) -> None:
    if max_lr is not None and not float(max_lr) > 0.0:
        raise UserInputError(f"invalid max_lr: {max_lr} (a peak lr > 0, or None)")
    if normalized not in (True, False, _AUTO):
        raise UserInputError(f"normalized must be True, False or 'auto', not {normalized!r}")
    if not delta >= 0.0:
        raise UserInputError(f"invalid delta: {delta}")
    if not (isinstance(test_steps, int) and test_steps >= 0):
        raise UserInputError(f"invalid test_steps: {test_steps}")
