"""Theory the measurements are held against (DESIGN.md §5), as pure functions and as predictions
per record from a `Run`.

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
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from stepsize_lens.analysis.frames import tensor_classes, tensor_group_field

if TYPE_CHECKING:
    import pandas as pd

    from stepsize_lens.run import Run

ArrayLike = float | np.ndarray

FAMILIES: tuple[str, ...] = ("sgd", "adamw", "adam", "sgdp", "adamp", "unknown")
_CLASS_FAMILY = {"SGD": "sgd", "AdamW": "adamw", "Adam": "adam", "SGDP": "sgdp", "AdamP": "adamp"}


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

    ‖w_{t+1}‖² = ‖w_t‖² + η_t²‖p_t‖² + 2η_t Σ_{k<t} β^{t−k} η_k ‖p_k‖² (constant η: the DESIGN
    form). ``buffer_norms`` are ‖p_t‖ for t = 0..T−1; ``lr`` a scalar or one value per step.
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


def equilibrium_angle(
    family: str,
    lr: ArrayLike,
    weight_decay: ArrayLike,
    *,
    momentum: ArrayLike = 0.0,
    dampening: ArrayLike = 0.0,
    beta1: ArrayLike = 0.9,
    wd_ratio: ArrayLike = 0.1,
    projected: ArrayLike = True,
) -> ArrayLike:
    """Equilibrium angular update for an optimizer family (see the module docstring).

    ``family``: ``sgd``, ``adamw``, ``sgdp``, ``adamp`` (``projected`` says whether AdamP/SGDP
    projected the tensor; if not, SGDP gives sqrt(2ηλ/(1+μ)) and AdamP the AdamW value).
    ``adam`` (L2 decay through Adam's normaliser) and unknown families give NaN.
    """
    if family == "sgd":
        return sgd_equilibrium_angle(lr, weight_decay, momentum, dampening)
    if family == "adamw":
        return adamw_equilibrium_angle(lr, weight_decay, beta1)
    if family == "sgdp":
        return np.where(
            projected,
            sgdp_equilibrium_angle(lr, weight_decay, momentum, wd_ratio),
            sgd_equilibrium_angle(lr, weight_decay, momentum, 0.0),
        )
    if family == "adamp":
        return np.where(
            projected,
            adamp_equilibrium_angle(lr, weight_decay, wd_ratio),
            adamw_equilibrium_angle(lr, weight_decay, beta1),
        )
    return np.full(np.broadcast(np.asarray(lr), np.asarray(weight_decay)).shape, np.nan)


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


def relaxation_steps(
    family: str,
    lr: ArrayLike,
    weight_decay: ArrayLike,
    *,
    momentum: ArrayLike = 0.0,
    dampening: ArrayLike = 0.0,
    wd_ratio: ArrayLike = 0.1,
    projected: ArrayLike = True,
) -> ArrayLike:
    """Steps for the distance to equilibrium to shrink by e (the time constant).

    SGD: ‖w‖⁴ relaxes at rate 4η(1−d)λ/(1−α) per step; SGDP (projected) at 4ηλr/(1−μ); AdamW
    and AdamP relax ‖w‖² at rate 2ηλ (2ηλr when projected). Infinite when λ = 0.
    """
    lr = np.asarray(lr, dtype=np.float64)
    wd = np.asarray(weight_decay, dtype=np.float64)
    mom = np.asarray(momentum, dtype=np.float64)
    ratio = np.where(projected, np.asarray(wd_ratio, dtype=np.float64), 1.0)
    if family == "sgd":
        rate = 4.0 * lr * (1.0 - np.asarray(dampening)) * wd / (1.0 - mom)
    elif family == "sgdp":
        rate = 4.0 * lr * wd * ratio / (1.0 - mom)
    elif family == "adamw":
        rate = 2.0 * lr * wd
    elif family == "adamp":
        rate = 2.0 * lr * wd * ratio
    else:
        rate = np.full(np.broadcast(lr, wd).shape, np.nan)
    with np.errstate(divide="ignore"):
        return np.where(
            rate > 0, 1.0 / np.where(rate > 0, rate, 1.0), np.where(np.isnan(rate), np.nan, np.inf)
        )


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
# Predictions from a run
# --------------------------------------------------------------------------------------------


def optimizer_family(run: Run) -> str:
    """The theory family of a run's optimizer: sgd, adamw, adam, sgdp, adamp or unknown.

    From ``meta["optimizer"]["class"]``; torch's Adam with ``decoupled_weight_decay=True`` is
    AdamW.
    """
    info = run.meta.get("optimizer") or {}
    name = str(info.get("class") or "")
    family = _CLASS_FAMILY.get(name, "unknown")
    defaults = info.get("defaults") or {}
    if family == "adam" and isinstance(defaults, dict) and defaults.get("decoupled_weight_decay"):
        family = "adamw"
    return family


def _record_frame(run: Run, columns: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """A frame with one row per record and tensor: step, tensor, group, then ``columns``
    (each [R, T], flattened record-major; 1-D [T] arrays are repeated for every record)."""
    import pandas as pd

    num_records, num_tensors = run.num_records, run.num_tensors
    frame: dict[str, np.ndarray] = {
        "step": np.repeat(run.steps, num_tensors),
        "tensor": np.tile(np.asarray(run.tensor_names, dtype=object), num_records),
        "group": np.tile(run.tensor_groups, num_records),
    }
    for name, values in columns.items():
        values = np.asarray(values)
        frame[name] = np.tile(values, num_records) if values.ndim == 1 else values.reshape(-1)
    return pd.DataFrame(frame)


def _late_records(run: Run, start: float) -> np.ndarray:
    """[R] bool: non-skipped records whose step is at least ``start`` × the last step."""
    steps = run.steps.astype(np.float64)
    if steps.size == 0:
        return np.zeros(0, bool)
    return (steps >= start * steps.max()) & ~run.skipped.astype(bool)


def _projected(run: Run, classes: pd.Series) -> np.ndarray:
    """[R, T] bool: did AdamP/SGDP project this tensor at this record (else: is it invariant)."""
    applied = run.view("applied_view")
    invariant = np.isin(np.asarray(classes, dtype=object), ["channel", "layer"])
    return np.where(applied >= 0, applied > 0, invariant[None, :])


def norm_identity(run: Run) -> pd.DataFrame:
    """The one-step norm identity per record and tensor, predicted against measured ‖w'‖².

    Columns: step, tensor, group, ``weight_sq`` = ‖w‖², ``predicted_sq`` = ‖w‖² +
    2‖w‖‖Δ‖cos(w,Δ) + ‖Δ‖² (from this record's update), ``measured_sq`` = ‖w‖² at the next record
    when that record is the next step (NaN otherwise: the weights may have moved in between),
    ``rel_error`` = |predicted − measured|/measured, ``decay_sq`` = (1−ηλ_eff)²‖w‖² (the part the
    decoupled decay leaves, NaN for coupled-decay optimizers), and for plain SGD (no momentum)
    ``gradient_sq`` = (1−ηλ)²‖w‖² − 2η(1−ηλ)⟨w,g⟩ + η²‖g‖², predicted from the gradient alone.
    """
    w = run.metric("weight_norm").astype(np.float64)
    d = run.metric("update_norm").astype(np.float64)
    cos_u = run.metric("cos_update").astype(np.float64)
    g = run.metric("grad_norm").astype(np.float64)
    cos_g = run.metric("cos_grad").astype(np.float64)
    predicted = norm_sq_after(w, d, cos_u)
    steps = run.steps
    measured = np.full_like(predicted, np.nan)
    if run.num_records > 1:
        consecutive = (np.diff(steps) == 1) & ~run.skipped[:-1].astype(bool)
        measured[:-1] = np.where(consecutive[:, None], w[1:] ** 2, np.nan)
    lr = tensor_group_field(run, "lr", np.nan)
    wd = tensor_group_field(run, "weight_decay", 0.0)
    family = optimizer_family(run)
    decay = np.full_like(predicted, np.nan)
    if family in ("adamw", "adamp", "sgdp"):
        lam = wd.copy()
        if family in ("adamp", "sgdp"):
            applied = run.view("applied_view")
            lam = lam * np.where(applied > 0, tensor_group_field(run, "wd_ratio", 1.0), 1.0)
        if family == "sgdp":
            lam = lam / (1.0 - tensor_group_field(run, "momentum", 0.0))
        decay = (1.0 - lr * lam) ** 2 * w * w
    gradient = np.full_like(predicted, np.nan)
    if family == "sgd":
        plain = (tensor_group_field(run, "momentum", 0.0) == 0) & (
            tensor_group_field(run, "nesterov", 0.0) == 0
        )
        w_dot_g = w * g * np.nan_to_num(cos_g, nan=0.0)
        gradient = np.where(plain, decoupled_norm_sq(w * w, lr, wd, w_dot_g, g * g), np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = np.abs(predicted - measured) / measured
    return _record_frame(
        run,
        {
            "weight_sq": w * w,
            "predicted_sq": predicted,
            "measured_sq": measured,
            "rel_error": rel,
            "decay_sq": decay,
            "gradient_sq": gradient,
        },
    )


def equilibrium_predictions(
    run: Run, classes: pd.Series | Mapping[str, str] | None = None, family: str | None = None
) -> pd.DataFrame:
    """Per record and tensor: the predicted equilibrium angular update and norm, and the measured
    whole-tensor angular update.

    The whole-tensor angle is the one to compare even for channel-invariant tensors: at
    equilibrium every row balances decay against growth in proportion to ‖w_row‖², so
    ‖Δ⊥‖²/‖w‖² summed over rows obeys the same law, while a plain mean of per-row angles is
    pulled down by rows not (yet) in equilibrium.

    Columns: step, tensor, group, class, projected, lr, weight_decay, ``predicted_angle`` (NaN
    where λ = 0: no equilibrium, or the family has no theory), ``predicted_norm`` (SGD family:
    from the measured g̃ = ‖w‖‖g‖; Adam family: from numel), ``relaxation_steps``,
    ``measured_angle``, ``weight_norm``. Only meaningful for scale-invariant tensors; all tensors
    are listed, with their class.
    """
    classes = tensor_classes(run, classes)
    family = family or optimizer_family(run)
    lr = tensor_group_field(run, "lr", np.nan)
    wd = tensor_group_field(run, "weight_decay", 0.0)
    mom = tensor_group_field(run, "momentum", 0.0)
    damp = tensor_group_field(run, "dampening", 0.0)
    beta1 = tensor_group_field(run, "beta1", 0.9)
    ratio = tensor_group_field(run, "wd_ratio", 1.0)
    projected = (
        _projected(run, classes) if family in ("sgdp", "adamp") else np.zeros(lr.shape, bool)
    )
    weight = run.metric("weight_norm").astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        scale_free = weight * run.metric("grad_norm").astype(np.float64)
    numel = run.numel[None, :]
    angle = np.asarray(
        equilibrium_angle(
            family,
            lr,
            wd,
            momentum=mom,
            dampening=damp,
            beta1=beta1,
            wd_ratio=ratio,
            projected=projected,
        ),
        dtype=np.float64,
    )
    if family == "sgd":
        norm = sgd_equilibrium_norm(lr, wd, scale_free, mom, damp)
    elif family == "sgdp":
        with np.errstate(divide="ignore", invalid="ignore"):
            decoupled = (lr * (1.0 - damp) ** 2 * scale_free**2 / (2.0 * wd * (1.0 - mom))) ** 0.25
        norm = np.where(
            projected, sgdp_equilibrium_norm(lr, wd, scale_free, mom, damp, ratio), decoupled
        )
    elif family == "adamw":
        norm = adamw_equilibrium_norm(lr, wd, numel) * np.ones_like(lr)
    elif family == "adamp":
        norm = np.where(
            projected,
            adamp_equilibrium_norm(lr, wd, numel, beta1, ratio),
            adamw_equilibrium_norm(lr, wd, numel),
        )
    else:
        norm = np.full(lr.shape, np.nan)
    no_decay = ~(wd > 0)
    angle = np.where(no_decay, np.nan, angle)
    norm = np.where(no_decay, np.nan, norm)
    relax = np.asarray(
        relaxation_steps(
            family, lr, wd, momentum=mom, dampening=damp, wd_ratio=ratio, projected=projected
        ),
        dtype=np.float64,
    ) * np.ones_like(lr)
    return _record_frame(
        run,
        {
            "class": np.asarray(classes, dtype=object),
            "projected": projected,
            "lr": lr,
            "weight_decay": wd,
            "predicted_angle": angle,
            "predicted_norm": np.asarray(norm, dtype=np.float64),
            "relaxation_steps": relax,
            "measured_angle": run.metric("angular_update").astype(np.float64),
            "weight_norm": weight,
        },
    )


def predictions_for(
    run: Run,
    predictions: pd.DataFrame | None = None,
    classes: pd.Series | Mapping[str, str] | None = None,
    family: str | None = None,
) -> pd.DataFrame:
    """`equilibrium_predictions` (run, classes, family), or ``predictions`` when a caller that
    needs them several times computed them already (checked to have one row per record and
    tensor of ``run``; ValueError otherwise)."""
    if predictions is None:
        return equilibrium_predictions(run, classes, family)
    if len(predictions) != run.num_records * run.num_tensors:
        raise ValueError(
            f"predictions has {len(predictions)} rows, not one per record and tensor of run "
            f"{run.label!r} ({run.num_records} x {run.num_tensors})"
        )
    return predictions


def _final_window(steps: np.ndarray, skipped: np.ndarray, window: float) -> np.ndarray:
    """Records whose step lies in the last ``window`` fraction of the run's step range."""
    if steps.size == 0:
        return np.zeros(0, dtype=bool)
    first, last = float(steps.min()), float(steps.max())
    return (steps >= last - window * (last - first)) & ~skipped.astype(bool)


def equilibrium_check(
    run: Run,
    classes: pd.Series | Mapping[str, str] | None = None,
    *,
    window: float = 0.2,
    by: str = "tensor",
    family: str | None = None,
    predictions: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Measured against predicted equilibrium angular update over the last part of a run.

    Scale-invariant tensors (class channel or layer) with weight decay > 0 and a theory for the
    optimizer only. ``window``: the last fraction of the step range averaged over. ``by``:
    ``tensor`` (one row each), ``class`` (channel / layer) or ``invariant`` (one row). Columns:
    the key, tensors, ``measured`` and ``predicted`` (means over the window and tensors),
    ``ratio`` = measured/predicted, ``relaxation_steps`` (largest, at the window's end),
    ``span_steps`` (steps the run covers), ``window_start`` (first step of the window).
    ``predictions``: `equilibrium_predictions` of this run with the same ``classes`` and
    ``family``, when the caller already has it (it is not recomputed; ``classes`` and ``family``
    are then not used).
    """
    import pandas as pd

    if by not in ("tensor", "class", "invariant"):
        raise ValueError(f"by must be 'tensor', 'class' or 'invariant', not {by!r}")
    pred = predictions_for(run, predictions, classes, family)
    in_window = _final_window(run.steps, run.skipped, window)
    mask = np.repeat(in_window, run.num_tensors)
    rows = pred[mask & pred["class"].isin(["channel", "layer"]).to_numpy()]
    rows = rows[np.isfinite(rows["predicted_angle"].to_numpy())]
    key = {"tensor": "tensor", "class": "class", "invariant": None}[by]
    per_tensor = rows.groupby("tensor", sort=False).agg(
        group=("group", "first"),
        **{"class": ("class", "first")},
        measured=("measured_angle", "mean"),
        predicted=("predicted_angle", "mean"),
        relaxation_steps=("relaxation_steps", "last"),
    )
    columns = [
        "tensors",
        "measured",
        "predicted",
        "ratio",
        "relaxation_steps",
        "span_steps",
        "window_start",
    ]
    span = float(run.steps.max() - run.steps.min()) if run.num_records else 0.0
    start = int(run.steps[in_window].min()) if in_window.any() else -1
    if per_tensor.empty:
        return pd.DataFrame(columns=([key] if key else []) + columns)
    if key == "tensor":
        out = per_tensor.reset_index()
        out["tensors"] = 1
    else:
        grouped = per_tensor.groupby("class" if key else np.zeros(len(per_tensor)), sort=True)
        out = grouped.agg(
            tensors=("measured", "size"),
            measured=("measured", "mean"),
            predicted=("predicted", "mean"),
            relaxation_steps=("relaxation_steps", "max"),
        ).reset_index(drop=key is None)
    out["ratio"] = out["measured"] / out["predicted"]
    out["span_steps"] = span
    out["window_start"] = start
    leading = [
        c
        for c in ("tensor", "group", "class")
        if c in out.columns and (key == "tensor" or c == key)
    ]
    return out[leading + columns].reset_index(drop=True)


def decay_exponents(
    run: Run,
    classes: pd.Series | Mapping[str, str] | None = None,
    *,
    metric: str = "angular_update",
    start: float = 0.5,
) -> pd.DataFrame:
    """Per tensor, the fitted exponent of ``metric`` ~ step^k over the part of the run from
    ``start`` × the last step on (non-skipped records). k ≈ −1/2 is the no-weight-decay law, k ≈ 0
    equilibrium. Columns: tensor, group, class, weight_decay (last record), exponent.
    """
    import pandas as pd

    classes = tensor_classes(run, classes)
    steps = run.steps.astype(np.float64)
    keep = _late_records(run, start)
    values = run.metric(metric)[keep]
    wd = tensor_group_field(run, "weight_decay", 0.0)
    return pd.DataFrame(
        {
            "tensor": run.tensor_names,
            "group": run.tensor_groups,
            "class": np.asarray(classes, dtype=object),
            "weight_decay": wd[-1] if wd.shape[0] else np.full(run.num_tensors, np.nan),
            "exponent": [decay_exponent(steps[keep], values[:, i]) for i in range(run.num_tensors)],
        }
    )


def sqrt_law(
    run: Run,
    classes: pd.Series | Mapping[str, str] | None = None,
    *,
    metric: str = "angular_update",
    start: float = 0.5,
) -> pd.DataFrame:
    """The t^(−1/2) law as a per-record overlay: c·step^(−1/2) per tensor, with c fitted (slope
    held at −1/2, least squares in log space) over the non-skipped records from ``start`` × the
    last step on, next to the measured ``metric`` and the freely fitted exponent.

    Columns: step, tensor, group, class, weight_decay, measured, predicted, exponent. The law
    holds for scale-invariant tensors without weight decay; elsewhere the gap is the point.
    """
    classes = tensor_classes(run, classes)
    steps = run.steps.astype(np.float64)
    values = run.metric(metric).astype(np.float64)
    fit = _late_records(run, start)
    predicted = np.full(values.shape, np.nan)
    exponents = np.full(run.num_tensors, np.nan)
    for i in range(run.num_tensors):
        ok = fit & np.isfinite(values[:, i]) & (values[:, i] > 0) & (steps > 0)
        if ok.any():
            log_c = np.mean(np.log(values[ok, i]) + 0.5 * np.log(steps[ok]))
            with np.errstate(divide="ignore"):
                predicted[:, i] = np.where(steps > 0, np.exp(log_c) * steps**-0.5, np.nan)
        exponents[i] = decay_exponent(steps[ok], values[ok, i])
    return _record_frame(
        run,
        {
            "class": np.asarray(classes, dtype=object),
            "weight_decay": tensor_group_field(run, "weight_decay", 0.0),
            "measured": values,
            "predicted": predicted,
            "exponent": exponents,
        },
    )
