"""Shared math of AdamP and SGDP: the scale-invariance test and the radial projection.

Heo et al., "AdamP: Slowing Down the Slowdown for Momentum Optimizers on Scale-invariant
Weights", ICLR 2021, Sec. 3. For a weight w with ndim >= 2, its raw gradient g and an update
direction u (both optimizers use ``eps`` from the param group, δ = ``delta``):

* channel view: rows w_r = w[r].flatten(), K = numel / rows;
  cos_r = <w_r, g_r> / (max(||w_r||, eps) * max(||g_r||, eps))   (as F.cosine_similarity);
  the view passes if max_r |cos_r| < δ / sqrt(K);
* layer view (tried only if the channel view fails): the same with one row of numel columns;
* projection for the passing view: u_r <- u_r - w_r * <w_r, u_r> / (||w_r|| + eps)^2
  (per row for the channel view, over the whole tensor for the layer view), and the
  weight decay of that tensor is multiplied by ``wd_ratio``.

Everything here is batched over the rows of many tensors at once and decides with tensor ops,
so the multi-tensor optimizer paths never synchronise with the device. Row statistics of a
list of tensors live in flat vectors of length R = sum of the tensors' row counts, in tensor
order; `RowLayout` knows which rows belong to which tensor.

The multi-tensor paths (`RowBlocks`, `Partition`) see each >= 2-D tensor as a [rows, K] view
in its own memory order (channels_last included) and cut it into cache-sized blocks of rows.
Pass 1 (`BlockedTensors.first_pass`) runs, block by block, the row statistics of the test,
the optimizer's own update (moments or momentum buffer) and <w_r, d_r>; the views and
coefficients of all tensors are then decided at once; pass 2 (the optimizer's) applies
decay, projection and step block by block. Each pass
reads the data from memory about once, however many ops it runs on a block.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from stepsize_lens._rows import as_rows, row_order, rows_view

NONE, CHANNEL, LAYER = 0, 1, 2


def projectable(p: Tensor) -> bool:
    """Whether the paper tests (and may project) this tensor: ndim >= 2 and not empty."""
    return p.ndim > 1 and p.numel() > 0


@dataclass
class RowLayout:
    """Rows of a list of >= 2-D tensors laid end to end: tensor t owns rows[t] flat positions."""

    rows: list[int]
    numels: list[int]
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def of(cls, shapes: Sequence[torch.Size]) -> RowLayout:
        return cls([s[0] for s in shapes], [math.prod(s) for s in shapes])

    @property
    def total_rows(self) -> int:
        return sum(self.rows)

    def offsets(self) -> list[int]:
        out, acc = [], 0
        for r in self.rows:
            out.append(acc)
            acc += r
        return out

    def lengths(self, device: torch.device) -> Tensor:
        key = ("lengths", device)
        if key not in self._cache:
            self._cache[key] = torch.tensor(self.rows, dtype=torch.long, device=device)
        return self._cache[key]

    def thresholds(self, delta: float, dtype: torch.dtype, device: torch.device) -> Tensor:
        """[2, T]: δ/sqrt(K) (channel view) and δ/sqrt(numel) (layer view), per tensor.

        Computed in double like the reference, then rounded to the statistics' dtype.
        """
        key = ("thr", delta, dtype, device)
        if key not in self._cache:
            chan = [delta / math.sqrt(n // r) for n, r in zip(self.numels, self.rows)]
            layer = [delta / math.sqrt(n) for n in self.numels]
            self._cache[key] = torch.tensor([chan, layer], dtype=dtype, device=device)
        return self._cache[key]

    def expand(self, per_tensor: Tensor) -> Tensor:
        """Per-tensor values repeated over each tensor's rows (no host sync: size is known)."""
        lengths = self.lengths(per_tensor.device)
        return per_tensor.repeat_interleave(lengths, output_size=self.total_rows)

    # unsafe=True skips segment_reduce's validation of the lengths, which reads them on the
    # host (a device sync); ours are positive and sum to total_rows by construction.
    def segment_sum(self, per_row: Tensor) -> Tensor:
        lengths = self.lengths(per_row.device)
        return torch.segment_reduce(per_row, "sum", lengths=lengths, unsafe=True)

    def segment_max(self, per_row: Tensor) -> Tensor:
        lengths = self.lengths(per_row.device)
        return torch.segment_reduce(per_row, "max", lengths=lengths, unsafe=True)


