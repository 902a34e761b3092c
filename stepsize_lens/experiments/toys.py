"""The paper's toy problems (Heo et al., ICLR 2021, Sec. 2-3; docs/design.md §6), in float64 numpy.

Three experiments, each returning plain dataclasses whose ``frame()`` gives a tidy DataFrame:

1. `toy2d`: minimise f(w) = −cos(w, w*) over w ∈ R² from ‖w0‖ = 1. f is exactly scale-invariant,
   so its gradient ∇f(w) = −(ŵ* − cos θ·ŵ)/‖w‖ is orthogonal to w and every step grows ‖w‖.
   Methods: ``sgd`` (w ← w − η g), ``momentum`` (heavy ball, p ← βp + g, w ← w − η p, the
   torch.optim.SGD rule) and ``sgdp`` (the same momentum with the buffer projected onto the
   tangent space of w before the step, as SGDP does without Nesterov). `toy2d_all` runs the
   paper's four: SGD, momentum β = 0.9 and 0.99, SGDP β = 0.9.
2. `fixed_gradient_growth`: plain GD and momentum GD fed the *same* fixed sequence of tangential
   gradients g_t = a_t·R(ŵ_t) (R = rotation by +90°, a_t fixed magnitudes, default all 1); the
   ratio of excess norm growth Σ(‖w_{t+1}‖² − ‖w_t‖²) momentum/plain tends to (1+β)/(1−β) (Lemma
   2.2 of the paper). Momentum is in EMA form, p ← βp + (1−β)g, w ← w − η p (torch SGD with
   dampening = β), so once the buffer is warm both methods take steps of the same length η·a and
   the ratio isolates what momentum does to the norm. Two finite-horizon effects pull the ratio
   at horizon T below the limit: the buffer's warm-up (about 2β/(1−β) − β²/(1−β²) missing units of
   ‖p‖²) and the cross terms of the last steps not yet paid (about 2β/(1−β)² units), so the
   relative shortfall is ≈ (2β/(1−β) − β²/(1−β²) + 2β/(1−β)²)/((1+β)/(1−β)·T): 1.2% for β = 0.9
   at the default horizon T = 2000 (and η = 1e-3, small enough that w turns only ~0.01 rad over
   the buffer's memory, which would otherwise shorten ‖p‖ by ≈ (η a/‖w‖)²/(2(1−β)²)).
3. `rosenbrock3d`: the scale-invariant Rosenbrock f(w) = r(w1/w3, w2/w3) with
   r(x, y) = (1 − x)² + 100 (y − x²)², minimum at x = y = 1 (any w ∝ (1, 1, 1) with w3 > 0).
   Methods ``gd``, ``momentum``, ``momentum_wd`` (momentum + coupled L2 decay, torch SGD
   ``weight_decay``) and ``momentum_projection`` (SGDP-style projected momentum). Returns the
   radius ‖w‖ per iteration and the path of (w1/w3, w2/w3).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

TOY2D_METHODS = ("sgd", "momentum", "sgdp")
ROSENBROCK_METHODS = ("gd", "momentum", "momentum_wd", "momentum_projection")


def _tangential(vector: np.ndarray, w: np.ndarray) -> np.ndarray:
    """vector − ⟨vector, ŵ⟩ŵ: the component of vector orthogonal to w."""
    unit = w / np.linalg.norm(w)
    return vector - (vector @ unit) * unit


def _descend(
    w0: np.ndarray,
    grad: Callable[[np.ndarray], np.ndarray],
    *,
    lr: float,
    steps: int,
    momentum: float | None = None,
    project: bool = False,
) -> np.ndarray:
    """The iterates w_0 … w_T [steps+1, d] of w ← w − η·d from ``w0``, with d = ∇f(w) = ``grad(w)``
    when ``momentum`` is None, else the heavy-ball buffer p ← μp + ∇f(w) (starting at 0; with
    ``project``, p ← Π_w(μp + ∇f(w)), the SGDP rule)."""
    w = w0
    buf = np.zeros_like(w0)
    weights = np.empty((steps + 1, w0.shape[0]))
    weights[0] = w
    for t in range(steps):
        g = grad(w)
        if momentum is None:
            direction = g
        else:
            buf = momentum * buf + g
            if project:
                buf = _tangential(buf, w)
            direction = buf
        w = w - lr * direction
        weights[t + 1] = w
    return weights


# --------------------------------------------------------------------------------------------
# 2D toy
# --------------------------------------------------------------------------------------------


@dataclass
class ToyTrajectory:
    """One optimisation run of a toy: iterates and what they say about norm and direction.

    ``weights`` [steps+1, d] are the iterates w_0 … w_T; ``norms`` = ‖w_t‖; ``angles`` = angle
    between w_t and the optimum direction (radians); ``loss`` = f(w_t).
    """

    method: str
    params: dict[str, float]
    weights: np.ndarray
    norms: np.ndarray
    angles: np.ndarray
    loss: np.ndarray

    @property
    def final_norm(self) -> float:
        return float(self.norms[-1])

    def steps_to_angle(self, tolerance: float) -> int | None:
        """First step t from which angle(w_s, w*) <= tolerance for every s >= t (None: never)."""
        outside = np.flatnonzero(self.angles > tolerance)
        if outside.size == 0:
            return 0
        return int(outside[-1]) + 1 if outside[-1] + 1 < len(self.angles) else None

    def frame(self) -> pd.DataFrame:
        """Columns: method, step, norm, angle, loss."""
        import pandas as pd

        return pd.DataFrame(
            {
                "method": self.method,
                "step": np.arange(len(self.norms)),
                "norm": self.norms,
                "angle": self.angles,
                "loss": self.loss,
            }
        )


def _angle_between(w: np.ndarray, target: np.ndarray) -> np.ndarray:
    cos = (w @ target) / (np.linalg.norm(w, axis=-1) * np.linalg.norm(target))
    return np.arccos(np.clip(cos, -1.0, 1.0))


def toy2d(
    method: str = "momentum",
    *,
    beta: float = 0.9,
    lr: float = 0.04,
    steps: int = 1000,
    start_angle: float = 0.5 * np.pi,
) -> ToyTrajectory:
    """Minimise −cos(w, w*) over R² with w* = (1, 0) and w0 = (cos a, sin a), ‖w0‖ = 1.

    ``method``: ``sgd``, ``momentum`` (β = ``beta``) or ``sgdp`` (momentum β with the buffer
    projected onto the tangent space of w each step). ``start_angle`` a is the initial angle to
    the optimum (default 90°). Gradient: ∇f(w) = −(ŵ* − cos θ·ŵ)/‖w‖, orthogonal to w.

    The defaults (η = 0.04, 1000 steps, start at 90°) land close to the paper's norms: momentum
    grows ‖w‖ from 1 to 2.94 (β = 0.9; paper 2.93) and 28.3 (β = 0.99; paper 27.87), SGD to 1.02,
    SGDP to 1.17.
    """
    if method not in TOY2D_METHODS:
        raise ValueError(f"method must be one of {TOY2D_METHODS}, not {method!r}")
    target = np.array([1.0, 0.0])

    def grad(w: np.ndarray) -> np.ndarray:
        norm = np.linalg.norm(w)
        unit = w / norm
        return -(target - (target @ unit) * unit) / norm

    weights = _descend(
        np.array([np.cos(start_angle), np.sin(start_angle)], dtype=np.float64),
        grad,
        lr=lr,
        steps=steps,
        momentum=None if method == "sgd" else beta,
        project=method == "sgdp",
    )
    norms = np.linalg.norm(weights, axis=1)
    angles = _angle_between(weights, target)
    return ToyTrajectory(
        method=method if method == "sgd" else f"{method}(beta={beta:g})",
        params={"beta": beta if method != "sgd" else 0.0, "lr": lr, "steps": steps},
        weights=weights,
        norms=norms,
        angles=angles,
        loss=-np.cos(angles),
    )


def toy2d_all(lr: float = 0.04, steps: int = 1000) -> dict[str, ToyTrajectory]:
    """The paper's four 2D runs: SGD, momentum β = 0.9 and 0.99, SGDP β = 0.9."""
    runs = [
        toy2d("sgd", lr=lr, steps=steps),
        toy2d("momentum", beta=0.9, lr=lr, steps=steps),
        toy2d("momentum", beta=0.99, lr=lr, steps=steps),
        toy2d("sgdp", beta=0.9, lr=lr, steps=steps),
    ]
    return {run.method: run for run in runs}


