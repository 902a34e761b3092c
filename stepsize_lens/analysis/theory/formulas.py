"""The theory the measurements are held against (docs/design.md §5), as pure functions of
hyperparameters and norms (numpy in, numpy out; no `Run`).

Notation: η = lr, λ = weight decay, α = μ = momentum, β1 = Adam's first-moment decay, r = the
``wd_ratio`` of AdamP/SGDP, d = dampening, g̃ = ‖w‖·‖g‖ the scale-free gradient norm of a
scale-invariant w (its gradient scales as 1/‖w‖).

**One step.** For any optimizer, w' = w + Δ gives ‖w'‖² = ‖w‖² + 2‖w‖‖Δ‖cos(w, Δ) + ‖Δ‖². With
decoupled decay λ and update direction u (w' = (1 − ηλ)w − ηu):
‖w'‖² = (1−ηλ)²‖w‖² − 2η(1−ηλ)⟨w,u⟩ + η²‖u‖²; plain SGD with coupled L2 is the same formula with
u = g. On a scale-invariant w (g ⊥ w): plain GD ‖w'‖² = ‖w‖² + η²‖g‖²; projected updates
(SGDP/AdamP) ‖w'‖² = ‖w‖² + η²‖Π(p)‖².

**Momentum (Heo et al. 2021, Lemma 2.2).** With p_t = βp_{t−1} + c·g_t and g_t ⊥ w_t,
‖w_{t+1}‖² = ‖w_t‖² + η²‖p_t‖² + 2η² Σ_{k<t} β^{t−k}‖p_k‖²: the accumulated growth is
(1+β)/(1−β) times that of GD taking steps of the same sizes ‖p_t‖ (19× at β = 0.9).

**Equilibrium** (Wan et al. "Spherical Motion Dynamics"; Kosson et al. "Rotational Equilibrium").
With weight decay the norm settles where the decay's shrinkage balances the update's growth and
the angular update per step settles at (gradients uncorrelated across steps):

- SGD, momentum α, coupled L2 λ (dampening d acts as η → η(1−d)): sqrt(2η(1−d)λ/(1+α));
  ‖w‖⁴ = η(1−d)g̃²/(2λ(1−α)).
- AdamW: sqrt(2ηλ(1−β1)/(1+β1)); ‖w‖² = ηC/(2λ) with C ≈ numel (Adam's update has RMS ≈
  sqrt((1−β1)/(1+β1)) per element for noise-dominated gradients).
- Projection removes the momentum cross terms, so SGDP/AdamP on projected tensors follow the
  momentum-free form sqrt(2ηλ_eff) with their per-step decoupled decay λ_eff: SGDP
  λ·r/(1−μ), giving sqrt(2ηλr/(1−μ)) and ‖w‖⁴ = η(1−d)²g̃²/(2λr(1+μ)); AdamP λ·r, giving
  sqrt(2ηλr) and ‖w‖² = ηC(1−β1)/(2λr(1+β1)). On tensors the optimizer did not project:
  SGDP → sqrt(2ηλ/(1+μ)) and ‖w‖⁴ = η(1−d)²g̃²/(2λ(1−μ)), AdamP → the AdamW values.

The angles hold to within 1% in `experiments.toys.noisy_sphere` simulations with the real
optimizers; the Adam-family norms are rougher (C ≈ numel is 5-15% high there, since Adam's
second moment remembers the larger gradients of the early, smaller-norm steps).

**Without weight decay** there is no equilibrium: plain GD grows ‖w‖⁴ linearly,
‖w_t‖⁴ = ‖w_0‖⁴ + 2κη²g̃²t (κ = 1 for GD, 1/(1−α)² for heavy-ball momentum, 1/(1−α²) with
projection); Adam grows ‖w‖² linearly. Either way the angular update falls as t^(−1/2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

ArrayLike = float | np.ndarray


def _float64(*values: ArrayLike) -> tuple[np.ndarray, ...]:
    return tuple(np.asarray(v, dtype=np.float64) for v in values)


# --------------------------------------------------------------------------------------------
# One step
# --------------------------------------------------------------------------------------------


def norm_sq_after(
    weight_norm: ArrayLike, update_norm: ArrayLike, cos_update: ArrayLike
) -> ArrayLike:
    """‖w + Δ‖² = ‖w‖² + 2‖w‖‖Δ‖cos(w, Δ) + ‖Δ‖² (exact for any update)."""
    w = np.asarray(weight_norm, dtype=np.float64)
    d = np.asarray(update_norm, dtype=np.float64)
    c = np.nan_to_num(np.asarray(cos_update, dtype=np.float64), nan=0.0)  # Δ = 0 gives NaN cos
    return w * w + 2.0 * w * d * c + d * d


def decoupled_norm_sq(
    weight_sq: ArrayLike,
    lr: ArrayLike,
    weight_decay: ArrayLike,
    w_dot_u: ArrayLike,
    u_sq: ArrayLike,
) -> ArrayLike:
    """‖(1−ηλ)w − ηu‖² = (1−ηλ)²‖w‖² − 2η(1−ηλ)⟨w,u⟩ + η²‖u‖² (decoupled decay, then update u)."""
    shrink = 1.0 - np.asarray(lr) * np.asarray(weight_decay)
    lr = np.asarray(lr, dtype=np.float64)
    return shrink**2 * weight_sq - 2.0 * lr * shrink * w_dot_u + lr**2 * u_sq


def plain_gd_norm_sq(weight_sq: ArrayLike, lr: ArrayLike, grad_sq: ArrayLike) -> ArrayLike:
    """Plain GD on a scale-invariant w (g ⊥ w): ‖w'‖² = ‖w‖² + η²‖g‖²."""
    return np.asarray(weight_sq) + np.asarray(lr) ** 2 * np.asarray(grad_sq)


