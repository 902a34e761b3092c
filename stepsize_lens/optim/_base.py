"""What AdamP and SGDP share beyond the math: the optimizer skeleton, validation and routing.

`ProjectedOptimizer` holds the parts of ``torch.optim.Optimizer`` both classes fill the same
way (validation of every parameter group, state restore, gradient checks, the closure, one
call per parameter group, the choice of path); a subclass gives its checks, its state
initialisation and its step on a group. `Kernels` runs an optimizer's step on lists of
tensors along one of three paths (`PATHS`, docs/design.md §4):

- ``per-tensor``: the reference, one tensor at a time, any tensor;
- ``multi-tensor``: per device and dtype, each tensor along its `_blocked.Partition` route;
- ``fused``: like multi-tensor, but every projectable tensor with a rows view whose compiled
  row kernel is ready (`_compiled.RowKernel`, CPU) runs it: one call that reads the tensor
  about twice. Until a kernel is ready (it compiles in the background), and where none is
  compiled (other devices, a missing compiler), those tensors take the multi-tensor route.

Half-precision tensors (`HALF_DTYPES`) are computed in float32 and rounded once when written,
as torch's fused kernels do: the compiled kernels load and store them directly, the other paths
run on float32 copies.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.optimizer import required  # type: ignore[attr-defined]

from stepsize_lens._rows import row_order, rows_view
from stepsize_lens.errors import UserInputError
from stepsize_lens.optim import _blocked
from stepsize_lens.optim._compiled import COMPILER_DEVICES, Key, RowKernel
from stepsize_lens.optim._projection import projectable, row_pieces, stats_dtype

H = TypeVar("H")

#: The parameters of a group that have a gradient, their gradients and their state dicts.
GroupTensors = tuple[list[Tensor], list[Tensor], list[dict]]

PER_TENSOR, MULTI_TENSOR, FUSED = "per-tensor", "multi-tensor", "fused"

#: Which path runs where (`choose_path` picks one per parameter group and step).
PATHS: dict[str, str] = {
    PER_TENSOR: "foreach=False: the reference, one tensor at a time; any device, dtype, layout",
    MULTI_TENSOR: "foreach=True, or foreach=None when every parameter is a torch.Tensor or "
    "nn.Parameter: any device; tensors without a rows view run the per-tensor code",
    FUSED: "fused=True: compiled row kernels on "
    + ", ".join(f"{dev} (needs {need})" for dev, need in COMPILER_DEVICES.items())
    + ", for every tensor with a rows view once its kernel is ready; everything else, and "
    "every tensor on other devices (CUDA), the multi-tensor path. Also what a step traced by "
    "torch.compile runs",
}

#: Devices ``fused=True`` accepts (torch's fused optimizers' main ones).
FUSED_DEVICES = ("cpu", "cuda")

#: Types the multi-tensor and fused paths accept (subclasses such as DTensor go per tensor).
PLAIN_TYPES = (Tensor, torch.nn.Parameter)

#: Parameter dtypes that every path computes in float32 (state stays in the parameter's dtype).
HALF_DTYPES = (torch.float16, torch.bfloat16)


class ProjectedOptimizer(Optimizer):
    """Base of AdamP and SGDP.

    Subclasses implement `_validate_group`, `_init_state`, `_update` and `_kernel_keys`, and
    pass ``foreach`` and ``fused`` (checked by `check_paths`) in their defaults.
    """

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """torch's, plus one clear error for a missing required value and the group's checks.

        With ``fused=True`` the group's row kernels start compiling in the background.
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
        if group["fused"]:
            self._request_kernels(group)

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
        """Whether the compiled kernels of every ``fused=True`` group are ready to run.

        Waits up to ``timeout`` seconds (None: until each is compiled or has failed) for the
        background compilation. Steps never wait; call this before training when the first
        steps must already take the fused path (reproducible runs, benchmarks). True when
        there is nothing to compile (no fused group; tensors on devices without compiled
        kernels), False when a kernel failed to compile.
        """
        ready = True
        for group in self.param_groups:
            if group["fused"]:
                kernel, keys = self._kernel_keys(group)
                ready &= kernel.wait(keys, timeout)
        return ready

    def _validate_group(self, group: dict[str, Any]) -> None:
        """Raise `UserInputError` for invalid hyperparameters of ``group`` (defaults filled)."""
        raise NotImplementedError

    def _init_state(self, p: Tensor, state: dict[str, Any]) -> None:
        """Create (or upgrade a reference package's) state of ``p`` before its step."""
        raise NotImplementedError

    def _update(self, group: dict[str, Any], tensors: GroupTensors, path: str) -> None:
        """The step on the parameters of ``group`` that have a gradient (`_gather`)."""
        raise NotImplementedError

    def _kernel_keys(self, group: dict[str, Any]) -> tuple[RowKernel, list[Key]]:
        """The row kernel of this optimizer and the keys the parameters of ``group`` need."""
        raise NotImplementedError

    def _request_kernels(self, group: dict[str, Any]) -> None:
        kernel, keys = self._kernel_keys(group)
        kernel.request(keys)

    def _gather(self, group: dict[str, Any]) -> GroupTensors:
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
class RowStep(Generic[H]):
    """How an optimizer calls its compiled row kernel on one tensor.

    ``kernel(key, w, g, *state tensors, projection, unit, hyper)`` runs the step of one
    tensor (as ``key.piece_shape`` views, ``unit`` of ones in ``key.unit_shape``) and writes
    its view into ``projection``; ``floats(hyper, state, numel, rows)`` gives the values of
    its float64 ``hyper`` tensor; ``variant(hyper)`` what else a kernel is specialised on.
    """

    kernel: RowKernel
    floats: Callable[[H, dict, int, int], Sequence[float]]
    variant: Callable[[H], Hashable]


