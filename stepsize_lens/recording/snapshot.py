"""Snapshot buffers: where the lens keeps w and g across ``optimizer.step()``.

Rows of equal length (same device and dtype) from all tracked tensors share one bucket, a
preallocated ``[rows, 3, C]`` buffer holding (w, g, Δ) per row. Before the step the lens copies
w and g into slots 0 and 1 (two multi-tensor copies per bucket group); after the step it writes
Δ = w' − w into slot 2 and takes the per-row Gram matrices of the whole bucket with one batched
matmul (`metrics.row_grams`). A ResNet-18 has 62 tensors but about ten distinct row lengths, so a
record costs a handful of kernels, not one per tensor, and allocates nothing parameter-sized.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from stepsize_lens._rows import as_rows
from stepsize_lens.recording.metrics import radial_coef, row_grams


@dataclass
class _Bucket:
    buffer: torch.Tensor  # [rows, 3, C]
    members: list[tuple[int, int, int]]  # (tensor index, first row, rows)


class Snapshot:
    """Buffers for one fixed list of tensors; rebuild it when the tensor list changes.

    ``fused=True`` reduces each bucket with one `torch.compile`-generated kernel that reads
    (w, g, Δ) once and accumulates every row sum in float64 (exact products, so ‖Δ⊥‖² follows
    from the sums without cancellation and needs no refinement pass). The first recorded step
    then pays the compilation (seconds; cached on disk by torch). If compiling fails, e.g. no C
    compiler, the snapshot warns once and uses the eager path.
    """

    def __init__(self, tensors: Sequence[torch.Tensor], fused: bool = False) -> None:
        self.fused = fused
        self.num_tensors = len(tensors)
        self.device = tensors[0].device if tensors else torch.device("cpu")
        groups: dict[tuple[torch.device, torch.dtype, int], list[int]] = {}
        shapes = [as_rows(t).shape for t in tensors]
        for index, tensor in enumerate(tensors):
            key = (tensor.device, tensor.dtype, shapes[index][1])
            groups.setdefault(key, []).append(index)
        self.buckets: list[_Bucket] = []
        row_tensor: list[int] = []
        for (device, dtype, width), members in groups.items():
            total = sum(shapes[i][0] for i in members)
            buffer = torch.zeros((total, 3, width), device=device, dtype=dtype)
            placed, first = [], 0
            for index in members:
                rows = shapes[index][0]
                placed.append((index, first, rows))
                row_tensor.extend([index] * rows)
                first += rows
            self.buckets.append(_Bucket(buffer, placed))
        self.row_tensor_cpu = torch.tensor(row_tensor, dtype=torch.long)
        self._row_tensor: dict[torch.device, torch.Tensor] = {}
        self.multi_row = torch.tensor([t.ndim >= 2 for t in tensors], dtype=torch.bool)

    def row_tensor(self, device: torch.device) -> torch.Tensor:
        if device not in self._row_tensor:
            self._row_tensor[device] = self.row_tensor_cpu.to(device)
        return self._row_tensor[device]

    def _slots(self, slot: int) -> list[tuple[int, torch.Tensor]]:
        return [
            (index, bucket.buffer[first : first + rows, slot])
            for bucket in self.buckets
            for index, first, rows in bucket.members
        ]

    def capture(
        self, weights: Sequence[torch.Tensor], grads: Sequence[torch.Tensor | None]
    ) -> None:
        """Before the step: copy w (slot 0) and g (slot 1; zeros where g is None)."""
        self.capture_weights(weights)
        self.capture_grads(grads)

    def capture_weights(self, weights: Sequence[torch.Tensor]) -> None:
        """Copy w into slot 0 (one multi-tensor copy)."""
        dst, src = [], []
        for index, slot in self._slots(0):
            dst.append(slot)
            src.append(as_rows(weights[index]))
        with torch.no_grad():
            _foreach_copy(dst, src)

    def capture_grads(self, grads: Sequence[torch.Tensor | None]) -> None:
        """Copy g into slot 1 (zeros where g is None)."""
        dst, src = [], []
        for index, slot in self._slots(1):
            grad = grads[index]
            if grad is None:
                slot.zero_()
            else:
                dst.append(slot)
                src.append(as_rows(grad.detach()))
        with torch.no_grad():
            _foreach_copy(dst, src)

    def grams(self, weights_after: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """After the step: per-row Gram matrices of (w, g, Δ) and tangential parts ‖Δ⊥_r‖².

        Δ = w' − w goes into slot 2; one batched matmul per bucket gives the Grams. Rows come
        out bucket by bucket, matching `row_tensor`, as float64 on `self.device`.

        ‖Δ⊥‖² = ‖Δ‖² − <Δ,ŵ>² taken from the Gram loses its precision when an update is mostly
        radial (pure weight decay: an embedding row outside the batch), so for rows whose radial
        part is at least `REFINE_FRACTION` of ‖Δ‖² the tangential part Δ − c_r·w, with
        c_r = <w_r,Δ_r>/‖w_r‖², is formed and its norm taken directly. On the CPU only those rows
        are refined; on accelerators every row is, to avoid a host synchronisation.
        """
        grams, perps = [], []
        with torch.no_grad():
            for bucket in self.buckets:
                for index, first, rows in bucket.members:
                    block = bucket.buffer[first : first + rows]
                    torch.sub(as_rows(weights_after[index]), block[:, 0], out=block[:, 2])
                stats = self._fused_stats(bucket.buffer) if self.fused else None
                if stats is not None:
                    gram, perp2 = stats
                else:
                    stacked = bucket.buffer
                    if stacked.dtype not in (torch.float32, torch.float64):
                        stacked = stacked.float()  # half-precision sums of squares overflow
                    gram = row_grams(stacked).to(torch.float64)
                    perp2 = _tangential_sq(stacked, gram)
                grams.append(gram.to(self.device))
                perps.append(perp2.to(self.device))
        if len(grams) == 1:
            return grams[0], perps[0]
        return torch.cat(grams), torch.cat(perps)

    def _fused_stats(self, buffer: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        global _COMPILED_ROW_STATS
        if _COMPILED_ROW_STATS is None:
            _COMPILED_ROW_STATS = torch.compile(float64_row_stats, dynamic=True)
        try:
            return _COMPILED_ROW_STATS(buffer)
        except Exception as exc:  # compilation needs a working C compiler (CPU) or triton (GPU)
            warnings.warn(
                f"stepsize_lens: fused metrics unavailable ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:120] if str(exc) else ''}); using the eager path",
                RuntimeWarning,
                stacklevel=2,
            )
            self.fused = False
            return None


_COMPILED_ROW_STATS = None


def float64_row_stats(stacked: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row Gram [rows, 3, 3] and ‖Δ⊥‖² [rows] of a (w, g, Δ) buffer, summed in float64.

    Products of two floats of at most 24-bit mantissa are exact in float64, so the sums are
    accurate to ~1e-16 relative and ‖Δ⊥‖² = ‖Δ‖² − <w,Δ>²/‖w‖² keeps full float32 accuracy even
    for nearly radial updates. Compiled, this is one pass over the buffer with no temporaries.
    """
    w, g, d = (stacked[:, k].to(torch.float64) for k in range(3))
    ww, wg, wd = (w * w).sum(1), (w * g).sum(1), (w * d).sum(1)
    gg, gd, dd = (g * g).sum(1), (g * d).sum(1), (d * d).sum(1)
    gram = torch.stack(
        [torch.stack([ww, wg, wd], 1), torch.stack([wg, gg, gd], 1), torch.stack([wd, gd, dd], 1)],
        1,
    )
    radial_sq = radial_coef(wd, ww) * wd
    return gram, (dd - radial_sq).clamp_min(0)


