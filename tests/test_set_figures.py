"""A set's figures, written once (`stepsize_lens.set_figures`), against a brute-force float64
reference on numpy arrays and on torch tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stepsize_lens import set_figures
from stepsize_lens.set_figures import finite_mean, set_effective_lr, set_figure

NAN = math.nan


def _mean(row, weights=None):
    """Σ w·x / Σ w over the finite x of one row, element by element in Python floats."""
    weights = [1.0] * len(row) if weights is None else weights
    pairs = [(float(w), float(x)) for x, w in zip(row, weights) if math.isfinite(float(x))]
    mass = sum(w for w, _ in pairs)
    return sum(w * x for w, x in pairs) / mass if pairs and mass > 0 else NAN


def _effective_lr(lr_row, norm_row, weights=None):
    weights = [1.0] * len(lr_row) if weights is None else weights
    kept = [
        (float(w), float(e), float(n) ** 2)
        for e, n, w in zip(lr_row, norm_row, weights)
        if math.isfinite(float(e)) and math.isfinite(float(n) ** 2)
    ]
    mass = sum(w for w, _, _ in kept)
    if not kept or mass <= 0:
        return NAN
    numerator = sum(w * e for w, e, _ in kept) / mass
    denominator = sum(w * s for w, _, s in kept) / mass
    return numerator / denominator if denominator > 0 else NAN


def _cases(seed: int = 0):
    rng = np.random.default_rng(seed)
    for records, k in ((1, 1), (4, 1), (5, 2), (7, 5), (3, 12)):
        values = rng.lognormal(size=(records, k)).astype(np.float32)
        values[rng.random((records, k)) < 0.25] = np.nan
        values[rng.random((records, k)) < 0.05] = np.inf
        values[0] = np.nan  # a record with nothing finite
        norms = rng.lognormal(size=(records, k)).astype(np.float32)
        norms[rng.random((records, k)) < 0.2] = np.nan
        norms[-1] = 0.0  # a record where every norm is 0
        lr = np.repeat(rng.random((1, k)), records, axis=0)
        lr[rng.random((records, k)) < 0.1] = np.nan
        weights = rng.integers(1, 1000, size=k).astype(np.float64)
        yield values, norms, lr, weights


def _as(kind: str, array: np.ndarray):
    return torch.from_numpy(np.ascontiguousarray(array)) if kind == "torch" else array


def _close(got, want: list[float]) -> None:
    got = np.asarray(got.tolist() if isinstance(got, torch.Tensor) else got, dtype=np.float64)
    np.testing.assert_allclose(got.reshape(-1), want, rtol=1e-13, atol=0.0, equal_nan=True)


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_the_finite_mean_is_the_mean_of_the_finite_values(kind):
    for values, _, _, weights in _cases():
        _close(finite_mean(_as(kind, values)), [_mean(row) for row in values])
        _close(
            finite_mean(_as(kind, values), _as(kind, weights)),
            [_mean(row, weights) for row in values],
        )
        for row in values:  # one record alone: the last axis is the set
            _close(finite_mean(_as(kind, row)), [_mean(row)])


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_a_sets_effective_lr_is_the_mean_lr_over_the_mean_squared_norm(kind):
    for _, norms, lr, weights in _cases(1):
        _close(
            set_effective_lr(_as(kind, lr), _as(kind, norms)),
            [_effective_lr(e, n) for e, n in zip(lr, norms)],
        )
        weighted = set_effective_lr(
            _as(kind, lr), _as(kind, norms), lambda x, w=_as(kind, weights): finite_mean(x, w)
        )
        _close(weighted, [_effective_lr(e, n, weights) for e, n in zip(lr, norms)])


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_set_figure_picks_the_formula_and_counts_the_tensors(kind):
    for values, norms, lr, _ in _cases(2):
        k = values.shape[1]
        for metric in ("angular_update", "weight_norm", "effective_lr"):
            figure, count = set_figure(metric, _as(kind, values), _as(kind, lr), _as(kind, norms))
            if metric == "effective_lr" and k > 1:
                want = [_effective_lr(e, n) for e, n in zip(lr, norms)]
                both = np.isfinite(lr) & np.isfinite(norms)
                want_count = both.sum(axis=1).tolist()
            else:  # one tensor's effective_lr is its own value
                want = [_mean(row) for row in values]
                want_count = np.isfinite(values).sum(axis=1).tolist()
            _close(figure, want)
            assert [int(c) for c in count.tolist()] == want_count
            assert type(figure) is type(_as(kind, values))  # noqa: E721 -- the caller's kind


def test_numpy_and_torch_give_the_same_figures():
    # the same formula; numpy and torch may add in different orders (last bit)
    same = {"rtol": 1e-15, "atol": 0.0, "equal_nan": True}
    for values, norms, lr, weights in _cases(3):
        for metric in ("weight_norm", "effective_lr"):
            a, _ = set_figure(metric, values, lr, norms)
            b, _ = set_figure(metric, *(torch.from_numpy(x) for x in (values, lr, norms)))
            np.testing.assert_allclose(a, b.numpy(), **same)
        np.testing.assert_allclose(
            finite_mean(values, weights),
            finite_mean(torch.from_numpy(values), torch.from_numpy(weights)).numpy(),
            **same,
        )


def test_the_figures_need_lr_and_norms_for_a_sets_effective_lr_only():
    with pytest.raises(ValueError, match="lr and weight_norm"):
        set_figure("effective_lr", np.ones((2, 3)))
    figure, count = set_figure("effective_lr", np.array([[0.5]]))
    assert figure.tolist() == [0.5] and count.tolist() == [1]


def test_the_module_is_a_leaf_that_imports_no_torch():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import stepsize_lens.set_figures as f\n"
        "assert 'torch' not in sys.modules\n"
        "assert f.namespace([1.0]).__name__ == 'numpy'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert set_figures.namespace(torch.zeros(1)) is torch