def choose_views(
    w_dot_g: Tensor, w_norm: Tensor, g_norm: Tensor, layout: RowLayout, delta: float, eps: float
) -> Tensor:
    """The view each tensor passes (0 none, 1 channel, 2 layer), from per-row statistics.

    ``w_dot_g`` = <w_r, g_r>, ``w_norm`` = ||w_r||, ``g_norm`` = ||g_r|| for every row of every
    tensor. A NaN cosine fails both views, as in the reference.
    """
    thr = layout.thresholds(delta, w_dot_g.dtype, w_dot_g.device)
    cos_rows = w_dot_g / (w_norm.clamp_min(eps) * g_norm.clamp_min(eps))
    channel = layout.segment_max(cos_rows.abs()) < thr[0]
    layer_w = layout.segment_sum(w_norm * w_norm).sqrt_()
    layer_g = layout.segment_sum(g_norm * g_norm).sqrt_()
    cos_layer = layout.segment_sum(w_dot_g) / (layer_w.clamp_min(eps) * layer_g.clamp_min(eps))
    layer = cos_layer.abs() < thr[1]
    zero = torch.zeros((), dtype=torch.long, device=w_dot_g.device)
    return torch.where(channel, CHANNEL, torch.where(layer, LAYER, zero))


def projection_coefs(
    w_dot_u: Tensor, w_norm: Tensor, views: Tensor, layout: RowLayout, eps: float
) -> Tensor:
    """Per-row c such that u_r - c_r * w_r removes the radial part of the chosen view.

    Channel view: c_r = <w_r, u_r> / (||w_r|| + eps)^2; layer view: c = <w, u> / (||w|| + eps)^2
    for every row of the tensor; no view: 0.
    """
    chan = w_dot_u / (w_norm + eps).square()
    layer_norm = layout.segment_sum(w_norm * w_norm).sqrt_()
    layer = layout.segment_sum(w_dot_u) / (layer_norm + eps).square()
    row_views = layout.expand(views)
    zero = torch.zeros((), dtype=w_dot_u.dtype, device=w_dot_u.device)
    return torch.where(
        row_views == CHANNEL,
        chan,
        torch.where(row_views == LAYER, layout.expand(layer), zero),
    )


def stats_dtype(dtype: torch.dtype) -> torch.dtype:
    """Row statistics are accumulated in float32 at least (float64 for float64 tensors)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def row_dot(a: Tensor, b: Tensor, out: Tensor) -> Tensor:
    """out[r] = <a_r, b_r> for [rows, K] tensors (accumulated in out's dtype)."""
    if a.dtype == out.dtype:
        return torch.linalg.vecdot(a, b, dim=1, out=out)
    return torch.sum(a * b, dim=1, dtype=out.dtype, out=out)


def row_norm(a: Tensor, out: Tensor) -> Tensor:
    """out[r] = ||a_r||."""
    return torch.linalg.vector_norm(a, dim=1, dtype=out.dtype, out=out)


def project_(
    update: Tensor, w: Tensor, g: Tensor, *, delta: float, eps: float
) -> tuple[Tensor, Tensor]:
    """Per-tensor form, for the reference paths: project ``update`` in place for ``w``'s view.

    Returns (view code, whether a view passed) as 0-dim tensors; works for any memory layout.
    """
    layout = RowLayout.of([w.shape])
    sdt = stats_dtype(w.dtype)
    order = row_order(w)
    w_rows, g_rows, u_rows = (as_rows(x, order) for x in (w, g, update))
    n = w.shape[0]
    stats = torch.empty(4, n, dtype=sdt, device=w.device)
    row_dot(w_rows, g_rows, stats[0])
    row_norm(w_rows, stats[1])
    row_norm(g_rows, stats[2])
    row_dot(w_rows, u_rows, stats[3])
    views = choose_views(stats[0], stats[1], stats[2], layout, delta, eps)
    coefs = projection_coefs(stats[3], stats[1], views, layout, eps)
    shape = (n,) + (1,) * (w.ndim - 1)
    update.addcmul_(w, coefs.to(update.dtype).reshape(shape), value=-1)
    return views[0], views[0] != NONE


# --- multi-tensor machinery -------------------------------------------------------------------

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


def pick(cond: Tensor, if_false: float, if_true: float, dtype: torch.dtype) -> Tensor:
    """``if_true`` where ``cond`` else ``if_false``, as ``dtype`` on ``cond``'s device.

    The constants are rounded from Python floats exactly like a scalar argument of ``mul_``
    (so the weight decay matches the reference bit for bit), and are filled on the device
    (no host-to-device copy). Use `stats_dtype` so that low-precision parameters keep the
    constant in float32, as a Python scalar would.
    """
    kw = dict(dtype=dtype, device=cond.device)
    return torch.where(cond, torch.full((), if_true, **kw), torch.full((), if_false, **kw))
