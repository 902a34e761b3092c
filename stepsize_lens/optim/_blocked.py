"""The multi-tensor engine of AdamP and SGDP: rows in blocks, row sums in few launches.

Each >= 2-D tensor is seen as a [rows, K] view in its own memory order (channels_last
included, `stepsize_lens._rows`) and cut into blocks of whole rows (`RowBlocks`). Pass 1
(`BlockedTensors.first_pass`) runs, block by block, the optimizer's own update (moments or
momentum buffer, giving the step d) and the test's row sums <w_r, g_r>, ||w_r||, ||g_r||,
<w_r, d_r>; the views and coefficients of all tensors are then decided at once by the shared
math of `_projection`; pass 2 (the optimizer's) applies decay, projection and step block by
block. The same code runs in three modes (`Mode`, chosen per step by `mode_for`):

- ``CPU``: blocks of `BLOCK_NUMEL` elements; the row sums are one `_rows.dots`/`_rows.norms`
  per piece, into slices of one table, so each pass reads the data from memory about once;
- ``ACCELERATOR`` (any device but the CPU, or ``STEPSIZE_LENS_DEVICE_PATHS=accelerator``):
  one block; w, g and d are gathered into one flat scratch with three
  ``torch._foreach_copy_`` and the rows of equal length K (the tensors are ordered by K,
  `Partition`) are summed together, so the launches depend on the number of row lengths, not
  on the number of tensors;
- ``TRACED`` (inside ``torch.compile``): one block, and each sum a product and a row sum
  written per tensor, which the compiler fuses with the optimizer's update into one loop.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from stepsize_lens._device_paths import forced_accelerator
from stepsize_lens._rows import dots, matmul_is_exact, norms, row_order, rows_view
from stepsize_lens.optim._projection import (
    RowLayout,
    choose_views,
    projectable,
    projection_coefs,
    row_pieces,
    stats_dtype,
)

#: Elements per block on the CPU (8 MB of float32 per array). A pass over a block touches about
#: six block-sized arrays, which stay in the last-level cache between the ops of that block;
#: smaller blocks measured slower (more ops per step) on ResNet-18 (benchmarks/optim_step.py).
BLOCK_NUMEL = 1 << 21


@dataclass(frozen=True)
class Mode:
    """How the engine runs: ``block_numel`` (None: one block), ``gather`` (row sums over
    buckets of a flat scratch), ``traced`` (inside ``torch.compile``)."""

    name: str
    block_numel: int | None
    gather: bool = False
    traced: bool = False


CPU = Mode("cpu", BLOCK_NUMEL)
ACCELERATOR = Mode("accelerator", None, gather=True)
TRACED = Mode("traced", None, traced=True)


def mode_for(device: torch.device) -> Mode:
    """`TRACED` inside ``torch.compile``, else `ACCELERATOR` off the CPU or where forced
    (``STEPSIZE_LENS_DEVICE_PATHS=accelerator``), else `CPU`."""
    if torch.compiler.is_compiling():
        return TRACED
    if device.type != "cpu" or forced_accelerator():
        return ACCELERATOR
    return CPU


@dataclass(frozen=True)
class Piece:
    """Rows r0:r1 of tensor t (an index into the list a `RowBlocks` was built for)."""

    t: int
    r0: int
    r1: int


class RowBlocks:
    """Blocks of row ranges over a list of >= 2-D tensors.

    Each tensor is cut into pieces of whole rows of at most ``block_numel`` elements (at least
    one row; None: whole tensors); consecutive pieces are packed into blocks of at most
    ``block_numel`` elements. Pieces are in tensor order and row order, which is also the order
    of the rows in `RowLayout`'s flat vectors.
    """

    def __init__(self, shapes: Sequence[torch.Size], block_numel: int | None = BLOCK_NUMEL) -> None:
        self.layout = RowLayout.of(shapes)
        rows, numels = self.layout.rows, self.layout.numels
        self.pieces: list[Piece] = []
        self.piece_rows: list[list[int]] = []  # per tensor: rows of each of its pieces
        for t, (n_rows, numel) in enumerate(zip(rows, numels)):
            if block_numel is None:
                self.pieces.append(Piece(t, 0, n_rows))
                self.piece_rows.append([n_rows])
                continue
            step = max(1, block_numel // (numel // n_rows))
            cuts = list(range(0, n_rows, step))
            self.pieces += [Piece(t, r0, min(n_rows, r0 + step)) for r0 in cuts]
            self.piece_rows.append([min(n_rows, r0 + step) - r0 for r0 in cuts])
        self.sizes = [p.r1 - p.r0 for p in self.pieces]
        self.blocks: list[tuple[int, int]] = []  # [start, stop) ranges of pieces
        if block_numel is None:
            self.blocks = [(0, len(self.pieces))] if self.pieces else []
            return
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
        """A flat per-row vector (or [rows, 1] column) cut into the pieces' rows (views)."""
        return list(per_row.split(self.sizes))


