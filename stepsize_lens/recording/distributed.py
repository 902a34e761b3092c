"""Distributed training: which rank writes, and exact reductions over sharded parameters.

**DistributedDataParallel.** Every rank holds the whole model and the same averaged gradients,
so every rank computes the same numbers; only rank 0 writes the run file. ``write=True`` makes
another rank write too, to its own file (`rank_path`: ``run.rank1.pt``, or ``{rank}`` in the
path).

**FSDP2 / DTensor.** With `torch.distributed.fsdp.fully_shard` a parameter is a DTensor sharded
on dim 0: a rank holds some complete rows of a ≥2-D tensor (possibly none: chunks are uneven
when rows do not divide by the world size) and a slice of the single row of a 1-D tensor. Every
metric is non-linear in sums over elements (sqrt, ratio, max over rows, mean over rows), so norms
of local shards would under-report by up to √shards. Instead:

1. each rank computes, on its local pieces, what a single process computes per row
   (`Snapshot.update_sums`): the Gram matrix G_p of (w_p, g_p, Δ_p) and ‖Δ_p − c_p·w_p‖² with
   c_p = <w_p, Δ_p>/‖w_p‖²;
2. the pieces, 11 numbers each, are all-gathered, tagged with the global row they belong to;
3. pieces of one row r are merged exactly: G_r = Σ_p G_p and, because Δ_p − c_p·w_p ⟂ w_p,
   ‖Δ_r − c_r·w_r‖² = Σ_p [‖Δ_p − c_p·w_p‖² + (c_p − c_r)²·‖w_p‖²] (`metrics.tensor_perp2`);
4. `metrics.all_metrics` then reduces the merged rows on every rank, as in one process.

So every norm, dot product and per-channel statistic is reduced across shards before the final
sqrt, max or mean, and the run equals the single-process run up to float summation order.
Placements: ``Shard(d)`` on any mesh dimension (uneven chunks use the DTensor's own offsets) and
``Replicate`` (pieces counted once, from mesh coordinate 0); plain tensors next to DTensors are
taken as replicated and counted from rank 0. ``Partial`` and strided shards (FSDP2 stacked on
tensor parallelism over the same dim) raise. Every rank must track the same tensors and record
the same steps (true for DDP and FSDP2: the schedule depends only on the step count).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from stepsize_lens.recording.device import to_device
from stepsize_lens.recording.metrics import tensor_grams, tensor_perp2

_PIECE_WIDTH = 11  # 9 Gram entries, ‖Δ⊥‖², global row id


def process_rank() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) without an initialised process group."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def rank_path(path: str | os.PathLike[str] | None, rank: int, world_size: int = 1) -> str | None:
    """The run file of ``rank``: ``{rank}`` in the path is replaced; otherwise ranks > 0 get
    ``.rank<r>`` before the suffix (``run.pt`` -> ``run.rank1.pt``) and rank 0 keeps the path."""
    if path is None:
        return None
    text = os.fspath(path)
    if "{rank}" in text:
        return text.replace("{rank}", str(rank))
    if rank == 0 or world_size <= 1:
        return text
    target = Path(text)
    suffix = target.suffix
    stem = target.name[: len(target.name) - len(suffix)] if suffix else target.name
    return str(target.with_name(f"{stem}.rank{rank}{suffix}"))


def _dtensor_type() -> type | None:
    # no DTensor can exist before its module is imported, so never import it ourselves
    module = sys.modules.get("torch.distributed.tensor")
    return getattr(module, "DTensor", None) if module is not None else None


def sharded_rows(tensors: Sequence[torch.Tensor]) -> ShardedRows | None:
    """A `ShardedRows` for ``tensors`` if any is a DTensor, else None (nothing to reduce)."""
    dtensor = _dtensor_type()
    if dtensor is None or not any(isinstance(t, dtensor) for t in tensors):
        return None
    return ShardedRows(tensors)


def _local_position(tensor: torch.Tensor, rank: int) -> tuple[bool, int]:
    """(does this rank's piece count, global index of its first row) for one tensor."""
    dtensor = _dtensor_type()
    if dtensor is None or not isinstance(tensor, dtensor):
        return rank == 0, 0
    mesh, placements = tensor.device_mesh, tensor.placements
    coordinate = mesh.get_coordinate()
    if coordinate is None:  # this rank is not in the tensor's mesh
        return False, 0
    counted = True
    for mesh_dim, placement in enumerate(placements):
        if "Strided" in type(placement).__name__:
            raise NotImplementedError(
                f"stepsize_lens cannot reduce DTensors with strided sharding ({placement}); "
                "FSDP2 combined with tensor parallelism on the same dim is not supported"
            )
        if placement.is_partial():
            raise ValueError(f"stepsize_lens cannot record a parameter with placement {placement}")
        if placement.is_replicate() and coordinate[mesh_dim] != 0:
            counted = False
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    _, offsets = compute_local_shape_and_global_offset(tensor.shape, mesh, placements)
    first = int(offsets[0]) if tensor.ndim >= 2 else 0
    return counted, first


class ShardedRows:
    """Maps the local pieces of (possibly) sharded tensors to global rows and merges them.

    Built for one fixed list of tracked tensors; the lens rebuilds it with its snapshot.
    """

    def __init__(self, tensors: Sequence[torch.Tensor]) -> None:
        self.rank, self.world_size = process_rank()
        self._dtensor = _dtensor_type()
        rows = [int(t.shape[0]) if t.ndim >= 2 else 1 for t in tensors]
        positions = [_local_position(t, self.rank) for t in tensors]
        self.num_tensors = len(tensors)
        self.num_rows = sum(rows)
        starts = torch.tensor([0] + rows[:-1], dtype=torch.long).cumsum(0)
        self._first_id = starts + torch.tensor([first for _, first in positions], dtype=torch.long)
        self._counted = torch.tensor([counted for counted, _ in positions], dtype=torch.bool)
        self.row_tensor_cpu = torch.repeat_interleave(
            torch.arange(self.num_tensors), torch.tensor(rows, dtype=torch.long)
        )
        self._sizes: list[int] | None = None
        self._local_rows = -1
        self._kept = self._kept_ids = torch.zeros(0)
        self._row_tensor: torch.Tensor | None = None

    def local(self, tensors: Sequence[torch.Tensor | None]) -> list[torch.Tensor | None]:
        """Each DTensor replaced by this rank's local shard (a view, no copy)."""
        dtensor = self._dtensor
        return [
            t.to_local() if dtensor is not None and isinstance(t, dtensor) else t for t in tensors
        ]

    def _layout(self, row_tensor: torch.Tensor, device: torch.device) -> None:
        """Which local rows count here and their global ids, and every rank's piece count:
        fixed by the shard layout, so computed once (the only time the ranks exchange sizes)."""
        local = row_tensor.cpu()
        count = local.shape[0]
        order = torch.arange(count)
        # a tensor's rows are contiguous in the snapshot: row j of it sits at first + j
        start = torch.full((self.num_tensors,), count, dtype=torch.long)
        start.scatter_reduce_(0, local, order, "amin")
        ids = self._first_id[local] + (order - start[local])
        kept = torch.nonzero(self._counted[local]).squeeze(1)
        self._kept = to_device(kept, device)
        self._kept_ids = to_device(ids[kept].to(torch.float64), device)
        self._local_rows = count
        self._sizes = _all_gather_sizes(int(kept.numel()))

    def merge(
        self, row_gram: torch.Tensor, row_perp2: torch.Tensor, row_tensor: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Local per-row Grams [n, 3, 3] and ‖Δ⊥‖² [n] -> the same for the global rows.

        Returns (row_gram [N, 3, 3], row_perp2 [N], row_tensor [N]) over all N rows of all
        tracked tensors, identical on every rank, ready for `metrics.all_metrics`. A collective:
        every rank must call it. No host synchronisation on NCCL (sizes are fixed by the
        layout); gloo moves the pieces through host memory.
        """
        device = row_gram.device
        if self._sizes is None or self._local_rows != row_tensor.shape[0]:
            self._layout(row_tensor, device)
        assert self._sizes is not None
        pieces = torch.cat(
            [
                row_gram.to(torch.float64).reshape(-1, 9).index_select(0, self._kept),
                row_perp2.to(torch.float64).index_select(0, self._kept)[:, None],
                self._kept_ids[:, None],
            ],
            dim=1,
        )
        everything = _all_gather_pieces(pieces, self._sizes)
        piece_row = everything[:, 10].round().long()
        piece_gram = everything[:, :9].reshape(-1, 3, 3)
        gram = tensor_grams(piece_gram, piece_row, self.num_rows)
        perp2 = tensor_perp2(piece_gram, everything[:, 9], piece_row, gram)
        if self._row_tensor is None or self._row_tensor.device != device:
            self._row_tensor = to_device(self.row_tensor_cpu, device)
        return gram, perp2, self._row_tensor


def _gather_device() -> torch.device | None:
    """Where collectives take their tensors: the host for gloo, else None (the data's own)."""
    return torch.device("cpu") if torch.distributed.get_backend() == "gloo" else None


def _all_gather_sizes(size: int) -> list[int]:
    """Every rank's ``size`` (a collective; once per layout)."""
    dist = torch.distributed
    objects: list[int | None] = [None] * dist.get_world_size()
    dist.all_gather_object(objects, size)
    return [int(value) for value in objects if value is not None]


def _all_gather_pieces(pieces: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Concatenate every rank's [sizes[rank], 11] pieces on every rank."""
    dist = torch.distributed
    home = pieces.device
    device = _gather_device() or home
    padded = torch.zeros((max(sizes), _PIECE_WIDTH), dtype=torch.float64, device=device)
    padded[: pieces.shape[0]] = pieces.to(device)
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([part[:size] for part, size in zip(parts, sizes)]).to(home)