# --------------------------------------------------------------------------------------------
# Fixed gradient sequence: plain vs momentum norm growth
# --------------------------------------------------------------------------------------------


@dataclass
class GrowthComparison:
    """Plain GD vs momentum GD fed the same tangential gradient magnitudes (see module doc).

    ``plain_norm_sq`` / ``momentum_norm_sq`` [steps+1]: ‖w_t‖² of each run; ``buffer_norms``
    [steps]: ‖p_t‖ of the momentum run; ``ratio`` [steps+1]: excess growth momentum/plain after
    t steps (NaN at t = 0); ``lemma_norm_sq``: momentum ‖w_t‖² predicted by Lemma 2.2 from
    ``buffer_norms``.
    """

    beta: float
    lr: float
    magnitudes: np.ndarray
    plain_norm_sq: np.ndarray
    momentum_norm_sq: np.ndarray
    buffer_norms: np.ndarray
    lemma_norm_sq: np.ndarray
    ratio: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        plain = self.plain_norm_sq - self.plain_norm_sq[0]
        momentum = self.momentum_norm_sq - self.momentum_norm_sq[0]
        with np.errstate(invalid="ignore", divide="ignore"):
            self.ratio = np.where(plain > 0, momentum / np.where(plain > 0, plain, 1.0), np.nan)

    @property
    def predicted_ratio(self) -> float:
        """The asymptotic ratio (1+β)/(1−β)."""
        return (1.0 + self.beta) / (1.0 - self.beta)

    @property
    def final_ratio(self) -> float:
        return float(self.ratio[-1])

    def frame(self) -> pd.DataFrame:
        """Columns: step, plain_norm_sq, momentum_norm_sq, lemma_norm_sq, ratio, predicted."""
        import pandas as pd

        return pd.DataFrame(
            {
                "step": np.arange(len(self.ratio)),
                "plain_norm_sq": self.plain_norm_sq,
                "momentum_norm_sq": self.momentum_norm_sq,
                "lemma_norm_sq": self.lemma_norm_sq,
                "ratio": self.ratio,
                "predicted": self.predicted_ratio,
            }
        )