def _sums_per_piece(
    w: Sequence[Tensor], g: Sequence[Tensor], d: Sequence[Tensor], out: Tensor
) -> None:
    """CPU: out[:, rows of each piece] = <w, g>, ||w||, ||g||, <w, d>: one read of the data
    per sum (`_rows.dots`, `_rows.norms`)."""
    sizes = [x.shape[0] for x in w]
    columns = [list(row.split(sizes)) for row in out]
    matmul = matmul_is_exact(out.device)
    for i, (wi, gi, di) in enumerate(zip(w, g, d)):
        dots(wi, gi, columns[0][i], matmul)
        norms(wi, columns[1][i])
        norms(gi, columns[2][i])
        dots(wi, di, columns[3][i], matmul)


def _sums_traced(w: Sequence[Tensor], g: Sequence[Tensor], d: Sequence[Tensor]) -> Tensor:
    """Inside ``torch.compile``: per tensor, products and row sums the compiler fuses with
    their producers. Long rows are summed in `row_pieces` equal pieces (inductor sums short
    rows faster)."""
    out = []
    for wi, gi, di in zip(w, g, d):
        rows, cols = wi.shape
        pieces = row_pieces(cols)

        def total(x: Tensor, rows: int = rows, pieces: int = pieces) -> Tensor:
            return x.reshape(rows * pieces, -1).sum(1).view(rows, pieces).sum(1)

        sums = [total(wi * gi), total(wi * wi).sqrt(), total(gi * gi).sqrt(), total(wi * di)]
        out.append(torch.stack(sums))
    return torch.cat(out, 1)


def _sums_gathered(
    w: Sequence[Tensor], g: Sequence[Tensor], d: Sequence[Tensor], dtype: torch.dtype
) -> Tensor:
    """Accelerators: w, g and d gathered into a flat [3, numel] scratch (three foreach copies),
    then, per run of tensors with equal row length K (adjacent: `Partition` orders them by K),
    the products and row sums of all their rows at once."""
    numels = [x.numel() for x in w]
    total = sum(numels)
    scratch = torch.empty((3, total), dtype=dtype, device=w[0].device)
    views = [list(row.split(numels)) for row in scratch]
    for row, src in zip(views, (w, g, d)):
        torch._foreach_copy_([v.view(x.shape) for v, x in zip(row, src)], list(src))
    out, start, i = [], 0, 0
    while i < len(w):
        width, rows, j = w[i].shape[1], 0, i
        while j < len(w) and w[j].shape[1] == width:
            rows += w[j].shape[0]
            j += 1
        x = scratch[:, start : start + rows * width].view(3, rows, width)
        w_products = (x[0:1] * x).sum(-1)  # <w, w>, <w, g>, <w, d>
        g_square = x[1].square().sum(-1)
        out.append(torch.stack([w_products[1], w_products[0], g_square, w_products[2]]))
        start += rows * width
        i = j
    sums = torch.cat(out, 1)
    sums[1:3].sqrt_()
    return sums


