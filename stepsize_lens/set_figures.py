"""The figure of a set of tensors, written once for torch tensors and numpy arrays alike.

The lens's live key scalars (`recording.record.key_scalars`, torch, one record) and the
analysis (`analysis.sets`, numpy, every record) both form a set's figures here. Values of the
set's k tensors lie along the last axis (any leading axes, such as records, are kept), and
every sum is taken in float64:

- ``finite_mean(x)``: (1/n) Σ x_i over the n finite x_i; with ``weights`` w (the tensors'
  numel), Σ w_i·x_i / Σ w_i over the finite x_i. NaN where no x_i is finite (or the finite
  ones weigh 0).
- ``set_effective_lr(η, ‖w‖)``: M(η) / M(‖w‖²), M a mean (``finite_mean`` unless ``reduce``
  says otherwise) taken over the tensors where both η and ‖w‖² are finite: the set's weights
  taken as one vector, so a vanishing tensor drops out instead of dominating (the mean of the
  per-tensor η/‖w‖² would follow the smallest norm). NaN where no tensor has both, or where
  M(‖w‖²) is not > 0.
- ``set_figure(metric, x, lr, weight_norm)``: a set's figure of one metric, and how many
  tensors it is formed from: ``set_effective_lr`` for ``effective_lr`` of several tensors
  (counting the tensors with finite η and ‖w‖), else M(x) (counting the finite x_i); one
  tensor's ``effective_lr`` is its own η/‖w‖².

Which tensors make up a set, and which are left out of its figures, is decided by the callers
(docs/design.md §2.1). This module imports no torch: a torch argument brings its own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np

Array = Any  # a torch.Tensor or a numpy array (or anything numpy takes)


def namespace(values: Array) -> ModuleType:
    """torch for a torch tensor, else numpy."""
    if type(values).__module__.split(".")[0] == "torch":
        import torch

        return torch
    return np


def _float64(xp: ModuleType, values: Array) -> Array:
    if xp is np:
        return np.asarray(values, dtype=np.float64)
    return xp.as_tensor(values).to(xp.float64)


def _quiet(xp: ModuleType) -> contextlib.AbstractContextManager[Any]:
    return np.errstate(invalid="ignore", divide="ignore") if xp is np else contextlib.nullcontext()


def finite_mean(values: Array, weights: Array | None = None) -> Array:
    """Along the last axis, in float64: the mean of the finite values (module docstring),
    weighted by ``weights`` (broadcast against ``values``) when given; NaN where none is."""
    xp = namespace(values)
    values = _float64(xp, values)
    finite = xp.isfinite(values)
    zeroed = xp.where(finite, values, 0.0)
    if weights is None:
        count = finite.sum(-1)
        return xp.where(count > 0, zeroed.sum(-1) / (count + (count == 0)), np.nan)
    w = xp.where(finite, _float64(xp, weights), 0.0)
    total = (w * zeroed).sum(-1)
    mass = w.sum(-1)
    return xp.where(mass > 0, total / xp.where(mass > 0, mass, 1.0), np.nan)


def set_effective_lr(
    lr: Array, weight_norm: Array, reduce: Callable[[Array], Array] = finite_mean
) -> Array:
    """η/‖w‖² of a set along the last axis: reduce(η) / reduce(‖w‖²) over the tensors where
    both are finite (module docstring); NaN where none is or the reduced ‖w‖² is not > 0.
    ``reduce`` maps values [..., k] to [...], ignoring NaN (default `finite_mean`)."""
    xp = namespace(lr)
    lr = _float64(xp, lr)
    squared = _float64(xp, weight_norm) ** 2
    both = xp.isfinite(lr) & xp.isfinite(squared)
    numerator = reduce(xp.where(both, lr, np.nan))
    denominator = reduce(xp.where(both, squared, np.nan))
    with _quiet(xp):
        return xp.where(
            denominator > 0, numerator / xp.where(denominator > 0, denominator, 1.0), np.nan
        )


def set_figure(
    metric: str,
    values: Array,
    lr: Array | None = None,
    weight_norm: Array | None = None,
    reduce: Callable[[Array], Array] = finite_mean,
) -> tuple[Array, Array]:
    """(the set's figure of ``metric``, the number of tensors it is formed from), along the
    last axis of ``values`` [..., k] (module docstring). ``lr`` and ``weight_norm`` [..., k]
    (η and ‖w‖ of the same tensors) are needed for ``effective_lr`` of several tensors only."""
    xp = namespace(values)
    if metric == "effective_lr" and values.shape[-1] > 1:
        if lr is None or weight_norm is None:
            raise ValueError("a set's effective_lr needs the tensors' lr and weight_norm")
        both = xp.isfinite(_float64(xp, lr)) & xp.isfinite(_float64(xp, weight_norm))
        return set_effective_lr(lr, weight_norm, reduce), both.sum(-1)
    return reduce(values), xp.isfinite(values).sum(-1)
