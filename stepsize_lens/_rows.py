"""A parameter tensor seen as a matrix of rows (dim 0: output channels or neurons). A leaf.

Row sums of products do not depend on the order of the elements inside a row, so a tensor is
read in its own memory order: a contiguous or channels_last tensor becomes a [rows, K] *view*
(no copy). Tensors whose rows are compared element by element (w and its gradient, say) must be
read in the same ``order``. A 1-D tensor is one row, a 0-D tensor one row of one element. The
lens's snapshot and AdamP/SGDP's projection both read rows through this module.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def row_order(tensor: torch.Tensor) -> tuple[int, ...]:
    """Dimension order (dim 0 first, the rest by decreasing stride) in which ``tensor`` is dense.

    Permuting by it makes a contiguous or channels_last tensor contiguous.
    """
    rest = sorted(range(1, tensor.ndim), key=lambda d: -tensor.stride(d))
    return (0, *rest)


def _shape(tensor: torch.Tensor) -> tuple[int, int]:
    if tensor.ndim == 0:
        return 1, 1
    if tensor.ndim == 1:
        return 1, tensor.shape[0]
    return tensor.shape[0], math.prod(tensor.shape[1:])


def rows_view(tensor: torch.Tensor, order: Sequence[int] | None = None) -> torch.Tensor | None:
    """``tensor`` as a [rows, K] view sharing its memory (writes go through), or None when its
    layout does not allow one in ``order`` (default: `row_order`)."""
    shape = _shape(tensor)
    if tensor.ndim < 2:
        return tensor.reshape(shape) if tensor.is_contiguous() else None
    permuted = tensor.permute(*(row_order(tensor) if order is None else order))
    return permuted.view(shape) if permuted.is_contiguous() else None


def as_rows(tensor: torch.Tensor, order: Sequence[int] | None = None) -> torch.Tensor:
    """``tensor`` as [rows, K] for reading: the `rows_view` where there is one, else a copy in
    ``order`` (default: `row_order`)."""
    view = rows_view(tensor, order)
    if view is not None:
        return view
    if tensor.ndim < 2:
        return tensor.reshape(_shape(tensor))
    permuted = tensor.permute(*(row_order(tensor) if order is None else order))
    return permuted.reshape(_shape(tensor))
