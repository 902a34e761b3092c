"""Per group and per invariance class: how the norms grew and how the effective step decayed.

For each set of tensors (`sets.tensor_sets`), on the non-skipped records, with the set's
series reduced over its tensors (`sets.reduce_values`, default the mean):

- weight norm: initial (first finite record), final (last), ``weight_norm_ratio`` = final/initial;
- effective step, both as the angular update (radians per step) and as η/‖w‖²: initial = mean of
  the first ``window`` records, final = mean of the last ``window``, ``*_decay`` =
  initial/final (10 means it fell tenfold);
- ratios with a zero or undefined denominator are NaN (docs/design.md §3), never inf;
- tensors that *start at zero* (first finite ‖w‖ = 0, e.g. BatchNorm and other zero-initialised
  biases) have no scale to grow from: their η/‖w‖² is undefined at first, huge just after, then
  falls by orders of magnitude, and their early angular updates are large. Tensors with *no
  gradient* at any record (frozen, ``requires_grad=False``, or unused; `sets.frozen_tensors`)
  never move: they would average Δθ = 0 into their set. Both are left out of a set's weight
  norm, angular update and η/‖w‖² series (and so of every column built from them) unless every
  tensor of the set is one of them; ``tensors``, ``numel``, the shares and the counts include
  them;
- a set's η/‖w‖² is reduce(η) / reduce(‖w‖²) over its tensors (`sets.set_effective_lr`), not
  the reduction of per-tensor ratios, which the tensor with the smallest norm dominates: one
  bias shrinking 150-fold would show the set's η/‖w‖² rising 700-fold while its norm grew.
- the fall of the angular update split into its three factors (`decay_split`): ``lr_part`` =
  η_initial/η_final, ``norm_part`` = (‖w‖_final/‖w‖_initial)^k (k = 2 for SGD-like updates:
  η/‖w‖²; k = 1 for adaptive ones: η/‖w‖; means over the same windows), ``gradient_part`` =
  angular_update_decay / (lr_part·norm_part), the scale-free gradient's share;
- ``half_step`` / ``tenth_step``: the first step at which the angular update, smoothed by a
  trailing mean over ``window`` records, fell to 1/2 and 1/10 of its *early level* while the lr
  was unchanged. The early level is the mean over the first ``window`` records of the first
  stretch of records (at least ``max(3, 2·window)`` long) over which every group lr of the set
  stays within 1% of its value at the stretch's start; decay after the lr moves is the
  schedule's doing and is not counted (NaN);
- ``test_pass_share``: share of tested (record, tensor) cells passing the paper's test (δ from
  the run unless given); ``projected_share``: share of cells where AdamP/SGDP projected (NaN
  for other optimizers);
- ``nonfinite``: (record, tensor) cells with a non-finite gradient, update or weight
  (`nonfinite_mask`); ``skipped``: skipped steps of the whole run.

``window`` defaults to max(1, min(50, records // 20)).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from stepsize_lens.analysis.sets import (
    left_out_of_means,
    measured,
    reduce_values,
    set_effective_lr,
    tensor_classes,
    tensor_group_field,
    tensor_sets,
)
from stepsize_lens.analysis.smoothing import default_window

if TYPE_CHECKING:
    import pandas as pd

    from stepsize_lens.run import Run

LR_RTOL = 1e-2


def alive_mask(run: Run) -> np.ndarray:
    """[R, T] bool: the tensor existed at the record (from its first record with any finite
    metric on; a param group added later has all-NaN columns before)."""
    finite = np.zeros((run.num_records, run.num_tensors), dtype=bool)
    for name in ("weight_norm", "update_norm", "grad_norm"):
        finite |= np.isfinite(run.metric(name))
    return np.logical_or.accumulate(finite, axis=0) if run.num_records else finite


def nonfinite_gradient(grad_norm: np.ndarray, update_norm: np.ndarray) -> np.ndarray:
    """Elementwise bool: the gradient was non-finite, i.e. ‖g‖ is ±inf, or NaN while the tensor
    was updated (a tensor without a gradient also has NaN ‖g‖, but every torch optimizer leaves
    it alone, Δ = 0)."""
    g = np.asarray(grad_norm)
    with np.errstate(invalid="ignore"):
        return np.isinf(g) | (np.isnan(g) & ~(np.asarray(update_norm) == 0))


def nonfinite_mask(run: Run) -> np.ndarray:
    """[R, T] bool: non-finite gradient (`nonfinite_gradient`), update or weight at a
    non-skipped record of a tensor that existed then (`alive_mask`)."""
    w = run.metric("weight_norm")
    d = run.metric("update_norm")
    bad = nonfinite_gradient(run.metric("grad_norm"), d) | ~np.isfinite(d) | ~np.isfinite(w)
    return bad & alive_mask(run) & ~run.skipped.astype(bool)[:, None]


def lr_changes(run: Run, rtol: float = LR_RTOL) -> np.ndarray:
    """Steps at which any param group's lr moved by more than ``rtol`` (relative) since the
    previous non-skipped record."""
    keep = ~run.skipped.astype(bool)
    lr = run.group_field("lr")[keep]
    steps = run.steps[keep]
    if lr.shape[0] < 2 or lr.shape[1] == 0:
        return np.array([], dtype=np.int64)
    prev, cur = lr[:-1], lr[1:]
    with np.errstate(invalid="ignore"):
        moved = np.abs(cur - prev) > rtol * np.abs(prev)
    return steps[1:][moved.any(axis=1)]


def constant_lr_segment(
    lr: np.ndarray, min_length: int, rtol: float = LR_RTOL
) -> tuple[int, int] | None:
    """The first stretch [start, end) of at least ``min_length`` records over which every column
    of ``lr`` ([R] or [R, k]) stays within ``rtol`` of its value at ``start``; None if none."""
    lr = np.asarray(lr, dtype=np.float64)
    if lr.ndim == 1:
        lr = lr[:, None]
    n = lr.shape[0]
    start = 0
    while start < n:
        reference = lr[start]
        close = np.isclose(lr[start:], reference, rtol=rtol, atol=0.0, equal_nan=True).all(axis=1)
        off = np.flatnonzero(~close)
        end = start + (int(off[0]) if off.size else n - start)
        if end - start >= min_length:
            return start, end
        start = max(end, start + 1)
    return None


def _trailing_mean(values: np.ndarray, window: int) -> np.ndarray:
    finite = np.isfinite(values)
    total = np.concatenate([[0.0], np.cumsum(np.where(finite, values, 0.0))])
    count = np.concatenate([[0], np.cumsum(finite)])
    idx = np.arange(values.shape[0])
    lo = np.maximum(idx + 1 - window, 0)
    n = count[idx + 1] - count[lo]
    return np.where(n > 0, (total[idx + 1] - total[lo]) / np.maximum(n, 1), np.nan)


@dataclass
class DecayCrossings:
    """When a series fell to fractions of its early level while the lr stayed put.

    ``early``: early level (NaN if no constant-lr stretch); ``segment``: (first, last) step of
    the stretch; ``steps``: fraction → first step of the crossing, or None.
    """

    early: float
    segment: tuple[int, int] | None
    steps: dict[float, int | None] = field(default_factory=dict)


def decay_crossings(
    steps: np.ndarray,
    values: np.ndarray,
    lr: np.ndarray,
    fractions: Sequence[float] = (0.5, 0.1),
    window: int = 1,
) -> DecayCrossings:
    """First steps at which the trailing ``window``-mean of ``values`` fell to each fraction of
    its early level within the first constant-lr stretch (`constant_lr_segment`)."""
    values = np.asarray(values, dtype=np.float64)
    segment = constant_lr_segment(lr, min_length=max(3, 2 * window))
    if segment is None:
        return DecayCrossings(np.nan, None, {f: None for f in fractions})
    start, end = segment
    head = values[start : start + window]
    early = float(np.nanmean(head)) if np.isfinite(head).any() else np.nan
    smoothed = _trailing_mean(values, window)
    found: dict[float, int | None] = {}
    for fraction in fractions:
        found[fraction] = None
        if np.isfinite(early) and early > 0:
            hits = np.flatnonzero(smoothed[start + window : end] <= fraction * early)
            if hits.size:
                found[fraction] = int(steps[start + window + hits[0]])
    return DecayCrossings(early, (int(steps[start]), int(steps[end - 1])), found)


def _first_finite(series: np.ndarray) -> float:
    idx = np.flatnonzero(np.isfinite(series))
    return float(series[idx[0]]) if idx.size else np.nan


def _last_finite(series: np.ndarray) -> float:
    idx = np.flatnonzero(np.isfinite(series))
    return float(series[idx[-1]]) if idx.size else np.nan


def _ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, NaN unless both are finite and the denominator is non-zero."""
    if not (np.isfinite(numerator) and np.isfinite(denominator)) or denominator == 0:
        return np.nan
    return float(np.float64(numerator) / denominator)


