"""What AdamP and SGDP share beyond the math: the optimizer skeleton, validation and routing.

`ProjectedOptimizer` holds the parts of ``torch.optim.Optimizer`` both classes fill the same
way (validation of every parameter group, state restore, gradient checks, the closure, one
call per parameter group, the choice of path); a subclass gives its checks, its state
initialisation and its step on a group. `Kernels` runs an optimizer's step on lists of
tensors along one of three paths (`PATHS`, docs/design.md §4), from exactly two
implementations, the per-tensor reference and the multi-tensor engine (`_blocked`):

- ``per-tensor``: the reference, one tensor at a time, any tensor;
- ``multi-tensor``: per device and dtype, each tensor along its `_blocked.Partition` route;
- ``fused``: the multi-tensor code compiled by ``torch.compile`` (inductor: C++ on the CPU,
  Triton on a GPU), compiled in the background from the first step on (`_compiled`); until
  it is ready, and where no compiler works, the multi-tensor path runs.

Half-precision tensors (`HALF_DTYPES`) are computed in float32 and rounded once when written,
as torch's fused kernels do (the paths run on float32 copies).
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.optimizer import required  # type: ignore[attr-defined]

from stepsize_lens.errors import UserInputError
from stepsize_lens.optim import _blocked, _compiled

H = TypeVar("H")

#: The parameters of a group that have a gradient, their gradients and their state dicts.
GroupTensors = tuple[list[Tensor], list[Tensor], list[dict]]

PER_TENSOR, MULTI_TENSOR, FUSED = "per-tensor", "multi-tensor", "fused"

#: Which path runs where (`choose_path` picks one per parameter group and step).
PATHS: dict[str, str] = {
    PER_TENSOR: "foreach=False: the reference, one tensor at a time; any device, dtype, layout",
    MULTI_TENSOR: "foreach=True, or foreach=None when every parameter is a torch.Tensor or "
    "nn.Parameter: any device; tensors without a rows view run the per-tensor code",
    FUSED: "fused=True: the multi-tensor code compiled by torch.compile (inductor) in the "
    "background from the first step on; the multi-tensor path runs until it is ready, and "
    "where it cannot be compiled (said once, in one line)",
}

#: Devices ``fused=True`` accepts (torch's fused optimizers' main ones).
FUSED_DEVICES = ("cpu", "cuda")

#: Types the multi-tensor and fused paths accept (subclasses such as DTensor go per tensor).
PLAIN_TYPES = (Tensor, torch.nn.Parameter)

#: Parameter dtypes that every path computes in float32 (state stays in the parameter's dtype).
HALF_DTYPES = (torch.float16, torch.bfloat16)


class ProjectedOptimizer(Optimizer):
    """Base of AdamP and SGDP.

    Subclasses implement `_validate_group`, `_init_state` and `_update`, and pass ``foreach``
    and ``fused`` (checked by `check_paths`) in their defaults.
    """

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """torch's, plus one clear error for a missing required value and the group's checks.

        Nothing is compiled here: a ``fused=True`` group starts its compilation at its first
        step.
        """
        missing = [k for k, v in self.defaults.items() if v is required and k not in param_group]
        if missing:
            raise UserInputError(
                f"{type(self).__name__} needs a value for {', '.join(missing)}: pass "
                f"{type(self).__name__}(params, {missing[0]}=...) or give every parameter "
                f"group its own {missing[0]!r}"
            )
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            self._validate_group(group)
            if group["fused"]:
                check_fused_params(type(self).__name__, group["params"])
        except Exception:
            self.param_groups.pop()
            raise

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("foreach", None)
            group.setdefault("fused", None)
            group.setdefault("nesterov", False)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's, keeping this optimizer's ``foreach`` and ``fused`` (how, not what, to compute).

        A state saved by any path (or by the reference package) continues on this one.
        """
        paths = [(g["foreach"], g["fused"]) for g in self.param_groups]
        super().load_state_dict(state_dict)
        for group, (foreach, fused) in zip(self.param_groups, paths):
            group["foreach"], group["fused"] = foreach, fused
        restore_projection_dtype(self.state)

    def fused_ready(self, timeout: float | None = 0.0) -> bool:
        """Whether every ``fused=True`` group's compiled step is ready for its current tensors.

        Waits up to ``timeout`` seconds (None: until compiled or failed) for the background
        compilations, starting those not yet started (a group's first step starts its own).
        Steps never wait; call this before training when the first steps must already run
        compiled (benchmarks). True when there is nothing to compile, False when the compiler
        is unavailable or failed (said once, in one line) or turned off
        (``STEPSIZE_LENS_COMPILE=0``).
        """
        ok = True
        for group in self.param_groups:
            if not group["fused"]:
                continue
            tensors = self._gather(group, peek=True)
            if tensors[0]:
                ok &= self._kernels.compiled.wait(*tensors, self._hyper(group), timeout)
        return ok

    #: The optimizer's steps on lists of tensors (`Kernels`); set by each subclass.
    _kernels: Kernels

    def _hyper(self, group: dict[str, Any]) -> Any:
        """The hyperparameters of one step of ``group`` (the subclass's ``_Hyper``)."""
        raise NotImplementedError

    def _validate_group(self, group: dict[str, Any]) -> None:
        """Raise `UserInputError` for invalid hyperparameters of ``group`` (defaults filled)."""
        raise NotImplementedError

    def _init_state(self, p: Tensor, state: dict[str, Any]) -> None:
        """Create (or upgrade a reference package's) state of ``p`` before its step."""
        raise NotImplementedError

    def _update(self, group: dict[str, Any], tensors: GroupTensors, path: str) -> None:
        """The step on the parameters of ``group`` that have a gradient (`_gather`)."""
        self._kernels(*tensors, self._hyper(group), path=path)

    def _gather(self, group: dict[str, Any], peek: bool = False) -> GroupTensors:
        """The group's parameters with a gradient, their gradients and their states, created
        and counting this step. ``peek``: on copies of the state dicts, changing nothing (the
        tensors as the next step will see them)."""
        params, grads, states = [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            check_grad(type(self).__name__, p, p.grad)
            state = dict(self.state[p]) if peek else self.state[p]
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
            tensors = self._gather(group)
            if tensors[0]:
                self._update(group, tensors, choose_path(group, tensors[0]))
        return loss


def check_paths(name: str, foreach: bool | None, fused: bool | None) -> None:
    """torch's rule: ``foreach`` and ``fused`` cannot both be True."""
    if foreach and fused:
        raise UserInputError(f"{name}: `fused` and `foreach` cannot be `True` together")


def check_fused_params(name: str, params: Sequence[Tensor]) -> None:
    """torch's rule for ``fused=True``: floating-point tensors on a supported device."""
    for p in params:
        if p.device.type not in FUSED_DEVICES or not torch.is_floating_point(p):
            raise UserInputError(
                f"{name}(fused=True) needs floating-point tensors on "
                f"{' or '.join(FUSED_DEVICES)}, got {p.dtype} on {p.device}"
            )


def choose_path(group: dict[str, Any], params: Sequence[Tensor]) -> str:
    """The path of a group's step: ``fused=True``, then ``foreach``, as torch's optimizers do.

    ``foreach=None`` picks the multi-tensor path whenever every parameter is a plain tensor.
    A step traced by ``torch.compile`` takes the fused path's plain functions (traceable,
    and what the compiler fuses best), whatever the flags.
    """
    if group["fused"] or torch.compiler.is_compiling():
        return FUSED
    foreach = group["foreach"]
    if foreach is None:
        foreach = all(type(p) in PLAIN_TYPES for p in params)
    return MULTI_TENSOR if foreach else PER_TENSOR


#: A step on lists of parameters, gradients and state dicts, given hyperparameters ``H``.
ListStep = Callable[[list[Tensor], list[Tensor], list[dict], H], None]


@dataclass(frozen=True)
class Kernels(Generic[H]):
    """An optimizer's steps on lists of tensors, given its hyperparameters ``H``.

    ``reference``: the per-tensor path, for any tensor. ``plain(params, grads, states, hyper,
    scalars)``: a multi-tensor step for tensors that are never projected. ``blocked(part,
    hyper, scalars)``: the multi-tensor step of projectable tensors (`_blocked`); returns each
    tensor's view. ``state_keys``: the state tensors ``blocked`` reads as rows. ``scalars``:
    the values of one step that change from step to step (lr, bias corrections), as a float64
    list from (hyper, step): the compiled path passes them as a tensor, so a schedule never
    recompiles it; the eager paths pass None and read the hyperparameters.
    """

    reference: ListStep[H]
    plain: Callable[..., None]
    blocked: Callable[..., Tensor]
    state_keys: tuple[str, ...]
    scalars: Callable[[H, int | None], list[float]]
    compiled: _compiled.CompiledSteps = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "compiled", _compiled.CompiledSteps(self))

    def __call__(
        self, params: list[Tensor], grads: list[Tensor], states: list[dict], hyper: H, *, path: str
    ) -> None:
        """The step along ``path`` (`PATHS`); the multi-tensor and fused paths never sync."""
        if path == PER_TENSOR:
            in_float32(self.reference, params, grads, states, hyper, self.state_keys)
            return
        compiling = torch.compiler.is_compiling()
        if path == FUSED and not compiling and self.compiled.run(params, grads, states, hyper):
            return
        self.multi_tensor(params, grads, states, hyper)

    def multi_tensor(
        self,
        params: list[Tensor],
        grads: list[Tensor],
        states: list[dict],
        hyper: H,
        scalars: Tensor | None = None,
    ) -> None:
        """The multi-tensor step: per device and dtype, each tensor along its `Partition` route
        (fallback: ``reference``, plain: ``plain``, blocked: ``blocked``), in the `_blocked.Mode`
        of the device. ``scalars``: the step's `scalars` as a tensor (the compiled path)."""
        grouped = Optimizer._group_tensors_by_device_and_dtype([params, grads], with_indices=True)  # type: ignore[arg-type]
        for (ps, dev_grads), indices in grouped.values():
            gs = cast(list[Tensor], dev_grads)
            sts = [states[i] for i in indices]
            mode = _blocked.mode_for(ps[0].device)
            route = _blocked.Partition(ps, by_width=mode.gather)

            blocked = functools.partial(self._blocked_step, mode=mode, scalars=scalars)
            plain = functools.partial(self.plain, scalars=scalars)
            for ids, step in (
                (route.fallback, self.reference),
                (route.plain, plain),
                (route.blocked, blocked),
            ):
                if ids:
                    in_float32(
                        step,
                        [ps[i] for i in ids],
                        [gs[i] for i in ids],
                        [sts[i] for i in ids],
                        hyper,
                        self.state_keys,
                    )

    def _blocked_step(
        self,
        params: list[Tensor],
        grads: list[Tensor],
        states: list[dict],
        hyper: H,
        *,
        mode: _blocked.Mode,
        scalars: Tensor | None,
    ) -> None:
        route = _blocked.Partition(params, by_width=mode.gather)  # all blocked
        part = route.blocked_tensors(params, grads, states, self.state_keys, mode)
        part.save_views(self.blocked(part, hyper, scalars))


