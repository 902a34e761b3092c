"""Advice in the user's own optimizer arguments, checked by the recurrence (docs/findings.md).

A finding that suggests a change names the argument as the user wrote it (``weight_decay=0.05 →
0.2``) or a drop-in optimizer that accepts the same arguments (``stepsize_lens.SGDP``), and
states the effect `theory.forecast` computes for that change under the run's own recorded lr
schedule and scale-free gradient:

- ``angle_ratio``: the predicted angular update with the change over the one as run, geometric
  mean over the middle third of the run's steps (records with the lr at 10% of its peak or
  more), median over the scale-invariant tensors;
- ``equilibrium_step``: the first step *within the run* at which the changed recurrence brings
  the effective step within 10% of equilibrium after a relaxation time
  (`equilibrium.equilibrium_steps`), or None.

Advice is given only when the effect is material — the angular update changes by
``Thresholds.material_ratio`` (1.25×) or more, or equilibrium comes within the run where it did
not — and only with values inside `PLAUSIBLE_WEIGHT_DECAY`; weight decays are tried at 2, 4 and
10 times the current value and at the range's top, and the smallest material one is advised
(within `WHAT_IF_STEPS` integrated steps per `find`).
No advice is better than absurd advice: where nothing qualifies, the finding gives none.
"""

from __future__ import annotations

import importlib
import inspect
import math
import sys
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from stepsize_lens.analysis.theory.relaxation import equilibrium_steps

if TYPE_CHECKING:
    from stepsize_lens.analysis.finding import Context
    from stepsize_lens.analysis.theory.families import Hyper
    from stepsize_lens.analysis.theory.forecast import Forecast

PLAUSIBLE_WEIGHT_DECAY: dict[str, tuple[float, float]] = {
    "sgd": (0.0, 5e-3),
    "sgdp": (0.0, 5e-3),
    "adamw": (0.0, 0.5),
    "adamp": (0.0, 0.5),
    "adamc": (0.0, 0.5),
    "lion": (0.0, 5.0),
    "muon": (0.0, 0.5),
}
"""The weight decays advice may propose, per optimizer family (docs/findings.md justifies them:
SGD-like ImageNet/CIFAR recipes use 1e-4 to 5e-4, AdamW recipes 0.01 to 0.3, Lion 3 to 10
times AdamW's). Adam with L2 decay (``torch.optim.Adam``'s weight_decay) gets none: its decay
goes through the normaliser."""
STARTING_WEIGHT_DECAY: dict[str, float] = {
    "sgd": 5e-4,
    "sgdp": 5e-4,
    "adamw": 0.05,
    "adamp": 0.05,
    "adamc": 0.05,
    "lion": 0.5,
    "muon": 0.1,
}
"""The first weight decay tried where the run has none on its scale-invariant tensors."""
FACTORS: tuple[float, ...] = (2.0, 4.0, 10.0)
SWITCHES: dict[str, str] = {"sgd": "SGDP", "adamw": "AdamP"}
"""Drop-in projected optimizers (Heo et al. 2021) advised for a family's norm growth."""
CARRIED: tuple[str, ...] = (
    "lr",
    "momentum",
    "dampening",
    "weight_decay",
    "nesterov",
    "betas",
    "eps",
)
"""The arguments a switch names as carried over (when the run recorded them)."""
TRUSTED_MODULES: tuple[str, ...] = ("torch", "stepsize_lens", "timm", "lion_pytorch")
WHAT_IF_STEPS = 2_000_000
"""Optimizer steps the what-if recurrences of one `find` may integrate in all (each costs about
40 µs per step over a network's tensors, docs/design.md §5.9): a run of a million steps gets
two tries, one of 100,000 steps twenty, and changes past the budget are not advised."""


@dataclass(frozen=True)
class Advice:
    """One change: ``optimizer`` (the class the run recorded), ``argument`` with ``old`` →
    ``new`` (None for a switch), or ``switch_to`` (e.g. ``stepsize_lens.SGDP``) keeping
    ``arguments``; ``effect`` (angle_ratio, equilibrium_step, and for weight decay the
    timescales the run would cover); ``text``: the line shown."""

    optimizer: str
    text: str
    effect: dict[str, Any]
    argument: str | None = None
    old: float | None = None
    new: float | None = None
    switch_to: str | None = None
    arguments: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer,
            "argument": self.argument,
            "old": self.old,
            "new": self.new,
            "switch_to": self.switch_to,
            "arguments": list(self.arguments),
            "effect": dict(self.effect),
            "text": self.text,
        }


# --------------------------------------------------------------------------------------------
# The optimizer the run recorded
# --------------------------------------------------------------------------------------------


def optimizer_info(run: Any) -> tuple[str, str, dict[str, Any]]:
    """(class name, module, recorded defaults) of the run's optimizer."""
    info = run.meta.get("optimizer") or {}
    defaults = info.get("defaults") or {}
    return (
        str(info.get("class") or ""),
        str(info.get("module") or ""),
        dict(defaults) if isinstance(defaults, dict) else {},
    )


