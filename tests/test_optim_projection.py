"""The shared AdamP/SGDP math: the scale-invariance test, the projection, rows and blocks.

The oracle is the paper authors' package (``adamp==0.3.0``), used only as a reference.
"""

from __future__ import annotations

import math

import adamp as reference
import pytest
import torch
import torch.nn.functional as F

from stepsize_lens.optim import _projection as P


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
        torch.cat([P.as_rows(a).mul(P.as_rows(b)).sum(1) for a, b in zip(ws, gs)]),
        torch.cat([P.as_rows(a).norm(dim=1) for a in ws]),
        torch.cat([P.as_rows(b).norm(dim=1) for b in gs]),
        torch.cat([P.as_rows(a).mul(P.as_rows(u)).sum(1) for a, u in zip(ws, us)]),
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


def test_blocks_cover_every_row_once_and_respect_the_size():
    shapes = [torch.Size(s) for s in [(64, 3, 3, 3), (512, 4608), (10, 512), (3, 50_000), (1, 7)]]
    blocks = P.RowBlocks(shapes, block_numel=1 << 15)
    seen: dict[int, list[int]] = {t: [] for t in range(len(shapes))}
    covered = []
    for start, stop in blocks.blocks:
        covered += range(start, stop)
        block = blocks.pieces[start:stop]
        size = sum((p.r1 - p.r0) * math.prod(shapes[p.t][1:]) for p in block)
        assert size <= 1 << 15 or len(block) == 1
        for piece in block:
            seen[piece.t].extend(range(piece.r0, piece.r1))
    assert covered == list(range(len(blocks.pieces)))
    assert all(seen[t] == list(range(s[0])) for t, s in enumerate(shapes))

    # pieces of the tensors and of the flat per-row vectors line up
    tensors = [torch.randn(s[0], math.prod(s[1:])) for s in shapes]
    per_row = torch.cat([x.sum(1) for x in tensors])
    for piece, x, rows in zip(blocks.pieces, blocks.cut(tensors), blocks.split(per_row)):
        assert torch.equal(x, tensors[piece.t][piece.r0 : piece.r1])
        torch.testing.assert_close(x.sum(1), rows)


def test_pick_rounds_constants_like_a_scalar_multiplier():
    x = torch.ones(3, dtype=torch.float32)
    value = 1 - 1e-3 * 1e-2 * 0.1
    picked = P.pick(torch.tensor(True), 1.0, value, x.dtype)
    assert picked.dtype == torch.float32
    assert torch.equal(x * picked, x.clone().mul_(value))
