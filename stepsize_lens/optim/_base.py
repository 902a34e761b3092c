"""What AdamP and SGDP share beyond the math: the optimizer skeleton, validation and routing.

`ProjectedOptimizer` holds the parts of ``torch.optim.Optimizer`` both classes fill the same
way (validation of every parameter group, state restore, gradient checks, the closure, one
call per parameter group, the choice of path); a subclass gives its checks, its state
initialisation and its step on a group. `Kernels` runs an optimizer's step on lists of
tensors along one of three paths (`PATHS`, docs/design.md §4):

- ``per-tensor``: the reference, one tensor at a time, any tensor;
- ``multi-tensor``: per device and dtype, each tensor along its `_blocked.Partition` route;
- ``fused``: on the CPU, once the C++ kernel is loaded (`_cpu_kernel`, built in the
  background), every tensor with a rows view in one call of two passes over the data;
  until then, where it cannot be built, and on other devices (CUDA), the multi-tensor route.
  A step traced by ``torch.compile`` runs the optimizer's row function (`RowStep.fn`) on
  each tensor instead, which the compiler fuses.

Half-precision tensors (`HALF_DTYPES`) are computed in float32 and rounded once when written,
as torch's fused kernels do: the C++ kernel and the traced row functions load and store them
directly, the other paths run on float32 copies.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.optimizer import required  # type: ignore[attr-defined]

from stepsize_lens.errors import UserInputError
from stepsize_lens.optim import _blocked, _cpu_kernel
from stepsize_lens.optim._projection import row_pieces, stats_dtype

H = TypeVar("H")

#: The parameters of a group that have a gradient, their gradients and their state dicts.
GroupTensors = tuple[list[Tensor], list[Tensor], list[dict]]

PER_TENSOR, MULTI_TENSOR, FUSED = "per-tensor", "multi-tensor", "fused"

#: Which path runs where (`choose_path` picks one per parameter group and step).
PATHS: dict[str, str] = {
    PER_TENSOR: "foreach=False: the reference, one tensor at a time; any device, dtype, layout",
    MULTI_TENSOR: "foreach=True, or foreach=None when every parameter is a torch.Tensor or "
    "nn.Parameter: any device; tensors without a rows view run the per-tensor code",
    FUSED: "fused=True: on the CPU, a C++ kernel (built at run time; needs a C++ compiler and "
    "ninja) steps every tensor with a rows view in one call of two passes once it is loaded; "
    "until then, where it cannot be built, and on other devices (CUDA), the multi-tensor path. "
    "A step traced by torch.compile runs each tensor's step in torch ops for the compiler",
}

#: Devices ``fused=True`` accepts (torch's fused optimizers' main ones).
FUSED_DEVICES = ("cpu", "cuda")

#: Types the multi-tensor and fused paths accept (subclasses such as DTensor go per tensor).
PLAIN_TYPES = (Tensor, torch.nn.Parameter)

#: Parameter dtypes that every path computes in float32 (state stays in the parameter's dtype).
HALF_DTYPES = (torch.float16, torch.bfloat16)

#: Parameter dtypes the C++ kernel steps (others take the multi-tensor path).
NATIVE_DTYPES = (torch.float32, torch.float64, *HALF_DTYPES)


class ProjectedOptimizer(Optimizer):
    """Base of AdamP and SGDP.

    Subclasses implement `_validate_group`, `_init_state` and `_update`, and pass ``foreach``
    and ``fused`` (checked by `check_paths`) in their defaults.
    """

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """torch's, plus one clear error for a missing required value and the group's checks.

        With ``fused=True`` on CPU tensors, the C++ kernel starts loading in the background.
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
        if group["fused"] and _on_cpu(group):
            _cpu_kernel.start()

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
        """Whether the C++ kernel that ``fused=True`` groups of CPU tensors run is loaded.

        Waits up to ``timeout`` seconds (None: until it is loaded or has failed) for the
        background build. Steps never wait; call this before training when the first steps
        must already take the fused path (reproducible runs, benchmarks). True when there is
        nothing to load (no fused group of CPU tensors), False when the kernel is unavailable
        (no compiler or ``ninja``, ``STEPSIZE_LENS_CPU_KERNEL=0``, a failed build).
        """
        if not any(group["fused"] and _on_cpu(group) for group in self.param_groups):
            return True
        return _cpu_kernel.wait(timeout) is not None

    def _validate_group(self, group: dict[str, Any]) -> None:
        """Raise `UserInputError` for invalid hyperparameters of ``group`` (defaults filled)."""
        raise NotImplementedError

    def _init_state(self, p: Tensor, state: dict[str, Any]) -> None:
        """Create (or upgrade a reference package's) state of ``p`` before its step."""
        raise NotImplementedError

    def _update(self, group: dict[str, Any], tensors: GroupTensors, path: str) -> None:
        """The step on the parameters of ``group`` that have a gradient (`_gather`)."""
        raise NotImplementedError

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
    """How an optimizer's fused step runs, in C++ and in torch ops.

    ``native``: the name of its function in ``optim/cpu_kernel.cpp``, which steps all tensors
    of one dtype in one call (weights, gradients, state tensors in the order of
    `Kernels.state_keys`, projection slots, the float64 hyper table, nesterov).
    ``floats(hyper, state, numel, rows)``: one tensor's row of that table (a function of
    ``state["step"]`` where there is one, ``numel`` and ``rows``), also the ``hyper`` of
    ``fn``. ``fn(w, g, *state, projection, unit, hyper, nesterov=...)``: the same step of one
    tensor in torch ops (arguments as `traced_call` makes them), run by a step that
    ``torch.compile`` traces. ``nesterov(hyper)``: whether the Nesterov form is used.
    """

    native: str
    floats: Callable[[H, dict, int, int], Sequence[float]]
    fn: Callable[..., None]
    nesterov: Callable[[H], bool]