def fixed_gradient_growth(
    beta: float = 0.9,
    *,
    steps: int = 2000,
    lr: float = 1e-3,
    magnitudes: Sequence[float] | np.ndarray | None = None,
) -> GrowthComparison:
    """Feed plain GD and EMA-momentum GD the same fixed tangential gradient sequence.

    Both start at w0 = (1, 0). At step t each method's gradient is g_t = a_t·R(ŵ_t), orthogonal
    to its own iterate (as for any scale-invariant loss), with the same magnitudes a_t
    (``magnitudes``, default all 1; length ``steps``). Plain: w ← w − η g. Momentum:
    p ← βp + (1−β)g, w ← w − η p. The default horizon and η keep the ratio within ~1.2% of
    (1+β)/(1−β) for β = 0.9 (module docstring).
    """
    from stepsize_lens.analysis.theory import momentum_norm_sq

    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must be in [0, 1), got {beta}")
    a = np.ones(steps) if magnitudes is None else np.asarray(magnitudes, dtype=np.float64)
    if a.shape != (steps,):
        raise ValueError(f"magnitudes must have length steps={steps}, got shape {a.shape}")
    rotate = np.array([[0.0, -1.0], [1.0, 0.0]])
    plain = np.array([1.0, 0.0])
    mom = np.array([1.0, 0.0])
    buf = np.zeros(2)
    plain_sq = np.empty(steps + 1)
    mom_sq = np.empty(steps + 1)
    buffer_norms = np.empty(steps)
    plain_sq[0] = mom_sq[0] = 1.0
    for t in range(steps):
        plain = plain - lr * a[t] * (rotate @ plain) / np.linalg.norm(plain)
        grad = a[t] * (rotate @ mom) / np.linalg.norm(mom)
        buf = beta * buf + (1.0 - beta) * grad
        buffer_norms[t] = np.linalg.norm(buf)
        mom = mom - lr * buf
        plain_sq[t + 1] = plain @ plain
        mom_sq[t + 1] = mom @ mom
    lemma = momentum_norm_sq(1.0, lr, buffer_norms, beta)
    return GrowthComparison(
        beta=beta,
        lr=lr,
        magnitudes=a,
        plain_norm_sq=plain_sq,
        momentum_norm_sq=mom_sq,
        buffer_norms=buffer_norms,
        lemma_norm_sq=lemma,
    )


