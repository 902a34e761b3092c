"""The paper's scale-invariance test (AdamP, Heo et al. ICLR 2021, Sec. 3), written once.

A scale-invariant w has ⟨w, g⟩ = 0, so with δ (default 0.1), for a tensor of ``numel``
elements in ``rows`` rows (slices along dim 0)::

    channel view passes if  max_r |cos(w_r, g_r)| < δ / sqrt(numel / rows)
    else layer view passes if         |cos(w, g)| < δ / sqrt(numel)
    else neither.

Tensors with ndim < 2 are never tested. The lens runs it live on every record, the analysis
re-runs it on recorded cosines with any δ, and AdamP/SGDP use the same thresholds to decide
their projection. Depends only on `_schema`; numpy and torch arguments are both accepted.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from stepsize_lens._schema import DEFAULT_DELTA, View


def channel_threshold(numel: int, rows: int, delta: float = DEFAULT_DELTA) -> float:
    """δ / sqrt(numel / rows): the bound on max_r |cos(w_r, g_r)| for the channel view."""
    return delta / math.sqrt(max(numel, 1) // max(rows, 1) or 1)


def layer_threshold(numel: int, delta: float = DEFAULT_DELTA) -> float:
    """δ / sqrt(numel): the bound on |cos(w, g)| for the layer view."""
    return delta / math.sqrt(max(numel, 1))


def paper_test(
    cos_grad: Any,
    channel_cos_grad_max: Any,
    numel: Any,
    rows: Any,
    ndim: Any,
    delta: float = DEFAULT_DELTA,
) -> Any:
    """The test elementwise over broadcastable arrays or tensors; returns int8 `View` codes.

    ``View.CHANNEL`` if channel_cos_grad_max < δ·sqrt(rows/numel), else ``View.LAYER`` if
    |cos_grad| < δ/sqrt(numel), else ``View.NONE``; ``View.UNTESTED`` where ndim < 2 or where
    both cosines are NaN (a zero weight or gradient leaves the test undefined). A NaN cosine
    fails its own view.

    With torch tensors the result is a torch tensor on ``cos_grad``'s device, computed without
    any device-to-host synchronisation (pass numel/rows/ndim as tensors on that device to also
    avoid host-to-device copies). Otherwise the result is a numpy array.
    """
    if isinstance(cos_grad, torch.Tensor) or isinstance(channel_cos_grad_max, torch.Tensor):
        return _paper_test_torch(cos_grad, channel_cos_grad_max, numel, rows, ndim, delta)
    cos = np.asarray(cos_grad, dtype=np.float64)
    chan = np.asarray(channel_cos_grad_max, dtype=np.float64)
    numel_f = np.maximum(np.nan_to_num(np.asarray(numel, dtype=np.float64), nan=1.0), 1.0)
    rows_f = np.maximum(np.nan_to_num(np.asarray(rows, dtype=np.float64), nan=1.0), 1.0)
    ndim_f = np.nan_to_num(np.asarray(ndim, dtype=np.float64), nan=0.0)
    with np.errstate(invalid="ignore"):
        channel_pass = chan < delta * np.sqrt(rows_f / numel_f)
        layer_pass = np.abs(cos) < delta / np.sqrt(numel_f)
    codes = np.where(channel_pass, View.CHANNEL, np.where(layer_pass, View.LAYER, View.NONE))
    untested = (ndim_f < 2) | (np.isnan(cos) & np.isnan(chan))
    return np.where(untested, View.UNTESTED, codes).astype(np.int8)


def _paper_test_torch(
    cos_grad: Any, channel_cos: Any, numel: Any, rows: Any, ndim: Any, delta: float
) -> torch.Tensor:
    reference = cos_grad if isinstance(cos_grad, torch.Tensor) else channel_cos
    device = reference.device
    dtype = torch.promote_types(reference.dtype, torch.float32)
    cos = torch.as_tensor(cos_grad, device=device, dtype=dtype)
    chan = torch.as_tensor(channel_cos, device=device, dtype=dtype)
    bounds = paper_bounds(numel, rows, delta, device=device, dtype=dtype)
    testable = torch.as_tensor(ndim, device=device) >= 2
    return views_from_cosines(cos, chan, bounds, testable)


def paper_bounds(
    numel: Any,
    rows: Any,
    delta: float = DEFAULT_DELTA,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """[2, T]: the channel bound δ·sqrt(rows/numel) and the layer bound δ/sqrt(numel) per
    tensor (numel and rows at least 1), as a tensor on ``device``."""
    numel_t = torch.as_tensor(numel, device=device, dtype=dtype).clamp(min=1)
    rows_t = torch.as_tensor(rows, device=device, dtype=dtype).clamp(min=1)
    return torch.stack([delta * torch.sqrt(rows_t / numel_t), delta * torch.rsqrt(numel_t)])


def views_from_cosines(
    cos_grad: torch.Tensor,
    channel_cos_grad_max: torch.Tensor,
    bounds: torch.Tensor,
    testable: torch.Tensor | None = None,
    *,
    undefined: int = View.UNTESTED,
) -> torch.Tensor:
    """`paper_test` on torch tensors with the bounds computed once (`paper_bounds`, [2, T])
    and ``testable`` [T] bool (ndim >= 2; None: all): int8 `View` codes, a fixed handful of
    ops on the cosines' device with no device-to-host read. The lens runs it live, AdamP and
    SGDP decide their projection with it (``undefined=View.NONE``: where both cosines are NaN
    no view passes, as in the authors' optimizers)."""
    layer = cos_grad.abs() < bounds[1]
    codes = layer.to(torch.int8).mul_(int(View.LAYER))  # NONE is 0
    codes.masked_fill_(channel_cos_grad_max < bounds[0], int(View.CHANNEL))
    # untested: too few dims, or both cosines NaN (fmax is NaN only where both are)
    untested = torch.isnan(torch.fmax(cos_grad, channel_cos_grad_max))
    if testable is not None:
        untested.logical_or_(~testable)
    return codes.masked_fill_(untested, int(undefined))