@dataclass(frozen=True)
class Kernels(Generic[H]):
    """An optimizer's steps on lists of tensors, given its hyperparameters ``H``.

    ``reference``: the per-tensor path, for any tensor. ``plain``: a multi-tensor step for
    tensors that are never projected. ``blocked``: pass 1 (`BlockedTensors.first_pass`) and
    pass 2 on blocked tensors; returns each tensor's view. ``state_keys``: the state tensors
    ``blocked`` and the fused step read as rows. ``rows``: the fused step.
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
        ``reference``, plain: ``plain``, blocked: ``blocked``), except on the fused path where
        the C++ kernel is loaded (it takes the plain and blocked tensors) or the step is being
        traced (blocked tensors run ``rows.fn``).
        """
        if path == PER_TENSOR:
            in_float32(self.reference, params, grads, states, hyper, self.state_keys)
            return
        grouped = Optimizer._group_tensors_by_device_and_dtype([params, grads], with_indices=True)  # type: ignore[arg-type]
        for (ps, dev_grads), indices in grouped.values():
            gs = cast(list[Tensor], dev_grads)
            sts = [states[i] for i in indices]
            traced = path == FUSED and torch.compiler.is_compiling()
            if path == FUSED and not traced:
                module = native_module(ps[0])
                if module is not None:
                    rest = self._native(module, ps, gs, sts, hyper)
                    ps, gs, sts = (
                        [ps[i] for i in rest],
                        [gs[i] for i in rest],
                        [sts[i] for i in rest],
                    )
                    if not ps:
                        continue
            route = _blocked.Partition(ps)
            blocked = route.blocked
            if traced:
                for i in blocked:
                    self._traced(route, i, ps[i], gs[i], sts[i], hyper)
                blocked = []
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

    def _native(
        self,
        module: Any,
        params: list[Tensor],
        grads: list[Tensor],
        states: list[dict],
        hyper: H,
    ) -> list[int]:
        """One call of the C++ kernel on every tensor it can read in place (one device and
        dtype; `native_layout`); returns the indices of those it did not step.

        A gradient in another layout than its parameter is copied into the parameter's for
        this step, a state tensor replaced (once) by such a copy, as the multi-tensor path does.
        """
        rest: list[int] = []
        done: list[int] = []
        state: list[list[Tensor]] = [[] for _ in self.state_keys]
        g: list[Tensor] = []
        floats: list[Sequence[float]] = []
        cached: dict[tuple, Sequence[float]] = {}
        for i, (p, grad, st) in enumerate(zip(params, grads, states)):
            if not native_layout(p):
                rest.append(i)
                continue
            strides = p.stride()
            if grad.stride() != strides:
                grad = torch.empty_like(p).copy_(grad)
            for column, k in zip(state, self.state_keys):
                if st[k].stride() != strides:
                    st[k] = torch.empty_like(p).copy_(st[k])
                column.append(st[k])
            done.append(i)
            g.append(grad)
            rows = p.shape[0] if p.ndim > 1 else 1
            key = (st.get("step"), p.numel(), rows)  # all a row of the table depends on
            if key not in cached:
                cached[key] = self.rows.floats(hyper, st, p.numel(), rows)
            floats.append(cached[key])
        if done:
            getattr(module, self.rows.native)(
                [params[i].detach() for i in done],
                g,
                *state,
                [states[i]["projection"] for i in done],
                torch.tensor(floats, dtype=torch.float64),
                self.rows.nesterov(hyper),
            )
        return rest

    def _traced(
        self, route: _blocked.Partition, i: int, p: Tensor, g: Tensor, state: dict, hyper: H
    ) -> None:
        """``rows.fn`` on blocked tensor ``i``, for a step traced by ``torch.compile``."""
        tensors = (
            route.rows[i],
            route.grad_rows(i, p, g),
            *(route.state_rows(i, p, state, k) for k in self.state_keys),
        )
        floats = self.rows.floats(hyper, state, p.numel(), route.rows[i].shape[0])
        row_hyper = torch.tensor(floats, dtype=torch.float64, device=p.device)
        args = traced_call(tensors, state["projection"], row_hyper)
        self.rows.fn(*args, nesterov=self.rows.nesterov(hyper))