def row_sums(
    mode: Mode, w: Sequence[Tensor], g: Sequence[Tensor], d: Sequence[Tensor], dtype: torch.dtype
) -> Tensor:
    """[4, rows] in ``dtype``: <w_r, g_r>, ||w_r||, ||g_r||, <w_r, d_r> over the rows of the
    [rows, K] pieces ``w``, ``g``, ``d``, in piece order. The pieces are float32 or float64, the
    statistics' own dtype: half-precision parameters reach the engine as float32 copies
    (`_base.in_float32`)."""
    if mode.traced:
        return _sums_traced(w, g, d)
    if mode.gather:
        return _sums_gathered(w, g, d, dtype)
    out = torch.empty((4, sum(x.shape[0] for x in w)), dtype=dtype, device=w[0].device)
    _sums_per_piece(w, g, d, out)
    return out


class Partition:
    """The route of each tensor of a device/dtype group in a multi-tensor step.

    ``plain``: never projected (ndim < 2 or empty). ``blocked``: projectable and its rows are
    a view of its memory (`rows`), so it goes through `RowBlocks`; with ``by_width`` they are
    ordered by row length (stable), so that rows of equal length are adjacent. ``fallback``:
    projectable but dim 0 is not the outermost in memory (or the tensor is not dense):
    per-tensor path. For blocked tensors, gradients in another layout are copied for this step
    and state tensors in another layout are replaced (once) by copies in the parameter's layout.
    """

    def __init__(self, params: Sequence[Tensor], by_width: bool = False) -> None:
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
        if by_width:
            self.blocked.sort(key=lambda i: self.rows[i].shape[1])

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
        mode: Mode,
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
            mode,
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
        mode: Mode,
    ) -> None:
        shapes = tuple(p.shape for p in params)
        if mode.traced:  # no lru_cache inside a traced function
            self.blocks = RowBlocks(shapes, mode.block_numel)
        else:
            self.blocks = row_blocks(shapes, mode.block_numel)
        self.mode = mode
        self.layout = self.blocks.layout
        self.states = list(states)
        self.stats_dtype = stats_dtype(params[0].dtype)
        self.w, self.g = self.blocks.cut(w_rows), self.blocks.cut(g_rows)
        self.state = {key: self.blocks.cut(rows) for key, rows in state_rows.items()}

    def per_piece(self, key: str) -> list:
        """``state[key]`` of each piece's tensor (e.g. AdamP's step counts; None where absent,
        as in a compiled step, which gets them as scalars)."""
        return [self.states[piece.t].get(key) for piece in self.blocks.pieces]

    def first_pass(
        self, direction: Callable[[int, int], list[Tensor]], *, delta: float, eps: float
    ) -> tuple[list[Tensor], Tensor, Tensor]:
        """Pass 1, then the decisions: (d per piece, view per tensor, c per row).

        Per block a:b: d = ``direction(a, b)`` (the optimizer's update of those pieces; it may
        update state in place) and the row sums (`row_sums`). Then, for all tensors at once:
        the views and the coefficients c_r of the projection d_r <- d_r - c_r w_r
        (`projection_coefs`).
        """
        d: list[Tensor] = []
        sums = []
        for a, b in self.blocks.blocks:
            d_block = direction(a, b)
            sums.append(row_sums(self.mode, self.w[a:b], self.g[a:b], d_block, self.stats_dtype))
            d += d_block
        stats = sums[0] if len(sums) == 1 else torch.cat(sums, 1)
        views = choose_views(stats[0], stats[1], stats[2], self.layout, delta, eps)
        coefs = projection_coefs(stats[3], stats[1], views, self.layout, eps)
        return d, views, coefs

    def save_views(self, views: Tensor) -> None:
        """Record each tensor's view in ``state["projection"]`` (device to device)."""
        torch._foreach_copy_([s["projection"] for s in self.states], list(views.unbind(0)))


@functools.lru_cache(maxsize=64)
def row_blocks(shapes: tuple[torch.Size, ...], block_numel: int | None) -> RowBlocks:
    """The (cached) block plan of a list of parameter shapes."""
    return RowBlocks(shapes, block_numel)
