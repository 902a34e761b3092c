"""The snapshot: one copy of w, per-row sums of (w, g, Δ) against float64 brute force, in every
tiling, dtype, layout and device path; the copy skipped when the parameters are untouched."""

from __future__ import annotations

import pytest
import torch

from stepsize_lens.recording.device import ACCELERATOR_PATHS, CPU_PATHS, DevicePaths
from stepsize_lens.recording.snapshot import Snapshot

PATHS = {
    "cpu": CPU_PATHS,
    "refine_all_rows": DevicePaths(refine_all_rows=True),
    "elementwise_dots": DevicePaths(elementwise_dots=True),
    "accelerator": ACCELERATOR_PATHS,
}


def _rows64(tensor: torch.Tensor) -> torch.Tensor:
    t = tensor.detach().double()
    return t.reshape(1, -1) if t.ndim < 2 else t.reshape(t.shape[0], -1)


def reference(weights, grads, after):
    """Per-row (ww, wg, gg, wd, dd, ‖Δ − c·w‖²) in float64, rows in tensor order, per tensor."""
    out = []
    for w, g, a in zip(weights, grads, after):
        w64, a64 = _rows64(w), _rows64(a)
        g64 = torch.zeros_like(w64) if g is None else _rows64(g)
        d = a64 - w64
        ww, wd = (w64 * w64).sum(1), (w64 * d).sum(1)
        coef = torch.where(ww > 0, wd / torch.where(ww > 0, ww, 1), 0)
        t = d - coef[:, None] * w64
        out.append(
            torch.stack(
                [ww, (w64 * g64).sum(1), (g64 * g64).sum(1), wd, (d * d).sum(1), (t * t).sum(1)], 1
            )
        )
    return out


def _record(snap: Snapshot, weights, grads, after, keep=False):
    snap.capture(weights)
    snap.grad_sums(grads)
    return snap.update_sums(after, keep)


def _by_tensor(snap: Snapshot, gram: torch.Tensor, perp2: torch.Tensor):
    got = torch.stack(
        [gram[:, 0, 0], gram[:, 0, 1], gram[:, 1, 1], gram[:, 0, 2], gram[:, 2, 2], perp2], 1
    )
    return [got[snap.row_tensor_cpu == i] for i in range(snap.num_tensors)]


def _tensors(seed: int = 0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(4, 6), (2, 6), (6,), (3, 2, 2), (40, 3, 3, 3), (7, 300), (5,)]
    weights = [torch.randn(s, generator=gen).to(dtype) for s in shapes]
    grads = [torch.randn(s, generator=gen).to(dtype) for s in shapes]
    grads[2] = None
    after = [w - 0.01 * torch.randn(w.shape, generator=gen).to(dtype) for w in weights]
    return weights, grads, after


@pytest.mark.parametrize("paths", list(PATHS.values()), ids=list(PATHS))
@pytest.mark.parametrize("tile", [None, 8, 50])  # default, tiny tiles: every unit kind
def test_sums_match_float64_brute_force(paths, tile):
    weights, grads, after = _tensors()
    snap = Snapshot(weights, paths, tile=tile)
    assert len(snap.buckets) == 5  # row lengths 6, 4, 27, 300 and 5
    gram, perp2 = _record(snap, weights, grads, after)
    assert torch.isnan(gram[:, 1, 2]).all()  # ⟨g, Δ⟩ is not measured
    assert (gram[:, 0, 1] == gram[:, 1, 0]).all() and (gram[:, 0, 2] == gram[:, 2, 0]).all()
    for index, (got, want) in enumerate(
        zip(_by_tensor(snap, gram, perp2), reference(weights, grads, after))
    ):
        scale = want[:, :5].abs().amax(0, keepdim=True).clamp_min(1e-30)
        torch.testing.assert_close(got[:, :5] / scale, want[:, :5] / scale, rtol=0, atol=1e-6)
        torch.testing.assert_close(got[:, 5], want[:, 5], rtol=1e-4, atol=0, msg=str(index))
    grad_rows = snap.row_tensor_cpu == 2
    assert (gram[grad_rows][:, 1, 1] == 0).all()  # missing grad: zero sums


