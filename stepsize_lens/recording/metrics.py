"""Pure batched math for the lens: from per-row Gram matrices to every metric of docs/design.md §3.

No state, no I/O, no hooks. Every parameter tensor is seen as a matrix of rows (dim 0 = output
channels / neurons; a 1-D or 0-D tensor is one row). For each row r the caller supplies the 3x3
Gram matrix of (w_r, g_r, Δ_r), where w is the tensor before the step, g its gradient and
Δ = w' − w the update::

    G_r = [[<w,w>, <w,g>, <w,Δ>],
           [<g,w>, <g,g>, <g,Δ>],
           [<Δ,w>, <Δ,g>, <Δ,Δ>]]      (restricted to row r; no metric uses <g,Δ>, and the
                                         lens, which never keeps g and Δ together, leaves it NaN)

plus each row's tangential part ‖Δ⊥_r‖² (measured directly, see `snapshot`). Summing the
rows of a tensor gives its whole-tensor Gram matrix, from which (ŵ = w/‖w‖,
Δr = <Δ, ŵ>, ‖Δ⊥‖ = sqrt(max(‖Δ‖² − Δr², 0)), η = the group's lr):

    weight_norm      ‖w‖                        grad_norm     ‖g‖
    update_norm      ‖Δ‖                        relative_update ‖Δ‖/‖w‖
    angular_update   atan2(‖Δ⊥‖, ‖w‖ + Δr)      (the angle between w and w', radians)
    effective_lr     η/‖w‖²                     norm_growth   ‖w'‖² − ‖w‖² = 2<w,Δ> + ‖Δ‖²
    cos_grad         <w,g>/(‖w‖‖g‖)             cos_update    <w,Δ>/(‖w‖‖Δ‖)

and, for tensors with ndim >= 2, from the per-row matrices:

    channel_cos_grad_max     max_r |cos(w_r, g_r)|
    channel_weight_norm      mean_r ‖w_r‖
    channel_angular_update   mean_r angle(w_r, w'_r)
    channel_angular_update_cv  std_r / mean_r of those angles (population std, two passes)

A ratio with a zero denominator is NaN (never an exception, never inf); rows whose ratio is
undefined are left out of the per-channel max and mean. Computing from Gram matrices means the
expensive part (reading every weight) is one batched matrix product per bucket of equally long
rows; everything here works on vectors of length rows or tensors.
"""

from __future__ import annotations

import math

import torch

from stepsize_lens._schema import CHANNEL_METRICS, LAYER_METRICS, METRICS

W, G, D = 0, 1, 2  # slots of the Gram matrix: weight, gradient, update


def row_grams(stacked: torch.Tensor) -> torch.Tensor:
    """Per-row Gram matrices of stacked rows: [rows, k, C] -> [rows, k, k] (one batched matmul)."""
    return torch.bmm(stacked, stacked.transpose(1, 2))


