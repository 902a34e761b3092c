"""The launch counter (stepsize_lens/_launches.py): every non-view op counted once (a foreach
op over a whole list included), views and empty allocations free, and every op that makes a
GPU host wait for the device noted."""

from __future__ import annotations

import torch

from stepsize_lens._launches import count_launches


def test_ops_are_counted_and_views_are_not():
    x = torch.randn(4, 6)
    with count_launches() as launches:
        y = x.view(6, 4).t()[1:]  # views: nothing launched
        z = torch.empty(3)  # an uninitialised allocation: nothing launched
        y = y * 2
        torch._foreach_add_([x, torch.ones(2), z], 1.0)  # ones: 1, the whole list: 1
    assert launches.total == 3, launches.ops
    assert launches.ops["_foreach_add_"] == 1 and not launches.waiting


def test_every_waiting_op_is_noted():
    x = torch.randn(8)
    counts = torch.tensor([1, 2, 0])
    with count_launches() as launches:
        x.sum().item()
        float(x[0])
        (x > 0).nonzero()
        x[x > 0]
        torch.repeat_interleave(counts)
        torch.equal(x, x)
        bool(x[0] > 0)
    assert launches.waiting["_local_scalar_dense"] >= 3
    for name in ("nonzero", "index", "repeat_interleave", "equal"):
        assert launches.waiting[name] >= 1, (name, launches.waiting)


def test_what_does_not_wait_is_not_noted():
    x = torch.randn(8)
    counts = torch.tensor([1, 2, 0])
    with count_launches() as launches:
        torch.repeat_interleave(counts, output_size=3)
        torch.repeat_interleave(x, 2)  # int repeats: the size is known on the host
        x[torch.tensor([0, 2])]  # integer indexing
        torch.where(x > 0, x, 0.0)
    assert not launches.waiting, launches.waiting