def momentum_norm_sq(
    initial_sq: float, lr: ArrayLike, buffer_norms: Sequence[float] | np.ndarray, beta: float
) -> np.ndarray:
    """Lemma 2.2: ‖w_t‖² for t = 0..T of momentum GD on a scale-invariant w.

    ‖w_{t+1}‖² = ‖w_t‖² + η_t²‖p_t‖² + 2η_t Σ_{k<t} β^{t−k} η_k ‖p_k‖² (constant η:
    the form of docs/design.md §5). ``buffer_norms`` are ‖p_t‖ for t = 0..T−1; ``lr`` a scalar
    or one value per step.
    """
    p_sq = np.asarray(buffer_norms, dtype=np.float64) ** 2
    lrs = np.broadcast_to(np.asarray(lr, dtype=np.float64), p_sq.shape)
    out = np.empty(p_sq.shape[0] + 1)
    out[0] = initial_sq
    carry = 0.0  # Σ_{k<t} β^{t−k} η_k ‖p_k‖²
    for t in range(p_sq.shape[0]):
        out[t + 1] = out[t] + lrs[t] ** 2 * p_sq[t] + 2.0 * lrs[t] * carry
        carry = beta * (carry + lrs[t] * p_sq[t])
    return out


def projected_norm_sq(
    initial_sq: float, lr: ArrayLike, projected_norms: Sequence[float] | np.ndarray
) -> np.ndarray:
    """Projected updates (SGDP/AdamP): ‖w_{t+1}‖² = ‖w_t‖² + η²‖Π(p_t)‖², for t = 0..T."""
    growth = np.asarray(lr, dtype=np.float64) ** 2 * np.asarray(projected_norms) ** 2
    return initial_sq + np.concatenate([[0.0], np.cumsum(growth)])


def momentum_growth_factor(beta: ArrayLike) -> ArrayLike:
    """(1+β)/(1−β): how much more momentum GD grows a scale-invariant norm than GD (Lemma 2.2)."""
    beta = np.asarray(beta, dtype=np.float64)
    return (1.0 + beta) / (1.0 - beta)


