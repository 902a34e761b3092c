from __future__ import annotations

import torch

from stepsize_lens.snapshot import Snapshot, row_view


def test_row_view_reads_channels_last_without_copy():
    t = torch.randn(4, 3, 5, 5).to(memory_format=torch.channels_last)
    rows = row_view(t)
    assert rows.shape == (4, 75) and rows.data_ptr() == t.data_ptr()
    # the same rows as the contiguous layout, up to the order within each row
    ref = t.contiguous().reshape(4, -1)
    assert torch.allclose(rows.sort(dim=1).values, ref.sort(dim=1).values)
    assert row_view(torch.randn(7)).shape == (1, 7)
    assert row_view(torch.tensor(2.0)).shape == (1, 1)


def test_buckets_group_equal_row_lengths_and_grams_match():
    torch.manual_seed(0)
    tensors = [torch.randn(4, 6), torch.randn(2, 6), torch.randn(6), torch.randn(3, 2, 2)]
    grads = [torch.randn_like(t) for t in tensors]
    grads[2] = None
    snap = Snapshot(tensors)
    assert len(snap.buckets) == 2  # rows of length 6 (three tensors) and of length 4
    snap.capture(tensors, grads)
    after = [t + 0.1 * torch.randn_like(t) for t in tensors]
    gram, perp2 = snap.grams(after)
    order = snap.row_tensor_cpu.tolist()
    assert sorted(order) == [0] * 4 + [1] * 2 + [2] + [3] * 3
    row = 0
    for index in order[:4]:
        w = tensors[index].reshape(tensors[index].shape[0], -1)[row]
        d = after[index].reshape(tensors[index].shape[0], -1)[row] - w
        assert torch.allclose(gram[row, 0, 0], (w @ w).double(), rtol=1e-6)
        assert torch.allclose(gram[row, 2, 2], (d @ d).double(), rtol=1e-5)
        tangential = d - (w @ d) / (w @ w) * w
        assert torch.allclose(perp2[row], (tangential @ tangential).double(), rtol=1e-4)
        row += 1
    grad_rows = snap.row_tensor_cpu == 2
    assert (gram[grad_rows][:, 1, 1] == 0).all()  # missing grad -> zeros in its slot