def in_float32(
    step: ListStep[H],
    params: list[Tensor],
    grads: list[Tensor],
    states: list[dict],
    hyper: H,
    state_keys: Sequence[str],
) -> None:
    """``step``, with half-precision tensors replaced by float32 copies written back after.

    State tensors keep the parameter's dtype (as torch's fused kernels keep them); only the
    arithmetic is float32, and each value is rounded once, when it is written back.
    """
    half = [i for i, p in enumerate(params) if p.dtype in HALF_DTYPES]
    if not half:
        step(params, grads, states, hyper)
        return
    params, grads, states = list(params), list(grads), list(states)
    originals = [(params[i], states[i]) for i in half]
    for i in half:
        params[i] = params[i].float()
        grads[i] = grads[i].float()
        states[i] = {
            k: v.float() if k in state_keys and isinstance(v, Tensor) else v
            for k, v in states[i].items()
        }
    step(params, grads, states, hyper)
    for i, (p, state) in zip(half, originals):
        p.copy_(params[i])
        for k in state_keys:
            state[k].copy_(states[i][k])


def check_grad(name: str, p: Tensor, grad: Tensor) -> None:
    """Reject what the optimizers cannot handle, with one clear line."""
    if grad.is_sparse:
        raise UserInputError(
            f"{name} does not support sparse gradients (e.g. use nn.Embedding(sparse=False))"
        )
    if p.is_complex() or not p.is_floating_point():
        raise UserInputError(f"{name} supports real floating-point parameters only, got {p.dtype}")


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
        check_number(name, group[name])


def check_number(name: str, value: Any, low: float = 0.0, high: float = math.inf) -> None:
    """``low <= value <= high`` for a Python number (NaN fails), else `UserInputError`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise UserInputError(f"invalid {name}: {value!r} (a Python number is needed)")
    if not low <= value <= high:
        raise UserInputError(f"invalid {name}: {value}")