REFINE_FRACTION = 0.5


def _tangential_sq(stacked: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """‖Δ_r − c_r·w_r‖² per row of a [rows, 3, C] (w, g, Δ) buffer, given its float64 Grams."""
    ww, wd, dd = gram[:, 0, 0], gram[:, 0, 2], gram[:, 2, 2]
    coef = radial_coef(wd, ww)
    perp2 = (dd - coef * wd).clamp_min(0)
    unsure = perp2 < (1 - REFINE_FRACTION) * dd
    if stacked.device.type == "cpu":
        rows = unsure.nonzero().squeeze(1)
        if rows.numel() == 0:
            return perp2
        coef_rows = coef[rows].to(stacked.dtype)[:, None]
        tangential = stacked[rows, 2] - coef_rows * stacked[rows, 0]
        refined = torch.linalg.vector_norm(tangential, dim=-1).to(torch.float64).square()
        return perp2.index_put((rows,), refined)
    tangential = stacked[:, 2]
    tangential.addcmul_(stacked[:, 0], coef.to(stacked.dtype)[:, None], value=-1)
    refined = torch.linalg.vector_norm(tangential, dim=-1).to(torch.float64).square()
    return torch.where(unsure, refined, perp2)


def _foreach_copy(dst: list[torch.Tensor], src: list[torch.Tensor]) -> None:
    if not dst:
        return
    try:
        torch._foreach_copy_(dst, src)
    except (RuntimeError, TypeError):  # e.g. mixed devices in one list: fall back per tensor
        for d, s in zip(dst, src, strict=True):
            d.copy_(s)
