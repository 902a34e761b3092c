"""The sets of tensors a run's figures are formed over, and each set's figure per record.

A *set* of tensors is what a row of a reduced frame stands for: one tensor (``by="tensor"``),
one param group (``"group"``), one invariance class (``"class"``: channel / layer / none, from
`stepsize_lens.invariance.classify_tensors` unless ``classes`` is given), the scale-invariant
tensors together (``"invariant"``: class channel or layer) or the whole model (``"all"``).
Reducers over the tensors of a set, per record, ignoring NaN:

- ``mean``: (1/n) Σ x_i
- ``weighted``: Σ numel_i·x_i / Σ numel_i (the parameter-weighted mean)
- ``median``

How a set's figure is formed (`frames.reduce`, `set_mean`, `summary.summarize`, and the lens's
live `recording.record.Record.key_scalars`; the formulas are `stepsize_lens.set_figures`,
written once for numpy and torch):

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
``include_skipped=True`` (`record_mask`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING

import numpy as np

from stepsize_lens import set_figures
from stepsize_lens._schema import CLASSES, INVARIANT_CLASSES

if TYPE_CHECKING:
    import pandas as pd

    from stepsize_lens.run import Run

BY: tuple[str, ...] = ("tensor", "group", "class", "invariant", "all")

REDUCERS: tuple[str, ...] = ("mean", "weighted", "median")


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


def record_mask(run: Run, include_skipped: bool) -> np.ndarray:
    """[R] bool: the records figures are formed over (all, or the non-skipped ones)."""
    return np.ones(run.num_records, bool) if include_skipped else ~run.skipped.astype(bool)


def reduce_values(
    values: np.ndarray, reducer: str, weights: np.ndarray | None = None
) -> np.ndarray:
    """Reduce [records, k] over axis 1 ignoring NaN (all-NaN rows give NaN)."""
    if reducer in ("mean", "weighted"):
        return set_figures.finite_mean(values, weights if reducer == "weighted" else None)
    if reducer == "median":
        values = np.asarray(values, dtype=np.float64)
        finite = np.isfinite(values)
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
    keep = record_mask(run, include_skipped)
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
    return set_figures.set_effective_lr(
        lr, weight_norm, partial(reduce_values, reducer=reducer, weights=weights)
    )


def set_values(
    run: Run,
    name: str,
    index: np.ndarray,
    keep: np.ndarray,
    reducer: str,
    arrays: Mapping[str, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(the set's figure [R], the tensors it is formed from [R]) of metric ``name`` over the
    tensors ``index`` (already `measured`) at the records ``keep``: `set_figures.set_figure`."""
    block = (arrays[name] if arrays is not None and name in arrays else run.metric(name)[keep])[
        :, index
    ]
    lr = weight = None
    if name == "effective_lr":
        weight = run.metric("weight_norm")[keep][:, index]
        lr = tensor_group_field(run, "lr")[keep][:, index]
    mean = partial(reduce_values, reducer=reducer, weights=run.numel[index])
    return set_figures.set_figure(name, block, lr, weight, mean)


def set_mean(run: Run, metric: str, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(steps float64, per-record figure of ``metric`` over the set of tensors selected by
    ``mask`` [T]), on the non-skipped records: the plain mean, non-finite values left out (NaN
    where none is finite), formed as every set's figure is (module docstring: frozen and
    zero-start tensors left out, η/‖w‖² from the set's mean squared norm).
    ``set_mean(run, m, is_invariant(tensor_classes(run)))`` is the figure of the
    scale-invariant tensors."""
    keep = record_mask(run, False)
    index = measured(np.flatnonzero(np.asarray(mask, dtype=bool)), left_out_of_means(run))
    values, _ = set_values(run, metric, index, keep, "mean")
    return run.steps[keep].astype(np.float64), values
