"""Predictions that follow the recorded schedule (docs/design.md §5.9): the per-step recurrence
of each tensor's optimizer family, integrated from the first record to the last with the lr and
weight decay recorded per param group, next to what was measured.

    forecast(run, classes=None, family=None)               -> Forecast (per record and tensor)
    predict(run, by="class", classes=None, metrics=...)    -> tidy DataFrame
    run_hyper(run, classes, family)                        -> Hyper [records, tensors]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from stepsize_lens.analysis.sets import (
    is_invariant,
    set_name,
    starts_at_zero,
    tensor_classes,
    tensor_group_field,
    tensor_sets,
)
from stepsize_lens.analysis.theory.families import Family, Hyper, family_entry, family_of_optimizer
from stepsize_lens.analysis.theory.recurrence import Dynamics, equilibrium, integrate

if TYPE_CHECKING:
    import pandas as pd

    from stepsize_lens.run import Run

METRICS: tuple[str, ...] = ("angular_update", "weight_norm", "grad_norm")
"""What `predict` predicts by default: the effective step, the norm and the gradient norm
(g̃/‖w‖ with the measured scale-free g̃ and the predicted ‖w‖)."""
COLUMNS: tuple[str, ...] = ("step", "set", "metric", "predicted", "measured", "equilibrium")


def optimizer_family(run: Run) -> str:
    """The theory family of a run's optimizer: a name of `families.FAMILY_TABLE` or unknown.

    From ``meta["optimizer"]`` (class, defaults and module), by `families.family_of_optimizer`:
    torch's Adam with ``decoupled_weight_decay=True`` is AdamW, timm's AdamW with
    ``corrected_weight_decay=True`` is AdamC, only torch's Muon is Muon.
    """
    info = run.meta.get("optimizer") or {}
    return family_of_optimizer(
        str(info.get("class") or ""), info.get("defaults") or {}, str(info.get("module") or "")
    )


def _defaults(run: Run) -> Mapping[str, Any]:
    info = run.meta.get("optimizer") or {}
    defaults = info.get("defaults") or {}
    return defaults if isinstance(defaults, Mapping) else {}


def projected_views(run: Run, classes: pd.Series) -> np.ndarray:
    """[R, T] bool: did AdamP/SGDP project this tensor at this record (where the run does not
    say: is it scale-invariant)."""
    applied = run.view("applied_view")
    return np.where(applied >= 0, applied > 0, is_invariant(classes)[None, :])


def _number(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return np.nan
    return number if np.isfinite(number) and number > 0 else np.nan


def max_lr(run: Run) -> np.ndarray:
    """[R, T] η_max for AdamC's correction: a recorded ``max_lr`` group field, else the
    optimizer defaults' ``max_lr`` (stepsize_lens.AdamC) or ``max_lr_snapshot`` (timm), else the
    largest lr recorded in the tensor's group (torch schedulers store the peak of warmup +
    cosine or WSD as each group's ``initial_lr``, and the largest recorded lr is that peak)."""
    lr = tensor_group_field(run, "lr", np.nan)
    keep = ~run.skipped.astype(bool)
    with np.errstate(all="ignore"):
        peak = np.nanmax(np.where(keep[:, None], lr, np.nan), axis=0) if keep.any() else lr[0]
    defaults = _defaults(run)
    given = _number(defaults.get("max_lr", defaults.get("max_lr_snapshot")))
    fallback = np.broadcast_to(given if np.isfinite(given) else peak, lr.shape)
    if "max_lr" in run.group_field_names:
        recorded = tensor_group_field(run, "max_lr", np.nan)
        return np.where(np.isfinite(recorded) & (recorded > 0), recorded, fallback)
    return np.array(fallback)


def corrected_tensors(run: Run, classes: pd.Series, family: str) -> np.ndarray:
    """[T] bool: the tensors whose decoupled decay AdamC (or timm's ``corrected_weight_decay``)
    scales by η_t/η_max. stepsize_lens.AdamC: its ``normalized`` default, True (all), False
    (none) or "auto" (the scale-invariant tensors with ndim >= 2, as its own test decides);
    timm: every tensor."""
    defaults = _defaults(run)
    num = run.num_tensors
    if defaults.get("corrected_weight_decay"):
        return np.ones(num, bool)
    if family != "adamc":
        return np.zeros(num, bool)
    setting = defaults.get("normalized", "auto")
    if setting is True or setting is False:
        return np.full(num, bool(setting))
    return is_invariant(classes) & (run.param_values("ndim", 0.0) >= 2)