@dataclass(frozen=True)
class Kernels(Generic[H]):
    """An optimizer's steps on lists of tensors, given its hyperparameters ``H``.

    ``reference``: the per-tensor path, for any tensor. ``plain``: a multi-tensor step for
    tensors that are never projected. ``blocked``: pass 1 (`BlockedTensors.first_pass`) and
    pass 2 on blocked tensors; returns each tensor's view. ``state_keys``: the state tensors
    ``blocked`` and the row kernel read as rows. ``rows``: the fused path's row kernel.
    """

    reference: ListStep[H]
    plain: ListStep[H]
    blocked: Callable[[_blocked.BlockedTensors, H], Tensor]
    state_keys: tuple[str, ...]
    rows: RowStep[H]

    def __call__(
        self, params: list[Tensor], grads: list[Tensor], states: list[dict], hyper: H, *, path: str
    ) -> None:
        """The step along ``path`` (`PATHS`); the multi-tensor and fused paths never sync.

        Per device and dtype, each tensor goes along its `Partition` route (fallback:
        ``reference``, plain: ``plain``, blocked: the row kernel on the fused path when it is
        ready, else ``blocked``).
        """
        if path == PER_TENSOR:
            in_float32(self.reference, params, grads, states, hyper, self.state_keys)
            return
        grouped = Optimizer._group_tensors_by_device_and_dtype([params, grads], with_indices=True)  # type: ignore[arg-type]
        for (ps, dev_grads), indices in grouped.values():
            gs = cast(list[Tensor], dev_grads)
            sts = [states[i] for i in indices]
            route = _blocked.Partition(ps)
            blocked = route.blocked
            if path == FUSED:
                ran = [self._fused(route, i, ps[i], gs[i], sts[i], hyper) for i in blocked]
                blocked = [i for i, done in zip(blocked, ran) if not done]
            for ids, step in (
                (route.fallback, self.reference),
                (route.plain, self.plain),
                (blocked, self._blocked_step),
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
        self, params: list[Tensor], grads: list[Tensor], states: list[dict], hyper: H
    ) -> None:
        route = _blocked.Partition(params)  # all blocked: projectable with a rows view
        part = route.blocked_tensors(params, grads, states, self.state_keys)
        part.save_views(self.blocked(part, hyper))

    def _fused(
        self, route: _blocked.Partition, i: int, p: Tensor, g: Tensor, state: dict, hyper: H
    ) -> bool:
        """Run the compiled row kernel on tensor ``i`` if it is ready; False if not run."""
        w = route.rows[i]
        rows, cols = w.shape
        key = row_key(p.device, p.dtype, rows, cols, self.rows.variant(hyper))
        compiling = torch.compiler.is_compiling()
        if not compiling and not self.rows.kernel.ready(key):
            self.rows.kernel.request([key])  # e.g. a parameter cast after construction
            return False
        sdt = torch.float64 if p.dtype == torch.float64 else torch.float32
        tensors = (
            w,
            route.grad_rows(i, p, g),
            *(route.state_rows(i, p, state, k) for k in self.state_keys),
        )
        floats = self.rows.floats(hyper, state, p.numel(), rows)
        row_hyper = torch.tensor(floats, dtype=torch.float64, device=p.device)
        if compiling:
            unit = torch.ones(key.unit_shape, device=p.device, dtype=sdt)
            pieces = (t.view(key.piece_shape) for t in tensors)
            self.rows.kernel.traced(key, *pieces, state["projection"], unit, row_hyper)
        else:
            # detached: no autograd flag and no view base for the compiled kernel's guards to
            # follow (the [rows, K] views of 4-D tensors would make every shape a new kernel)
            unit = unit_rows(key.unit_shape, p.device, sdt)
            pieces = (t.detach().view(key.piece_shape) for t in tensors)
            self.rows.kernel(key, *pieces, state["projection"], unit, row_hyper)
        return True


