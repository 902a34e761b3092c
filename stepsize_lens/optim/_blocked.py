"""The blocked multi-tensor engine of AdamP and SGDP: rows in cache-sized blocks.

The multi-tensor paths (`RowBlocks`, `Partition`) see each >= 2-D tensor as a [rows, K] view
in its own memory order (channels_last included, `stepsize_lens._rows`) and cut it into
cache-sized blocks of rows. Pass 1 (`BlockedTensors.first_pass`) runs, block by block, the row
statistics of the test, the optimizer's own update (moments or momentum buffer) and
<w_r, d_r>; the views and coefficients of all tensors are then decided at once by the shared
math of `_projection`; pass 2 (the optimizer's) applies decay, projection and step block by
block. Each pass reads the data from memory about once, however many ops it runs on a block.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from stepsize_lens._rows import row_order, rows_view
from stepsize_lens.optim._projection import (
    RowLayout,
    choose_views,
    projectable,
    projection_coefs,
    row_dot,
    row_norm,
    stats_dtype,
)

#: Elements per block of the multi-tensor paths: a pass over a block touches about six
#: block-sized arrays, which then stay in cache between the ops of that block.
BLOCK_NUMEL = 1 << 19


@dataclass(frozen=True)
class Piece:
    """Rows r0:r1 of tensor t (an index into the list a `RowBlocks` was built for)."""

    t: int
    r0: int
    r1: int


class RowBlocks:
    """Cache-sized blocks of row ranges over a list of >= 2-D tensors.

    Each tensor is cut into pieces of whole rows of at most ``block_numel`` elements (at least
    one row); consecutive pieces are packed into blocks of at most ``block_numel`` elements.
    The optimizers run all the ops of one block before moving to the next, so the data is
    read from memory about once per pass instead of once per op. Pieces are in tensor order
    and row order, which is also the order of the rows in `RowLayout`'s flat vectors.
    """

    def __init__(self, shapes: Sequence[torch.Size], block_numel: int = BLOCK_NUMEL) -> None:
        self.layout = RowLayout.of(shapes)
        rows, numels = self.layout.rows, self.layout.numels
        self.pieces: list[Piece] = []
        self.piece_rows: list[list[int]] = []  # per tensor: rows of each of its pieces
        for t, (n_rows, numel) in enumerate(zip(rows, numels)):
            step = max(1, block_numel // (numel // n_rows))
            cuts = list(range(0, n_rows, step))
            self.pieces += [Piece(t, r0, min(n_rows, r0 + step)) for r0 in cuts]
            self.piece_rows.append([min(n_rows, r0 + step) - r0 for r0 in cuts])
        self.sizes = [p.r1 - p.r0 for p in self.pieces]
        self.blocks: list[tuple[int, int]] = []  # [start, stop) ranges of pieces
        start, fill = 0, 0
        for i, piece in enumerate(self.pieces):
            size = (piece.r1 - piece.r0) * (numels[piece.t] // rows[piece.t])
            if i > start and fill + size > block_numel:
                self.blocks.append((start, i))
                start, fill = i, 0
            fill += size
        if self.pieces:
            self.blocks.append((start, len(self.pieces)))

    def cut(self, tensors: Sequence[Tensor]) -> list[Tensor]:
        """All pieces of a list of [rows, K] tensors, as views, in piece order."""
        out: list[Tensor] = []
        for x, rows in zip(tensors, self.piece_rows):
            out += x.split(rows) if len(rows) > 1 else [x]
        return out

    def split(self, per_row: Tensor) -> list[Tensor]:
        """A flat per-row vector cut into the pieces' rows (views)."""
        return list(per_row.split(self.sizes))


def invariance_stats(
    w: Sequence[Tensor],
    g: Sequence[Tensor],
    w_dot_g: Sequence[Tensor],
    w_norm: Sequence[Tensor],
    g_norm: Sequence[Tensor],
    start: int,
    stop: int,
) -> None:
    """<w_r, g_r>, ||w_r||, ||g_r|| for the rows of pieces start:stop (the test's inputs)."""
    if w[start].dtype == w_dot_g[start].dtype:
        vecdot, norm = torch.linalg.vecdot, torch.linalg.vector_norm
        for i in range(start, stop):
            vecdot(w[i], g[i], dim=1, out=w_dot_g[i])
            norm(w[i], dim=1, out=w_norm[i])
            norm(g[i], dim=1, out=g_norm[i])
    else:
        for i in range(start, stop):
            row_dot(w[i], g[i], w_dot_g[i])
            row_norm(w[i], w_norm[i])
            row_norm(g[i], g_norm[i])


def update_dot_stats(
    w: Sequence[Tensor], u: Sequence[Tensor], out: Sequence[Tensor], start: int, stop: int
) -> None:
    """out[i] = <w_r, u_r> for the rows of pieces start:stop (u indexed from 0)."""
    if w[start].dtype == out[start].dtype:
        vecdot = torch.linalg.vecdot
        for i in range(start, stop):
            vecdot(w[i], u[i - start], dim=1, out=out[i])
    else:
        for i in range(start, stop):
            row_dot(w[i], u[i - start], out[i])