def safe_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den where den > 0, NaN elsewhere (also NaN where den is NaN). Batch several ratios
    by stacking them: it is four ops whatever their number."""
    return torch.where(den > 0, num, math.nan) / den


def radial_coef(wd: torch.Tensor, ww: torch.Tensor) -> torch.Tensor:
    """c = <w,Δ>/‖w‖², the radial part of Δ as a multiple of w (0 where ‖w‖ = 0 or either is
    NaN)."""
    return (wd / ww).nan_to_num_(nan=0.0, posinf=math.inf, neginf=-math.inf)


def _angles(norm: torch.Tensor, radial: torch.Tensor, perp2: torch.Tensor) -> torch.Tensor:
    """Angle between w and w + Δ from ‖w‖, Δr = <Δ,ŵ> (NaN where ‖w‖ = 0, see `safe_div`) and
    ‖Δ⊥‖²: atan2(‖Δ⊥‖, ‖w‖ + Δr); NaN where ‖w‖ = 0 (through Δr)."""
    return torch.atan2(perp2.clamp_min(0).sqrt_(), norm + radial)


def tensor_perp2(
    row_gram: torch.Tensor, row_perp2: torch.Tensor, row_tensor: torch.Tensor, grams: torch.Tensor
) -> torch.Tensor:
    """Whole-tensor ‖Δ⊥‖² from per-row parts, without cancellation.

    ``grams`` are the whole-tensor Grams (`tensor_grams` of the same rows). With
    c_r = <w_r,Δ_r>/‖w_r‖² and c = <w,Δ>/‖w‖²: ‖Δ − c·w‖² = Σ_r ‖Δ_r − c_r·w_r‖² +
    Σ_r (c_r − c)²‖w_r‖², because Δ_r − c_r·w_r is orthogonal to w_r.
    """
    ww_r = row_gram[:, W, W]
    coef_r = radial_coef(row_gram[:, W, D], ww_r)
    coef = radial_coef(grams[:, W, D], grams[:, W, W])
    spread = coef_r.sub_(coef.index_select(0, row_tensor)).square_().mul_(ww_r)
    out = torch.zeros(grams.shape[0], dtype=row_gram.dtype, device=row_gram.device)
    return out.index_add_(0, row_tensor, spread.add_(row_perp2))


def layer_metrics(
    grams: torch.Tensor, perp2: torch.Tensor, lr: torch.Tensor, has_grad: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Whole-tensor metrics from Gram matrices [T, 3, 3], ‖Δ⊥‖² [T], lr [T], has_grad [T] bool.

    A fixed number of ops whatever T: the norms are one sqrt of their stack, the five ratios
    one `safe_div` of stacked numerators and denominators."""
    ww, gg, dd = grams[:, W, W], grams[:, G, G], grams[:, D, D]
    wg, wd = grams[:, W, G], grams[:, W, D]
    norms = torch.stack([ww, gg, dd]).sqrt_()
    norms[G].masked_fill_(has_grad.logical_not(), math.nan)
    w_norm, g_norm, d_norm = norms
    products = norms[G:] * w_norm  # ‖w‖‖g‖, ‖w‖‖Δ‖
    ratios = safe_div(
        torch.stack([d_norm, lr.to(ww.dtype), wg, wd, wd]),
        torch.cat([norms[:1], ww[None], products, norms[:1]]),
    )
    relative, effective_lr, cos_grad, cos_update, radial = ratios
    out = {
        "weight_norm": w_norm,
        "grad_norm": g_norm,
        "update_norm": d_norm,
        "relative_update": relative,
        "angular_update": _angles(w_norm, radial, perp2),
        "effective_lr": effective_lr,
        "cos_grad": cos_grad,
        "cos_update": cos_update,
        "norm_growth": torch.add(dd, wd, alpha=2),
    }
    assert tuple(out) == LAYER_METRICS
    return out