def row_key(
    device: torch.device, dtype: torch.dtype, rows: int, cols: int, variant: Hashable
) -> Key:
    """The row-kernel key of a [rows, cols] tensor (its rows cut as `row_pieces` says)."""
    return Key(device, dtype, rows, cols, variant, row_pieces(cols))


def row_example(key: Key, tensors: int, hyper: Sequence[float]) -> tuple[Tensor, ...]:
    """Arguments of one row-kernel call for ``key``, fresh tensors whose values do not matter:
    ``tensors`` zero tensors of the key's piece shape (w, g and the state), the projection slot,
    ones of its unit shape in the statistics' dtype, and ``hyper`` as float64."""
    kw = dict(device=key.device, dtype=key.dtype)
    zeros = (torch.zeros(key.piece_shape, **kw) for _ in range(tensors))  # type: ignore[arg-type]
    projection = torch.zeros((), dtype=torch.long, device=key.device)
    unit = torch.ones(key.unit_shape, device=key.device, dtype=stats_dtype(key.dtype))
    return (*zeros, projection, unit, torch.tensor(hyper, dtype=torch.float64, device=key.device))


_UNITS: dict[tuple[tuple[int, int], torch.device, torch.dtype], Tensor] = {}


def unit_rows(shape: tuple[int, int], device: torch.device, dtype: torch.dtype) -> Tensor:
    """Cached ones of ``shape`` ([rows, pieces]), the row kernels' shape hint (`_adamp_rows`)."""
    key = (shape, device, dtype)
    if key not in _UNITS:
        _UNITS[key] = torch.ones(shape, device=device, dtype=dtype)
    return _UNITS[key]


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


def kernel_keys(params: Sequence[Tensor], variant: Hashable) -> list[Key]:
    """The row-kernel keys of the projectable parameters that have a rows view."""
    keys = []
    for p in params:
        if not projectable(p) or type(p) not in PLAIN_TYPES:
            continue
        rows = rows_view(p, row_order(p))
        if rows is not None:
            keys.append(row_key(p.device, p.dtype, rows.shape[0], rows.shape[1], variant))
    return keys


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