def run_hyper(run: Run, classes: pd.Series, family: str) -> Hyper:
    """The `Hyper` of every record and tensor ([R, T] arrays) a family's formulas read."""
    entry = family_entry(family)
    field = lambda name, default: tensor_group_field(run, name, default)  # noqa: E731
    lr = field("lr", np.nan)
    weight = run.metric("weight_norm").astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        scale_free = weight * run.metric("grad_norm").astype(np.float64)
    projected = projected_views(run, classes) if entry.projects else np.zeros(lr.shape, bool)
    rows = np.full(run.num_tensors, np.nan)
    cols = np.full(run.num_tensors, np.nan)
    for i, shape in enumerate(run.param_column("shape") or []):
        if shape is not None and len(shape) == 2:
            rows[i], cols[i] = shape
    return Hyper(
        lr=lr,
        weight_decay=field("weight_decay", 0.0),
        momentum=field("momentum", 0.0),
        dampening=field("dampening", 0.0),
        beta1=field("beta1", 0.9),
        wd_ratio=field("wd_ratio", 1.0),
        projected=projected,
        scale_free_grad_norm=scale_free,
        numel=run.numel.astype(np.float64)[None, :],
        beta2=field("beta2", 0.999),
        eps=field("eps", 1e-8),
        nesterov=field("nesterov", 0.0) > 0,
        rows=rows[None, :],
        cols=cols[None, :],
        max_lr=max_lr(run),
        corrected=corrected_tensors(run, classes, family)[None, :],
        defaults=_defaults(run),
    ).arrays()


def _select(h: Hyper, records: np.ndarray, tensors: np.ndarray) -> Hyper:
    def cut(value: Any) -> Any:
        return value[np.ix_(records, tensors)] if isinstance(value, np.ndarray) else value

    return replace(h, **{f.name: cut(getattr(h, f.name)) for f in fields(h)})


def _constant_rows(dyn: Dynamics) -> Dynamics:
    """A per-record `Dynamics` whose fields do not change between records, as one row."""
    changes = False
    for f in fields(dyn):
        value = getattr(dyn, f.name)
        if f.name != "output" and np.ndim(value) == 2 and value.shape[0] > 1:
            first = value[:1]
            same = (
                (value == first) | (np.isnan(value) & np.isnan(first))
                if value.dtype != bool
                else value == first
            )
            changes |= not bool(same.all())
    return dyn if changes else dyn.at(0)


def _fill_gaps(values: np.ndarray) -> np.ndarray:
    """Each column's NaNs replaced by linear interpolation over the finite values (held at the
    ends); columns without a finite value stay NaN."""
    out = np.array(values, dtype=np.float64)
    index = np.arange(out.shape[0])
    for j in range(out.shape[1]):
        ok = np.isfinite(out[:, j])
        if ok.any() and not ok.all():
            out[:, j] = np.interp(index, index[ok], out[ok, j])
    return out


@dataclass
class Forecast:
    """The recurrence of a run's tensors at its records (`forecast`).

    ``family``: the `Family` used; ``records`` [R] bool, the non-skipped records predicted
    (``steps`` their steps); ``tensors`` [T] bool, the tensors predicted: scale-invariant, covered
    by the family (Muon: 2-D), not starting at zero, with a finite first norm; ``classes`` of all
    tensors. Arrays [R', T'] over those records and tensors: ``sq``, ``angle``, ``grad``
    (predicted ‖w‖², angular update, ‖g‖), ``measured_norm``, ``measured_angle``,
    ``measured_grad``, ``eq_angle`` / ``eq_sq`` (the constant-lr equilibrium at each record's
    hyperparameters; NaN without weight decay), ``rate`` (its relaxation rate per step),
    ``lr``, ``decay`` (λ' the weight decay acting per unit lr there), ``scale_free`` (measured
    g̃). ``order`` / ``exponent``: see `recurrence.Equilibrium`; ``power``: Δθ ∝ η/‖w‖^power.
    ``reason``: why nothing is predicted (empty when something is).
    """

    family: Family
    records: np.ndarray
    tensors: np.ndarray
    steps: np.ndarray
    classes: Any
    sq: np.ndarray
    angle: np.ndarray
    grad: np.ndarray
    measured_norm: np.ndarray
    measured_angle: np.ndarray
    measured_grad: np.ndarray
    eq_angle: np.ndarray
    eq_sq: np.ndarray
    rate: np.ndarray
    lr: np.ndarray
    decay: np.ndarray
    scale_free: np.ndarray
    order: float = 1.0
    exponent: float = 0.5
    power: int = 1
    reason: str = ""

    @property
    def empty(self) -> bool:
        return not self.tensors.any() or not self.records.any()

    def tensor_index(self) -> np.ndarray:
        """Indices (into the run's tensors) of the predicted tensors."""
        return np.flatnonzero(self.tensors)