def optimizer_class(run: Any) -> type | None:
    """The optimizer class the run recorded, when its module is already imported or belongs
    to a package this library knows (torch, stepsize_lens, timm, lion_pytorch); else None (no
    module named by a file is imported blindly)."""
    name, module, _ = optimizer_info(run)
    if not name or not module:
        return None
    loaded = sys.modules.get(module)
    if loaded is None and module.split(".")[0] in TRUSTED_MODULES:
        try:
            loaded = importlib.import_module(module)
        except Exception:  # noqa: BLE001 - an optional package that is not installed
            return None
    found = getattr(loaded, name, None) if loaded is not None else None
    return found if isinstance(found, type) else None


def arguments_of(cls: type | None) -> dict[str, inspect.Parameter]:
    """The constructor parameters of ``cls`` ({} when unknown)."""
    if cls is None:
        return {}
    try:
        return dict(inspect.signature(cls).parameters)
    except (TypeError, ValueError):
        return {}


def accepts(run: Any, argument: str) -> bool:
    """Whether the run's optimizer takes ``argument``, by its constructor's signature; False
    when the class cannot be found (no advice names an argument nobody checked)."""
    return argument in arguments_of(optimizer_class(run))


# --------------------------------------------------------------------------------------------
# The effect of a change, by the recurrence under the recorded schedule
# --------------------------------------------------------------------------------------------


def what_if(
    ctx: Context, key: tuple[Any, ...], family: str | None = None, change: Any = None
) -> dict[str, Any] | None:
    """The `effect` of `theory.forecast` of the run with the hyperparameters changed, cached on
    the context under ``key`` (several findings may try the same change)."""
    from stepsize_lens.analysis.theory import forecast

    cache = ctx.cache.setdefault("what_if", {})
    if key not in cache:
        steps = ctx.forecast.steps
        span = int(steps[-1] - steps[0]) + 1 if steps.size else 0
        spent = ctx.cache.get("what_if_steps", 0)
        if spent + span > WHAT_IF_STEPS:
            return None  # over the budget: this change is not tried (no advice from it)
        ctx.cache["what_if_steps"] = spent + span
        changed = forecast(ctx.run, ctx.classes, family or ctx.family.name, change=change)
        cache[key] = effect(ctx, changed)
    found = cache[key]
    return dict(found) if found is not None else None


def _middle(fc: Forecast) -> np.ndarray:
    steps = fc.steps.astype(np.float64)
    with np.errstate(all="ignore"):
        lr = np.nanmedian(np.where(np.isfinite(fc.lr), fc.lr, np.nan), axis=1)
    peak = np.nanmax(lr) if np.isfinite(lr).any() else np.nan
    useful = np.nan_to_num(lr, nan=0.0) >= 0.1 * peak
    first, span = steps[0], steps[-1] - steps[0]
    middle = useful & (steps >= first + span / 3) & (steps <= first + 2 * span / 3)
    return middle if middle.any() else useful


def effect(ctx: Context, changed: Forecast) -> dict[str, Any] | None:
    """``angle_ratio`` (changed / as run, module docstring), ``equilibrium_step`` (within the
    run, or None) and ``equilibrium_step_as_run`` (the same without the change); None when the
    two forecasts share no tensor."""

    base = ctx.forecast
    if base.empty or changed.empty:
        return None
    common = np.intersect1d(base.tensor_index(), changed.tensor_index())
    if common.size == 0 or base.steps.shape != changed.steps.shape:
        return None
    b = np.searchsorted(base.tensor_index(), common)
    c = np.searchsorted(changed.tensor_index(), common)
    rows = _middle(base)
    with np.errstate(all="ignore"):
        log_ratio = np.log(changed.angle[np.ix_(rows, c)] / base.angle[np.ix_(rows, b)])
        per_tensor = np.exp(np.nanmean(np.where(np.isfinite(log_ratio), log_ratio, np.nan), axis=0))
    per_tensor = per_tensor[np.isfinite(per_tensor)]
    if per_tensor.size == 0:
        return None
    return {
        "angle_ratio": float(np.median(per_tensor)),
        "equilibrium_step": _reached_step(replace(ctx, forecasted=changed, cache={}), c),
        "equilibrium_step_as_run": _reached_step(ctx, b, equilibrium_steps(ctx)),
    }


def _reached_step(ctx: Context, columns: np.ndarray, eq: dict | None = None) -> int | None:
    """The median step at which the forecast's tensors come within tolerance of equilibrium,
    when at least half of them do within the run; else None."""

    eq = eq if eq is not None else equilibrium_steps(ctx)
    reached = eq["reached"][columns]
    if reached.mean() < 0.5:
        return None
    return int(np.median(eq["step"][columns][reached]))