class Partition:
    """The route of each tensor of a device/dtype group in a multi-tensor step.

    ``plain``: never projected (ndim < 2 or empty). ``blocked``: projectable and its rows are
    a view of its memory (`rows`), so it goes through `RowBlocks`. ``fallback``: projectable
    but dim 0 is not the outermost in memory (or the tensor is not dense): per-tensor path.
    For blocked tensors, gradients in another layout are copied for this step and state
    tensors in another layout are replaced (once) by copies in the parameter's layout.
    """

    def __init__(self, params: Sequence[Tensor]) -> None:
        self.plain: list[int] = []
        self.fallback: list[int] = []
        self.blocked: list[int] = []
        self.orders: dict[int, tuple[int, ...]] = {}
        self.rows: dict[int, Tensor] = {}
        for i, p in enumerate(params):
            if not projectable(p):
                self.plain.append(i)
                continue
            order = row_order(p)
            rows = rows_view(p, order)
            if rows is None:
                self.fallback.append(i)
            else:
                self.blocked.append(i)
                self.orders[i], self.rows[i] = order, rows

    def grad_rows(self, i: int, p: Tensor, g: Tensor) -> Tensor:
        rows = rows_view(g, self.orders[i])
        if rows is None:
            rows = rows_view(torch.empty_like(p).copy_(g), self.orders[i])
        assert rows is not None
        return rows

    def state_rows(self, i: int, p: Tensor, state: dict, key: str) -> Tensor:
        rows = rows_view(state[key], self.orders[i])
        if rows is None:
            state[key] = torch.empty_like(p).copy_(state[key])
            rows = rows_view(state[key], self.orders[i])
        assert rows is not None
        return rows

    def blocked_tensors(
        self,
        params: Sequence[Tensor],
        grads: Sequence[Tensor],
        states: Sequence[dict],
        state_keys: Sequence[str],
    ) -> BlockedTensors:
        """The ``blocked`` tensors, with the state tensors under ``state_keys``, in pieces."""
        ids = self.blocked
        return BlockedTensors(
            [params[i] for i in ids],
            [self.rows[i] for i in ids],
            [self.grad_rows(i, params[i], grads[i]) for i in ids],
            [states[i] for i in ids],
            {
                key: [self.state_rows(i, params[i], states[i], key) for i in ids]
                for key in state_keys
            },
        )


class BlockedTensors:
    """Blocked tensors of one device/dtype group, cut into the pieces of their `RowBlocks`.

    ``w``, ``g`` and ``state[key]`` are the [rows, K] views of the parameters, their
    gradients and their state tensors, one per piece; ``states`` are the tensors' state dicts.
    An optimizer's blocked kernel runs `first_pass`, then its own pass 2 over ``blocks``.
    """

    def __init__(
        self,
        params: Sequence[Tensor],
        w_rows: Sequence[Tensor],
        g_rows: Sequence[Tensor],
        states: Sequence[dict],
        state_rows: dict[str, list[Tensor]],
    ) -> None:
        self.blocks = row_blocks(tuple(p.shape for p in params))
        self.layout = self.blocks.layout
        self.states = list(states)
        self.stats_dtype = stats_dtype(params[0].dtype)
        self.w, self.g = self.blocks.cut(w_rows), self.blocks.cut(g_rows)
        self.state = {key: self.blocks.cut(rows) for key, rows in state_rows.items()}

    def per_piece(self, key: str) -> list:
        """``state[key]`` of each piece's tensor (e.g. AdamP's step counts)."""
        return [self.states[piece.t][key] for piece in self.blocks.pieces]

    def first_pass(
        self, direction: Callable[[int, int], list[Tensor]], *, delta: float, eps: float
    ) -> tuple[list[Tensor], Tensor, Tensor]:
        """Pass 1, then the decisions: (d per piece, view per tensor, c per row).

        Per block a:b: the row statistics of the test on (w, g), d = ``direction(a, b)`` (the
        optimizer's update of those pieces, computed after the statistics, so it may update
        state in place) and <w_r, d_r>. Then, for all tensors at once: the views and the
        coefficients c_r of the projection d_r <- d_r - c_r w_r (`projection_coefs`).
        """
        layout = self.layout
        stats = torch.empty(4, layout.total_rows, dtype=self.stats_dtype, device=self.w[0].device)
        w_dot_g, w_norm, g_norm, w_dot_d = (self.blocks.split(row) for row in stats)
        d: list[Tensor] = []
        for a, b in self.blocks.blocks:
            invariance_stats(self.w, self.g, w_dot_g, w_norm, g_norm, a, b)
            d_block = direction(a, b)
            update_dot_stats(self.w, d_block, w_dot_d, a, b)
            d += d_block
        views = choose_views(stats[0], stats[1], stats[2], layout, delta, eps)
        coefs = projection_coefs(stats[3], stats[1], views, layout, eps)
        return d, views, coefs

    def save_views(self, views: Tensor) -> None:
        """Record each tensor's view in ``state["projection"]`` (device to device)."""
        torch._foreach_copy_([s["projection"] for s in self.states], list(views.unbind(0)))


@functools.lru_cache(maxsize=64)
def row_blocks(shapes: tuple[torch.Size, ...]) -> RowBlocks:
    """The (cached) block plan of a list of parameter shapes."""
    return RowBlocks(shapes, BLOCK_NUMEL)