# --------------------------------------------------------------------------------------------
# Equilibrium
# --------------------------------------------------------------------------------------------


def sgd_equilibrium_angle(
    lr: ArrayLike, weight_decay: ArrayLike, momentum: ArrayLike = 0.0, dampening: ArrayLike = 0.0
) -> ArrayLike:
    """SGD with momentum α and coupled L2 λ: sqrt(2η(1−d)λ/(1+α)) radians per step."""
    return np.sqrt(
        2.0
        * np.asarray(lr)
        * (1.0 - np.asarray(dampening))
        * np.asarray(weight_decay)
        / (1.0 + np.asarray(momentum))
    )


def adamw_equilibrium_angle(
    lr: ArrayLike, weight_decay: ArrayLike, beta1: ArrayLike = 0.9
) -> ArrayLike:
    """AdamW: sqrt(2ηλ(1−β1)/(1+β1)) radians per step."""
    beta1 = np.asarray(beta1)
    return np.sqrt(2.0 * np.asarray(lr) * np.asarray(weight_decay) * (1.0 - beta1) / (1.0 + beta1))


def sgdp_equilibrium_angle(
    lr: ArrayLike, weight_decay: ArrayLike, momentum: ArrayLike = 0.0, wd_ratio: ArrayLike = 0.1
) -> ArrayLike:
    """SGDP on a projected tensor: sqrt(2η·λ_eff) with λ_eff = λ·r/(1−μ), i.e. sqrt(2ηλr/(1−μ))."""
    return np.sqrt(
        2.0
        * np.asarray(lr)
        * np.asarray(weight_decay)
        * np.asarray(wd_ratio)
        / (1.0 - np.asarray(momentum))
    )


def adamp_equilibrium_angle(
    lr: ArrayLike, weight_decay: ArrayLike, wd_ratio: ArrayLike = 0.1
) -> ArrayLike:
    """AdamP on a projected tensor: sqrt(2ηλr) (no momentum cross terms after projection)."""
    return np.sqrt(2.0 * np.asarray(lr) * np.asarray(weight_decay) * np.asarray(wd_ratio))


def sgd_equilibrium_norm(
    lr: ArrayLike,
    weight_decay: ArrayLike,
    scale_free_grad_norm: ArrayLike,
    momentum: ArrayLike = 0.0,
    dampening: ArrayLike = 0.0,
) -> ArrayLike:
    """SGD + momentum α + coupled L2 λ: ‖w‖ = (η(1−d)g̃²/(2λ(1−α)))^(1/4), g̃ = ‖w‖‖g‖."""
    lr_eff = np.asarray(lr) * (1.0 - np.asarray(dampening))
    with np.errstate(divide="ignore", invalid="ignore"):
        x = (
            lr_eff
            * np.asarray(scale_free_grad_norm) ** 2
            / (2.0 * np.asarray(weight_decay) * (1.0 - np.asarray(momentum)))
        )
    return x**0.25


