"""The math AdamP and SGDP share: the scale-invariance test and the radial projection.

Heo et al., "AdamP: Slowing Down the Slowdown for Momentum Optimizers on Scale-invariant
Weights", ICLR 2021, Sec. 3 (docs/design.md §4). For a weight w with ndim >= 2, its raw
gradient g and an update direction u (both optimizers use ``eps`` from the param group,
δ = ``delta``):

* channel view: rows w_r = w[r].flatten(), K = numel / rows;
  cos_r = <w_r, g_r> / (max(||w_r||, eps) * max(||g_r||, eps))   (as F.cosine_similarity);
  the view passes if max_r |cos_r| < δ / sqrt(K)  (`paper_test.channel_threshold`);
* layer view (tried only if the channel view fails): the same with one row of numel columns
  (`paper_test.layer_threshold`);
* projection for the passing view: u_r <- u_r - w_r * <w_r, u_r> / (||w_r|| + eps)^2
  (per row for the channel view, over the whole tensor for the layer view), and the
  weight decay of that tensor is multiplied by ``wd_ratio``.

Everything here works on row statistics batched over the rows of many tensors at once and
decides with tensor ops, so no path ever synchronises with the device. Row statistics of a
list of tensors live in flat vectors of length R = sum of the tensors' row counts, in tensor
order; `RowLayout` knows which rows belong to which tensor. `project_` is the per-tensor form
(the reference paths); `_blocked` feeds the same functions from cache-sized blocks of rows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from stepsize_lens._rows import as_rows, row_order
from stepsize_lens._schema import View
from stepsize_lens.paper_test import channel_threshold, layer_threshold, views_from_cosines


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

        Computed in double by `paper_test` like the reference, then rounded to the statistics'
        dtype.
        """
        key = ("thr", delta, dtype, device)
        if key not in self._cache:
            chan = [channel_threshold(n, r, delta) for n, r in zip(self.numels, self.rows)]
            layer = [layer_threshold(n, delta) for n in self.numels]
            self._cache[key] = torch.tensor([chan, layer], dtype=dtype, device=device)
        return self._cache[key]

    def row_index(self, device: torch.device) -> Tensor:
        """The tensor each row belongs to (its index in the list), as a device tensor."""
        key = ("row_index", device)
        if key not in self._cache:
            tensors = torch.arange(len(self.rows), device=device)
            lengths = self.lengths(device)
            self._cache[key] = tensors.repeat_interleave(lengths, output_size=self.total_rows)
        return self._cache[key]

    def expand(self, per_tensor: Tensor) -> Tensor:
        """Per-tensor values repeated over each tensor's rows (no host sync: size is known).

        Eager: one gather by `row_index`. Traced by ``torch.compile``: a concatenation of
        broadcasts, which the compiler stores once (a gather it would recompute, unvectorised,
        for every element of the loops that read it).
        """
        if torch.compiler.is_compiling():
            return torch.cat([per_tensor[t : t + 1].expand(r) for t, r in enumerate(self.rows)])
        return per_tensor[self.row_index(per_tensor.device)]

    # unsafe=True skips segment_reduce's validation of the lengths, which reads them on the
    # host (a device sync); ours are positive and sum to total_rows by construction.
    def segment_sum(self, per_row: Tensor) -> Tensor:
        lengths = self.lengths(per_row.device)
        return torch.segment_reduce(per_row, "sum", lengths=lengths, unsafe=True)

    def segment_max(self, per_row: Tensor) -> Tensor:
        lengths = self.lengths(per_row.device)
        return torch.segment_reduce(per_row, "max", lengths=lengths, unsafe=True)


#: Inductor sums float32 rows longer than this with a slower cascade helper, so row kernels
#: see long rows as several pieces (`row_pieces`). A speed detail: any split is exact enough.
PIECE_LIMIT = 4096


def row_pieces(cols: int, limit: int = PIECE_LIMIT) -> int:
    """The fewest equal pieces of at most ``limit`` elements a row of ``cols`` splits into,
    looking no further than 8 times the fewest possible; 1 when the row is short enough or no
    such split exists (the kernel then sums whole rows, correctly but more slowly)."""
    if cols <= limit:
        return 1
    fewest = -(-cols // limit)
    for pieces in range(fewest, 8 * fewest + 1):
        if cols % pieces == 0:
            return pieces
    return 1


def choose_views(
    w_dot_g: Tensor,
    w_norm: Tensor,
    g_norm: Tensor,
    layout: RowLayout,
    delta: float,
    eps: float,
) -> Tensor:
    """The `View` each tensor passes (NONE, CHANNEL or LAYER), from per-row statistics.

    ``w_dot_g`` = <w_r, g_r>, ``w_norm`` = ||w_r||, ``g_norm`` = ||g_r|| for every row of every
    tensor. The test itself is `paper_test.views_from_cosines` (the lens's too); a NaN cosine
    fails its view, and where both are NaN no view passes, as in the reference.
    """
    thr = layout.thresholds(delta, w_dot_g.dtype, w_dot_g.device)
    cos_rows = w_dot_g / (w_norm.clamp_min(eps) * g_norm.clamp_min(eps))
    channel_max = layout.segment_max(cos_rows.abs())
    layer_w = layout.segment_sum(w_norm * w_norm).sqrt_()
    layer_g = layout.segment_sum(g_norm * g_norm).sqrt_()
    cos_layer = layout.segment_sum(w_dot_g) / (layer_w.clamp_min(eps) * layer_g.clamp_min(eps))
    return views_from_cosines(cos_layer, channel_max, thr, undefined=View.NONE).long()


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
        row_views == int(View.CHANNEL),
        chan,
        torch.where(row_views == int(View.LAYER), layout.expand(layer), zero),
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
    return views[0], views[0] != int(View.NONE)


def pick(
    cond: Tensor, if_false: float | Tensor, if_true: float | Tensor, dtype: torch.dtype
) -> Tensor:
    """``if_true`` where ``cond`` else ``if_false``, as ``dtype`` on ``cond``'s device.

    Python floats are rounded exactly like a scalar argument of ``mul_`` (so the weight decay
    matches the reference bit for bit) and filled on the device (no host-to-device copy); 0-dim
    tensors (a compiled step's scalars) are rounded the same way. Use `stats_dtype` so that
    low-precision parameters keep the constant in float32, as a Python scalar would.
    """
    kw = dict(dtype=dtype, device=cond.device)

    def constant(x: float | Tensor) -> Tensor:
        return x.to(**kw) if isinstance(x, Tensor) else torch.full((), x, **kw)

    return torch.where(cond, constant(if_true), constant(if_false))
