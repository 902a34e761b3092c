"""The blocked multi-tensor engine (stepsize_lens/optim/_blocked.py): blocks and routes."""

from __future__ import annotations

import math

import torch
from _optim_cases import one_thread  # noqa: F401 (an autouse fixture)

from stepsize_lens.optim import _blocked


def test_blocks_cover_every_row_once_and_respect_the_size():
    shapes = [torch.Size(s) for s in [(64, 3, 3, 3), (512, 4608), (10, 512), (3, 50_000), (1, 7)]]
    blocks = _blocked.RowBlocks(shapes, block_numel=1 << 15)
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


def test_partition_routes_each_tensor_by_its_layout():
    params = [
        torch.randn(7),  # never projected
        torch.randn(4, 3, 2, 2),  # contiguous: blocked
        torch.randn(4, 3, 2, 2).to(memory_format=torch.channels_last),  # a view too: blocked
        torch.randn(6, 4).t(),  # dim 0 not outermost: per-tensor fallback
        torch.empty(0, 3),  # empty: never projected
    ]
    route = _blocked.Partition(params)
    assert (route.plain, route.blocked, route.fallback) == ([0, 4], [1, 2], [3])
    for i in route.blocked:
        assert route.rows[i].data_ptr() == params[i].data_ptr()
        assert route.rows[i].shape == (4, 12)
    # a gradient in another layout is read in the parameter's row order
    g = torch.randn(4, 3, 2, 2)
    rows = route.grad_rows(2, params[2], g)
    torch.testing.assert_close(rows.sum(1), g.sum(dim=(1, 2, 3)))
    torch.testing.assert_close((route.rows[2] * rows).sum(1), (params[2] * g).sum(dim=(1, 2, 3)))
