"""A parameter tensor seen as a matrix of rows (dim 0: output channels or neurons). A leaf.

Row sums of products do not depend on the order of the elements inside a row, so a tensor is
read in its own memory order: a contiguous or channels_last tensor becomes a [rows, K] *view*
(no copy). Tensors whose rows are compared element by element (w and its gradient, say) must be
read in the same ``order``. A 1-D tensor is one row, a 0-D tensor one row of one element. The
lens's snapshot and AdamP/SGDP's projection both read rows through this module, and sum them
with `norms` and `dots`: one read of the data and no temporary (on the CPU a dot product is a
paired batched matmul; elsewhere, and wherever float32 matmuls may run in reduced precision,
a multiply-and-sum).
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


# below this row length a batched matmul of tiny matrices costs more than multiply-and-sum
MATMUL_MIN_ROW = 128


def matmul_is_exact(device: torch.device) -> bool:
    """Whether float32 matmuls on ``device`` run in full float32 precision right now."""
    if device.type != "cpu":
        return False  # TF32 and friends: never trust a matmul setting off the CPU
    return torch.get_float32_matmul_precision() == "highest"


def norms(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out[r] = ‖x_r‖ for x [n, K] (square them in bulk afterwards: one op, not one per block)."""
    return torch.linalg.vector_norm(x, dim=-1, out=out)


def dots(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, matmul: bool) -> torch.Tensor:
    """out[r] = ⟨a_r, b_r⟩ for a, b [n, K] and a contiguous ``out`` [n]; ``matmul``: use the
    paired batched matmul where it pays (rows of at least `MATMUL_MIN_ROW`, dense rows)."""
    n, width = a.shape
    if matmul and n >= 2 and width >= MATMUL_MIN_ROW and a.is_contiguous() and b.is_contiguous():
        even = n - n % 2
        pairs = torch.bmm(
            a[:even].view(-1, 2, width), b[:even].view(-1, 2, width).transpose(1, 2)
        ).view(-1, 4)
        torch.index_select(pairs, 1, _DIAGONAL[pairs.device], out=out[:even].view(-1, 2))
        if even < n:
            torch.dot(a[-1], b[-1], out=out[-1])
        return out
    return torch.sum(a * b, dim=-1, out=out)


class _Diagonal(dict):
    """Positions 0 and 3 of a flattened 2x2 block (its diagonal), per device."""

    def __missing__(self, device: torch.device) -> torch.Tensor:
        self[device] = torch.tensor([0, 3], device=device)
        return self[device]


_DIAGONAL = _Diagonal()
