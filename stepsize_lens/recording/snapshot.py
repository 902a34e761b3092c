"""Snapshot: the one copy of w the lens keeps across ``optimizer.step()``, and the passes that
turn (w, g, w') into per-row sums, in a number of ops that depends on the row lengths, not on
the number of tensors.

**Flat buffers.** The optimizer overwrites w in place, so w must be copied before the step; that
copy is the only parameter-sized memory the lens keeps: one flat buffer per (device, dtype), in
the parameters' own dtype (1.0x the tracked parameters plus a row-to-tensor index,
`held_bytes`). Inside it, the rows of equal length K lie together: a bucket, a [rows, K] view.
Every tensor is a block of rows of one bucket (`_rows.as_rows`: dim 0 the rows, a 1-D or 0-D
tensor one row).

**Units.** A flat buffer is cut into units of at most ``tile`` elements (whole buckets and
whole tensors where they fit, else slices of rows). A unit's rows are contiguous in the
buffer and in the per-row table, and span one or more buckets (its segments). Per unit, a
pass gathers a list of tensors into a flat scratch laid out like W with one
``torch._foreach_copy_`` (missing gradients: one ``torch._foreach_zero_``), then runs one
elementwise op over the whole unit or one row reduction per segment. On the CPU a tile (at
most 4 MB of float32, and 1/16 of the tracked parameters) keeps a unit's w, w' and Δ in the
cache while its passes run; on accelerators a unit is as large as `ACCELERATOR_TILE` allows,
so a record of a model below 16M elements per dtype is a handful of launches per row length.

**Passes of one record:**

- before the step: `capture` copies W ← w (all tensors of a buffer in one
  ``torch._foreach_copy_``), unless W still holds w (see below); `grad_sums` takes ‖g_r‖ and
  ⟨w_r, g_r⟩ per unit (g is never stored);
- after the step (`update_sums`): Δ = w' − W per unit into a scratch, then ‖w_r‖, ⟨w_r, Δ_r⟩,
  ‖Δ_r‖ and the tangential part ‖Δ_r − c_r·w_r‖ (c_r = ⟨w_r, Δ_r⟩/‖w_r‖²) while Δ is in
  cache; then, if the next step will be recorded too, W ← w' from the same cache-warm tile.

Dot products are a paired batched matmul per segment on the CPU (`row_stats.dots`) and, on the
accelerator paths, one elementwise product over the unit and one row sum per segment (no matmul
setting such as TF32 can touch it). The tangential part: on the CPU only the rows whose sums
cancel are refined (`row_stats.refine`, a data-dependent choice); on the accelerator paths every
row's tangential vector is formed (three ops over the unit's rows for c_r, two per segment),
so nothing waits for the host. Half-precision parameters are summed in float32 (their tiles are
converted on the way), float32 and float64 ones in their own dtype (`row_stats` on precision).

When the previous record left w' in W and no one has written the parameters since (their
``_version`` counters and storage are unchanged: forward and backward never write them), the
next capture copies nothing. Recording every step then reads w once, g once and w' once.
Parameters written through ``.data`` bypass the version counter: code that edits parameters
between steps that way should record on a schedule with gaps, or the lens may compare w' with
a stale w.
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
# CPU scratch tiles never exceed this share of the tracked elements (unless one row is longer)
TILE_SHARE = 1 / 16

# the per-row tables of one record beyond the sums (float64 Gram, tangential parts, row map,
# the metrics' per-row intermediates): torch's memory profiler measured 55-65 bytes per row
# at the peak of a record (models of 20,000 rows); rounded up
ROW_TABLE_BYTES = 96

# columns of the per-row sums: the norms first (squared together at the end), the tangential
# parts' squares (NaN where the sums do not cancel, on the CPU), then the dots;
# the table adds a NaN column for the Gram entries nobody measures (⟨g, Δ⟩)
GG, WW, DD, PERP, WG, WD = range(6)
_NAN = 6
_GRAM = (WW, WG, WD, WG, GG, _NAN, WD, _NAN, DD)  # a row's 3x3 Gram of (w, g, Δ), row-major


@dataclass
class _Bucket:
    """Rows of one length K in a flat buffer: ``buffer`` [rows, K] (a view of W)."""

    buffer: torch.Tensor
    first_row: int  # of its store's rows
    members: list[tuple[int, int]]  # (tensor index, rows), in row order


@dataclass
class _Segment:
    """Rows [lo, hi) of one bucket inside a unit, starting at element ``offset`` of the unit."""

    width: int
    lo: int  # rows of the store
    hi: int
    offset: int

    def of(self, flat: torch.Tensor) -> torch.Tensor:
        """These rows of a unit-shaped flat tensor, as [rows, K]."""
        rows = self.hi - self.lo
        return flat[self.offset : self.offset + rows * self.width].view(rows, self.width)


@dataclass
class _Unit:
    """Elements [start, stop) and rows [row_lo, row_hi) of a store; its segments; and the
    tensor pieces that fill it, as (tensor index, first row in the tensor, rows, first
    element in the unit, K)."""

    start: int
    stop: int
    row_lo: int
    row_hi: int
    segments: list[_Segment] = field(default_factory=list)
    pieces: list[tuple[int, int, int, int, int]] = field(default_factory=list)

    @property
    def numel(self) -> int:
        return self.stop - self.start


@dataclass
class _Store:
    """The flat buffer of one (device, dtype): W of every row, its buckets and units."""

    memory: torch.Tensor  # flat, in the parameters' dtype
    stat_dtype: torch.dtype  # dtype of the sums
    first_row: int  # of the snapshot's rows
    rows: int
    buckets: list[_Bucket] = field(default_factory=list)
    units: list[_Unit] = field(default_factory=list)
    members: list[int] = field(default_factory=list)  # tensor indices, in row order
    held: list[torch.Tensor] = field(default_factory=list)  # each member's rows of W

    @property
    def convert(self) -> bool:
        return self.stat_dtype != self.memory.dtype


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _stat_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


class Snapshot:
    """Buffers and passes for one fixed list of tensors; rebuild it when the list changes.

    Per-row results come out in row order (`row_tensor` maps rows to tensors), as float64 on
    `device`. ``paths``: `device.DevicePaths` (refinement, dot products, tile size).
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
        longest = max((width for _, width in shapes), default=1)
        accelerator = self.device.type != "cpu" or paths.elementwise_dots or paths.refine_all_rows
        if tile is None:
            tile = (
                ACCELERATOR_TILE
                if accelerator
                else min(CPU_TILE, max(longest, int(total * TILE_SHARE)))
            )
        self.tile = tile
        groups: dict[tuple[torch.device, torch.dtype], dict[int, list[int]]] = {}
        for index, tensor in enumerate(tensors):
            by_width = groups.setdefault((tensor.device, tensor.dtype), {})
            by_width.setdefault(shapes[index][1], []).append(index)
        self.stores: list[_Store] = []
        self.buckets: list[_Bucket] = []
        member_ids: list[int] = []
        member_rows: list[int] = []
        first_row = 0
        for (device, dtype), by_width in groups.items():
            numel = sum(shapes[i][0] * shapes[i][1] for m in by_width.values() for i in m)
            rows = sum(shapes[i][0] for m in by_width.values() for i in m)
            # one allocation per (device, dtype), the buckets views of it: many separate
            # buffers below the allocator's mmap threshold would fragment its heap
            store = _Store(
                torch.empty(numel, device=device, dtype=dtype), _stat_dtype(dtype), first_row, rows
            )
            offset = row = 0
            for width, members in by_width.items():
                bucket_rows = sum(shapes[i][0] for i in members)
                buffer = store.memory[offset : offset + bucket_rows * width].view(
                    bucket_rows, width
                )
                bucket = _Bucket(buffer, row, [(i, shapes[i][0]) for i in members])
                at = 0
                for index, count in bucket.members:
                    store.members.append(index)
                    store.held.append(buffer[at : at + count])
                    member_ids.append(index)
                    member_rows.append(count)
                    at += count
                store.buckets.append(bucket)
                self.buckets.append(bucket)
                offset += bucket_rows * width
                row += bucket_rows
            store.units = _units(store.buckets, tile)
            self.stores.append(store)
            first_row += rows
        self.num_rows = first_row
        self._sums: list[torch.Tensor] = []  # per store, this record's [6, rows]
        # row -> tensor map, as (tensor, rows) runs: it is rebuilt per record, never held
        self._member_ids = torch.tensor(member_ids, dtype=torch.long)
        self._member_rows = torch.tensor(member_rows, dtype=torch.long)
        self._members_on: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        self._gram_index: torch.Tensor | None = None
        self.multi_row = torch.tensor([t.ndim >= 2 for t in tensors], dtype=torch.bool)
        self._holds: list[tuple[int, int]] | None = None  # (version, data_ptr) W was taken at

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

    def held_rows(self, index: int) -> torch.Tensor:
        """Tracked tensor ``index``'s rows of W, [rows, K] (a view)."""
        for store in self.stores:
            if index in store.members:
                return store.held[store.members.index(index)]
        raise IndexError(index)

    def held_bytes(self) -> int:
        """Bytes this snapshot keeps between records: the copy of w, plus a few numbers per
        tensor."""
        buffers = sum(s.memory.numel() * s.memory.element_size() for s in self.stores)
        per_tensor = self._member_ids.numel() * 16 * (1 + len(self._members_on))
        return buffers + per_tensor + self.multi_row.numel()

    def record_bytes(self) -> int:
        """Bytes a record allocates on top of `held_bytes`, at most at once: the per-row sums
        (float64, and in the sums' dtype), one unit's scratch tiles (a gathered tile in the
        parameters' dtype; Δ in the sums' dtype; for half precision w and w' converted, for
        elementwise dots their product; refining a few rows on the CPU gathers at most 3/8 of
        a tile more), and the float64 per-row tables the metrics are computed from (about
        `ROW_TABLE_BYTES` per row)."""
        sums = self.num_rows * 7 * 8 + sum(
            s.rows * 6 * _itemsize(s.stat_dtype) for s in self.stores
        )
        scratch = 0
        for store in self.stores:
            largest = max((unit.numel for unit in store.units), default=0)
            tiles = 1 + (2 if store.convert else 0) + (1 if self.paths.elementwise_dots else 0)
            if not self.paths.refine_all_rows:
                tiles += 3 / row_stats.DENSE_SHARE
            per_element = store.memory.element_size() + tiles * _itemsize(store.stat_dtype)
            scratch = max(scratch, int(largest * per_element))
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
    @torch.no_grad()
    def capture(self, weights: Sequence[torch.Tensor]) -> bool:
        """Start a record: W ← w (one foreach copy per flat buffer), unless W still holds
        exactly these values. True if it copied."""
        if self._holds is not None and self._holds == self._marks(weights):
            return False
        views = self._row_views(weights)
        for store in self.stores:
            _foreach_copy(store.held, [views[i] for i in store.members])
        self._holds = None
        return True

    @torch.no_grad()
    def grad_sums(self, grads: Sequence[torch.Tensor | None]) -> None:
        """‖g_r‖ and ⟨w_r, g_r⟩ of every row, w read from W (zeros where g is None)."""
        views = self._row_views(grads)
        self._sums = []
        for store in self.stores:
            sums = torch.zeros((6, store.rows), dtype=store.stat_dtype, device=store.memory.device)
            if not self.paths.refine_all_rows:
                sums[PERP] = math.nan  # refined rows only; the rest come from the sums
            self._sums.append(sums)
            scratch = _Scratch(store)
            for unit in store.units:
                raw = scratch.gather(unit, views, "g")
                if raw is None:
                    continue  # no gradient: ⟨w, g⟩ = ‖g‖² = 0
                g = scratch.stat("g", raw, unit)
                w = scratch.weights(unit)
                for segment in unit.segments:
                    row_stats.norms(segment.of(g), sums[GG, segment.lo : segment.hi])
                self._dots(store, unit, w, g, sums[WG], scratch)

    # -- after the step -----------------------------------------------------------------------
    @torch.no_grad()
    def update_sums(
        self, weights_after: Sequence[torch.Tensor], keep: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-row Gram matrices of (w, g, Δ) [rows, 3, 3] and ‖Δ⊥_r‖² [rows], float64.

        ⟨g, Δ⟩ is not measured (no metric uses it; g is gone): its Gram entries are NaN.
        ``keep``: leave w' in W for the next record (its capture then copies nothing).
        """
        assert len(self._sums) == len(self.stores), "grad_sums must run first"
        views = self._row_views(weights_after)
        refine_all = self.paths.refine_all_rows
        table = torch.empty((self.num_rows, 7), dtype=torch.float64, device=self.device)
        table[:, _NAN].fill_(math.nan)
        for store, sums in zip(self.stores, self._sums, strict=True):
            scratch = _Scratch(store)
            for unit in store.units:
                after = scratch.gather(unit, views, "after", wanted=True)
                assert after is not None
                w = scratch.weights(unit)
                d = scratch.delta(unit, after, w)
                rows = slice(unit.row_lo, unit.row_hi)
                for segment in unit.segments:
                    part = slice(segment.lo, segment.hi)
                    row_stats.norms(segment.of(w), sums[WW, part])
                    row_stats.norms(segment.of(d), sums[DD, part])
                self._dots(store, unit, w, d, sums[WD], scratch)
                if refine_all:  # every row's tangential vector, no data-dependent branch
                    coef = sums[WD, rows] / sums[WW, rows].square().clamp_min_(_tiny(w.dtype))
                    for segment in unit.segments:
                        lo, hi = segment.lo - unit.row_lo, segment.hi - unit.row_lo
                        tangential = segment.of(d).addcmul_(
                            segment.of(w), coef[lo:hi, None], value=-1
                        )
                        row_stats.norms(tangential, sums[PERP, segment.lo : segment.hi])
                    sums[PERP, rows].square_()
                else:
                    for segment in unit.segments:
                        part = slice(segment.lo, segment.hi)
                        row_stats.refine(
                            segment.of(w),
                            segment.of(d),
                            sums[WW, part],
                            sums[WD, part],
                            sums[DD, part],
                            sums[PERP, part],
                            refine_all=False,
                        )
                if keep:  # w' is still in cache from the subtraction above
                    scratch.keep(unit, after)
            table[store.first_row : store.first_row + store.rows, :6].copy_(sums.t())
        self._holds = self._marks(weights_after) if keep else None
        self._sums = []
        table[:, :PERP].square_()  # norms to squared norms
        perp2 = table[:, PERP]
        if not refine_all:
            # rows whose sums do not cancel keep the tangential part from the sums
            tangential = row_stats.tangential_sq(table[:, WD], table[:, WW], table[:, DD])
            perp2 = torch.where(perp2.isnan(), tangential, perp2)
        if self._gram_index is None:
            self._gram_index = to_device(torch.tensor(_GRAM), self.device)
        gram = table.index_select(1, self._gram_index).view(-1, 3, 3)
        return gram, perp2

    # -- helpers ------------------------------------------------------------------------------
    def _dots(
        self,
        store: _Store,
        unit: _Unit,
        a: torch.Tensor,
        b: torch.Tensor,
        out: torch.Tensor,
        scratch: _Scratch,
    ) -> None:
        """out[rows of the unit] = ⟨a_r, b_r⟩ for unit-shaped flat a, b: one product over the
        unit and a row sum per segment (accelerator paths), or per segment `row_stats.dots`."""
        if self.paths.elementwise_dots or not row_stats.matmul_is_exact(store.memory.device):
            product = torch.mul(a, b, out=scratch.product(unit))
            for segment in unit.segments:
                torch.sum(segment.of(product), dim=-1, out=out[segment.lo : segment.hi])
            return
        for segment in unit.segments:
            row_stats.dots(segment.of(a), segment.of(b), out[segment.lo : segment.hi], True)


def _tiny(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).tiny


class _Scratch:
    """Flat scratch tiles of one store for one pass, freed with it, each as large as the
    store's largest unit: the gathered tensors (in the parameters' dtype), w and w' converted
    (half precision), Δ, and the product of elementwise dots."""

    def __init__(self, store: _Store) -> None:
        self.store = store
        self.size = max((unit.numel for unit in store.units), default=0)
        self._tiles: dict[str, torch.Tensor] = {}

    def _tile(self, name: str, dtype: torch.dtype, unit: _Unit) -> torch.Tensor:
        if name not in self._tiles:
            device = self.store.memory.device
            self._tiles[name] = torch.empty(self.size, dtype=dtype, device=device)
        return self._tiles[name][: unit.numel]

    def gather(
        self,
        unit: _Unit,
        views: Sequence[torch.Tensor | None],
        name: str,
        wanted: bool = False,
    ) -> torch.Tensor | None:
        """The unit's rows of ``views`` (row blocks of g or w') as one flat tile in the
        parameters' dtype, in W's layout: a view of a single dense tensor when possible, else
        gathered (zeros for missing tensors). None if all are missing."""
        pieces = unit.pieces
        if len(pieces) == 1:
            index, first, rows, _, _ = pieces[0]
            view = views[index]
            if view is None:
                return None
            block = view[first : first + rows]
            if block.is_contiguous() and block.dtype == self.store.memory.dtype:
                return block.view(-1)
        present = [(p, views[p[0]]) for p in pieces if views[p[0]] is not None]
        if not present and not wanted:
            return None
        out = self._tile(name, self.store.memory.dtype, unit)
        dst = []
        src = []
        for (_, first, rows, offset, width), view in present:
            dst.append(out[offset : offset + rows * width].view(rows, width))
            src.append(view[first : first + rows])
        _foreach_copy(dst, src)
        if len(present) < len(pieces):
            missing = [
                out[offset : offset + rows * width]
                for index, _, rows, offset, width in pieces
                if views[index] is None
            ]
            torch._foreach_zero_(missing)
        return out

    def stat(self, name: str, flat: torch.Tensor, unit: _Unit) -> torch.Tensor:
        """A gathered tile in the sums' dtype (converted into a tile of its own if needed)."""
        if flat.dtype == self.store.stat_dtype:
            return flat
        return self._tile(name + "32", self.store.stat_dtype, unit).copy_(flat)

    def weights(self, unit: _Unit) -> torch.Tensor:
        """W of the unit, flat, in the sums' dtype (a view unless the store converts)."""
        return self.stat("w", self.store.memory[unit.start : unit.stop], unit)

    def delta(self, unit: _Unit, after: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Δ = w' − W of the unit, flat, in the sums' dtype (a scratch tile); ``after`` as
        gathered, in the parameters' dtype."""
        if self.store.convert:
            return self.stat("after", after, unit).sub_(w)  # the converted w' is our own
        return torch.sub(after, w, out=self._tile("delta", w.dtype, unit))

    def keep(self, unit: _Unit, after: torch.Tensor) -> None:
        """W ← w' for the unit (``after``: its w' as gathered, in the parameters' dtype)."""
        self.store.memory[unit.start : unit.stop].copy_(after)

    def product(self, unit: _Unit) -> torch.Tensor:
        return self._tile("product", self.store.stat_dtype, unit)


def _units(buckets: Sequence[_Bucket], tile: int) -> list[_Unit]:
    """Cut a store's buckets into units of at most ``tile`` elements: runs of whole tensors
    (across buckets), and row slices of tensors larger than a tile (at least one row each)."""
    units: list[_Unit] = []
    current: _Unit | None = None
    element = 0  # of the store

    def add(unit: _Unit, index: int, first: int, rows: int, width: int, row: int) -> None:
        offset = element - unit.start
        unit.pieces.append((index, first, rows, offset, width))
        last = unit.segments[-1] if unit.segments else None
        if last is not None and last.width == width and last.hi == row:
            last.hi = row + rows
        else:
            unit.segments.append(_Segment(width, row, row + rows, offset))
        unit.stop = element + rows * width
        unit.row_hi = row + rows

    for bucket in buckets:
        width = bucket.buffer.shape[1]
        row = bucket.first_row
        for index, rows in bucket.members:
            size = rows * width
            if size > tile:
                current = None
                most = max(1, tile // max(width, 1))  # rows per tile at most
                step = -(-rows // -(-rows // most))  # as many tiles as needed, of equal size
                for first in range(0, rows, step):
                    count = min(step, rows - first)
                    unit = _Unit(element, element, row, row)
                    add(unit, index, first, count, width, row)
                    units.append(unit)
                    element += count * width
                    row += count
                continue
            if current is None or current.numel + size > tile:
                current = _Unit(element, element, row, row)
                units.append(current)
            add(current, index, 0, rows, width, row)
            element += size
            row += rows
    return units


def _foreach_copy(dst: list[torch.Tensor], src: list[torch.Tensor]) -> None:
    if not dst:
        return
    try:
        torch._foreach_copy_(dst, src)
    except (RuntimeError, TypeError):  # e.g. mixed devices in one list: fall back per tensor
        for d, s in zip(dst, src, strict=True):
            d.copy_(s)
