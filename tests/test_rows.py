"""Rows of a tensor, shared by the snapshot and the optimizers (stepsize_lens/_rows.py)."""

from __future__ import annotations

import torch

from stepsize_lens._rows import as_rows, row_order, rows_view


def test_as_rows_reads_channels_last_without_copy():
    t = torch.randn(4, 3, 5, 5).to(memory_format=torch.channels_last)
    rows = as_rows(t)
    assert rows.shape == (4, 75) and rows.data_ptr() == t.data_ptr()
    # the same rows as the contiguous layout, up to the order within each row
    ref = t.contiguous().reshape(4, -1)
    assert torch.allclose(rows.sort(dim=1).values, ref.sort(dim=1).values)
    assert as_rows(torch.randn(7)).shape == (1, 7)
    assert as_rows(torch.tensor(2.0)).shape == (1, 1)


def test_row_views_share_memory_for_contiguous_and_channels_last():
    for fmt in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(4, 3, 2, 5).to(memory_format=fmt)
        rows = rows_view(x, row_order(x))
        assert rows is not None and rows.shape == (4, 30)
        assert rows.data_ptr() == x.data_ptr()
        torch.testing.assert_close(rows.sum(1), x.sum(dim=(1, 2, 3)))
        rows.mul_(2)  # writes through
        torch.testing.assert_close(rows.sum(1), x.sum(dim=(1, 2, 3)))
    # rows of tensors in different layouts line up when read in the same order
    w = torch.randn(4, 3, 2, 5).to(memory_format=torch.channels_last)
    g = torch.randn(4, 3, 2, 5)
    order = row_order(w)
    torch.testing.assert_close(
        (as_rows(w, order) * as_rows(g, order)).sum(1), (w * g).sum(dim=(1, 2, 3))
    )
    transposed = torch.randn(6, 4).t()  # dim 0 is not the outermost in memory
    assert rows_view(transposed, row_order(transposed)) is None
    torch.testing.assert_close(as_rows(transposed), transposed.contiguous())