# --------------------------------------------------------------------------------------------
# 3D scale-invariant Rosenbrock
# --------------------------------------------------------------------------------------------


def rosenbrock(x: np.ndarray | float, y: np.ndarray | float) -> np.ndarray | float:
    """r(x, y) = (1 − x)² + 100 (y − x²)²."""
    return (1.0 - x) ** 2 + 100.0 * (y - x * x) ** 2


def _rosenbrock3d_grad(w: np.ndarray) -> np.ndarray:
    """∇ of f(w) = r(w1/w3, w2/w3): (r_x, r_y, −(x r_x + y r_y)) / w3, orthogonal to w."""
    x, y = w[0] / w[2], w[1] / w[2]
    r_x = -2.0 * (1.0 - x) - 400.0 * x * (y - x * x)
    r_y = 200.0 * (y - x * x)
    return np.array([r_x, r_y, -(x * r_x + y * r_y)]) / w[2]


@dataclass
class RosenbrockTrajectory:
    """A run on the 3D scale-invariant Rosenbrock: radius ‖w_t‖, path (w1/w3, w2/w3), loss."""

    method: str
    params: dict[str, float]
    weights: np.ndarray
    radius: np.ndarray
    path: np.ndarray
    loss: np.ndarray

    @property
    def final_distance(self) -> float:
        """Distance of the final (x, y) to the optimum (1, 1)."""
        return float(np.hypot(*(self.path[-1] - 1.0)))

    def frame(self) -> pd.DataFrame:
        """Columns: method, step, radius, x, y, loss."""
        import pandas as pd

        return pd.DataFrame(
            {
                "method": self.method,
                "step": np.arange(len(self.radius)),
                "radius": self.radius,
                "x": self.path[:, 0],
                "y": self.path[:, 1],
                "loss": self.loss,
            }
        )