def _empty(run: Run, entry: Family, classes: Any, reason: str) -> Forecast:
    none = np.zeros((0, 0))
    return Forecast(
        entry,
        np.zeros(run.num_records, bool),
        np.zeros(run.num_tensors, bool),
        np.zeros(0, np.int64),
        classes,
        *(none for _ in range(12)),
        reason=reason,
    )


# Integrating the recurrence costs one step per optimizer step up to the run's last step
# (`recurrence.integrate`), whatever the number of records: a bound, so that a run file that
# claims step 2^26 or 2^60 (a flipped bit, say) gives "no prediction" instead of hanging the
# report for hours. A real run of 10 million steps takes minutes to integrate.
MAX_INTEGRATED_STEPS = 10_000_000


def forecast(
    run: Run,
    classes: pd.Series | Mapping[str, str] | None = None,
    family: str | None = None,
    change: Callable[[Hyper], Hyper] | None = None,
) -> Forecast:
    """Integrate each scale-invariant tensor's recurrence along the recorded schedule.

    ``change``: maps the recorded `Hyper` ([records, tensors]) to the one to integrate instead,
    for "what if" predictions under the same schedule (`analysis.advice`: another weight decay,
    another optimizer family with its own defaults); None integrates what was recorded.

    From the first non-skipped record's measured ‖w‖, every optimizer step up to the last record
    follows `recurrence.step` with that record's family dynamics and the lr and weight decay of
    the tensor's param group; g̃ = ‖w‖‖g‖ is the measured scale-free gradient norm (it drives
    the SGD family's steps and Adam's second moment; Lion and Muon do not depend on it). Between
    records the lr, the weight decay and g̃ are interpolated linearly in the step
    (`recurrence.integrate`). The forecast covers the tensors the theory is about: invariance
    class channel or layer, covered by the family, not starting at zero. A run that spans more
    than `MAX_INTEGRATED_STEPS` optimizer steps gets no prediction (its note says why).
    """
    cls = tensor_classes(run, classes)
    name = family or optimizer_family(run)
    entry = family_entry(name)
    if not entry.predicts:
        optimizer = str((run.meta.get("optimizer") or {}).get("class") or "unknown")
        return _empty(run, entry, cls, f"no derived prediction for {optimizer} ({entry.name})")
    records = ~run.skipped.astype(bool)
    if records.sum() == 0:
        return _empty(run, entry, cls, "no non-skipped records")
    h_all = run_hyper(run, cls, name)
    if change is not None:
        h_all = change(h_all)
    weight = run.metric("weight_norm").astype(np.float64)
    covered = entry.covered(h_all)[records].all(axis=0)
    first = weight[records][0]
    tensors = (
        is_invariant(cls)
        & covered
        & ~starts_at_zero(weight[records])
        & np.isfinite(first)
        & (first > 0)
    )
    if not tensors.any():
        return _empty(run, entry, cls, "no scale-invariant tensor the theory covers")
    rec_idx, ten_idx = np.flatnonzero(records), np.flatnonzero(tensors)
    h = _select(h_all, rec_idx, ten_idx)
    scale_free = _fill_gaps(h.scale_free_grad_norm)
    if entry.dynamics is not None and entry.base in ("sign", "orthogonal"):
        scale_free = np.where(np.isfinite(scale_free), scale_free, 1.0)  # scale-free updates
    h = replace(h, scale_free_grad_norm=scale_free)
    dyn = _constant_rows(entry.dynamics(h))  # type: ignore[misc]
    coupled, decoupled = entry.decay(h)  # type: ignore[misc]
    steps = run.steps[records]
    # the steps integrate() walks: up to the first record (warm-up), then every gap
    walked = float(steps[0]) + float(np.clip(np.diff(steps.astype(np.float64)), 0, None).sum())
    if not walked <= MAX_INTEGRATED_STEPS:
        return _empty(
            run,
            entry,
            cls,
            f"the run spans {walked:,.0f} optimizer steps, more than the "
            f"{MAX_INTEGRATED_STEPS:,} the recurrence integrates",
        )
    trajectory = integrate(steps, dyn, h.lr, coupled, decoupled, scale_free**2, first[ten_idx] ** 2)
    eq = equilibrium(dyn, h.lr, coupled, decoupled, scale_free**2)
    pick = lambda name: run.metric(name)[np.ix_(rec_idx, ten_idx)].astype(np.float64)  # noqa: E731
    with np.errstate(invalid="ignore", divide="ignore"):
        grad = np.sqrt(trajectory.grad_sq)
    return Forecast(
        family=entry,
        records=records,
        tensors=tensors,
        steps=steps,
        classes=cls,
        sq=trajectory.sq,
        angle=trajectory.angle,
        grad=grad,
        measured_norm=pick("weight_norm"),
        measured_angle=pick("angular_update"),
        measured_grad=pick("grad_norm"),
        eq_angle=eq.angle,
        eq_sq=eq.sq,
        rate=eq.rate * np.ones_like(h.lr),
        lr=h.lr,
        decay=eq.decay * np.ones_like(h.lr),
        scale_free=scale_free,
        order=eq.order,
        exponent=eq.exponent,
        power=dyn.power,
    )


