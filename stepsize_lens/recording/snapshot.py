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
  ‖w_r‖², ⟨w_r, g_r⟩, ‖g_r‖² (the kernel copies w in the same pass when the gradient is
  known before the step);
- after the step (`update_sums`): Δ = w' − W into a scratch tile, ⟨w_r, Δ_r⟩, ‖Δ_r‖² and the
  tangential part ‖Δ_r − c_r·w_r‖² while Δ is in cache; then, if the next step will be
  recorded too, W ← w' from the same cache-warm tile.

When the previous record left w' in W and no one has written the parameters since (their
``_version`` counters and storage are unchanged: forward and backward never write them), the
next capture copies nothing. Recording every step then reads w once, g once and w' once.
Parameters written through ``.data`` bypass the version counter: code that edits parameters
between steps that way should record on a schedule with gaps, or the lens may compare w' with
a stale w.

**Two paths on the CPU.** Once the fused kernel (`cpu_kernel`, compiled in the background at
the first attach) is loaded, the CPU buckets of float32/float16/bfloat16 parameters take it:
one pass before the step reads (w, g) into ⟨w_r, g_r⟩, ‖g_r‖², ‖w_r‖², one pass after it reads
(W, w') into ‖w_r‖², ⟨w_r, Δ_r⟩, ‖Δ_r‖² with Δ formed in registers (and W ← w' in the same pass
when kept), every sum in float64, so ‖Δ⊥_r‖² = ‖Δ_r‖² − ⟨w_r, Δ_r⟩²/‖w_r‖² needs no refinement
(docs/design.md §3.5). Until then, for float64 parameters and on accelerators, the eager passes
above run: half-precision parameters are summed in float32 (their tiles are converted on the
way), float32 and float64 parameters in their own dtype (`row_stats` on precision), and the
mostly radial rows are refined. All buckets of one device and dtype are views of a single
allocation (many smaller buffers would fragment the allocator's heap).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import ModuleType

import torch

from stepsize_lens._rows import as_rows, row_order
from stepsize_lens.recording import cpu_kernel, row_stats
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

# columns of the per-row sums (on the eager path WW, GG, DD hold norms until the end of a
# record); the kernel's passes write (WG, GG, WW) and (WW, WD, DD), three adjacent columns each
WG, GG, WW, WD, DD, PERP2 = range(6)
# the kernel's tasks: runs of whole rows of about this many elements, and rows longer than
# KERNEL_SEGMENT cut into segments (their threads then share a row)
KERNEL_CHUNK = 1 << 15
KERNEL_SEGMENT = 1 << 18


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
    first_row: int  # of the snapshot's rows
    members: list[tuple[int, int]]  # (tensor index, rows), in row order
    kernel: bool  # the fused CPU kernel can read it
    units: list[_Unit] = field(default_factory=list)


@dataclass
class _KernelPlan:
    """The kernel's view of the snapshot: its tensors' rows of W, and the tasks (see
    ``cpu_kernel.cpp``) that cover them."""

    members: list[int]  # tensor indices
    weights: list[torch.Tensor]  # their rows of the bucket buffers (views)
    tasks: torch.Tensor  # int64 [tasks, 6]
    starts: torch.Tensor  # int64 [tasks + 1]: element offset of each task

    def nbytes(self) -> int:
        return (self.tasks.numel() + self.starts.numel()) * 8 + len(self.members) * 16


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
        # one allocation per (device, dtype), the buckets views of it: many separate buffers
        # below the allocator's mmap threshold would fragment its heap, and the training
        # step's temporaries then raise the process's peak by up to a tensor per step
        sizes: dict[tuple[torch.device, torch.dtype], int] = {}
        for (device, dtype, width), members in groups.items():
            rows = sum(shapes[i][0] for i in members)
            sizes[(device, dtype)] = sizes.get((device, dtype), 0) + rows * width
        memory = {key: torch.empty(n, device=key[0], dtype=key[1]) for key, n in sizes.items()}
        taken = dict.fromkeys(sizes, 0)
        for (device, dtype, width), members in groups.items():
            rows = sum(shapes[i][0] for i in members)
            stat_dtype = _stat_dtype(dtype)
            offset = taken[(device, dtype)]
            taken[(device, dtype)] = offset + rows * width
            bucket = _Bucket(
                memory[(device, dtype)][offset : offset + rows * width].view(rows, width),
                stat_dtype,
                convert=stat_dtype != dtype,
                first_row=sum(member_rows),
                members=[(i, shapes[i][0]) for i in members],
                kernel=device.type == "cpu" and dtype in cpu_kernel.DTYPES,
            )
            bucket.units = _units(bucket.members, width, self.tile)
            for index in members:
                member_ids.append(index)
                member_rows.append(shapes[index][0])
            self.buckets.append(bucket)
        self.num_rows = sum(member_rows)
        # the fused kernel reads CPU buckets when no accelerator branch is forced
        self._kernel_ok = (
            self.device.type == "cpu"
            and not paths.refine_all_rows
            and not paths.elementwise_dots
            and any(bucket.kernel for bucket in self.buckets)
        )
        self._plan: _KernelPlan | None = None
        self._module: ModuleType | None = None  # this record's kernel (None: eager passes)
        self._table: torch.Tensor | None = None  # this record's sums, float64 [6, rows]
        self._no_grad = torch.empty(0)
        if self._kernel_ok:
            cpu_kernel.start_for(tensors)
        # row -> tensor map, as (tensor, rows) runs: it is rebuilt per record, never held
        self._member_ids = torch.tensor(member_ids, dtype=torch.long)
        self._member_rows = torch.tensor(member_rows, dtype=torch.long)
        self._members_on: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        self.multi_row = torch.tensor([t.ndim >= 2 for t in tensors], dtype=torch.bool)
        self._holds: list[tuple[int, int]] | None = None  # (version, data_ptr) W was taken at
        self._sums: list[torch.Tensor | None] = []  # per bucket, eager path
        self._deferred: list[torch.Tensor | None] | None = None  # w's rows, copied by grad_sums

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
        tensor (and the kernel's task table, about 50 bytes per 32K elements)."""
        buffers = sum(b.buffer.numel() * b.buffer.element_size() for b in self.buckets)
        per_tensor = self._member_ids.numel() * 16 * (1 + len(self._members_on))
        plan = self._plan.nbytes() if self._plan is not None else 0
        return buffers + per_tensor + self.multi_row.numel() + plan

    def record_bytes(self) -> int:
        """Bytes a record allocates on top of `held_bytes`, at most at once: the per-row sums
        (float64, and the eager path's in the sums' dtype), one bucket's scratch tiles on the
        eager path (w converted, too, for half precision; refining a few rows gathers at most
        3/8 of a tile more; the kernel needs none), and the float64 per-row tables the metrics
        are computed from (about `ROW_TABLE_BYTES` per row)."""
        sums = self.num_rows * 6 * 8 + sum(
            b.buffer.shape[0] * 6 * _itemsize(b.stat_dtype) for b in self.buckets
        )
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
    def capture(self, weights: Sequence[torch.Tensor], defer: bool = False) -> bool:
        """Start a record: choose its path (the fused kernel once it is loaded, else the eager
        passes) and W ← w, unless W still holds exactly these values. True if it copied.

        ``defer``: `grad_sums` follows before ``weights`` change (the gradient is known before
        the step), so the kernel's buckets are copied in its pass over w and g, one read of w
        instead of two."""
        self._module = cpu_kernel.for_record() if self._kernel_ok else None
        self._deferred = None
        if self._holds is not None and self._holds == self._marks(weights):
            return False
        views = self._row_views(weights)
        fused = defer and self._module is not None
        dst, src = [], []
        for bucket in self.buckets:
            if fused and bucket.kernel:
                continue  # copied by the kernel's pass in `grad_sums`
            for unit in bucket.units:
                _pieces_into(bucket.buffer[unit.start : unit.stop], unit, views, dst, src)
        with torch.no_grad():
            _foreach_copy(dst, src)
        if fused:
            self._deferred = views
        self._holds = None
        return True

    @torch.no_grad()
    def grad_sums(self, grads: Sequence[torch.Tensor | None]) -> None:
        """⟨w_r, g_r⟩ and ‖g_r‖ of every row, w read from W (zeros where g is None)."""
        table = torch.zeros((6, self.num_rows), dtype=torch.float64, device=self.device)
        table[PERP2] = math.nan  # refined rows only; the rest come from the sums
        self._table = table
        self._sums = []
        views = self._row_views(grads)
        for bucket in self.buckets:
            if self._module is not None and bucket.kernel:
                self._sums.append(None)
                continue
            # one contiguous row per sum: [6, rows]
            sums = torch.zeros(
                (6, bucket.buffer.shape[0]), dtype=bucket.stat_dtype, device=bucket.buffer.device
            )
            sums[PERP2] = math.nan
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
        if self._module is not None:
            plan = self._kernel_plan()
            pairs = list(zip(plan.members, plan.weights, strict=True))
            grads_in = [self._kernel_input(views[i], w) for i, w in pairs]
            deferred, self._deferred = self._deferred, None
            sources = []
            if deferred is not None:  # W ← w in this pass
                sources = [self._kernel_input(deferred[i], w) for i, w in pairs]
            self._module.pre_rows(
                plan.weights, grads_in, plan.tasks, plan.starts, table[WG:WD], sources
            )

    # -- after the step -----------------------------------------------------------------------
    @torch.no_grad()
    def update_sums(
        self, weights_after: Sequence[torch.Tensor], keep: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-row Gram matrices of (w, g, Δ) [rows, 3, 3] and ‖Δ⊥_r‖² [rows], float64.

        ⟨g, Δ⟩ is not measured (no metric uses it; g is gone): its Gram entries are NaN.
        ``keep``: leave w' in W for the next record (its capture then copies nothing).
        """
        table = self._table
        assert table is not None and len(self._sums) == len(self.buckets), (
            "grad_sums must run first"
        )
        assert self._deferred is None
        views = self._row_views(weights_after)
        for bucket, sums in zip(self.buckets, self._sums, strict=True):
            if sums is None:
                continue  # the kernel's
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
            part = sums.to(self.device, torch.float64)
            part[[WW, GG, DD]] = part[[WW, GG, DD]].square()  # norms to squared norms
            table[:, bucket.first_row : bucket.first_row + bucket.buffer.shape[0]] = part
        if self._module is not None:
            plan = self._kernel_plan()
            after = [self._kernel_input(views[i], w) for i, w in zip(plan.members, plan.weights)]
            self._module.post_rows(
                plan.weights, after, plan.tasks, plan.starts, table[WW:PERP2], keep
            )
        self._holds = self._marks(weights_after) if keep else None
        self._sums, self._table, self._module = [], None, None
        ww, gg, dd = table[WW], table[GG], table[DD]
        wg, wd = table[WG], table[WD]
        refined = table[PERP2]
        # the kernel's float64 sums never need refining: its rows stay NaN here
        perp2 = torch.where(refined.isnan(), row_stats.tangential_sq(wd, ww, dd), refined)
        nan = torch.full_like(ww, math.nan)
        gram = torch.stack([ww, wg, wd, wg, gg, nan, wd, nan, dd], 1).view(-1, 3, 3)
        return gram, perp2

    # -- the fused kernel ---------------------------------------------------------------------
    def _kernel_plan(self) -> _KernelPlan:
        if self._plan is None:
            members, weights, shapes, first_rows = [], [], [], []
            for bucket in self.buckets:
                if not bucket.kernel:
                    continue
                row = 0
                for index, rows in bucket.members:
                    members.append(index)
                    weights.append(bucket.buffer[row : row + rows])
                    shapes.append((rows, bucket.buffer.shape[1]))
                    first_rows.append(bucket.first_row + row)
                    row += rows
            tasks, starts = kernel_tasks(shapes, first_rows)
            self._plan = _KernelPlan(members, weights, tasks, starts)
        return self._plan

    def _kernel_input(self, rows: torch.Tensor | None, weights: torch.Tensor) -> torch.Tensor:
        """A tensor's rows (of g or w') as the kernel reads them: dense, in W's dtype (an empty
        tensor for a missing gradient)."""
        if rows is None:
            return self._no_grad
        if rows.dtype != weights.dtype:
            rows = rows.to(weights.dtype)
        return rows if rows.is_contiguous() else rows.contiguous()

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


def kernel_tasks(
    shapes: Sequence[tuple[int, int]], first_rows: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel's task table for tensors of ``shapes`` [rows, K] whose sums go to columns
    ``first_rows`` on: (tensor, first row, end row, first column, end column, output column)
    per task, and each task's first element in the order of the tasks (plus the total).

    A task is a run of whole rows of about `KERNEL_CHUNK` elements, or a segment of at most
    `KERNEL_SEGMENT` elements of a longer row; empty tensors get none."""
    tasks: list[tuple[int, int, int, int, int, int]] = []
    for index, ((rows, width), first) in enumerate(zip(shapes, first_rows, strict=True)):
        if rows == 0 or width == 0:
            continue  # an empty tensor (a rank's empty shard): its sums stay 0
        if width <= KERNEL_SEGMENT:
            step = max(1, KERNEL_CHUNK // max(width, 1))
            for row in range(0, rows, step):
                end = min(rows, row + step)
                tasks.append((index, row, end, 0, width, first + row))
            continue
        pieces = -(-width // KERNEL_SEGMENT)
        length = -(-width // pieces)
        for row in range(rows):
            for col in range(0, width, length):
                tasks.append((index, row, row + 1, col, min(width, col + length), first + row))
    table = torch.tensor(tasks, dtype=torch.long).reshape(-1, 6)
    sizes = (table[:, 2] - table[:, 1]) * (table[:, 4] - table[:, 3])
    starts = torch.zeros(len(tasks) + 1, dtype=torch.long)
    torch.cumsum(sizes, 0, out=starts[1:])
    return table, starts


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