def rosenbrock3d(
    method: str = "momentum",
    *,
    lr: float = 3e-4,
    momentum: float = 0.9,
    weight_decay: float = 0.05,
    steps: int = 5000,
    start: tuple[float, float] = (-1.5, 2.0),
) -> RosenbrockTrajectory:
    """Minimise r(w1/w3, w2/w3) from w0 = (x0, y0, 1)/‖(x0, y0, 1)‖ (radius 1).

    ``method``: ``gd`` (w ← w − η g), ``momentum`` (p ← μp + g, w ← w − η p), ``momentum_wd``
    (p ← μp + g + λw: coupled L2 decay), ``momentum_projection`` (p ← Π_w(μp + g), the
    SGDP rule: the radial part of the buffer is removed before each step).

    With the defaults (η = 3e-4, μ = 0.9, λ = 0.05, 5000 steps from (−1.5, 2)): momentum's radius
    grows to 2.5 and it needs ~5000 steps to get within 0.01 of (1, 1); with weight decay the
    radius peaks at 2.5, shrinks back to 1.2 and it arrives after ~3000; with projection the
    radius stays at 1.12 and it arrives after ~850; plain GD is still 0.33 away after 5000.
    """
    if method not in ROSENBROCK_METHODS:
        raise ValueError(f"method must be one of {ROSENBROCK_METHODS}, not {method!r}")
    w0 = np.array([start[0], start[1], 1.0])

    def grad(w: np.ndarray) -> np.ndarray:
        g = _rosenbrock3d_grad(w)
        return g + weight_decay * w if method == "momentum_wd" else g  # coupled L2 decay

    weights = _descend(
        w0 / np.linalg.norm(w0),
        grad,
        lr=lr,
        steps=steps,
        momentum=None if method == "gd" else momentum,
        project=method == "momentum_projection",
    )
    path = weights[:, :2] / weights[:, 2:3]
    params = {"lr": lr, "steps": steps}
    if method != "gd":
        params["momentum"] = momentum
    if method == "momentum_wd":
        params["weight_decay"] = weight_decay
    return RosenbrockTrajectory(
        method=method,
        params=params,
        weights=weights,
        radius=np.linalg.norm(weights, axis=1),
        path=path,
        loss=rosenbrock(path[:, 0], path[:, 1]),
    )


def rosenbrock3d_all(**kwargs: float) -> dict[str, RosenbrockTrajectory]:
    """All four methods with shared settings (keyword arguments of `rosenbrock3d`)."""
    return {method: rosenbrock3d(method, **kwargs) for method in ROSENBROCK_METHODS}


# --------------------------------------------------------------------------------------------
# Noisy scale-invariant gradients on a sphere: the equilibrium of any torch optimizer
# --------------------------------------------------------------------------------------------


@dataclass
class SphereTrajectory:
    """Norms ‖w_t‖ (t = 0..T) and angular updates angle(w_t, w_{t+1}) (t = 0..T−1)."""

    norms: np.ndarray
    angles: np.ndarray

    def tail_angle(self, fraction: float = 0.5) -> float:
        """Root-mean-square angular update over the last ``fraction`` of the steps."""
        tail = self.angles[int(len(self.angles) * (1.0 - fraction)) :]
        return float(np.sqrt(np.mean(tail**2)))

    def frame(self) -> pd.DataFrame:
        """Columns: step, norm, angle (NaN at the last step)."""
        import pandas as pd

        return pd.DataFrame(
            {
                "step": np.arange(len(self.norms)),
                "norm": self.norms,
                "angle": np.append(self.angles, np.nan),
            }
        )


def noisy_sphere(
    make_optimizer,
    *,
    steps: int = 2000,
    dim: int = 1000,
    seed: int = 0,
) -> SphereTrajectory:
    """Run a torch optimizer on one [1, dim] float64 weight fed pure-noise scale-invariant
    gradients g = Π_w(ξ)/‖w‖, ξ ~ N(0, I): the setting of the equilibrium theory (gradients
    orthogonal to w, uncorrelated across steps, scaling as 1/‖w‖). ``make_optimizer(params)``
    builds the optimizer; w0 is a random unit vector.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(1, dim, generator=gen, dtype=torch.float64)
    param = torch.nn.Parameter(w / w.norm())
    optimizer = make_optimizer([param])
    norms = np.empty(steps + 1)
    angles = np.empty(steps)
    norms[0] = float(param.detach().norm())
    for t in range(steps):
        with torch.no_grad():
            before = param.detach().clone()
            xi = torch.randn(1, dim, generator=gen, dtype=torch.float64)
            unit = before / before.norm()
            param.grad = (xi - (xi * unit).sum() * unit) / before.norm()
        optimizer.step()
        with torch.no_grad():
            after = param.detach()
            cos = float((before * after).sum() / (before.norm() * after.norm()))
            angles[t] = math.acos(min(1.0, max(-1.0, cos)))
            norms[t + 1] = float(after.norm())
    return SphereTrajectory(norms=norms, angles=angles)
