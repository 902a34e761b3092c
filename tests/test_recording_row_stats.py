"""Row sums against float64 brute force: norms, dots (matmul and elementwise), tangential parts."""

from __future__ import annotations

import pytest
import torch

from stepsize_lens.recording import row_stats


@pytest.mark.parametrize("matmul", [True, False])
@pytest.mark.parametrize("shape", [(1, 300), (7, 300), (8, 16), (5, 4608)])
def test_dots_and_norms(matmul, shape):
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    out = torch.empty(shape[0])
    want = (a.double() * b.double()).sum(1)
    scale = a.double().norm(dim=1) * b.double().norm(dim=1)
    got = row_stats.dots(a, b, out, matmul).double()
    assert ((got - want) / scale).abs().max() < 1e-6  # cosines to better than 1e-6
    norms = row_stats.norms(a, torch.empty(shape[0])).double()
    torch.testing.assert_close(norms, a.double().norm(dim=1), rtol=1e-6, atol=0)


def test_matmul_is_trusted_only_at_full_float32_precision():
    assert row_stats.matmul_is_exact(torch.device("cpu"))
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        assert not row_stats.matmul_is_exact(torch.device("cpu"))
    finally:
        torch.set_float32_matmul_precision(before)
    assert not row_stats.matmul_is_exact(torch.device("meta"))


@pytest.mark.parametrize("refine_all", [False, True])
@pytest.mark.parametrize("radial_rows", [1, 6])  # a few rows (gathered) or most (in place)
def test_refine_forms_the_tangential_part_where_the_sums_cancel(refine_all, radial_rows):
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(8, 200, generator=gen)
    d = 1e-3 * torch.randn(8, 200, generator=gen)
    d[:radial_rows] = -1e-3 * w[:radial_rows] + 1e-7 * torch.randn(radial_rows, 200, generator=gen)
    w64, d64 = w.double(), d.double()
    coef = (w64 * d64).sum(1) / (w64 * w64).sum(1)
    want = ((d64 - coef[:, None] * w64) ** 2).sum(1)
    w_norm, d_norm = w.norm(dim=1), d.norm(dim=1)
    wd = (w * d).sum(1)
    out = torch.full((8,), float("nan"))
    row_stats.refine(w, d.clone(), w_norm, wd, d_norm, out, refine_all)
    refined = ~out.isnan()
    assert refined[:radial_rows].all() and not refined[radial_rows:].any()
    torch.testing.assert_close(out[:radial_rows].double(), want[:radial_rows], rtol=1e-3, atol=0)
    from_sums = row_stats.tangential_sq(wd, w_norm.square(), d_norm.square())
    torch.testing.assert_close(
        from_sums[radial_rows:].double(), want[radial_rows:], rtol=1e-4, atol=0
    )
    assert (from_sums[:radial_rows].double() - want[:radial_rows]).abs().max() > 10 * (
        out[:radial_rows].double() - want[:radial_rows]
    ).abs().max()  # the cancellation refining avoids
