"""Tidy and wide pandas frames of a run: per tensor, per param group, per invariance class.

A *set* of tensors is what a row of a reduced frame stands for: one tensor (``by="tensor"``),
one param group (``"group"``), one invariance class (``"class"``: channel / layer / none, from
`stepsize_lens.invariance.classify_tensors` unless ``classes`` is given), the scale-invariant
tensors together (``"invariant"``: class channel or layer) or the whole model (``"all"``).
Reducers over the tensors of a set, per record, ignoring NaN:

- ``mean``: (1/n) Σ x_i
- ``weighted``: Σ numel_i·x_i / Σ numel_i (the parameter-weighted mean)
- ``median``

How a set's figure is formed (`reduce`, `set_mean`, `summary.summarize`, and the lens's live
`recording.record.Record.key_scalars`):

- tensors that have *no gradient* at any non-skipped record (frozen with
  ``requires_grad=False``, or never used: `frozen_tensors`) and tensors that *start at zero*
  (`starts_at_zero`) are left out of the set's figures unless every tensor of the set is one
  of them (`left_out_of_means`): the first would average Δθ = 0 into the set, the second
  ratios to a norm that starts undefined;
- ``effective_lr`` (η/‖w‖²) of a set of several tensors is reduce(η) / reduce(‖w‖²) over the
  tensors where both are finite (`set_effective_lr`): the set's weights taken as one vector.
  The reduction of the per-tensor ratios would be dominated by the tensor with the smallest
  norm: one vanishing bias (a bias before a BatchNorm decays away) drives it up a
  hundredfold while the set's norm grows. Every other metric is the reduction of its
  per-tensor values.

Skipped records (a GradScaler skipped the step; every metric is NaN) are left out unless
``include_skipped=True``. Frames always carry a ``run`` column (the run's label) so frames of
several runs concatenate; `stack` does that for a list of runs, with an ``x`` column holding the
step or the user-logged epoch (`epochs`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from stepsize_lens._schema import CLASSES, INVARIANT_CLASSES, VIEWS

if TYPE_CHECKING:
    import pandas as pd

    from stepsize_lens.run import Run

BY: tuple[str, ...] = ("tensor", "group", "class", "invariant", "all")
REDUCERS: tuple[str, ...] = ("mean", "weighted", "median")


def default_window(num_records: int) -> int:
    """Records averaged for 'initial', 'final' and 'early' levels: max(1, min(50, n // 20))."""
    return max(1, min(50, num_records // 20))


def tensor_classes(
    run: Run, classes: pd.Series | Mapping[str, str] | None = None, delta: float | None = None
) -> pd.Series:
    """The invariance class of every tensor (Series indexed by tensor name, values channel /
    layer / none). ``classes`` overrides (missing names become ``none``); default:
    `stepsize_lens.invariance.classify_tensors(run, delta)`."""
    import pandas as pd

    if classes is None:
        from stepsize_lens.invariance import classify_tensors

        series = classify_tensors(run, delta)
    else:
        series = pd.Series(dict(classes)) if not isinstance(classes, pd.Series) else classes
    out = series.reindex(run.tensor_names).fillna("none").astype(object)
    out.index.name = "tensor"
    out.name = "class"
    return out


def is_invariant(classes: pd.Series | Sequence[str] | np.ndarray) -> np.ndarray:
    """[T] bool: the tensor's class is scale-invariant (one of `_schema.INVARIANT_CLASSES`)."""
    return np.isin(np.asarray(classes, dtype=object), INVARIANT_CLASSES)


def tensor_sets(run: Run, by: str, classes: pd.Series | None = None) -> dict[object, np.ndarray]:
    """Key → tensor indices for ``by`` in `BY`.

    Keys: tensor names, group ints, class names, "invariant" (absent when no tensor is) or
    "all"."""
    if by == "tensor":
        return {name: np.array([i]) for i, name in enumerate(run.tensor_names)}
    if by == "group":
        groups = run.tensor_groups
        return {int(g): np.flatnonzero(groups == g) for g in np.unique(groups)}
    if by == "class":
        names = np.asarray(tensor_classes(run, classes), dtype=object)
        return {c: np.flatnonzero(names == c) for c in CLASSES if (names == c).any()}
    if by == "invariant":
        index = np.flatnonzero(is_invariant(tensor_classes(run, classes)))
        return {"invariant": index} if index.size else {}
    if by == "all":
        return {"all": np.arange(run.num_tensors)}
    raise ValueError(f"by must be one of {BY}, not {by!r}")


def set_name(by: str, key: object) -> str:
    """How a set of `tensor_sets` is named for people: ``group 0`` for param groups, else the key
    (tensor name, class name, "invariant", "all")."""
    return f"group {key}" if by == "group" else str(key)


def tensor_group_field(run: Run, name: str, default: float = np.nan) -> np.ndarray:
    """A param-group hyperparameter per record and tensor, float64 [R, T] (NaN → ``default``)."""
    values = run.group_field(name)
    groups = run.tensor_groups
    if values.shape[1] == 0:
        return np.full((run.num_records, run.num_tensors), default)
    out = values[:, np.clip(groups, 0, values.shape[1] - 1)]
    return np.where(np.isnan(out), default, out)


def reduce_values(
    values: np.ndarray, reducer: str, weights: np.ndarray | None = None
) -> np.ndarray:
    """Reduce [records, k] over axis 1 ignoring NaN (all-NaN rows give NaN)."""
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    if reducer == "mean" or (reducer == "weighted" and weights is None):
        count = finite.sum(axis=1)
        total = np.where(finite, values, 0.0).sum(axis=1)
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)
    if reducer == "weighted":
        w = np.where(
            finite, np.broadcast_to(np.asarray(weights, dtype=np.float64), values.shape), 0.0
        )
        total = (w * np.where(finite, values, 0.0)).sum(axis=1)
        mass = w.sum(axis=1)
        return np.where(mass > 0, total / np.where(mass > 0, mass, 1.0), np.nan)
    if reducer == "median":
        out = np.full(values.shape[0], np.nan)
        rows = finite.any(axis=1)
        if rows.any():
            out[rows] = np.nanmedian(np.where(finite, values, np.nan)[rows], axis=1)
        return out
    raise ValueError(f"reducer must be one of {REDUCERS}, not {reducer!r}")


def starts_at_zero(weight_norm: np.ndarray) -> np.ndarray:
    """[T] bool: the first finite value of each column of ``weight_norm`` [R, T] is 0."""
    finite = np.isfinite(weight_norm)
    if weight_norm.shape[0] == 0:
        return np.zeros(weight_norm.shape[1], dtype=bool)
    first = np.argmax(finite, axis=0)
    values = weight_norm[first, np.arange(weight_norm.shape[1])]
    return finite.any(axis=0) & (values == 0)


def frozen_tensors(run: Run) -> np.ndarray:
    """[T] bool: tensors that had no gradient at any non-skipped record where they existed
    (finite ‖w‖): frozen, or never used. A record shows no gradient as a NaN ‖g‖ with Δ = 0,
    or with any Δ where the params table says ``requires_grad`` was False (an optimizer that
    decays every tensor moves frozen ones too); a NaN ‖g‖ with Δ ≠ 0 otherwise is a
    non-finite gradient. Older files, without ``requires_grad``, are read from the data
    alone."""
    keep = ~run.skipped.astype(bool)
    return _frozen(
        run.metric("weight_norm")[keep],
        run.metric("grad_norm")[keep],
        run.metric("update_norm")[keep],
        _requires_grad(run),
    )


def _requires_grad(run: Run) -> np.ndarray:
    """[T] float: 1 / 0 where the params table knows ``requires_grad``, NaN where it does not."""
    column = run.param_column("requires_grad") or [None] * run.num_tensors
    return np.array([np.nan if v is None else float(bool(v)) for v in column], dtype=np.float64)


def _frozen(
    weight: np.ndarray, grad: np.ndarray, update: np.ndarray, requires_grad: np.ndarray
) -> np.ndarray:
    alive = np.isfinite(weight)
    with np.errstate(invalid="ignore"):
        no_gradient = np.isnan(grad) & ((update == 0) | (requires_grad == 0.0))
    return alive.any(axis=0) & ~(alive & ~no_gradient).any(axis=0)


def left_out_of_means(run: Run, include_skipped: bool = False) -> np.ndarray:
    """[T] bool: tensors a set's figures leave out (module docstring): frozen or unused
    (`frozen_tensors`) or starting at zero (`starts_at_zero`, over the records kept)."""
    keep = _record_mask(run, include_skipped)
    return frozen_tensors(run) | starts_at_zero(run.metric("weight_norm")[keep])


def measured(index: np.ndarray, left_out: np.ndarray) -> np.ndarray:
    """The tensors of a set (indices) its figures are formed from: ``index`` without the
    ``left_out`` ones, unless that leaves none."""
    kept = index[~left_out[index]]
    return kept if kept.size else index


def set_effective_lr(
    lr: np.ndarray,
    weight_norm: np.ndarray,
    reducer: str = "mean",
    weights: np.ndarray | None = None,
) -> np.ndarray:
    """η/‖w‖² of a set per record, [R], from η and ‖w‖ [R, k] of its k tensors:
    reduce(η) / reduce(‖w‖²) over the tensors where both are finite (module docstring); NaN
    where none is or the reduced ‖w‖² is 0. ``reducer`` and ``weights`` as `reduce_values`."""
    lr = np.asarray(lr, dtype=np.float64)
    squared = np.asarray(weight_norm, dtype=np.float64) ** 2
    both = np.isfinite(lr) & np.isfinite(squared)
    numerator = reduce_values(np.where(both, lr, np.nan), reducer, weights)
    denominator = reduce_values(np.where(both, squared, np.nan), reducer, weights)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(
            denominator > 0, numerator / np.where(denominator > 0, denominator, 1), np.nan
        )


def _set_values(
    run: Run,
    name: str,
    index: np.ndarray,
    keep: np.ndarray,
    reducer: str,
    arrays: Mapping[str, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(the set's figure [R], the tensors with a finite value [R]) of metric ``name`` over the
    tensors ``index`` (already `measured`) at the records ``keep``."""
    block = (arrays[name] if arrays is not None and name in arrays else run.metric(name)[keep])[
        :, index
    ]
    numel = run.numel[index]
    if name == "effective_lr" and index.size > 1:
        weight = run.metric("weight_norm")[keep][:, index]
        lr = tensor_group_field(run, "lr")[keep][:, index]
        both = np.isfinite(lr) & np.isfinite(weight)
        return set_effective_lr(lr, weight, reducer, numel), both.sum(axis=1)
    return reduce_values(block, reducer, numel), np.isfinite(block).sum(axis=1)


def _record_mask(run: Run, include_skipped: bool) -> np.ndarray:
    return np.ones(run.num_records, bool) if include_skipped else ~run.skipped.astype(bool)


def tensor_frame(
    run: Run,
    metrics: Sequence[str] | None = None,
    form: str = "tidy",
    classes: pd.Series | Mapping[str, str] | None = None,
    include_skipped: bool = False,
) -> pd.DataFrame:
    """Every recorded metric per record and tensor, with the tensor's group, class and numel.

    ``form="tidy"``: columns run, step, tensor, group, class, numel, metric, value (for seaborn).
    ``form="wide"``: run, step, tensor, group, class, numel, skipped, a column per metric,
    test_view and applied_view.
    """
    import pandas as pd

    names = list(metrics) if metrics is not None else list(run.metric_names)
    keep = _record_mask(run, include_skipped)
    num_records = int(keep.sum())
    cls = np.asarray(tensor_classes(run, classes), dtype=object)
    base = {
        "run": run.label,
        **run.record_columns(keep),
        "class": np.tile(cls, num_records),
        "numel": np.tile(run.numel.astype(np.int64), num_records),
    }
    if form == "wide":
        columns = dict(base)
        columns["skipped"] = np.repeat(run.skipped[keep], run.num_tensors)
        for name in names:
            columns[name] = run.metric(name)[keep].reshape(-1)
        for view in VIEWS:
            columns[view] = run.view(view)[keep].reshape(-1)
        return pd.DataFrame(columns)
    if form != "tidy":
        raise ValueError(f"form must be 'tidy' or 'wide', not {form!r}")
    cells = num_records * run.num_tensors
    tidy = {
        k: (np.tile(v, len(names)) if isinstance(v, np.ndarray) else v) for k, v in base.items()
    }
    tidy["metric"] = np.repeat(np.asarray(names, dtype=object), cells)
    tidy["value"] = (
        np.concatenate([run.metric(n)[keep].reshape(-1) for n in names])
        if names
        else np.array([], np.float32)
    )
    return pd.DataFrame(tidy)


def record_frame(run: Run, columns: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """A frame with one row per record and tensor (tensors varying fastest): the index columns
    step, tensor, group of `Run.record_columns`, then ``columns``, each [R, T] (flattened
    record-major) or [T] (repeated for every record)."""
    import pandas as pd

    frame: dict[str, np.ndarray] = run.record_columns()
    for name, values in columns.items():
        values = np.asarray(values)
        frame[name] = np.tile(values, run.num_records) if values.ndim == 1 else values.reshape(-1)
    return pd.DataFrame(frame)


def set_mean(run: Run, metric: str, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(steps float64, per-record figure of ``metric`` over the set of tensors selected by
    ``mask`` [T]), on the non-skipped records: the plain mean, non-finite values left out (NaN
    where none is finite), formed as every set's figure is (module docstring: frozen and
    zero-start tensors left out, η/‖w‖² from the set's mean squared norm).
    ``set_mean(run, m, is_invariant(tensor_classes(run)))`` is the figure of the
    scale-invariant tensors."""
    keep = _record_mask(run, False)
    index = measured(np.flatnonzero(np.asarray(mask, dtype=bool)), left_out_of_means(run))
    values, _ = _set_values(run, metric, index, keep, "mean")
    return run.steps[keep].astype(np.float64), values


def reduce(
    run: Run,
    by: str = "class",
    metrics: Sequence[str] | None = None,
    reducer: str = "mean",
    form: str = "tidy",
    classes: pd.Series | Mapping[str, str] | None = None,
    include_skipped: bool = False,
) -> pd.DataFrame:
    """Metrics reduced over the tensors of each set (``by``: tensor, group, class or all).

    ``form="tidy"``: columns run, step, <by>, metric, value, tensors (how many tensors had a
    finite value). ``form="wide"``: run, step, <by>, a column per metric.
    Values are float64 whatever the stored precision. Each set's figures are formed as the
    module docstring says (as in `summary.summarize`): frozen tensors and tensors whose first
    recorded norm is 0 are left out unless every tensor of the set is one of them, and a set's
    ``effective_lr`` is reduce(η) / reduce(‖w‖²).
    """
    import pandas as pd

    if reducer not in REDUCERS:
        raise ValueError(f"reducer must be one of {REDUCERS}, not {reducer!r}")
    if form not in ("tidy", "wide"):
        raise ValueError(f"form must be 'tidy' or 'wide', not {form!r}")
    names = list(metrics) if metrics is not None else list(run.metric_names)
    keep = _record_mask(run, include_skipped)
    steps = run.steps[keep]
    sets = tensor_sets(run, by, None if classes is None else tensor_classes(run, classes))
    arrays = {name: run.metric(name)[keep] for name in names}
    left_out = left_out_of_means(run, include_skipped)
    parts = []
    for key, index in sets.items():
        index = measured(index, left_out)
        columns: dict[str, object] = {"run": run.label, "step": steps, by: [key] * len(steps)}
        if form == "wide":
            for name in names:
                columns[name] = _set_values(run, name, index, keep, reducer, arrays)[0]
            parts.append(pd.DataFrame(columns))
            continue
        for name in names:
            values, count = _set_values(run, name, index, keep, reducer, arrays)
            part = dict(columns)
            part["metric"] = name
            part["value"] = values
            part["tensors"] = count
            parts.append(pd.DataFrame(part))
    if not parts:
        empty = ["run", "step", by] + (names if form == "wide" else ["metric", "value", "tensors"])
        return pd.DataFrame(columns=empty)
    return pd.concat(parts, ignore_index=True)


def ema_values(values: np.ndarray, alpha: float) -> np.ndarray:
    """Bias-corrected exponential moving average along axis 0, skipping NaN.

    s_t = Σ_k (1−α)^{t−k} x_k / Σ_k (1−α)^{t−k} over the finite x_k seen so far (NaN before the
    first one). t and k count records, so a NaN adds nothing but still ages the past. α = 1
    returns the values unchanged.
    """
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")
    x = np.asarray(values, dtype=np.float64)
    out = np.empty_like(x)
    num = np.zeros(x.shape[1:])
    den = np.zeros(x.shape[1:])
    for t in range(x.shape[0]):
        finite = np.isfinite(x[t])
        num = (1.0 - alpha) * num + np.where(finite, alpha * np.where(finite, x[t], 0.0), 0.0)
        den = (1.0 - alpha) * den + np.where(finite, alpha, 0.0)
        out[t] = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return out


def ema(
    frame: pd.DataFrame,
    alpha: float = 0.1,
    value: str | Sequence[str] = "value",
    order: str = "step",
    keys: Sequence[str] | None = None,
) -> pd.DataFrame:
    """A copy of ``frame`` with ``value`` column(s) EMA-smoothed (`ema_values`) within each series.

    Series are identified by ``keys`` (default: whichever of run, tensor, group, class, all,
    metric the frame has) and ordered by ``order``.
    """
    values = [value] if isinstance(value, str) else list(value)
    if keys is None:
        keys = [
            c for c in ("run", "tensor", "group", "class", "all", "metric") if c in frame.columns
        ]
    out = frame.sort_values([*keys, order], kind="stable").copy()
    if out.empty:
        return out
    for column in values:
        data = out[column].to_numpy(dtype=np.float64)
        smoothed = np.empty_like(data)
        positions = (
            out.groupby(list(keys), sort=False).indices if keys else {None: np.arange(len(out))}
        )
        for index in positions.values():
            smoothed[index] = ema_values(data[index][:, None], alpha)[:, 0]
        out[column] = smoothed
    return out.sort_index()


def epochs(run: Run, scalar: str = "epoch") -> np.ndarray:
    """Fractional epoch of every record from a user-logged scalar (``lens.log(epoch=e)``).

    Linear interpolation of the logged (step, value) pairs at each record's step; NaN outside
    the logged range. Raises ValueError if the run has no such scalar.
    """
    steps_logged, values_logged = (
        run.scalar(scalar) if scalar in run.scalar_names else (np.zeros(0), np.zeros(0))
    )
    if steps_logged.size == 0:
        known = ", ".join(run.scalar_names) or "none"
        raise ValueError(f"run {run.label!r} has no logged scalar {scalar!r} (logged: {known})")
    xs = steps_logged.astype(np.float64)
    ys = values_logged.astype(np.float64)
    order = np.argsort(xs, kind="stable")
    return interp_inside(run.steps.astype(np.float64), xs[order], ys[order])


def interp_inside(x_new: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Linear interpolation of (x ascending, y) at ``x_new``; NaN outside [x[0], x[-1]] and
    everywhere when ``x`` is empty."""
    x_new = np.asarray(x_new, dtype=np.float64)
    if x.size == 0:
        return np.full(x_new.shape, np.nan)
    out = np.interp(x_new, x, y)
    out[(x_new < x[0]) | (x_new > x[-1])] = np.nan
    return out


def last_logged(run: Run, name: str) -> float:
    """The last value of a user-logged scalar (``lens.log(name=...)``), NaN if never logged."""
    if name not in run.scalar_names:
        return float("nan")
    _, values = run.scalar(name)
    return float(values[-1]) if values.size else float("nan")


def rolling_mean(values: np.ndarray, window: int | None) -> np.ndarray:
    """Centred rolling mean over ``window`` records along axis 0, ignoring NaN (a window of
    None, 0 or 1, or fewer than 2 records, returns the values unchanged)."""
    values = np.asarray(values, dtype=np.float64)
    if not window or window <= 1 or values.shape[0] < 2:
        return values
    import pandas as pd

    frame = pd.DataFrame(values.reshape(values.shape[0], -1))
    smoothed = frame.rolling(int(window), center=True, min_periods=1).mean().to_numpy()
    return smoothed.reshape(values.shape)


def x_axis(run: Run, on: str = "step", scalar: str = "epoch") -> np.ndarray:
    """Per record: the step (``on="step"``) or the logged epoch (``on="epoch"``, `epochs`)."""
    if on == "step":
        return run.steps.astype(np.float64)
    if on == "epoch":
        return epochs(run, scalar)
    raise ValueError(f"on must be 'step' or 'epoch', not {on!r}")


def x_of_steps(run: Run, steps: pd.Series, on: str = "step", scalar: str = "epoch") -> np.ndarray:
    """The `x_axis` value (float64) of each step in ``steps`` (steps of non-skipped records)."""
    keep = ~run.skipped.astype(bool)
    lookup = dict(zip(run.steps[keep].tolist(), x_axis(run, on, scalar)[keep].tolist()))
    return steps.map(lookup).to_numpy(dtype=np.float64)


def run_labels(runs: Sequence[Run]) -> list[str]:
    """Labels of several runs, made unique by suffixing #2, #3... to repeats."""
    seen: dict[str, int] = {}
    labels = []
    for run in runs:
        label = run.label
        seen[label] = seen.get(label, 0) + 1
        labels.append(label if seen[label] == 1 else f"{label}#{seen[label]}")
    return labels


def stack(
    runs: Sequence[Run],
    by: str = "class",
    metrics: Sequence[str] | None = None,
    reducer: str = "mean",
    on: str = "step",
    classes: pd.Series | Mapping[str, str] | None = None,
    scalar: str = "epoch",
) -> pd.DataFrame:
    """Tidy `reduce` frames of several runs, concatenated, with an ``x`` column (step or epoch)
    and unique ``run`` labels: the input of overlaid plots. ``classes`` applies to every run;
    default: each run's own classification."""
    import pandas as pd

    parts = []
    for label, run in zip(run_labels(runs), runs):
        frame = reduce(run, by=by, metrics=metrics, reducer=reducer, classes=classes)
        frame["run"] = label
        frame["x"] = x_of_steps(run, frame["step"], on, scalar)
        parts.append(frame)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
