"""Per-row sums over [n, K] row blocks: squared norms, dot products, tangential parts. No state.

These are the only loops over every element the lens runs while training. Each reads its
inputs once and writes n numbers, so a record costs a few passes over the parameters
(`snapshot` arranges them so that each pass reads data another pass just brought into cache).

- `norms`: ‖x_r‖ through ``torch.linalg.vector_norm`` (one fused read, no temporary).
- `dots`: ⟨a_r, b_r⟩. On the CPU, rows are paired and one batched matmul of [n/2, 2, K] by
  [n/2, K, 2] takes every pair's 2x2 products (half of them wasted, still about one read of a
  and b, no temporary); the diagonal holds the dots. Elsewhere, and whenever float32 matmuls may
  run in reduced precision (TF32 on CUDA, ``torch.set_float32_matmul_precision`` below
  "highest"), a multiply-and-sum, whose accumulation no matmul setting can touch.
- `tangential_sq`, `refine`: ‖Δ_r − c_r·w_r‖² with c_r = ⟨w_r, Δ_r⟩/‖w_r‖². From the sums it
  is ‖Δ_r‖² − c_r·⟨w_r, Δ_r⟩, which cancels when Δ_r is nearly radial (pure weight decay):
  there the tangential vector is formed while Δ is in cache and its norm taken directly. On
  the CPU only the rows that need it are refined (a data-dependent choice, fine without a
  device to wait for); on accelerators every row is, so nothing travels to the host first.

Float32 inputs are summed in float32: the sums are accurate to about 1e-7 relative to the
magnitudes summed (Σ|a_i b_i| ≤ ‖a‖‖b‖), i.e. cosines to about 1e-7 absolute, and the only
cancelling difference is handled by `tangential_sq`. Float64 inputs are summed in float64.
"""

from __future__ import annotations

import torch

from stepsize_lens._rows import MATMUL_MIN_ROW, dots, matmul_is_exact, norms

__all__ = [
    "MATMUL_MIN_ROW",
    "dots",
    "matmul_is_exact",
    "norms",
    "refine",
    "tangential_sq",
]

# a row whose radial part is more than this share of ‖Δ_r‖² gets its tangential part formed
REFINE_FRACTION = 0.5
# refine a whole block in place once more than 1/DENSE_SHARE of its rows need it
DENSE_SHARE = 8


def tangential_sq(wd: torch.Tensor, ww: torch.Tensor, dd: torch.Tensor) -> torch.Tensor:
    """‖Δ_r‖² − c_r·⟨w_r, Δ_r⟩ with c_r = ⟨w_r, Δ_r⟩/‖w_r‖² (c_r = 0 where w_r = 0), at least 0:
    the tangential part from the sums, exact unless the row `needs_refining`."""
    coef = torch.where(ww > 0, wd / torch.where(ww > 0, ww, 1), 0)
    return (dd - coef * wd).clamp_min(0)


def refine(
    w: torch.Tensor,
    d: torch.Tensor,
    w_norm: torch.Tensor,
    wd: torch.Tensor,
    d_norm: torch.Tensor,
    out: torch.Tensor,
    refine_all: bool,
) -> None:
    """Where the sums cancel, out[r] = ‖Δ_r − c_r·w_r‖² formed from the rows of w, d [n, K].

    A row cancels when its radial part is more than `REFINE_FRACTION` of ‖Δ_r‖², i.e. when
    ⟨w_r, Δ_r⟩² > REFINE_FRACTION·(‖Δ_r‖·‖w_r‖)². ``refine_all``: form every row's tangential
    vector and keep it where needed (no data-dependent branch); else only the rows that need
    it (the CPU path), in place over the whole block once they are many. ``d`` may be
    overwritten. Other rows of ``out`` are left as they are.
    """
    unsure = torch.mul(wd, wd).gt_(torch.mul(d_norm, w_norm).square_().mul_(REFINE_FRACTION))
    if not refine_all:
        rows = unsure.nonzero().squeeze(1)
        if rows.numel() == 0:
            return
        if rows.numel() * DENSE_SHARE < unsure.numel():  # a few rows: gather them
            coef = wd[rows] / w_norm[rows].square()  # unsure rows have ⟨w, Δ⟩ ≠ 0: ‖w‖ > 0
            tangential = d[rows] - coef[:, None] * w[rows]
            out[rows] = torch.linalg.vector_norm(tangential, dim=-1).square_()
            return
    ww = w_norm.square()
    coef = torch.where(ww > 0, wd / torch.where(ww > 0, ww, 1), 0)
    tangential = d.addcmul_(w, coef[:, None], value=-1)
    refined = torch.linalg.vector_norm(tangential, dim=-1).square_()
    torch.where(unsure.bool(), refined, out, out=out)