def predict(
    run: Run,
    by: str = "class",
    classes: pd.Series | Mapping[str, str] | None = None,
    metrics: Sequence[str] = METRICS,
    family: str | None = None,
    forecasted: Forecast | None = None,
) -> pd.DataFrame:
    """Predicted against measured, per record and set of tensors, following the schedule.

    Returns a tidy DataFrame with columns ``step``, ``set``, ``metric`` (of ``metrics``:
    ``angular_update``, ``weight_norm``, ``grad_norm``), ``predicted``, ``measured`` and
    ``equilibrium`` (the constant-lr equilibrium at that record's hyperparameters; NaN for the
    gradient norm and without weight decay). ``forecasted``: this run's `forecast`, when the
    caller has it (a report computes it once). A set's value is the plain mean over its tensors
    of the per-tensor values. ``by``: ``class`` (channel / layer), ``group``, ``tensor``,
    ``invariant`` or ``all`` (`sets.tensor_sets`), restricted to the tensors `forecast`
    predicts (scale-invariant ones the family covers).

    How: `forecast`: the exact per-step recurrence of the family (docs/design.md §5.9) from the
    first record's measured ‖w‖, driven by the lr and weight decay recorded per param group at
    each record (warmup, cosine, WSD, step schedules, any LRScheduler) and by the measured
    scale-free gradient norm g̃ = ‖w‖‖g‖; every step between two records is integrated too,
    with η, λ and g̃ interpolated linearly between them (a jump between records is smeared over
    that gap). An optimizer family without a derived prediction (`families.Family.predicts`)
    gives an empty frame: it is left out rather than guessed.
    """
    import pandas as pd

    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        raise ValueError(f"predict knows the metrics {METRICS}, not {unknown}")
    fc = forecasted if forecasted is not None else forecast(run, classes, family)
    if fc.empty:
        return pd.DataFrame({name: [] for name in COLUMNS})
    columns = {
        "angular_update": (fc.angle, fc.measured_angle, fc.eq_angle),
        "weight_norm": (np.sqrt(fc.sq), fc.measured_norm, np.sqrt(fc.eq_sq)),
        "grad_norm": (fc.grad, fc.measured_grad, np.full_like(fc.grad, np.nan)),
    }
    index = fc.tensor_index()
    frames = []
    for key, members in tensor_sets(run, by, fc.classes).items():
        local = np.flatnonzero(np.isin(index, members))
        if local.size == 0:
            continue
        for metric in metrics:
            predicted, measured, eq = (_mean(x[:, local]) for x in columns[metric])
            frames.append(
                pd.DataFrame(
                    {
                        "step": fc.steps,
                        "set": set_name(by, key),
                        "metric": metric,
                        "predicted": predicted,
                        "measured": measured,
                        "equilibrium": eq,
                    }
                )
            )
    if not frames:
        return pd.DataFrame({name: [] for name in COLUMNS})
    return pd.concat(frames, ignore_index=True)


def _mean(values: np.ndarray) -> np.ndarray:
    finite = np.isfinite(values)
    count = finite.sum(axis=1)
    total = np.where(finite, values, 0.0).sum(axis=1)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)
