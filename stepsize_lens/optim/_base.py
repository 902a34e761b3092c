"""What AdamP and SGDP share beyond the math: the optimizer skeleton and the multi-tensor routing.

`ProjectedOptimizer` holds the parts of ``torch.optim.Optimizer`` both classes fill the same
way (state restore, gradient checks, the closure, one call per parameter group); a subclass
gives its state initialisation and its step on a group. `Kernels` runs an optimizer's step on
lists of tensors: the per-tensor reference path, or the multi-tensor path that sends each
tensor of every device/dtype group along its `_blocked.Partition` route.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.optimizer import required  # type: ignore[attr-defined]

from stepsize_lens.errors import UserInputError
from stepsize_lens.optim import _blocked

H = TypeVar("H")

#: The parameters of a group that have a gradient, their gradients and their state dicts.
GroupTensors = tuple[list[Tensor], list[Tensor], list[dict]]


class ProjectedOptimizer(Optimizer):
    """Base of AdamP and SGDP; subclasses implement `_validate_group`, `_init_state` and
    `_update`."""

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """torch's, plus one clear error for a missing required value and the group's checks.

        Runs for every group the constructor is given too, so hyperparameters given per group
        are checked exactly like the defaults.
        """
        missing = [k for k, v in self.defaults.items() if v is required and k not in param_group]
        if missing:
            name = type(self).__name__
            raise UserInputError(
                f"{name} needs a value for {', '.join(missing)}: pass {name}(params, "
                f"{missing[0]}=...) or give every parameter group its own {missing[0]!r}"
            )
        super().add_param_group(param_group)
        try:
            self._validate_group(self.param_groups[-1])
        except Exception:
            self.param_groups.pop()
            raise

    def _validate_group(self, group: dict[str, Any]) -> None:
        """Raise `UserInputError` for invalid hyperparameters of ``group`` (defaults filled)."""
        validate_common(group)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("foreach", None)
            group.setdefault("nesterov", False)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        restore_projection_dtype(self.state)

    def _init_state(self, p: Tensor, state: dict[str, Any]) -> None:
        """Create (or upgrade a reference package's) state of ``p`` before its step."""
        raise NotImplementedError

    def _update(self, group: dict[str, Any], tensors: GroupTensors, foreach: bool) -> None:
        """The step on the parameters of ``group`` that have a gradient (`_init_group`)."""
        raise NotImplementedError

    def _init_group(self, group: dict[str, Any]) -> GroupTensors:
        params, grads, states = [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            check_grad(type(self).__name__, p, p.grad)
            state = self.state[p]
            self._init_state(p, state)
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
            tensors = self._init_group(group)
            if tensors[0]:
                self._update(group, tensors, use_multi_tensor(group["foreach"], tensors[0]))
        return loss


#: A step on lists of parameters, gradients and state dicts, given hyperparameters ``H``.
ListStep = Callable[[list[Tensor], list[Tensor], list[dict], H], None]


@dataclass(frozen=True)
class Kernels(Generic[H]):
    """An optimizer's steps on lists of tensors, given its hyperparameters ``H``.

    ``reference``: the per-tensor path, for any tensor. ``plain``: a multi-tensor step for
    tensors that are never projected. ``blocked``: pass 1 (`BlockedTensors.first_pass`) and
    pass 2 on blocked tensors; returns each tensor's view. ``state_keys``: the state tensors
    ``blocked`` reads as rows.
    """

    reference: ListStep[H]
    plain: ListStep[H]
    blocked: Callable[[_blocked.BlockedTensors, H], Tensor]
    state_keys: tuple[str, ...]

    def __call__(
        self,
        params: list[Tensor],
        grads: list[Tensor],
        states: list[dict],
        hyper: H,
        *,
        foreach: bool,
    ) -> None:
        """The per-tensor path, or (``foreach``) the multi-tensor path, which never syncs.

        Multi-tensor: per device and dtype, each tensor goes along its `Partition` route
        (fallback: ``reference``, plain: ``plain``, blocked: ``blocked``), in that order.
        """
        if not foreach:
            self.reference(params, grads, states, hyper)
            return
        grouped = Optimizer._group_tensors_by_device_and_dtype([params, grads], with_indices=True)  # type: ignore[arg-type]
        for (ps, dev_grads), indices in grouped.values():
            gs = cast(list[Tensor], dev_grads)
            sts = [states[i] for i in indices]
            route = _blocked.Partition(ps)
            for ids, step in ((route.fallback, self.reference), (route.plain, self.plain)):
                if ids:
                    step([ps[i] for i in ids], [gs[i] for i in ids], [sts[i] for i in ids], hyper)
            if route.blocked:
                part = route.blocked_tensors(ps, gs, sts, self.state_keys)
                part.save_views(self.blocked(part, hyper))


def check_grad(name: str, p: Tensor, grad: Tensor) -> None:
    """Reject what the optimizers cannot handle, with one clear line."""
    if grad.is_sparse:
        raise UserInputError(
            f"{name} does not support sparse gradients (e.g. use nn.Embedding(sparse=False))"
        )
    if p.is_complex() or not p.is_floating_point():
        raise UserInputError(f"{name} supports real floating-point parameters only, got {p.dtype}")


def use_multi_tensor(foreach: bool | None, params: Sequence[Tensor]) -> bool:
    """``foreach=None`` picks the multi-tensor path whenever all parameters are plain tensors."""
    if foreach is not None:
        return foreach
    return all(type(p) in (Tensor, torch.nn.Parameter) for p in params)


def new_projection_state(p: Tensor) -> Tensor:
    """The 0-dim int64 tensor that records the view applied at the last step (0, 1 or 2)."""
    return torch.zeros((), dtype=torch.long, device=p.device)


def restore_projection_dtype(state: dict) -> None:
    """``Optimizer.load_state_dict`` casts every state tensor to the parameter's dtype."""
    for entry in state.values():
        proj = entry.get("projection")
        if isinstance(proj, Tensor) and proj.dtype != torch.long:
            entry["projection"] = proj.to(torch.long)


def validate_common(group: dict[str, Any]) -> None:
    """Reject invalid hyperparameters shared by AdamP and SGDP (one parameter group)."""
    for name in ("lr", "eps", "weight_decay", "delta", "wd_ratio"):
        if not group[name] >= 0.0:
            raise UserInputError(f"invalid {name}: {group[name]}")