def _segment_nanmeans(
    values: torch.Tensor, segment: torch.Tensor, num: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per segment, the mean of each row of ``values`` [k, rows] over its non-NaN entries (NaN
    where there is none), and how many there were: ([k, num], [k, num])."""
    counted = torch.cat(
        [
            values.nan_to_num(nan=0.0, posinf=math.inf, neginf=-math.inf),
            (values == values).to(values.dtype),
        ]
    )
    sums = torch.zeros((counted.shape[0], num), dtype=values.dtype, device=values.device)
    sums.index_add_(1, segment, counted)
    k = values.shape[0]
    return safe_div(sums[:k], sums[k:]), sums[k:]


def _segment_nanmax(values: torch.Tensor, segment: torch.Tensor, num: int) -> torch.Tensor:
    """Per segment, the largest non-NaN value (NaN where there is none)."""
    out = torch.full((num,), -math.inf, dtype=values.dtype, device=values.device)
    out.scatter_reduce_(0, segment, values.nan_to_num(nan=-math.inf), "amax")
    return out.masked_fill_(out == -math.inf, math.nan)


def channel_metrics(
    grams: torch.Tensor,
    perp2: torch.Tensor,
    row_tensor: torch.Tensor,
    multi_row: torch.Tensor,
    has_grad: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Per-channel metrics from per-row Grams [rows, 3, 3] and ‖Δ⊥_r‖² [rows].

    row_tensor [rows] maps each row to its tensor index; multi_row [T] bool marks tensors with
    ndim >= 2 (the others get NaN); has_grad [T] bool. A fixed number of ops whatever the
    numbers of rows and tensors: segment sums (``index_add_``) over the rows.
    """
    num = multi_row.shape[0]
    ww, gg = grams[:, W, W], grams[:, G, G]
    wg, wd = grams[:, W, G], grams[:, W, D]
    norms = torch.stack([ww, gg]).sqrt_()
    w_norm = norms[0]
    # |cos(w_r, g_r)| and Δr_r = <Δ_r, ŵ_r> in one division
    cos_rows, radial = safe_div(
        torch.stack([wg.abs(), wd]), torch.stack([w_norm * norms[1], w_norm])
    )
    angles = _angles(w_norm, radial, perp2)
    means, counts = _segment_nanmeans(torch.stack([w_norm, angles]), row_tensor, num)
    mean_angle = means[1]
    # coefficient of variation: population std about the mean (a second pass, no
    # cancellation) over the mean, as sqrt(Σ dev² / (count·mean²)); NaN where the mean is 0
    dev = angles.sub_(mean_angle.index_select(0, row_tensor)).nan_to_num_(nan=0.0).square_()
    spread = torch.zeros(num, dtype=grams.dtype, device=grams.device).index_add_(0, row_tensor, dev)
    cv = safe_div(spread, counts[1] * mean_angle.square()).sqrt_()
    block = torch.stack([_segment_nanmax(cos_rows, row_tensor, num), means[0], mean_angle, cv])
    block.masked_fill_(multi_row.logical_not(), math.nan)
    block[0].masked_fill_(has_grad.logical_not(), math.nan)
    out = dict(zip(CHANNEL_METRICS, block))
    return out


def tensor_grams(row_gram: torch.Tensor, row_tensor: torch.Tensor, num: int) -> torch.Tensor:
    """Sum per-row Gram matrices [rows, 3, 3] into per-tensor ones [num, 3, 3]."""
    out = torch.zeros((num, *row_gram.shape[1:]), dtype=row_gram.dtype, device=row_gram.device)
    return out.index_add_(0, row_tensor, row_gram)


def all_metrics(
    row_gram: torch.Tensor,
    row_perp2: torch.Tensor,
    row_tensor: torch.Tensor,
    multi_row: torch.Tensor,
    lr: torch.Tensor,
    has_grad: torch.Tensor,
) -> torch.Tensor:
    """Every metric of docs/design.md §3 as one [len(METRICS), T] tensor, in `METRICS` order.

    row_gram: per-row Gram matrices of (w, g, Δ) [rows, 3, 3] (any float dtype; math is done in
    float64); row_perp2: per-row ‖Δ⊥_r‖² [rows], measured directly (see `snapshot`) because
    ‖Δ‖² − <Δ,ŵ>² cancels for nearly radial updates; row_tensor: [rows] tensor index of each
    row; multi_row, has_grad: [T] bool;
    lr: [T] the group learning rate of each tensor.

    About 70 tensor ops whatever the numbers of rows and tensors (on an accelerator, as many
    kernel launches), none of which makes the host wait for the device.
    """
    row_gram = row_gram.to(torch.float64)
    row_perp2 = row_perp2.to(torch.float64)
    num = multi_row.shape[0]
    grams = tensor_grams(row_gram, row_tensor, num)
    perp2 = tensor_perp2(row_gram, row_perp2, row_tensor, grams)
    layer = layer_metrics(grams, perp2, lr, has_grad)
    channel = channel_metrics(row_gram, row_perp2, row_tensor, multi_row, has_grad)
    merged = {**layer, **channel}
    return torch.stack([merged[name] for name in METRICS])
