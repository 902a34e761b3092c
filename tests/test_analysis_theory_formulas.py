"""Theory formulas (docs/design.md §5): pure functions against brute force and simulation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import stepsize_lens
from stepsize_lens.analysis.theory import formulas as theory
from stepsize_lens.experiments.toys import noisy_sphere


def _tangent(rng: np.random.Generator, w: np.ndarray) -> np.ndarray:
    xi = rng.standard_normal(w.shape)
    unit = w / np.linalg.norm(w)
    return xi - (xi @ unit) * unit


def test_one_step_identities_match_brute_force() -> None:
    rng = np.random.default_rng(0)
    w, delta, u = rng.standard_normal((3, 50))
    after = w + delta
    cos = (w @ delta) / (np.linalg.norm(w) * np.linalg.norm(delta))
    assert theory.norm_sq_after(np.linalg.norm(w), np.linalg.norm(delta), cos) == pytest.approx(
        after @ after
    )
    lr, wd = 0.05, 0.3
    decoupled = (1 - lr * wd) * w - lr * u
    assert theory.decoupled_norm_sq(w @ w, lr, wd, w @ u, u @ u) == pytest.approx(
        decoupled @ decoupled
    )
    g = _tangent(rng, w)
    plain = w - lr * g
    assert theory.plain_gd_norm_sq(w @ w, lr, g @ g) == pytest.approx(plain @ plain)
    # a zero update has an undefined cosine but a well-defined result
    assert theory.norm_sq_after(2.0, 0.0, np.nan) == pytest.approx(4.0)


def test_momentum_lemma_matches_simulation_with_a_changing_lr() -> None:
    rng = np.random.default_rng(1)
    beta = 0.8
    lrs = np.linspace(0.1, 0.02, 60)
    w = rng.standard_normal(20)
    buf = np.zeros(20)
    norms_sq = [w @ w]
    buffer_norms = []
    for lr in lrs:
        buf = beta * buf + _tangent(rng, w)  # any gradient orthogonal to the current w
        buffer_norms.append(np.linalg.norm(buf))
        w = w - lr * buf
        norms_sq.append(w @ w)
    predicted = theory.momentum_norm_sq(norms_sq[0], lrs, buffer_norms, beta)
    np.testing.assert_allclose(predicted, norms_sq, rtol=1e-12)


def test_projected_norm_matches_simulation() -> None:
    rng = np.random.default_rng(2)
    w = rng.standard_normal(10)
    norms_sq, projected = [w @ w], []
    for _ in range(30):
        step = _tangent(rng, w)
        projected.append(np.linalg.norm(step))
        w = w - 0.1 * step
        norms_sq.append(w @ w)
    np.testing.assert_allclose(
        theory.projected_norm_sq(norms_sq[0], 0.1, projected), norms_sq, rtol=1e-12
    )


def test_growth_factor_and_angle_formulas() -> None:
    assert theory.momentum_growth_factor(0.9) == pytest.approx(19.0)
    assert theory.momentum_growth_factor(0.0) == pytest.approx(1.0)
    assert theory.sgd_equilibrium_angle(0.1, 5e-4, 0.9) == pytest.approx(
        np.sqrt(2 * 0.1 * 5e-4 / 1.9)
    )
    assert theory.sgd_equilibrium_angle(0.1, 5e-4, 0.9, dampening=0.5) == pytest.approx(
        np.sqrt(2 * 0.05 * 5e-4 / 1.9)
    )
    assert theory.adamw_equilibrium_angle(1e-3, 0.05, 0.9) == pytest.approx(
        np.sqrt(2e-3 * 0.05 * 0.1 / 1.9)
    )
    assert theory.sgdp_equilibrium_angle(0.1, 1e-4, 0.9, 0.1) == pytest.approx(
        np.sqrt(2 * 0.1 * 1e-5 / 0.1)
    )
    assert theory.adamp_equilibrium_angle(1e-3, 0.05, 0.1) == pytest.approx(np.sqrt(2e-3 * 0.005))


@pytest.mark.parametrize(
    ("name", "make", "predicted", "steps"),
    [
        (
            "sgd",
            lambda p: torch.optim.SGD(p, lr=0.1, weight_decay=0.01),
            theory.sgd_equilibrium_angle(0.1, 0.01),
            1000,
        ),
        (
            "sgd-dampening",
            lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.8, dampening=0.5, weight_decay=0.02),
            theory.sgd_equilibrium_angle(0.1, 0.02, 0.8, 0.5),
            1500,
        ),
        (
            "sgdp",
            lambda p: stepsize_lens.SGDP(p, lr=0.1, momentum=0.9, weight_decay=0.02, wd_ratio=0.1),
            theory.sgdp_equilibrium_angle(0.1, 0.02, 0.9, 0.1),
            1500,
        ),
        (
            "adamp",
            lambda p: stepsize_lens.AdamP(p, lr=0.01, weight_decay=2.0, wd_ratio=0.1),
            theory.adamp_equilibrium_angle(0.01, 2.0, 0.1),
            2000,
        ),
    ],
)
def test_equilibrium_angle_matches_noise_driven_simulation(name, make, predicted, steps) -> None:
    trajectory = noisy_sphere(make, steps=steps, dim=500)
    assert trajectory.tail_angle() == pytest.approx(float(predicted), rel=0.03), name


def test_equilibrium_norms_match_simulation() -> None:
    dim = 500
    scale_free = np.sqrt(dim - 1)  # ‖w‖‖g‖ = ‖Π ξ‖ for the sphere's gradients
    sgd = noisy_sphere(
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.01), steps=1000, dim=dim
    )
    assert sgd.norms[-500:].mean() == pytest.approx(
        float(theory.sgd_equilibrium_norm(0.1, 0.01, scale_free, 0.9)), rel=0.03
    )
    sgdp = noisy_sphere(
        lambda p: stepsize_lens.SGDP(p, lr=0.1, momentum=0.9, weight_decay=0.02, wd_ratio=0.1),
        steps=1500,
        dim=dim,
    )
    assert sgdp.norms[-500:].mean() == pytest.approx(
        float(theory.sgdp_equilibrium_norm(0.1, 0.02, scale_free, 0.9, 0.0, 0.1)), rel=0.03
    )
    # Adam's norm rests on "update RMS per element ≈ sqrt((1−β1)/(1+β1))": an approximation
    adamw = noisy_sphere(
        lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.5), steps=1500, dim=dim
    )
    assert adamw.norms[-500:].mean() == pytest.approx(
        float(theory.adamw_equilibrium_norm(0.01, 0.5, dim)), rel=0.1
    )


def test_no_weight_decay_follows_the_quarter_power_law() -> None:
    dim = 500
    trajectory = noisy_sphere(lambda p: torch.optim.SGD(p, lr=0.2), steps=2000, dim=dim)
    predicted = theory.no_decay_norm(np.arange(2001), 1.0, 0.2, np.sqrt(dim - 1))
    np.testing.assert_allclose(trajectory.norms[::100], predicted[::100], rtol=0.03)
    momentum = noisy_sphere(
        lambda p: torch.optim.SGD(p, lr=0.02, momentum=0.9), steps=2000, dim=dim
    )
    predicted = theory.no_decay_norm(2000, 1.0, 0.02, np.sqrt(dim - 1), momentum=0.9)
    assert momentum.norms[-1] == pytest.approx(float(predicted), rel=0.05)
    steps = np.arange(1, 2001)
    assert theory.decay_exponent(steps[1000:], trajectory.angles[1000:]) == pytest.approx(
        -0.5, abs=0.05
    )


def test_decay_exponent_edge_cases() -> None:
    t = np.arange(1.0, 101.0)
    assert theory.decay_exponent(t, 3 * t**-0.5) == pytest.approx(-0.5)
    assert theory.decay_exponent(t, np.full(100, 0.1)) == pytest.approx(0.0, abs=1e-12)
    assert np.isnan(theory.decay_exponent([1, 2], [1, 1]))
    assert np.isnan(theory.decay_exponent([5, 5, 5], [1, 2, 3]))


def test_relaxation_rates_time_constants_and_decoupled_decay() -> None:
    assert theory.sgd_relaxation_rate(0.1, 0.01, 0.9) == pytest.approx(0.04)
    assert theory.sgd_relaxation_rate(0.1, 0.01, 0.9, dampening=0.5) == pytest.approx(0.02)
    assert theory.sgdp_relaxation_rate(0.1, 0.01, 0.9, 0.1) == pytest.approx(0.004)
    assert theory.adamw_relaxation_rate(0.01, 0.5) == pytest.approx(0.01)
    assert theory.adamp_relaxation_rate(0.01, 0.5, 0.1) == pytest.approx(0.001)
    steps = theory.time_constant(np.array([0.04, 0.0, np.nan]))
    assert steps[0] == pytest.approx(25.0) and steps[1] == np.inf and np.isnan(steps[2])
    assert theory.sgdp_decoupled_decay(1e-3, 0.9, 0.1) == pytest.approx(1e-3)
    assert theory.adamp_decoupled_decay(0.05, 0.1) == pytest.approx(5e-3)


def test_sgdp_unprojected_norm_is_the_sgd_norm_with_squared_dampening() -> None:
    # without dampening SGDP on an unprojected tensor is heavy-ball SGD with decoupled decay
    assert theory.sgdp_unprojected_equilibrium_norm(0.1, 1e-3, 2.0, 0.9) == pytest.approx(
        float(theory.sgd_equilibrium_norm(0.1, 1e-3, 2.0, 0.9))
    )
    assert theory.sgdp_unprojected_equilibrium_norm(0.1, 1e-3, 2.0, 0.9, 0.5) == pytest.approx(
        (0.1 * 0.25 * 4.0 / (2 * 1e-3 * 0.1)) ** 0.25
    )
