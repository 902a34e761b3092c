"""Background compilation of row kernels (stepsize_lens/optim/_compiled.py)."""

from __future__ import annotations

import pytest
import torch
from _optim_cases import one_thread  # noqa: F401 (an autouse fixture)

from stepsize_lens.optim import _compiled
from stepsize_lens.optim._compiled import Key, RowKernel


def scale_rows(x: torch.Tensor, out: torch.Tensor, scale: torch.Tensor, *, negate: bool) -> None:
    """out <- x * scale (per row), negated for the ``negate`` variant."""
    y = x * scale[:, None]
    out.copy_(-y if negate else y)


def _example(key: Key) -> tuple[torch.Tensor, ...]:
    kw = dict(device=key.device, dtype=key.dtype)
    return (
        torch.zeros(key.rows, key.cols, **kw),
        torch.zeros(key.rows, key.cols, **kw),
        torch.ones(key.rows, **kw),
    )


def _kernel(fn=scale_rows) -> RowKernel:
    return RowKernel("test", fn, _example, lambda key: {"negate": key.variant})


def _key(rows: int, cols: int, dtype=torch.float32, variant=False, device="cpu") -> Key:
    return Key(torch.device(device), dtype, rows, cols, variant)


def test_requested_keys_compile_in_the_background_and_then_run():
    kernel = _kernel()
    keys = [_key(4, 5), _key(6, 7, variant=True)]
    assert not kernel.ready(keys[0])
    kernel.request(keys)
    assert kernel.wait(keys, timeout=120)
    x = torch.randn(4, 5)
    out = torch.empty(4, 5)
    kernel(keys[0], x, out, torch.arange(4.0))
    torch.testing.assert_close(out, x * torch.arange(4.0)[:, None])
    x, out = torch.randn(6, 7), torch.empty(6, 7)
    kernel(keys[1], x, out, torch.ones(6))
    torch.testing.assert_close(out, -x)
    # the plain function, for a step being traced by an outer torch.compile
    kernel.traced(keys[1], x, out, torch.full((6,), 2.0))
    torch.testing.assert_close(out, -2 * x)


def test_each_key_runs_its_own_graph_and_rejects_other_shapes():
    """Keys of one family share nothing compiled; a call never goes through dynamo's guards,
    so inductor's size checks must catch arguments of another shape."""
    kernel = _kernel()
    small, large = _key(2, 3), _key(9, 11)
    kernel.request([small, large])
    assert kernel.wait([small, large], timeout=120)
    for key in (small, large):
        x, out = torch.randn(key.rows, key.cols), torch.empty(key.rows, key.cols)
        scale = torch.arange(float(key.rows))
        kernel(key, x, out, scale)
        torch.testing.assert_close(out, x * scale[:, None])
    with pytest.raises(AssertionError):
        kernel(small, torch.randn(9, 11), torch.empty(9, 11), torch.ones(9))


def test_keys_never_compiled_settle_at_once():
    kernel = _kernel()
    huge = _key(1 << 13, 1 << 13)  # more elements than an example may have
    meta = _key(4, 4, device="meta")  # no compiler for this device
    assert huge.rows * huge.cols > _compiled.MAX_EXAMPLE_NUMEL
    kernel.request([huge, meta])
    assert kernel.settled([huge, meta]) and not kernel.ready(huge)
    assert kernel.wait([huge, meta], timeout=None)  # at once: nothing that can compile is missing


def test_a_failing_compilation_warns_and_settles_its_whole_family():
    def broken(x, out, scale, *, negate):
        raise RuntimeError("no compiler")

    kernel = _kernel(broken)
    first, second = _key(3, 3), _key(5, 5)
    with pytest.warns(RuntimeWarning, match="fused test kernel is unavailable for cpu"):
        kernel.request([first])
        assert not kernel.wait([first], timeout=120)
    kernel.request([second])  # the family failed: not queued again
    assert kernel.settled([second]) and not kernel.ready(second)