def sgdp_equilibrium_norm(
    lr: ArrayLike,
    weight_decay: ArrayLike,
    scale_free_grad_norm: ArrayLike,
    momentum: ArrayLike = 0.0,
    dampening: ArrayLike = 0.0,
    wd_ratio: ArrayLike = 0.1,
) -> ArrayLike:
    """SGDP, projected tensor: ‖w‖ = (η(1−d)²g̃²/(2λr(1+μ)))^(1/4)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        x = (
            np.asarray(lr)
            * (1.0 - np.asarray(dampening)) ** 2
            * np.asarray(scale_free_grad_norm) ** 2
            / (2.0 * np.asarray(weight_decay) * np.asarray(wd_ratio) * (1.0 + np.asarray(momentum)))
        )
    return x**0.25


def sgdp_unprojected_equilibrium_norm(
    lr: ArrayLike,
    weight_decay: ArrayLike,
    scale_free_grad_norm: ArrayLike,
    momentum: ArrayLike = 0.0,
    dampening: ArrayLike = 0.0,
) -> ArrayLike:
    """SGDP on a tensor it did not project: ‖w‖ = (η(1−d)²g̃²/(2λ(1−μ)))^(1/4)."""
    lr = np.asarray(lr)
    dampening = np.asarray(dampening)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (
            lr
            * (1.0 - dampening) ** 2
            * np.asarray(scale_free_grad_norm) ** 2
            / (2.0 * np.asarray(weight_decay) * (1.0 - np.asarray(momentum)))
        ) ** 0.25


def adamw_equilibrium_norm(lr: ArrayLike, weight_decay: ArrayLike, numel: ArrayLike) -> ArrayLike:
    """AdamW: ‖w‖ = sqrt(η·numel/(2λ)) (noise-dominated gradients)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.sqrt(np.asarray(lr) * np.asarray(numel) / (2.0 * np.asarray(weight_decay)))