@pytest.mark.parametrize("paths", list(PATHS.values()), ids=list(PATHS))
def test_nearly_radial_updates_keep_their_tangential_part(paths):
    torch.manual_seed(1)
    w = torch.randn(5, 300)
    tangent = torch.randn(5, 300)
    tangent -= ((tangent * w).sum(1, keepdim=True) / (w * w).sum(1, keepdim=True)) * w
    scale = torch.tensor([0.0, 1e-4, 1e-3, 1e-2, 1.0])[:, None]
    after = w * (1 - 1e-2) + 1e-2 * scale * tangent / tangent.norm(dim=1, keepdim=True) * w.norm(
        dim=1, keepdim=True
    )
    snap = Snapshot([w], paths)
    _, perp2 = _record(snap, [w], [torch.zeros_like(w)], [after])
    d = after.double() - w.double()
    w64 = w.double()
    ref = d - ((d * w64).sum(1, keepdim=True) / (w64 * w64).sum(1, keepdim=True)) * w64
    ref2 = (ref * ref).sum(1)
    # row 0 is pure decay up to float32 rounding of w*(1-1e-2): no spurious rotation
    torch.testing.assert_close(perp2, ref2, rtol=1e-3, atol=1e-10 * float((d * d).sum(1).min()))
    d32, w32 = after - w, w  # the same from float32 sums cancels: far off for rows 0-2
    naive = (d32 * d32).sum(1) - (d32 * w32).sum(1) ** 2 / (w32 * w32).sum(1)
    assert (naive[:3].double() - ref2[:3]).abs().max() > 10 * (perp2[:3] - ref2[:3]).abs().max()


def test_half_precision_is_summed_in_float32():
    weights, grads, after = _tensors(dtype=torch.bfloat16)
    snap = Snapshot(weights)
    assert all(b.buffer.dtype == torch.bfloat16 for b in snap.buckets)  # w kept as it is
    gram, perp2 = _record(snap, weights, grads, after)
    for got, want in zip(_by_tensor(snap, gram, perp2), reference(weights, grads, after)):
        scale = want[:, :5].abs().amax(0, keepdim=True).clamp_min(1e-30)
        torch.testing.assert_close(got[:, :5] / scale, want[:, :5] / scale, rtol=0, atol=1e-5)


def test_layouts_read_in_the_weights_element_order():
    torch.manual_seed(4)
    w = torch.randn(6, 4, 3, 3).to(memory_format=torch.channels_last)
    g = torch.randn(6, 4, 3, 3)  # a gradient laid out differently from its weight
    after = (w - 0.1 * g).contiguous(memory_format=torch.channels_last)
    snap = Snapshot([w])
    gram, perp2 = _record(snap, [w], [g], [after])
    (got,) = _by_tensor(snap, gram, perp2)
    (want,) = reference([w], [g], [after])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_untouched_parameters_are_not_copied_again():
    weights, grads, after = _tensors()
    params = [torch.nn.Parameter(w.clone()) for w in weights]
    snap = Snapshot(params)
    assert snap.capture(params)  # the first capture copies
    snap.grad_sums(grads)
    with torch.no_grad():
        for p, a in zip(params, after):
            p.copy_(a)  # "the optimizer step"
    snap.update_sums(params, keep=True)
    for index, param in enumerate(params):  # W now holds w'
        assert torch.equal(snap.held_rows(index), _rows64(param).float())
    assert not snap.capture(params)  # nothing touched them: nothing to copy
    with torch.no_grad():
        params[3].mul_(2)  # a write between steps bumps the version counter
    assert snap.capture(params)
    snap.grad_sums(grads)
    snap.update_sums(params, keep=False)
    assert snap.capture(params)  # without keep, the next capture copies


def test_held_bytes_are_one_copy_of_the_parameters():
    weights, _, _ = _tensors()
    snap = Snapshot(weights)
    tracked = sum(w.numel() * w.element_size() for w in weights)
    buffers = sum(b.buffer.numel() * b.buffer.element_size() for b in snap.buckets)
    assert buffers == tracked
    assert snap.held_bytes() > tracked  # plus the row maps, counted honestly


def test_no_tensors():
    snap = Snapshot([])
    gram, perp2 = _record(snap, [], [], [])
    assert gram.shape == (0, 3, 3) and perp2.shape == (0,)


def test_attach_and_a_record_start_no_child_process_thread_or_compiler(monkeypatch):
    """Nothing is built at run time: attaching a lens and recording a step on the CPU start no
    child process, no thread and no compiler."""
    import multiprocessing
    import os
    import subprocess
    import threading

    import torch.utils.cpp_extension

    import stepsize_lens

    def forbidden(*args, **kwargs):
        raise AssertionError("the lens started a child process, a thread or a compiler")

    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.LayerNorm(5))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    monkeypatch.setattr(subprocess, "Popen", forbidden)
    monkeypatch.setattr(os, "fork", forbidden)
    monkeypatch.setattr(os, "posix_spawn", forbidden, raising=False)
    monkeypatch.setattr(multiprocessing.Process, "start", forbidden)
    monkeypatch.setattr(threading.Thread, "start", forbidden)
    monkeypatch.setattr(torch.utils.cpp_extension, "load", forbidden)
    monkeypatch.setattr(torch.utils.cpp_extension, "load_inline", forbidden)
    lens = stepsize_lens.attach(model, optimizer, path=None, schedule=1)
    for _ in range(2):
        model(torch.randn(3, 6)).square().mean().backward()
        optimizer.step()
    assert lens.num_records == 2
    lens.close()