def _head_mean(series: np.ndarray, window: int, tail: bool = False) -> float:
    finite = series[np.isfinite(series)]
    if finite.size == 0:
        return np.nan
    part = finite[-window:] if tail else finite[:window]
    return float(part.mean())


def summarize(
    run: Run,
    by: str | Sequence[str] = ("group", "class"),
    classes: pd.Series | Mapping[str, str] | None = None,
    reducer: str = "mean",
    window: int | None = None,
    delta: float | None = None,
) -> pd.DataFrame:
    """One row per set of tensors (see the module docstring for every column).

    ``by``: one of tensor / group / class / all, or several (rows concatenated). Columns: by,
    key, tensors, numel, weight_norm_initial/final/ratio, angular_update_initial/final/decay,
    effective_lr_initial/final/decay, lr_part, norm_part, gradient_part, early_angular_update,
    constant_lr_from/until (steps),
    half_step, tenth_step, test_pass_share, projected_share, nonfinite, skipped.
    """
    import pandas as pd

    from stepsize_lens.analysis.split import norm_power, split_values
    from stepsize_lens.invariance import recorded_test_views

    keys = [by] if isinstance(by, str) else list(by)
    power = norm_power(run)
    cls = tensor_classes(run, classes, delta)
    keep = ~run.skipped.astype(bool)
    steps = run.steps[keep]
    win = window if window is not None else default_window(int(keep.sum()))
    numel = run.numel
    weight = run.metric("weight_norm")[keep]
    angle = run.metric("angular_update")[keep]
    eff = run.metric("effective_lr")[keep]
    lr = tensor_group_field(run, "lr")[keep]
    tested = recorded_test_views(run, delta)[keep]
    applied = run.view("applied_view")[keep]
    bad = nonfinite_mask(run)
    left_out = left_out_of_means(run)
    rows = []
    for by_name in keys:
        for key, index in tensor_sets(run, by_name, cls).items():
            used = measured(index, left_out)
            w = reduce_values(weight[:, used], reducer, numel[used])
            a = reduce_values(angle[:, used], reducer, numel[used])
            e = (
                set_effective_lr(lr[:, used], weight[:, used], reducer, numel[used])
                if used.size > 1
                else reduce_values(eff[:, used], reducer, numel[used])
            )
            crossings = decay_crossings(steps, a, lr[:, used], (0.5, 0.1), win)
            t = tested[:, index]
            p = applied[:, index]
            w0, w1 = _first_finite(w), _last_finite(w)
            a0, a1 = _head_mean(a, win), _head_mean(a, win, tail=True)
            e0, e1 = _head_mean(e, win), _head_mean(e, win, tail=True)
            eta = reduce_values(lr[:, used], reducer, numel[used])
            split = split_values(a[:, None], w[:, None], eta[:, None], power, win)
            with np.errstate(invalid="ignore", divide="ignore"):
                rows.append(
                    {
                        "by": by_name,
                        "key": key,
                        "tensors": len(index),
                        "numel": int(numel[index].sum()),
                        "weight_norm_initial": w0,
                        "weight_norm_final": w1,
                        "weight_norm_ratio": _ratio(w1, w0),
                        "angular_update_initial": a0,
                        "angular_update_final": a1,
                        "angular_update_decay": _ratio(a0, a1),
                        "effective_lr_initial": e0,
                        "effective_lr_final": e1,
                        "effective_lr_decay": _ratio(e0, e1),
                        "lr_part": float(split["lr_part"][0]),
                        "norm_part": float(split["norm_part"][0]),
                        "gradient_part": float(split["gradient_part"][0]),
                        "early_angular_update": crossings.early,
                        "constant_lr_from": crossings.segment[0] if crossings.segment else None,
                        "constant_lr_until": crossings.segment[1] if crossings.segment else None,
                        "half_step": crossings.steps[0.5],
                        "tenth_step": crossings.steps[0.1],
                        "test_pass_share": (t > 0).sum() / (t >= 0).sum()
                        if (t >= 0).any()
                        else np.nan,
                        "projected_share": (p > 0).sum() / (p >= 0).sum()
                        if (p >= 0).any()
                        else np.nan,
                        "nonfinite": int(bad[:, index].sum()),
                        "skipped": int(run.skipped.sum()),
                    }
                )
    frame = pd.DataFrame(rows)
    for column in ("constant_lr_from", "constant_lr_until", "half_step", "tenth_step"):
        if column in frame:
            frame[column] = frame[column].astype("Int64")
    return frame


@dataclass
class Overview:
    """Run-level facts: label, optimizer class and theory family, records and steps, tensors
    per class, skipped steps and non-finite cells."""

    label: str
    optimizer: str
    family: str
    records: int
    first_step: int | None
    last_step: int | None
    tensors: int
    numel: int
    class_counts: dict[str, int]
    skipped: int
    nonfinite: int


def overview(run: Run, classes: pd.Series | Mapping[str, str] | None = None) -> Overview:
    """The `Overview` of a run."""
    from stepsize_lens.analysis.theory import optimizer_family

    cls = tensor_classes(run, classes)
    steps = run.steps
    return Overview(
        label=run.label,
        optimizer=str((run.meta.get("optimizer") or {}).get("class") or "unknown"),
        family=optimizer_family(run),
        records=run.num_records,
        first_step=int(steps.min()) if steps.size else None,
        last_step=int(steps.max()) if steps.size else None,
        tensors=run.num_tensors,
        numel=int(run.numel.sum()),
        class_counts={k: int(v) for k, v in cls.value_counts().items()},
        skipped=int(run.skipped.sum()),
        nonfinite=int(nonfinite_mask(run).sum()),
    )
