"""The math AdamP and SGDP share (stepsize_lens/optim/_projection.py): the scale-invariance
test on row statistics, the projection coefficients, the per-tensor projection.

The oracle is the paper authors' package (``adamp==0.3.0``), used only as a reference.
"""

from __future__ import annotations

import math

import adamp as reference
import pytest
import torch
import torch.nn.functional as F
from _optim_cases import one_thread  # noqa: F401 (an autouse fixture)

from stepsize_lens._rows import as_rows
from stepsize_lens._schema import View
from stepsize_lens.optim import _projection as P
from stepsize_lens.paper_test import channel_threshold, layer_threshold


def _tangential(w: torch.Tensor, g: torch.Tensor, per_row: bool) -> torch.Tensor:
    """g with its radial component removed (per row, or over the whole tensor)."""
    rows_w, rows_g = w.reshape(w.shape[0], -1), g.reshape(g.shape[0], -1)
    if not per_row:
        rows_w, rows_g = rows_w.reshape(1, -1), rows_g.reshape(1, -1)
    coef = (rows_w * rows_g).sum(1, keepdim=True) / (rows_w * rows_w).sum(1, keepdim=True)
    return (rows_g - coef * rows_w).reshape(g.shape)


def _cases(gen: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
    """(w, g, expected view) with float64 data: channel, layer only, none, 4-D channel."""
    out = []
    w = torch.randn(6, 20, generator=gen, dtype=torch.float64)
    out.append((w, _tangential(w, torch.randn(6, 20, generator=gen, dtype=torch.float64), True), 1))
    w = torch.randn(5, 30, generator=gen, dtype=torch.float64)
    out.append(
        (w, _tangential(w, torch.randn(5, 30, generator=gen, dtype=torch.float64), False), 2)
    )
    w = torch.randn(4, 10, generator=gen, dtype=torch.float64)
    out.append((w, w + torch.randn(4, 10, generator=gen, dtype=torch.float64), 0))
    w = torch.randn(8, 3, 3, 3, generator=gen, dtype=torch.float64)
    g = _tangential(w, torch.randn(8, 3, 3, 3, generator=gen, dtype=torch.float64), True)
    out.append((w, g, 1))
    return out


def _reference_view(w: torch.Tensor, g: torch.Tensor, delta: float, eps: float) -> int:
    for code, rows in ((1, w.shape[0]), (2, 1)):
        cos = F.cosine_similarity(g.reshape(rows, -1), w.reshape(rows, -1), dim=1, eps=eps).abs()
        if cos.max() < delta / math.sqrt(w.numel() // rows):
            return code
    return 0


def _batched_stats(ws, gs, us):
    rows = [
        torch.cat([as_rows(a).mul(as_rows(b)).sum(1) for a, b in zip(ws, gs)]),
        torch.cat([as_rows(a).norm(dim=1) for a in ws]),
        torch.cat([as_rows(b).norm(dim=1) for b in gs]),
        torch.cat([as_rows(a).mul(as_rows(u)).sum(1) for a, u in zip(ws, us)]),
    ]
    return rows


def test_views_match_the_reference_cosine_test_batched_over_tensors():
    gen = torch.Generator().manual_seed(0)
    cases = _cases(gen)
    ws, gs = [c[0] for c in cases], [c[1] for c in cases]
    layout = P.RowLayout.of([w.shape for w in ws])
    wg, nw, ng, _ = _batched_stats(ws, gs, gs)
    views = P.choose_views(wg, nw, ng, layout, delta=0.1, eps=1e-8)
    expected = [c[2] for c in cases]
    assert views.tolist() == expected
    assert expected == [_reference_view(w, g, 0.1, 1e-8) for w, g in zip(ws, gs)]


def test_cosine_eps_clamps_each_norm_like_cosine_similarity():
    # rows with norms below eps: cos = <w,g> / (max(|w|,eps) max(|g|,eps)), not NaN
    w = torch.tensor([[1e-9, 0.0], [1.0, 0.0]])
    g = torch.tensor([[1e-9, 0.0], [0.0, 1.0]])
    layout = P.RowLayout.of([w.shape])
    wg, nw, ng, _ = _batched_stats([w], [g], [g])
    cos = F.cosine_similarity(g, w, dim=1, eps=1e-8).abs().max()
    delta_pass = float(cos) * math.sqrt(2) * 1.01  # threshold just above the reference cosine
    delta_fail = float(cos) * math.sqrt(2) * 0.99
    assert P.choose_views(wg, nw, ng, layout, delta=delta_pass, eps=1e-8).tolist() == [1]
    assert P.choose_views(wg, nw, ng, layout, delta=delta_fail, eps=1e-8).tolist() != [1]


def test_nan_gradients_fail_both_views():
    w = torch.randn(3, 4)
    g = torch.full((3, 4), float("nan"))
    layout = P.RowLayout.of([w.shape])
    wg, nw, ng, _ = _batched_stats([w], [g], [g])
    assert P.choose_views(wg, nw, ng, layout, delta=0.1, eps=1e-8).tolist() == [0]


@pytest.mark.parametrize("case", range(4))
def test_per_tensor_projection_equals_the_reference(case):
    gen = torch.Generator().manual_seed(1)
    w, g, view = _cases(gen)[case]
    w, g = w.float(), g.float()
    u = torch.randn(w.shape, generator=gen)
    oracle = reference.AdamP([torch.zeros(1, requires_grad=True)])
    expected, wd = oracle._projection(w, g, u.clone(), 0.1, 0.1, 1e-8)
    ours = u.clone()
    code, projected = P.project_(ours, w, g, delta=0.1, eps=1e-8)
    assert int(code) == view
    assert bool(projected) == (wd == 0.1)
    torch.testing.assert_close(ours, expected, rtol=1e-6, atol=1e-7)
    if view:
        rows = w.shape[0] if view == 1 else 1
        radial = (w.reshape(rows, -1) * ours.reshape(rows, -1)).sum(1)
        assert radial.abs().max() < 1e-5 * w.norm() * u.norm()


def test_batched_coefficients_project_every_tensor_like_the_reference():
    gen = torch.Generator().manual_seed(2)
    cases = _cases(gen)
    ws, gs = [c[0] for c in cases], [c[1] for c in cases]
    us = [torch.randn(w.shape, generator=gen, dtype=torch.float64) for w in ws]
    layout = P.RowLayout.of([w.shape for w in ws])
    wg, nw, ng, wu = _batched_stats(ws, gs, us)
    views = P.choose_views(wg, nw, ng, layout, delta=0.1, eps=1e-8)
    coefs = P.projection_coefs(wu, nw, views, layout, eps=1e-8).split(layout.rows)
    oracle = reference.AdamP([torch.zeros(1, requires_grad=True)])
    for w, g, u, c in zip(ws, gs, us, coefs):
        expected, _ = oracle._projection(w, g, u.clone(), 0.1, 0.1, 1e-8)
        ours = u - c.reshape((-1,) + (1,) * (w.ndim - 1)) * w
        torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-14)


def test_pick_rounds_constants_like_a_scalar_multiplier():
    x = torch.ones(3, dtype=torch.float32)
    value = 1 - 1e-3 * 1e-2 * 0.1
    picked = P.pick(torch.tensor(True), 1.0, value, x.dtype)
    assert picked.dtype == torch.float32
    assert torch.equal(x * picked, x.clone().mul_(value))


def test_thresholds_are_the_paper_tests_in_double_rounded_once():
    shapes = [torch.Size(s) for s in [(64, 3, 3, 3), (10, 512), (3, 7)]]
    layout = P.RowLayout.of(shapes)
    thr = layout.thresholds(0.1, torch.float32, torch.device("cpu"))
    for t, s in enumerate(shapes):
        numel = math.prod(s)
        assert float(thr[0, t]) == float(torch.tensor(0.1 / math.sqrt(numel // s[0])))
        assert float(thr[0, t]) == float(torch.tensor(channel_threshold(numel, s[0], 0.1)))
        assert float(thr[1, t]) == float(torch.tensor(layer_threshold(numel, 0.1)))


def test_view_codes_are_the_schema_views():
    gen = torch.Generator().manual_seed(0)
    cases = _cases(gen)
    ws, gs = [c[0] for c in cases], [c[1] for c in cases]
    wg, nw, ng, _ = _batched_stats(ws, gs, gs)
    views = P.choose_views(wg, nw, ng, P.RowLayout.of([w.shape for w in ws]), 0.1, 1e-8)
    assert [View(v) for v in views.tolist()] == [View.CHANNEL, View.LAYER, View.NONE, View.CHANNEL]


def test_long_rows_are_cut_into_equal_pieces_a_kernel_sums_quickly():
    assert [P.row_pieces(k) for k in (1, 27, 4096)] == [1, 1, 1]
    assert P.row_pieces(4608) == 2 and P.row_pieces(9000) == 3
    # no divisor within 8x the fewest pieces: whole rows
    assert P.row_pieces(4099 * 2) == 1 and P.row_pieces(12289) == 1
    for cols in (4608, 9000, 4097 * 5):
        pieces = P.row_pieces(cols)
        assert cols % pieces == 0 and (pieces == 1 or cols // pieces <= P.PIECE_LIMIT)
