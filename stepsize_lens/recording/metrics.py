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

import torch

from stepsize_lens._schema import CHANNEL_METRICS, LAYER_METRICS, METRICS

W, G, D = 0, 1, 2  # slots of the Gram matrix: weight, gradient, update


def row_grams(stacked: torch.Tensor) -> torch.Tensor:
    """Per-row Gram matrices of stacked rows: [rows, k, C] -> [rows, k, k] (one batched matmul)."""
    return torch.bmm(stacked, stacked.transpose(1, 2))


def safe_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den where den > 0, NaN elsewhere (also NaN where den is NaN)."""
    nan = torch.full_like(num, float("nan"))
    return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), nan)


def radial_coef(wd: torch.Tensor, ww: torch.Tensor) -> torch.Tensor:
    """c = <w,Δ>/‖w‖², the radial part of Δ as a multiple of w (0 where ‖w‖ = 0)."""
    return torch.where(ww > 0, wd / torch.where(ww > 0, ww, 1), 0)


def _angle(ww: torch.Tensor, wd: torch.Tensor, perp2: torch.Tensor) -> torch.Tensor:
    """Angle between w and w + Δ from <w,w>, <w,Δ>, ‖Δ⊥‖²: atan2(‖Δ⊥‖, ‖w‖ + Δr)."""
    norm = ww.sqrt()
    radial = safe_div(wd, norm)
    perp = perp2.clamp_min(0).sqrt()
    return torch.where(
        norm > 0, torch.atan2(perp, norm + radial), torch.full_like(norm, float("nan"))
    )


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
    spread = (coef_r - coef[row_tensor]).square() * ww_r
    out = torch.zeros(grams.shape[0], dtype=row_gram.dtype, device=row_gram.device)
    return out.index_add_(0, row_tensor, row_perp2 + spread)


def layer_metrics(
    grams: torch.Tensor, perp2: torch.Tensor, lr: torch.Tensor, has_grad: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Whole-tensor metrics from Gram matrices [T, 3, 3], ‖Δ⊥‖² [T], lr [T], has_grad [T] bool."""
    ww, gg, dd = grams[:, W, W], grams[:, G, G], grams[:, D, D]
    wg, wd = grams[:, W, G], grams[:, W, D]
    nan = torch.full_like(ww, float("nan"))
    w_norm, g_norm, d_norm = ww.sqrt(), gg.sqrt(), dd.sqrt()
    g_norm = torch.where(has_grad, g_norm, nan)
    out = {
        "weight_norm": w_norm,
        "grad_norm": g_norm,
        "update_norm": d_norm,
        "relative_update": safe_div(d_norm, w_norm),
        "angular_update": _angle(ww, wd, perp2),
        "effective_lr": safe_div(lr.to(ww.dtype), ww),
        "cos_grad": safe_div(wg, w_norm * g_norm),
        "cos_update": safe_div(wd, w_norm * d_norm),
        "norm_growth": 2 * wd + dd,
    }
    assert tuple(out) == LAYER_METRICS
    return out


def _segment_nanmean(values: torch.Tensor, segment: torch.Tensor, num: int) -> torch.Tensor:
    finite = ~torch.isnan(values)
    total = torch.zeros(num, dtype=values.dtype, device=values.device)
    count = torch.zeros(num, dtype=values.dtype, device=values.device)
    total.index_add_(0, segment, torch.where(finite, values, torch.zeros_like(values)))
    count.index_add_(0, segment, finite.to(values.dtype))
    return safe_div(total, count)


def _segment_nanmax(values: torch.Tensor, segment: torch.Tensor, num: int) -> torch.Tensor:
    neg_inf = torch.full_like(values, float("-inf"))
    out = torch.full((num,), float("-inf"), dtype=values.dtype, device=values.device)
    out.scatter_reduce_(0, segment, torch.where(torch.isnan(values), neg_inf, values), "amax")
    return torch.where(torch.isneginf(out), torch.full_like(out, float("nan")), out)


def _segment_cv(values: torch.Tensor, mean: torch.Tensor, segment: torch.Tensor) -> torch.Tensor:
    """std/mean per segment of ``values`` (NaNs left out) given each segment's ``mean``: the
    population std from the squared deviations about the mean (a second pass, no
    cancellation); NaN where the mean is 0 or undefined."""
    finite = ~torch.isnan(values)
    num = mean.shape[0]
    dev = torch.where(finite, values - mean[segment], torch.zeros_like(values))
    total = torch.zeros(num, dtype=values.dtype, device=values.device)
    count = torch.zeros(num, dtype=values.dtype, device=values.device)
    total.index_add_(0, segment, dev * dev)
    count.index_add_(0, segment, finite.to(values.dtype))
    return safe_div(safe_div(total, count).sqrt(), mean)


def channel_metrics(
    grams: torch.Tensor,
    perp2: torch.Tensor,
    row_tensor: torch.Tensor,
    multi_row: torch.Tensor,
    has_grad: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Per-channel metrics from per-row Grams [rows, 3, 3] and ‖Δ⊥_r‖² [rows].

    row_tensor [rows] maps each row to its tensor index; multi_row [T] bool marks tensors with
    ndim >= 2 (the others get NaN); has_grad [T] bool.
    """
    num = multi_row.shape[0]
    ww, gg = grams[:, W, W], grams[:, G, G]
    wg, wd = grams[:, W, G], grams[:, W, D]
    cos_rows = safe_div(wg.abs(), ww.sqrt() * gg.sqrt())
    nan = torch.full((num,), float("nan"), dtype=grams.dtype, device=grams.device)
    angles = _angle(ww, wd, perp2)
    mean_angle = _segment_nanmean(angles, row_tensor, num)
    out = {
        "channel_cos_grad_max": torch.where(
            multi_row & has_grad, _segment_nanmax(cos_rows, row_tensor, num), nan
        ),
        "channel_weight_norm": torch.where(
            multi_row, _segment_nanmean(ww.sqrt(), row_tensor, num), nan
        ),
        "channel_angular_update": torch.where(multi_row, mean_angle, nan),
        "channel_angular_update_cv": torch.where(
            multi_row, _segment_cv(angles, mean_angle, row_tensor), nan
        ),
    }
    assert tuple(out) == CHANNEL_METRICS
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
