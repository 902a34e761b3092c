from __future__ import annotations

import pytest
import torch

from stepsize_lens.recording.snapshot import Snapshot, float64_row_stats


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


def test_nearly_radial_updates_keep_their_tangential_part():
    torch.manual_seed(1)
    w = torch.randn(5, 300)
    tangent = torch.randn(5, 300)
    tangent -= ((tangent * w).sum(1, keepdim=True) / (w * w).sum(1, keepdim=True)) * w
    scale = torch.tensor([0.0, 1e-4, 1e-3, 1e-2, 1.0])[:, None]
    after = w * (1 - 1e-2) + 1e-2 * scale * tangent / tangent.norm(dim=1, keepdim=True) * w.norm(
        dim=1, keepdim=True
    )
    snap = Snapshot([w])
    snap.capture([w], [torch.zeros_like(w)])
    _, perp2 = snap.grams([after])
    d = after.double() - w.double()
    w64 = w.double()
    ref = d - ((d * w64).sum(1, keepdim=True) / (w64 * w64).sum(1, keepdim=True)) * w64
    ref2 = (ref * ref).sum(1)
    # row 0 is pure decay up to float32 rounding of w*(1-1e-2): no spurious rotation
    torch.testing.assert_close(perp2, ref2, rtol=1e-3, atol=1e-10 * float((d * d).sum(1).min()))
    d32, w32 = after - w, w  # the same from float32 sums cancels: far off for rows 0-2
    naive = (d32 * d32).sum(1) - (d32 * w32).sum(1) ** 2 / (w32 * w32).sum(1)
    assert (naive[:3].double() - ref2[:3]).abs().max() > 10 * (perp2[:3] - ref2[:3]).abs().max()


def test_float64_row_stats_match_refined_eager_path():
    torch.manual_seed(2)
    tensors = [torch.randn(6, 40), torch.randn(3, 4, 10)]
    grads = [torch.randn_like(t) for t in tensors]
    after = [t * 0.99 + 1e-4 * torch.randn_like(t) for t in tensors]
    snap = Snapshot(tensors)
    snap.capture(tensors, grads)
    eager_gram, eager_perp = snap.grams(after)
    stats = [float64_row_stats(b.buffer) for b in snap.buckets]
    torch.testing.assert_close(torch.cat([g for g, _ in stats]), eager_gram, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(torch.cat([p for _, p in stats]), eager_perp, rtol=1e-3, atol=1e-14)


@pytest.mark.slow
def test_fused_snapshot_compiles_and_matches_eager():
    torch.manual_seed(3)
    tensors = [torch.randn(8, 3, 3, 3), torch.randn(16), torch.randn(5, 27)]
    grads = [torch.randn_like(t) for t in tensors]
    after = [t - 0.01 * g for t, g in zip(tensors, grads)]
    results = []
    for fused in (False, True):
        snap = Snapshot(tensors, fused=fused)
        snap.capture(tensors, grads)
        results.append(snap.grams(after))
        assert snap.fused is fused  # compiled without falling back
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-4, atol=1e-12)
