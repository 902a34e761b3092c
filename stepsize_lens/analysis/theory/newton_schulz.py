"""The size and the linear response of Muon's orthogonalized update, per matrix shape
(docs/design.md §5.9).

`torch.optim.Muon` (torch 2.13, ``torch/optim/_muon.py``) turns its direction X (an m × n
matrix) into O = NS(X / ‖X‖_F): ``ns_steps`` (5) iterations of X ← aX + b(XXᵀ)X + c(XXᵀ)²X with
(a, b, c) = (3.4445, −4.7750, 2.0315), in bfloat16, on the wide orientation. Each iteration
maps every singular value σ to f(σ) = aσ + bσ³ + cσ⁵ and keeps the singular vectors, so O =
U·f⁵(Σ/‖Σ‖)·Vᵀ. The update is s·O with s = sqrt(max(1, m/n)) (``adjust_lr_fn`` None or
"original") or 0.2·sqrt(max(m, n)) ("match_rms_adamw").

For a direction X with i.i.d. Gaussian entries (noise-dominated gradients) the recurrence needs

- ν = E‖O‖_F² = E Σ_i f⁵(σ̂_i)²  (‖O‖² is r·mean f⁵², r = min(m, n), not r: the iteration
  leaves singular values spread around 0.7–1.2 rather than at 1);
- γ = E Σ_i f⁵(σ̂_i)·σ_i / (m·n) with σ the singular values of X at unit entry variance: by
  Stein's lemma E⟨O, X⟩ is E[div O], so γ is the mean gain of O per entry, the factor in
  E⟨O(X), Y⟩ = (γ/σ_X)·E⟨X, Y⟩.

Both come from the singular values of Gaussian matrices of the shape: the mean over seeded
samples (4 to 1024 matrices, about `SAMPLE_ENTRIES` entries in all: small matrices fluctuate)
up to min(m, n) = `EXACT_LIMIT`, the Marchenko–Pastur quantiles beyond.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

COEFFICIENTS: tuple[float, float, float] = (3.4445, -4.7750, 2.0315)
STEPS = 5
EPS = 1e-7
EXACT_LIMIT = 256
SAMPLE_ENTRIES = 1 << 17  # draws per shape: enough matrices for about this many entries


def adjusted_scale(rows: int, cols: int, adjust_lr_fn: str | None = None) -> float:
    """The factor Muon multiplies its lr by for an update of shape (rows, cols)."""
    if adjust_lr_fn in (None, "original"):
        return math.sqrt(max(1.0, rows / cols))
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    return 1.0


def _iterate(
    sigma: np.ndarray, coefficients: tuple[float, float, float], steps: int, eps: float
) -> np.ndarray:
    a, b, c = coefficients
    x = sigma / max(float(np.sqrt((sigma**2).sum())), eps)
    for _ in range(steps):
        x2 = x * x
        x = a * x + b * x * x2 + c * x * x2 * x2
    return x


def marchenko_pastur_singular_values(rows: int, cols: int) -> np.ndarray:
    """min(rows, cols) quantiles of the singular values of a rows × cols matrix of unit
    Gaussian entries (Marchenko–Pastur, ratio y = min/max ≤ 1)."""
    small, large = min(rows, cols), max(rows, cols)
    y = small / large
    low, high = (1 - math.sqrt(y)) ** 2, (1 + math.sqrt(y)) ** 2
    grid = np.linspace(low, high, 20001)
    with np.errstate(invalid="ignore", divide="ignore"):
        density = np.sqrt(np.maximum((high - grid) * (grid - low), 0.0)) / (2 * math.pi * y * grid)
    density = np.nan_to_num(density)
    cdf = np.concatenate([[0.0], np.cumsum((density[1:] + density[:-1]) / 2 * np.diff(grid))])
    cdf /= cdf[-1]
    levels = (np.arange(small) + 0.5) / small
    eigen = np.interp(levels, cdf, grid)  # eigenvalues of XXᵀ / large
    return np.sqrt(eigen * large)


def _singular_values(x: np.ndarray) -> np.ndarray:
    """Singular values from the eigenvalues of the smaller Gram matrix (several times faster
    than an SVD; exact enough for a Gaussian matrix, which is well conditioned)."""
    gram = x @ x.T if x.shape[0] <= x.shape[1] else x.T @ x
    return np.sqrt(np.clip(np.linalg.eigvalsh(gram), 0.0, None))[::-1]


@lru_cache(maxsize=256)
def update_stats(
    rows: int,
    cols: int,
    coefficients: tuple[float, float, float] = COEFFICIENTS,
    steps: int = STEPS,
    eps: float = EPS,
) -> tuple[float, float]:
    """(ν, γ) of Muon's orthogonalized update for a Gaussian direction of shape (rows, cols)
    (module docstring), in float64."""
    if min(rows, cols) <= EXACT_LIMIT:
        rng = np.random.default_rng(0)
        count = int(np.clip(math.ceil(SAMPLE_ENTRIES / (rows * cols)), 4, 1024))
        draws = [
            stats_of_singular_values(
                _singular_values(rng.standard_normal((rows, cols))),
                rows,
                cols,
                coefficients,
                steps,
                eps,
            )
            for _ in range(count)
        ]
        return float(np.mean([d[0] for d in draws])), float(np.mean([d[1] for d in draws]))
    return stats_of_singular_values(
        marchenko_pastur_singular_values(rows, cols), rows, cols, coefficients, steps, eps
    )


def stats_of_singular_values(
    sigma: np.ndarray,
    rows: int,
    cols: int,
    coefficients: tuple[float, float, float] = COEFFICIENTS,
    steps: int = STEPS,
    eps: float = EPS,
) -> tuple[float, float]:
    """(ν, γ) for one matrix with singular values ``sigma`` (unit entry variance)."""
    out = _iterate(sigma, coefficients, steps, eps)
    return float((out**2).sum()), float((out * sigma).sum()) / (rows * cols)