def traced_call(tensors: Sequence[Tensor], projection: Tensor, hyper: Tensor) -> tuple[Tensor, ...]:
    """The arguments of a row function (`RowStep.fn`) for [rows, K] ``tensors`` (w, g, state).

    Each row is cut into `row_pieces` consecutive pieces, so the tensors become
    [rows * pieces, K / pieces] views (inductor sums short rows faster), followed by the
    projection slot, ``unit``: ones of [rows, pieces] in the statistics' dtype, and ``hyper``.
    """
    w = tensors[0]
    rows, cols = w.shape
    pieces = row_pieces(cols)
    unit = torch.ones((rows, pieces), device=w.device, dtype=stats_dtype(w.dtype))
    shape = (rows * pieces, cols // pieces)
    return (*(t.view(shape) for t in tensors), projection, unit, hyper)


def native_layout(p: Tensor) -> bool:
    """Whether the C++ kernel reads ``p`` in place: a plain tensor, contiguous or channels_last
    (dense with dim 0 outermost, so each row is one block of memory). Other dense layouts with
    a rows view take the multi-tensor path."""
    if type(p) not in PLAIN_TYPES:
        return False
    if p.is_contiguous():
        return True
    if p.ndim == 4:
        return p.is_contiguous(memory_format=torch.channels_last)
    if p.ndim == 5:
        return p.is_contiguous(memory_format=torch.channels_last_3d)
    return False


def native_module(p: Tensor) -> Any:
    """The loaded C++ kernel if it steps tensors like ``p`` (CPU, `NATIVE_DTYPES`), else None."""
    if p.device.type != "cpu" or p.dtype not in NATIVE_DTYPES:
        return None
    return _cpu_kernel.ready()


def _on_cpu(group: dict[str, Any]) -> bool:
    return any(p.device.type == "cpu" for p in group["params"])


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