def adamp_equilibrium_norm(
    lr: ArrayLike,
    weight_decay: ArrayLike,
    numel: ArrayLike,
    beta1: ArrayLike = 0.9,
    wd_ratio: ArrayLike = 0.1,
) -> ArrayLike:
    """AdamP, projected tensor: ‖w‖ = sqrt(η·numel(1−β1)/(2λr(1+β1)))."""
    beta1 = np.asarray(beta1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.sqrt(
            np.asarray(lr)
            * np.asarray(numel)
            * (1.0 - beta1)
            / (2.0 * np.asarray(weight_decay) * np.asarray(wd_ratio) * (1.0 + beta1))
        )


# --------------------------------------------------------------------------------------------
# Relaxation to equilibrium
# --------------------------------------------------------------------------------------------


def sgd_relaxation_rate(
    lr: ArrayLike, weight_decay: ArrayLike, momentum: ArrayLike = 0.0, dampening: ArrayLike = 0.0
) -> ArrayLike:
    """SGD + momentum α + coupled L2 λ: ‖w‖⁴ relaxes at rate 4η(1−d)λ/(1−α) per step."""
    lr, weight_decay, momentum = _float64(lr, weight_decay, momentum)
    return 4.0 * lr * (1.0 - np.asarray(dampening)) * weight_decay / (1.0 - momentum)


def sgdp_relaxation_rate(
    lr: ArrayLike, weight_decay: ArrayLike, momentum: ArrayLike = 0.0, wd_ratio: ArrayLike = 1.0
) -> ArrayLike:
    """SGDP: ‖w‖⁴ relaxes at rate 4ηλr/(1−μ) per step (r = 1 on tensors it does not project)."""
    lr, weight_decay, momentum, wd_ratio = _float64(lr, weight_decay, momentum, wd_ratio)
    return 4.0 * lr * weight_decay * wd_ratio / (1.0 - momentum)


def adamw_relaxation_rate(lr: ArrayLike, weight_decay: ArrayLike) -> ArrayLike:
    """AdamW: ‖w‖² relaxes at rate 2ηλ per step."""
    lr, weight_decay = _float64(lr, weight_decay)
    return 2.0 * lr * weight_decay


def adamp_relaxation_rate(
    lr: ArrayLike, weight_decay: ArrayLike, wd_ratio: ArrayLike = 1.0
) -> ArrayLike:
    """AdamP: ‖w‖² relaxes at rate 2ηλr per step (r = 1 on tensors it does not project)."""
    lr, weight_decay, wd_ratio = _float64(lr, weight_decay, wd_ratio)
    return 2.0 * lr * weight_decay * wd_ratio


def time_constant(rate: ArrayLike) -> ArrayLike:
    """Steps for the distance to equilibrium to shrink by e: 1/rate; infinite at rate 0 (λ = 0),
    NaN where the rate is NaN (no theory)."""
    rate = np.asarray(rate, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.where(
            rate > 0, 1.0 / np.where(rate > 0, rate, 1.0), np.where(np.isnan(rate), np.nan, np.inf)
        )


# --------------------------------------------------------------------------------------------
# Decoupled weight decay per step
# --------------------------------------------------------------------------------------------


def adamp_decoupled_decay(weight_decay: ArrayLike, wd_ratio: ArrayLike = 1.0) -> ArrayLike:
    """AdamP's per-step decoupled decay: λ·r (r = 1 on tensors it does not project)."""
    return weight_decay * wd_ratio


def sgdp_decoupled_decay(
    weight_decay: ArrayLike, momentum: ArrayLike = 0.0, wd_ratio: ArrayLike = 1.0
) -> ArrayLike:
    """SGDP's per-step decoupled decay: λ·r/(1−μ) (r = 1 on tensors it does not project)."""
    return weight_decay * wd_ratio / (1.0 - momentum)


# --------------------------------------------------------------------------------------------
# Without weight decay
# --------------------------------------------------------------------------------------------


def no_decay_norm(
    steps: ArrayLike,
    initial_norm: float,
    lr: float,
    scale_free_grad_norm: float,
    momentum: float = 0.0,
    projected: bool = False,
) -> ArrayLike:
    """SGD-family norm without weight decay: (‖w0‖⁴ + 2κη²g̃²t)^(1/4).

    κ = 1 for plain GD, 1/(1−α)² for heavy-ball momentum, 1/(1−α²) with projection
    (uncorrelated gradients). The angular update η g̃/‖w_t‖² then falls as t^(−1/2).
    """
    kappa = 1.0 / (1.0 - momentum**2) if projected else 1.0 / (1.0 - momentum) ** 2
    t = np.asarray(steps, dtype=np.float64)
    return (initial_norm**4 + 2.0 * kappa * lr**2 * scale_free_grad_norm**2 * t) ** 0.25


def decay_exponent(
    steps: Sequence[float] | np.ndarray, values: Sequence[float] | np.ndarray
) -> float:
    """Least-squares slope of log(value) against log(step) over finite, positive points.

    About −1/2 for an effective step without weight decay (the t^(−1/2) law), about 0 at
    equilibrium. NaN with fewer than 3 usable points or a single distinct step.
    """
    x = np.asarray(steps, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    if ok.sum() < 3 or np.unique(x[ok]).size < 2:
        return math.nan
    lx, ly = np.log(x[ok]), np.log(y[ok])
    lx = lx - lx.mean()
    return float((lx * (ly - ly.mean())).sum() / (lx * lx).sum())


# --------------------------------------------------------------------------------------------
# Lion, AdamC, Adam with L2 (docs/design.md §5.9)
# --------------------------------------------------------------------------------------------


def lion_variance(beta1: ArrayLike = 0.9, beta2: ArrayLike = 0.99) -> ArrayLike:
    """V = (1−β1)² + β1²(1−β2)/(1+β2): the variance of Lion's interpolated moment
    β1·m + (1−β1)·g per unit gradient variance (white-noise gradients)."""
    beta1, beta2 = _float64(beta1, beta2)
    return (1.0 - beta1) ** 2 + beta1**2 * (1.0 - beta2) / (1.0 + beta2)


def lion_cross_factor(beta1: ArrayLike = 0.9, beta2: ArrayLike = 0.99) -> ArrayLike:
    """κ = 1 + (2/π)(1/V − 1): the growth of ‖w‖² from Lion's correlated signs relative to
    uncorrelated ones (Stein's gain sqrt(2/π) of sign on the filter's cross terms 1/V − 1)."""
    return 1.0 + (2.0 / math.pi) * (1.0 / lion_variance(beta1, beta2) - 1.0)


def lion_equilibrium_angle(
    lr: ArrayLike, weight_decay: ArrayLike, beta1: ArrayLike = 0.9, beta2: ArrayLike = 0.99
) -> ArrayLike:
    """Lion: sqrt(2ηλ/κ) = sqrt(2ηλ·V/(V + (2/π)(1−V))) radians per step."""
    return np.sqrt(
        2.0 * np.asarray(lr) * np.asarray(weight_decay) / lion_cross_factor(beta1, beta2)
    )


def lion_kosson_angle(
    lr: ArrayLike, weight_decay: ArrayLike, beta1: ArrayLike = 0.9, beta2: ArrayLike = 0.99
) -> ArrayLike:
    """Kosson et al. 2024's Lion equilibrium, sqrt(π/2)·sqrt(2ηλ)·sqrt(V): the limit of
    `lion_equilibrium_angle` for V ≪ 1 (β1 near 1); sqrt(π/2) too high at β1 = 0."""
    return math.sqrt(math.pi / 2.0) * np.sqrt(
        2.0 * np.asarray(lr) * np.asarray(weight_decay) * lion_variance(beta1, beta2)
    )


def lion_equilibrium_norm(
    lr: ArrayLike,
    weight_decay: ArrayLike,
    numel: ArrayLike,
    beta1: ArrayLike = 0.9,
    beta2: ArrayLike = 0.99,
) -> ArrayLike:
    """Lion: ‖w‖² = η·numel·κ/(2λ) (its sign update has ‖u‖² = numel exactly)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.sqrt(
            np.asarray(lr)
            * np.asarray(numel)
            * lion_cross_factor(beta1, beta2)
            / (2.0 * np.asarray(weight_decay))
        )


def adamc_equilibrium_angle(
    lr: ArrayLike, weight_decay: ArrayLike, max_lr: ArrayLike, beta1: ArrayLike = 0.9
) -> ArrayLike:
    """AdamC on a corrected tensor (decay λ·η/η_max per unit lr): the AdamW angle with λ →
    λη/η_max, η·sqrt(2λ(1−β1)/(η_max(1+β1))): proportional to η, as the schedule decays."""
    lr = np.asarray(lr, dtype=np.float64)
    return adamw_equilibrium_angle(lr, np.asarray(weight_decay) * lr / np.asarray(max_lr), beta1)


def adamc_equilibrium_norm(
    max_lr: ArrayLike, weight_decay: ArrayLike, numel: ArrayLike
) -> ArrayLike:
    """AdamC on a corrected tensor: ‖w‖ = sqrt(η_max·numel/(2λ)), whatever the lr does now."""
    return adamw_equilibrium_norm(max_lr, weight_decay, numel)


def adam_l2_equilibrium_norm(
    lr: ArrayLike, weight_decay: ArrayLike, numel: ArrayLike, scale_free_grad_norm: ArrayLike
) -> ArrayLike:
    """Adam with L2 decay λ (through its normaliser, an effective decoupled decay
    λ·sqrt(numel)·‖w‖/g̃): ‖w‖³ = η·sqrt(numel)·g̃/(2λ) (β1 cancels; λ‖w‖ ≪ ‖g‖)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.cbrt(
            np.asarray(lr)
            * np.sqrt(np.asarray(numel))
            * np.asarray(scale_free_grad_norm)
            / (2.0 * np.asarray(weight_decay))
        )


def normalized_grad_ratio(lr: ArrayLike, weight_decay: ArrayLike) -> ArrayLike:
    """Defazio 2025's steady state of a normalized layer under SGD: ‖g‖/‖w‖ = sqrt(2λ/η)
    (θ = η‖g‖/‖w‖ = sqrt(2ηλ)): the gradient norm rises as the lr decays at fixed λ."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.sqrt(2.0 * np.asarray(weight_decay) / np.asarray(lr))


# --------------------------------------------------------------------------------------------
# Timescales (docs/design.md §5.4, §5.10)
# --------------------------------------------------------------------------------------------


def wd_timescale(lr: ArrayLike, weight_decay: ArrayLike) -> ArrayLike:
    """τ_iter = 1/(ηλ') steps (Wang & Aitchison 2024): the memory of the exponential moving
    average decoupled weight decay makes of the updates; λ' the decay applied per unit lr.
    Infinite without decay."""
    return time_constant(np.asarray(lr, dtype=np.float64) * np.asarray(weight_decay))


def steps_to_within(
    sq: ArrayLike,
    eq_sq: ArrayLike,
    rate: ArrayLike,
    order: float = 1.0,
    exponent: float = 0.5,
    tolerance: float = 0.1,
) -> ArrayLike:
    """Steps until the effective step comes within ``tolerance`` of equilibrium, from ‖w‖² =
    ``sq`` at constant hyperparameters.

    X = ‖w‖^(2·order) relaxes as X_eq + (X − X_eq)·exp(−rate·t) and θ/θ_eq = (‖w_eq‖²/‖w‖²)^e
    (e = ``exponent``), so θ is within the tolerance once X/X_eq lies in
    [(1+tol)^(−order/e), (1−tol)^(−order/e)]; 0 if it already does, ∞ at rate 0.
    """
    x = np.asarray(sq, dtype=np.float64) ** order
    x_eq = np.asarray(eq_sq, dtype=np.float64) ** order
    rate = np.asarray(rate, dtype=np.float64)
    low = x_eq * (1.0 + tolerance) ** (-order / exponent)
    high = x_eq * (1.0 - tolerance) ** (-order / exponent)
    bound = np.where(x > high, high, low)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.log((x - x_eq) / (bound - x_eq)) / rate
    inside = (x >= low) & (x <= high)
    return np.where(inside, 0.0, np.where(rate > 0, t, np.inf))


def warmup_steps(
    initial_ratio: ArrayLike, rate: ArrayLike, target: float = 2.0, grid: int = 48
) -> ArrayLike:
    """The shortest linear warmup keeping the angular update within ``target`` × its peak-lr
    equilibrium, by the recurrence's rate equation.

    With x = X/X_eq (X = ‖w‖^(2·order) as in `steps_to_within`), e = η_t/η_peak and time in
    relaxation units s = rate·t, the rate equation is dx/ds = e(e − x) (decay and growth both
    follow the lr), and θ_t/θ_eq = e/sqrt(x). ``initial_ratio`` = x at step 0: without warmup
    the early overshoot is 1/sqrt(x0). Integrated for warmup lengths on a log grid from 10⁻³ to
    10 relaxation times; returns steps (0 if no warmup is needed, ∞ if none on the grid does).
    """
    x0 = np.atleast_1d(np.asarray(initial_ratio, dtype=np.float64))
    rate = np.broadcast_to(np.asarray(rate, dtype=np.float64), x0.shape)
    if x0.size == 0:
        return x0
    lengths = np.geomspace(1e-3, 10.0, grid)  # warmup in relaxation times
    out = np.full(x0.shape, np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        needed = 1.0 / np.sqrt(x0) > target
        out[~needed] = 0.0
        for length in lengths:
            if not np.isinf(out).any():
                break
            ds = length / 400.0
            x = x0.copy()
            worst = np.zeros_like(x0)
            s = 0.0
            while s < length + 3.0:
                e = min(1.0, (s + ds) / length)
                x = e + (x - e) * math.exp(-e * ds)  # exact for e held over the substep
                worst = np.maximum(worst, e / np.sqrt(x))
                s += ds
                if s > length:
                    ds = max(ds, 0.05)
            done = np.isinf(out) & (worst <= target)
            out[done] = length
    steps = np.where(np.isfinite(out) & (out > 0), out / np.where(rate > 0, rate, np.nan), out)
    return steps if np.ndim(initial_ratio) else float(steps[0])
