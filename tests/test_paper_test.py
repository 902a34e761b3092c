"""`stepsize_lens.paper_test`: the paper's cosine test on arrays and tensors.

The codes are asserted as plain integers on purpose: they are what the run file stores.
"""

from __future__ import annotations

import numpy as np
import torch

from stepsize_lens.paper_test import paper_test

NAN = float("nan")


def test_paper_test_known_cases_numpy():
    # numel 100, rows 10: channel threshold 0.1*sqrt(10/100) = 0.0316, layer threshold 0.01
    cos = np.array([0.5, 0.005, 0.5, NAN, 0.5, NAN, 0.0])
    chan = np.array([0.03, 0.5, 0.5, NAN, 0.0, 0.5, 0.0])
    ndim = np.array([2, 2, 2, 2, 4, 2, 1])
    codes = paper_test(cos, chan, 100, 10, ndim)
    assert codes.dtype == np.int8
    # channel, layer, none, both NaN, channel (4-D), NaN layer but chan fails, 1-D
    assert codes.tolist() == [1, 2, 0, -1, 1, 0, -1]


def test_paper_test_threshold_is_strict_and_delta_scales():
    assert paper_test(0.5, 0.0316, 100, 10, 2).item() == 1
    assert paper_test(0.5, 0.0317, 100, 10, 2).item() == 0
    assert paper_test(0.5, 0.0317, 100, 10, 2, delta=0.2).item() == 1
    assert paper_test(0.0099, 1.0, 100, 10, 2).item() == 2
    assert paper_test(-0.0101, 1.0, 100, 10, 2).item() == 0  # abs() of a signed cosine


def test_paper_test_torch_matches_numpy_and_stays_on_device():
    rng = np.random.default_rng(0)
    cos = rng.normal(0, 0.02, size=(7, 5))
    chan = np.abs(rng.normal(0, 0.05, size=(7, 5)))
    cos[0, 0] = chan[0, 0] = NAN
    numel = np.array([100, 9, 4096, 50, 8])
    rows = np.array([10, 3, 64, 1, 8])
    ndim = np.array([2, 2, 4, 3, 1])
    expected = paper_test(cos, chan, numel, rows, ndim, delta=0.3)
    got = paper_test(
        torch.tensor(cos, dtype=torch.float64),
        torch.tensor(chan, dtype=torch.float64),
        torch.tensor(numel),
        torch.tensor(rows),
        torch.tensor(ndim),
        delta=0.3,
    )
    assert isinstance(got, torch.Tensor) and got.dtype == torch.int8
    np.testing.assert_array_equal(got.numpy(), expected)
    # float32 cosines and plain-list sizes also work
    got32 = paper_test(
        torch.tensor(cos, dtype=torch.float32), torch.tensor(chan), list(numel), rows, ndim, 0.3
    )
    assert got32.shape == (7, 5) and got32.dtype == torch.int8
