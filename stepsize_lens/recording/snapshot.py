"""Snapshot: the one copy of w the lens keeps across ``optimizer.step()``, and the passes that
turn (w, g, w') into per-row sums.

**Memory.** The optimizer overwrites w in place, so w must be copied before the step; that copy
is the only parameter-sized memory the lens keeps. Rows of equal length (same device and dtype)
share a bucket, one buffer [rows, K] in the parameters' own dtype: 1.0x the tracked parameters
plus a row-to-tensor index (`held_bytes`). g is never stored (its sums are taken before the
step) and Δ never whole (it is formed tile by tile after the step).

**Passes of one record.** A bucket is cut into units of at most ``tile`` elements: a run of
small tensors (gathered through a scratch tile) or a slice of rows of a large one (read in
place). Per unit, with `row_stats`:

- before the step (`capture`, `grad_sums`): W ← w, unless W still holds w (see below); then
  ‖w_r‖², ⟨w_r, g_r⟩, ‖g_r‖²;
- after the step (`update_sums`): Δ = w' − W into a scratch tile, ⟨w_r, Δ_r⟩, ‖Δ_r‖² and the
  tangential part ‖Δ_r − c_r·w_r‖² while Δ is in cache; then, if the next step will be
  recorded too, W ← w' from the same cache-warm tile.

When the previous record left w' in W and no one has written the parameters since (their
``_version`` counters and storage are unchanged: forward and backward never write them), the
next capture copies nothing. Recording every step then reads w once, g once and w' once.
Parameters written through ``.data`` bypass the version counter: code that edits parameters
between steps that way should record on a schedule with gaps, or the lens may compare w' with
a stale w.

Half-precision parameters are summed in float32 (their tiles are converted on the way), float32
and float64 parameters in their own dtype (`row_stats` on precision).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from stepsize_lens._rows import as_rows, row_order
from stepsize_lens.recording import row_stats
from stepsize_lens.recording.device import CPU_PATHS, DevicePaths, to_device

# tile sizes (elements): a CPU tile (4 MB of float32) keeps a unit's w, w' and Δ in the cache
# while its passes run, and is large enough that the dozen small ops per unit stay below a
# tenth of its cost; accelerators prefer few, large kernels
CPU_TILE = 1 << 20
ACCELERATOR_TILE = 1 << 24
# scratch tiles never exceed this share of the tracked elements (unless one row is longer)
TILE_SHARE = 1 / 16

# the per-row tables of one record beyond the sums (float64 Gram, tangential parts, row map,
# the metrics' per-row intermediates): torch's memory profiler measured 55-65 bytes per row
# at the peak of a record (models of 20,000 rows); rounded up
ROW_TABLE_BYTES = 96

# columns of the per-row sums (WW, GG, DD hold norms until the end of a record)
WW, WG, GG, WD, DD, PERP2 = range(6)


@dataclass
class _Unit:
    """Rows [start, stop) of a bucket and the tensor pieces that fill them, in order."""

    start: int
    stop: int
    pieces: list[tuple[int, int, int]]  # (tensor index, first row in the tensor, rows)

    @property
    def rows(self) -> int:
        return self.stop - self.start


@dataclass
class _Bucket:
    buffer: torch.Tensor  # [rows, K]: w of every member row
    stat_dtype: torch.dtype
    convert: bool  # half precision: every tile goes through a float32 scratch
    units: list[_Unit] = field(default_factory=list)


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _stat_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


class Snapshot:
    """Buffers and passes for one fixed list of tensors; rebuild it when the list changes.

    Per-row results come out bucket by bucket (`row_tensor` maps rows to tensors), as float64
    on `device`. ``paths``: `device.DevicePaths` (refinement and dot products).
    """

    def __init__(
        self,
        tensors: Sequence[torch.Tensor],
        paths: DevicePaths = CPU_PATHS,
        tile: int | None = None,
    ) -> None:
        self.paths = paths
        self.num_tensors = len(tensors)
        self.device = tensors[0].device if tensors else torch.device("cpu")
        self._orders = [row_order(t) for t in tensors]
        shapes = [as_rows(t, order).shape for t, order in zip(tensors, self._orders, strict=True)]
        self._row_shapes = [tuple(shape) for shape in shapes]
        # rows of a tensor whose dims are already in row order are a plain view of it
        self._in_order = [order == tuple(range(t.ndim)) for t, order in zip(tensors, self._orders)]
        total = sum(rows * width for rows, width in shapes)
        default = CPU_TILE if self.device.type == "cpu" else ACCELERATOR_TILE
        longest = max((width for _, width in shapes), default=1)
        self.tile = tile or min(default, max(longest, int(total * TILE_SHARE)))
        groups: dict[tuple[torch.device, torch.dtype, int], list[int]] = {}
        for index, tensor in enumerate(tensors):
            groups.setdefault((tensor.device, tensor.dtype, shapes[index][1]), []).append(index)
        self.buckets: list[_Bucket] = []
        member_ids: list[int] = []
        member_rows: list[int] = []
        for (device, dtype, width), members in groups.items():
            rows = sum(shapes[i][0] for i in members)
            stat_dtype = _stat_dtype(dtype)
            bucket = _Bucket(
                torch.empty((rows, width), device=device, dtype=dtype),
                stat_dtype,
                convert=stat_dtype != dtype,
            )
            bucket.units = _units([(i, shapes[i][0]) for i in members], width, self.tile)
            for index in members:
                member_ids.append(index)
                member_rows.append(shapes[index][0])
            self.buckets.append(bucket)
        self.num_rows = sum(member_rows)
        # row -> tensor map, as (tensor, rows) runs: it is rebuilt per record, never held
        self._member_ids = torch.tensor(member_ids, dtype=torch.long)
        self._member_rows = torch.tensor(member_rows, dtype=torch.long)
        self._members_on: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        self.multi_row = torch.tensor([t.ndim >= 2 for t in tensors], dtype=torch.bool)
        self._holds: list[tuple[int, int]] | None = None  # (version, data_ptr) W was taken at
        self._sums: list[torch.Tensor] = []

    # -- bookkeeping ------------------------------------------------------------------------
    @property
    def row_tensor_cpu(self) -> torch.Tensor:
        """[rows] int64: the tracked tensor each row belongs to, in row order."""
        return torch.repeat_interleave(self._member_ids, self._member_rows)

    def row_tensor(self, device: torch.device) -> torch.Tensor:
        """`row_tensor_cpu` on ``device``, built there without a host synchronisation."""
        if device not in self._members_on:
            self._members_on[device] = (
                to_device(self._member_ids, device),
                to_device(self._member_rows, device),
            )
        ids, rows = self._members_on[device]
        return torch.repeat_interleave(ids, rows, output_size=self.num_rows)

    def held_bytes(self) -> int:
        """Bytes this snapshot keeps between records: the copy of w, plus a few numbers per
        tensor."""
        buffers = sum(b.buffer.numel() * b.buffer.element_size() for b in self.buckets)
        per_tensor = self._member_ids.numel() * 16 * (1 + len(self._members_on))
        return buffers + per_tensor + self.multi_row.numel()

    def record_bytes(self) -> int:
        """Bytes a record allocates on top of `held_bytes`, at most at once: the per-row sums,
        one bucket's scratch tiles (w converted, too, for half precision; refining a few rows
        gathers at most 3/8 of a tile more), and the float64 per-row tables the metrics are
        computed from (about `ROW_TABLE_BYTES` per row)."""
        sums = sum(b.buffer.shape[0] * 6 * _itemsize(b.stat_dtype) for b in self.buckets)
        scratch = max(
            (
                max((u.rows for u in b.units), default=0)
                * b.buffer.shape[1]
                * _itemsize(b.stat_dtype)
                * ((2 if b.convert else 1) + 3 / row_stats.DENSE_SHARE)
                for b in self.buckets
            ),
            default=0,
        )
        return int(sums + scratch + self.num_rows * ROW_TABLE_BYTES)

    def _rows(self, tensor: torch.Tensor, index: int) -> torch.Tensor:
        """``tensor`` (w, g or w' of tracked tensor ``index``) as [rows, K] in w's element
        order: a view for dense layouts, else one copy. (The hooks run under ``no_grad``, so a
        view of a parameter needs no ``detach``.)"""
        if self._in_order[index] and tensor.is_contiguous():
            return tensor.view(self._row_shapes[index])  # the common case: one call
        return as_rows(tensor.detach(), self._orders[index])

    def _row_views(self, tensors: Sequence[torch.Tensor | None]) -> list[torch.Tensor | None]:
        return [None if t is None else self._rows(t, i) for i, t in enumerate(tensors)]

    @staticmethod
    def _marks(tensors: Sequence[torch.Tensor]) -> list[tuple[int, int]]:
        return [(t._version, t.data_ptr()) for t in tensors]

    # -- before the step ----------------------------------------------------------------------
    def capture(self, weights: Sequence[torch.Tensor]) -> bool:
        """W ← w, unless W still holds exactly these values. True if it copied."""
        if self._holds is not None and self._holds == self._marks(weights):
            return False
        views = self._row_views(weights)
        dst, src = [], []
        for bucket in self.buckets:
            for unit in bucket.units:
                _pieces_into(bucket.buffer[unit.start : unit.stop], unit, views, dst, src)
        with torch.no_grad():
            _foreach_copy(dst, src)
        self._holds = None
        return True

    @torch.no_grad()
    def grad_sums(self, grads: Sequence[torch.Tensor | None]) -> None:
        """⟨w_r, g_r⟩ and ‖g_r‖ of every row, w read from W (zeros where g is None)."""
        self._sums = []
        views = self._row_views(grads)
        for bucket in self.buckets:
            # one contiguous row per sum: [6, rows]
            sums = torch.zeros(
                (6, bucket.buffer.shape[0]), dtype=bucket.stat_dtype, device=bucket.buffer.device
            )
            sums[PERP2] = math.nan  # refined rows only; the rest come from the sums
            wg_sum, g_norm = sums[WG], sums[GG]
            matmul = self._matmul(bucket)
            scratch = _Scratch(bucket)
            for unit in bucket.units:
                g = self._gather(bucket, unit, views, scratch)
                if g is None:
                    continue  # no gradient: ⟨w, g⟩ = ‖g‖² = 0
                w = scratch.weights(unit)
                rows = slice(unit.start, unit.stop)
                row_stats.dots(w, g, wg_sum[rows], matmul)
                row_stats.norms(g, g_norm[rows])
            self._sums.append(sums)

    # -- after the step -----------------------------------------------------------------------
    @torch.no_grad()
    def update_sums(
        self, weights_after: Sequence[torch.Tensor], keep: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-row Gram matrices of (w, g, Δ) [rows, 3, 3] and ‖Δ⊥_r‖² [rows], float64.

        ⟨g, Δ⟩ is not measured (no metric uses it; g is gone): its Gram entries are NaN.
        ``keep``: leave w' in W for the next record (its capture then copies nothing).
        """
        assert len(self._sums) == len(self.buckets), "grad_sums must run first"
        views = self._row_views(weights_after)
        for bucket, sums in zip(self.buckets, self._sums, strict=True):
            matmul = self._matmul(bucket)
            scratch = _Scratch(bucket)
            w_norm, wd_sum, d_norm, perp2 = sums[WW], sums[WD], sums[DD], sums[PERP2]
            refine_all = self.paths.refine_all_rows
            for unit in bucket.units:
                w = scratch.weights(unit)
                d = self._gather(bucket, unit, views, scratch, minus=w)
                assert d is not None
                rows = slice(unit.start, unit.stop)
                row_stats.norms(w, w_norm[rows])  # w is in cache from the subtraction
                row_stats.dots(w, d, wd_sum[rows], matmul)
                row_stats.norms(d, d_norm[rows])
                row_stats.refine(
                    w, d, w_norm[rows], wd_sum[rows], d_norm[rows], perp2[rows], refine_all
                )
                if keep:  # w' is still in cache from the subtraction above
                    dst, src = [], []
                    _pieces_into(bucket.buffer[unit.start : unit.stop], unit, views, dst, src)
                    _foreach_copy(dst, src)
        self._holds = self._marks(weights_after) if keep else None
        parts = [sums.to(self.device, torch.float64) for sums in self._sums]
        self._sums = []
        if not parts:
            empty = torch.zeros((0, 3, 3), dtype=torch.float64, device=self.device)
            return empty, torch.zeros(0, dtype=torch.float64, device=self.device)
        sums = torch.cat(parts, dim=1)
        ww, gg, dd = (sums[column].square() for column in (WW, GG, DD))
        wg, wd = sums[WG], sums[WD]
        refined = sums[PERP2]
        perp2 = torch.where(refined.isnan(), row_stats.tangential_sq(wd, ww, dd), refined)
        nan = torch.full_like(ww, math.nan)
        gram = torch.stack([ww, wg, wd, wg, gg, nan, wd, nan, dd], 1).view(-1, 3, 3)
        return gram, perp2

    # -- helpers ------------------------------------------------------------------------------
    def _matmul(self, bucket: _Bucket) -> bool:
        return not self.paths.elementwise_dots and row_stats.matmul_is_exact(bucket.buffer.device)

    def _gather(
        self,
        bucket: _Bucket,
        unit: _Unit,
        views: Sequence[torch.Tensor | None],
        scratch: _Scratch,
        minus: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        """The unit's rows of ``views`` (row blocks of g or w') as one [rows, K] block in the
        sums' dtype, minus ``minus`` if given: a view of a single tensor when possible, else
        gathered into the scratch tile (zeros for missing tensors). None if all are missing."""
        blocks = [views[index] for index, _, _ in unit.pieces]
        if all(block is None for block in blocks):
            return None
        if len(blocks) == 1 and blocks[0] is not None and blocks[0].dtype == bucket.stat_dtype:
            _, first, rows = unit.pieces[0]
            block = blocks[0][first : first + rows]
            if minus is None:
                return block
            return torch.sub(block, minus, out=scratch.block(unit))
        out = scratch.block(unit)
        dst: list[torch.Tensor] = []
        src: list[torch.Tensor] = []
        _pieces_into(out, unit, views, dst, src)
        _foreach_copy(dst, src)
        return out if minus is None else out.sub_(minus)


class _Scratch:
    """Scratch tiles of one bucket for one pass, freed with it: the gathered block and, for
    half-precision buckets, w converted to float32. Each holds the bucket's largest unit."""

    def __init__(self, bucket: _Bucket) -> None:
        self.bucket = bucket
        self.rows = max((unit.rows for unit in bucket.units), default=0)
        self._block: torch.Tensor | None = None
        self._weights: torch.Tensor | None = None

    def _new(self) -> torch.Tensor:
        buffer = self.bucket.buffer
        return torch.empty(
            (self.rows, buffer.shape[1]), dtype=self.bucket.stat_dtype, device=buffer.device
        )

    def block(self, unit: _Unit) -> torch.Tensor:
        if self._block is None:
            self._block = self._new()
        return self._block[: unit.rows]

    def weights(self, unit: _Unit) -> torch.Tensor:
        """W of the unit's rows in the sums' dtype (a view unless the bucket converts)."""
        w = self.bucket.buffer[unit.start : unit.stop]
        if not self.bucket.convert:
            return w
        if self._weights is None:
            self._weights = self._new()
        return self._weights[: unit.rows].copy_(w)


def _units(members: Sequence[tuple[int, int]], width: int, tile: int) -> list[_Unit]:
    """Cut a bucket's members (tensor index, rows) into units of at most ``tile`` elements:
    runs of small tensors, and row slices of large ones (at least one row each)."""
    units: list[_Unit] = []
    row = 0
    run: list[tuple[int, int, int]] = []
    run_start = 0

    def close_run() -> None:
        nonlocal run
        if run:
            units.append(_Unit(run_start, row, run))
            run = []

    for index, rows in members:
        if rows * width > tile:
            close_run()
            most = max(1, tile // max(width, 1))  # rows per tile at most
            step = -(-rows // -(-rows // most))  # as many tiles as needed, of equal size
            for first in range(0, rows, step):
                count = min(step, rows - first)
                units.append(_Unit(row, row + count, [(index, first, count)]))
                row += count
            continue
        if run and (row - run_start + rows) * width > tile:
            close_run()
        if not run:
            run_start = row
        run.append((index, 0, rows))
        row += rows
    close_run()
    return units


def _pieces_into(
    out: torch.Tensor,
    unit: _Unit,
    views: Sequence[torch.Tensor | None],
    dst: list[torch.Tensor],
    src: list[torch.Tensor],
) -> None:
    """Pair each piece's rows of ``out`` (a [unit rows, K] block) with its source rows in
    ``views``; rows whose tensor is missing are zeroed."""
    row = 0
    for index, first, rows in unit.pieces:
        view = views[index]
        if view is None:
            out[row : row + rows].zero_()
        else:
            dst.append(out[row : row + rows])
            src.append(view[first : first + rows])
        row += rows


def _foreach_copy(dst: list[torch.Tensor], src: list[torch.Tensor]) -> None:
    if not dst:
        return
    try:
        torch._foreach_copy_(dst, src)
    except (RuntimeError, TypeError):  # e.g. mixed devices in one list: fall back per tensor
        for d, s in zip(dst, src, strict=True):
            d.copy_(s)