def material(ctx: Context, found: dict[str, Any] | None) -> bool:
    """The change moves the mid-run angular update by the material ratio or more, or brings
    equilibrium within the run where it did not come."""
    if found is None:
        return False
    ratio = found["angle_ratio"]
    big = abs(math.log(ratio)) >= math.log(ctx.thresholds.material_ratio) if ratio > 0 else False
    sooner = found["equilibrium_step"] is not None and found["equilibrium_step_as_run"] is None
    return bool(big or sooner)


def effect_text(found: dict[str, Any]) -> str:
    ratio = found["angle_ratio"]
    size = f"{ratio:.3g}x larger" if ratio >= 1 else f"{1 / ratio:.3g}x smaller"
    text = f"the angular update at mid-run would be {size}"
    if found["equilibrium_step"] is not None:
        text += f", equilibrium reached by step {found['equilibrium_step']:,}"
    return text + " (the recurrence under this run's recorded schedule)"


# --------------------------------------------------------------------------------------------
# The advice
# --------------------------------------------------------------------------------------------


def _value(value: float) -> str:
    return f"{value:.3g}"


def weight_decay_advice(ctx: Context, tensors: np.ndarray) -> Advice | None:
    """A larger ``weight_decay`` for the groups of ``tensors`` (indices into the run's tensors):
    the smallest of 2, 4, 10 times the current value (or, where it is 0, the family's starting
    value and 2 and 4 times that) and the plausible maximum whose effect is material; None if
    none is, or the optimizer takes no ``weight_decay``."""
    family = ctx.family.name
    if family not in PLAUSIBLE_WEIGHT_DECAY or not accepts(ctx.run, "weight_decay"):
        return None
    low, high = PLAUSIBLE_WEIGHT_DECAY[family]
    groups = np.unique(ctx.groups[tensors])
    current = float(np.max(ctx.wd_last[np.isin(ctx.groups, groups)]))
    if current > 0:
        candidates = [current * f for f in FACTORS] + [high]
    else:
        start = STARTING_WEIGHT_DECAY[family]
        candidates = [start, 2 * start, 4 * start, high]
    candidates = sorted({c for c in candidates if current < c <= high and c >= low})
    optimizer = optimizer_info(ctx.run)[0]
    for value in candidates:
        change = _set_weight_decay(ctx, groups, value)
        found = what_if(ctx, ("weight_decay", tuple(groups.tolist()), value), change=change)
        if not material(ctx, found):
            continue
        assert found is not None
        found["weight_decay"] = value
        text = (
            f"`weight_decay={_value(current)} → {_value(value)}`"
            + (" on those tensors' param group(s)" if len(set(ctx.groups.tolist())) > 1 else "")
            + f": {effect_text(found)}"
        )
        return Advice(optimizer, text, found, "weight_decay", current, value)
    return None


def _set_weight_decay(ctx: Context, groups: np.ndarray, value: float) -> Any:
    columns = np.isin(ctx.groups, groups)

    def change(h: Hyper) -> Hyper:
        wd = np.array(np.broadcast_to(h.weight_decay, np.shape(h.lr)), dtype=np.float64)
        wd[:, columns] = value
        return replace(h, weight_decay=wd)

    return change


def switch_advice(ctx: Context) -> Advice | None:
    """The projected drop-in (`SWITCHES`: SGD → SGDP, AdamW → AdamP) with the same arguments,
    when every argument the user set is one it takes, and its effect is material."""
    family = ctx.family.name
    target_name = SWITCHES.get(family)
    if target_name is None:
        return None
    from stepsize_lens import optim

    target = getattr(optim, target_name)
    target_params = arguments_of(target)
    source_params = arguments_of(optimizer_class(ctx.run))
    if not source_params:  # the run's optimizer cannot be checked: no claim about its arguments
        return None
    _, _, defaults = optimizer_info(ctx.run)
    for key, value in defaults.items():  # an argument set away from its default must carry
        if key in target_params or key == "params":
            continue
        default = source_params.get(key)
        if default is None or default.default is inspect.Parameter.empty:
            return None
        if value != default.default:
            return None
    wd_ratio = target_params["wd_ratio"].default

    def change(h: Hyper) -> Hyper:
        return replace(h, wd_ratio=np.full(np.shape(h.lr), float(wd_ratio)))

    found = what_if(ctx, ("switch", target_name), family=target_name.lower(), change=change)
    if not material(ctx, found):
        return None
    assert found is not None
    carried = tuple(k for k in CARRIED if k in defaults and k in target_params)
    optimizer = optimizer_info(ctx.run)[0]
    text = (
        f"switch to `stepsize_lens.{target_name}` with the same arguments "
        f"({', '.join(carried)}): {effect_text(found)}"
    )
    switch = f"stepsize_lens.{target_name}"
    return Advice(optimizer, text, found, switch_to=switch, arguments=carried)


def advice_dicts(*items: Advice | None) -> tuple[dict[str, Any], ...]:
    return tuple(a.to_dict() for a in items if a is not None)
