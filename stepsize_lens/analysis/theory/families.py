"""The optimizer families the theory knows, as one table (docs/design.md §5).

Each `Family` is data: how a run's optimizer is recognised from its class name (its defaults,
its module), and how it moves a scale-invariant tensor — its `recurrence.Dynamics` (buffer,
direction, output map, projection) and the weight decay it applies per step, coupled (added to
the gradient) or decoupled (a shrink before the update), each a function of `Hyper` (the
hyperparameters per record and tensor). From those two the constant-lr equilibrium angle and
norm and the relaxation rate follow (`recurrence.equilibrium`), and `predictions.predict`
integrates the per-step recurrence along the recorded schedule. A family may instead give its
formulas directly (``equilibrium_angle`` ...); a formula left at None means "no theory": the
predictions are NaN and `predict` leaves the family out. Adding a family is adding one entry to
`FAMILY_TABLE`.

    family_of_optimizer("AdamW", defaults, module) -> "adamw";  family_entry("adamw") -> Family
    equilibrium_angle(family, lr, weight_decay, momentum=, dampening=, beta1=, wd_ratio=,
                      projected=, ...)                              -> radians per step
    equilibrium_norm(family, lr, weight_decay, scale_free_grad_norm=, numel=, ...) -> ‖w‖
    relaxation_steps(family, lr, weight_decay, ...)                -> steps
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from stepsize_lens.analysis.theory import formulas as F
from stepsize_lens.analysis.theory import newton_schulz as NS
from stepsize_lens.analysis.theory.formulas import ArrayLike
from stepsize_lens.analysis.theory.recurrence import (
    ADAM,
    LINEAR,
    NORMALIZED,
    Dynamics,
    equilibrium,
)


@dataclass(frozen=True)
class Hyper:
    """The hyperparameters a family's formulas read, each a scalar or an array (per record and
    tensor). ``projected``: whether AdamP/SGDP projected the tensor (its ``wd_ratio`` applies);
    ``scale_free_grad_norm`` g̃ = ‖w‖‖g‖ and ``numel`` feed the equilibrium norms; ``rows`` and
    ``cols`` are a 2-D tensor's shape (Muon); ``max_lr`` and ``corrected`` are AdamC's η_max and
    the tensors whose decay it scales by η_t/η_max; ``defaults`` the optimizer's recorded
    defaults (strings such as Muon's ``adjust_lr_fn``)."""

    lr: ArrayLike
    weight_decay: ArrayLike
    momentum: ArrayLike = 0.0
    dampening: ArrayLike = 0.0
    beta1: ArrayLike = 0.9
    wd_ratio: ArrayLike = 0.1
    projected: ArrayLike = True
    scale_free_grad_norm: ArrayLike = np.nan
    numel: ArrayLike = np.nan
    beta2: ArrayLike = 0.999
    eps: ArrayLike = 1e-8
    nesterov: ArrayLike = False
    rows: ArrayLike = np.nan
    cols: ArrayLike = np.nan
    max_lr: ArrayLike = np.nan
    corrected: ArrayLike = False
    defaults: Mapping[str, Any] = field(default_factory=dict)

    def applied_ratio(self) -> np.ndarray:
        """r where the tensor was projected, 1 elsewhere (float64)."""
        return np.where(self.projected, np.asarray(self.wd_ratio, dtype=np.float64), 1.0)

    def arrays(self) -> Hyper:
        """Every numeric field as a float64 (bool for flags) array broadcast to one shape."""
        names = [
            "lr",
            "weight_decay",
            "momentum",
            "dampening",
            "beta1",
            "wd_ratio",
            "scale_free_grad_norm",
            "numel",
            "beta2",
            "eps",
            "rows",
            "cols",
            "max_lr",
        ]
        flags = ["projected", "nesterov", "corrected"]
        values = [np.asarray(getattr(self, n), dtype=np.float64) for n in names]
        values += [np.asarray(getattr(self, n), dtype=bool) for n in flags]
        shaped = np.broadcast_arrays(*values)
        return replace(self, **dict(zip(names + flags, shaped)))


Formula = Callable[[Hyper], ArrayLike]
Decay = Callable[[Hyper], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Family:
    """One optimizer family (see the module docstring).

    ``recognise(class_name, defaults)``: is a run whose optimizer has this class name (and these
    defaults) of this family; ``modules``: if not empty, the optimizer's module must start with
    one of these (torch's Muon, not timm's). ``base``: the update it builds on (``"sgd"``,
    ``"adam"``, ``"sign"``, ``"orthogonal"``). ``projects``: removes the radial part of the
    update on the tensors it finds scale-invariant. ``dynamics(h)``: its `recurrence.Dynamics`;
    ``decay(h)``: (λ_c, λ_d), the coupled and decoupled weight decay per unit lr of each step;
    ``covers(h)``: the tensors the theory applies to (Muon: 2-D ones; default all).
    ``equilibrium_angle`` / ``equilibrium_norm`` / ``relaxation_rate``: formulas, None without
    a theory; left at None with ``dynamics`` and ``decay`` given, they are those of
    `recurrence.equilibrium`. ``decoupled_decay``: λ_d alone (the shrink (1−ηλ_d) of ‖w‖ before
    the update; None for coupled decay). ``gradient_identity``: without momentum the step is
    −η(g + λw), so ‖w'‖² follows from g alone. ``projected_variant``: the projected optimizer a
    finding suggests instead of this one (None: none applies). ``typical_weight_decay``: the
    usual range, for the no-weight-decay finding. ``note``: what the theory leaves out.
    """

    name: str
    recognise: Callable[[str, Mapping[str, Any]], bool]
    base: str | None = None
    projects: bool = False
    equilibrium_angle: Formula | None = None
    equilibrium_norm: Formula | None = None
    relaxation_rate: Formula | None = None
    decoupled_decay: Formula | None = None
    gradient_identity: bool = False
    projected_variant: str | None = "SGDP"
    typical_weight_decay: str = "a small value"
    dynamics: Callable[[Hyper], Dynamics] | None = None
    decay: Decay | None = None
    covers: Callable[[Hyper], np.ndarray] | None = None
    modules: tuple[str, ...] = ()
    note: str = ""

    def __post_init__(self) -> None:
        if self.dynamics is None or self.decay is None:
            return
        generic = {
            "equilibrium_angle": lambda h: self.equilibrium_of(h)[0],
            "equilibrium_norm": lambda h: np.sqrt(self.equilibrium_of(h)[1]),
            "relaxation_rate": lambda h: self.equilibrium_of(h)[2],
        }
        for name, formula in generic.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, formula)

    @property
    def predicts(self) -> bool:
        """Whether `predictions.predict` can integrate this family's recurrence."""
        return self.dynamics is not None and self.decay is not None

    def equilibrium_of(self, h: Hyper) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(angle, ‖w‖², relaxation rate) of `recurrence.equilibrium` for this family; NaN
        where λ = 0 (no equilibrium) or outside ``covers``."""
        h = h.arrays()
        dyn = self.dynamics(h)  # type: ignore[misc]
        coupled, decoupled = self.decay(h)  # type: ignore[misc]
        eq = equilibrium(dyn, h.lr, coupled, decoupled, h.scale_free_grad_norm**2)
        covered = self.covered(h)
        return tuple(np.where(covered, x, np.nan) for x in (eq.angle, eq.sq, eq.rate))  # type: ignore[return-value]

    def covered(self, h: Hyper) -> np.ndarray:
        h = h.arrays()
        return np.ones(np.shape(h.lr), bool) if self.covers is None else self.covers(h)


def decoupled(family_decay: Decay) -> Formula:
    """A ``decoupled_decay`` formula: the decoupled part λ_d of a family's ``decay``."""
    return lambda h: family_decay(h.arrays())[1]


def named(*class_names: str) -> Callable[[str, Mapping[str, Any]], bool]:
    """A `Family.recognise` that matches these optimizer class names."""
    return lambda class_name, defaults: class_name in class_names


def _adamw(class_name: str, defaults: Mapping[str, Any]) -> bool:
    """AdamW, or torch's Adam with ``decoupled_weight_decay=True`` (the same update)."""
    return class_name == "AdamW" or (
        class_name == "Adam" and bool(defaults.get("decoupled_weight_decay"))
    )


def _adamc(class_name: str, defaults: Mapping[str, Any]) -> bool:
    """stepsize_lens's AdamC, or timm's ``adamc`` (AdamW with ``corrected_weight_decay``)."""
    return class_name == "AdamC" or (
        class_name == "AdamW" and bool(defaults.get("corrected_weight_decay"))
    )


# --------------------------------------------------------------------------------------------
# Dynamics and decay of each family (docs/design.md §5.9)
# --------------------------------------------------------------------------------------------


def _ones(h: Hyper) -> np.ndarray:
    return np.ones(np.shape(h.lr))


def _sgd_dynamics(h: Hyper) -> Dynamics:
    """torch.optim.SGD: buf = μ·buf + (1−d)·g' (the first step copies g'), X = buf, or
    g' + μ·buf with nesterov; momentum 0: X = g'."""
    one, mu = _ones(h), h.momentum
    c = 1.0 - h.dampening
    has = mu > 0
    nest = np.asarray(h.nesterov, bool) & has
    p = np.where(nest, mu * mu, np.where(has, mu, 0.0))
    q = np.where(nest, 1.0 + mu * c, np.where(has, c, 1.0))
    q_first = np.where(nest, 1.0 + mu, 1.0)
    return Dynamics(
        LINEAR, np.where(has, mu, 0.0), np.where(has, c, 1.0), one, p, q, q_first, h.numel
    )


def _sgdp_dynamics(h: Hyper) -> Dynamics:
    """stepsize_lens.SGDP: buf = μ·buf + (1−d)·g (empty at first), X = buf or g + μ·buf; on the
    tensors it projects X loses its radial part, and without nesterov so does the buffer."""
    mu, c = h.momentum, 1.0 - h.dampening
    nest = np.asarray(h.nesterov, bool)
    p = np.where(nest, mu * mu, mu)
    q = np.where(nest, 1.0 + mu * c, c)
    project = np.asarray(h.projected, bool)
    return Dynamics(
        LINEAR, mu, c, c, p, q, q, h.numel, project=project, project_buffer=project & ~nest
    )


def _adam_dynamics(h: Hyper, projects: bool = False) -> Dynamics:
    """Adam's first moment m = β1·m + (1−β1)·g' as the buffer, X = m (AdamP's nesterov:
    β1·m + (1−β1)·g), divided by sqrt(v̂) + ε."""
    b1 = h.beta1
    nest = np.asarray(h.nesterov, bool) & projects
    p = np.where(nest, b1 * b1, b1)
    q = np.where(nest, (1.0 - b1) * (1.0 + b1), 1.0 - b1)
    project = np.asarray(h.projected, bool) & projects
    return Dynamics(
        ADAM,
        b1,
        1.0 - b1,
        1.0 - b1,
        p,
        q,
        q,
        h.numel,
        beta1=b1,
        beta2=h.beta2,
        eps=h.eps,
        project=project,
    )


def _lion_dynamics(h: Hyper) -> Dynamics:
    """Lion: X = β1·m + (1−β1)·g with m = β2·m + (1−β2)·g updated after; u = sign(X)
    (ν = numel, γ = sqrt(2/π))."""
    b1, b2 = h.beta1, h.beta2
    return Dynamics(
        NORMALIZED,
        b2,
        1.0 - b2,
        1.0 - b2,
        b1,
        1.0 - b1,
        1.0 - b1,
        h.numel,
        gain=math.sqrt(2.0 / math.pi),
        norm_sq=h.numel,
    )


def _muon_dynamics(h: Hyper) -> Dynamics:
    """torch.optim.Muon: buf = μ·buf + (1−μ)·g, X = (1−μ)·g + μ·buf (nesterov) or buf;
    u = s·NS(X) with s, ν, γ per shape (`newton_schulz`)."""
    mu = h.momentum
    nest = np.asarray(h.nesterov, bool)
    p = np.where(nest, mu * mu, mu)
    q = np.where(nest, 1.0 - mu * mu, 1.0 - mu)
    scale, nu, gamma = _muon_shape_stats(h)
    return Dynamics(
        NORMALIZED, mu, 1.0 - mu, 1.0 - mu, p, q, q, h.numel, scale=scale, gain=gamma, norm_sq=nu
    )


def _muon_shape_stats(h: Hyper) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    defaults = h.defaults or {}
    coefficients = tuple(defaults.get("ns_coefficients") or NS.COEFFICIENTS)
    steps = int(defaults.get("ns_steps") or NS.STEPS)
    adjust = defaults.get("adjust_lr_fn")
    rows, cols = np.asarray(h.rows, np.float64), np.asarray(h.cols, np.float64)
    scale, nu, gamma = (np.full(rows.shape, np.nan) for _ in range(3))
    ok = np.isfinite(rows) & np.isfinite(cols) & (rows > 0) & (cols > 0)
    for r, c in {(int(a), int(b)) for a, b in zip(rows[ok], cols[ok])}:
        here = ok & (rows == r) & (cols == c)
        n, g = NS.update_stats(r, c, coefficients, steps)  # type: ignore[arg-type]
        scale[here], nu[here], gamma[here] = NS.adjusted_scale(r, c, adjust), n, g
    return scale, nu, gamma


def _none(h: Hyper) -> np.ndarray:
    return np.zeros(np.shape(h.lr))


def _coupled_decay(h: Hyper) -> tuple[np.ndarray, np.ndarray]:
    return h.weight_decay * _ones(h), _none(h)


def _decoupled_decay(h: Hyper) -> tuple[np.ndarray, np.ndarray]:
    return _none(h), _corrected(h, h.weight_decay * _ones(h))


def _sgdp_decay(h: Hyper) -> tuple[np.ndarray, np.ndarray]:
    return _none(h), F.sgdp_decoupled_decay(h.weight_decay, h.momentum, h.applied_ratio()) * _ones(
        h
    )


def _adamp_decay(h: Hyper) -> tuple[np.ndarray, np.ndarray]:
    return _none(h), F.adamp_decoupled_decay(h.weight_decay, h.applied_ratio()) * _ones(h)


def _corrected(h: Hyper, decay: np.ndarray) -> np.ndarray:
    """λ·η_t/η_max on the tensors AdamC corrects (Defazio 2025), λ elsewhere."""
    with np.errstate(divide="ignore", invalid="ignore"):
        factor = np.where(h.max_lr > 0, h.lr / h.max_lr, 1.0)
    return np.where(h.corrected, decay * factor, decay)


FAMILY_TABLE: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            "sgd",
            named("SGD"),
            base="sgd",
            dynamics=_sgd_dynamics,
            decay=_coupled_decay,
            gradient_identity=True,
            projected_variant="SGDP",
            typical_weight_decay="1e-4 to 5e-4 with SGD",
        ),
        Family(
            "adamc",
            _adamc,
            base="adam",
            dynamics=_adam_dynamics,
            decay=_decoupled_decay,
            decoupled_decay=decoupled(_decoupled_decay),
            projected_variant="AdamP",
            typical_weight_decay="0.01 to 0.1 with AdamC, as for AdamW",
            note=(
                "AdamC's corrected tensors and η_max are not in the run file: corrected are the "
                "scale-invariant tensors with ndim >= 2 (normalized='auto'), all or none as its "
                "defaults say; η_max is a recorded max_lr, the defaults' max_lr, or the group's "
                "largest recorded lr"
            ),
        ),
        Family(
            "adamw",
            _adamw,
            base="adam",
            dynamics=_adam_dynamics,
            decay=_decoupled_decay,
            decoupled_decay=decoupled(_decoupled_decay),
            projected_variant="AdamP",
            typical_weight_decay="0.01 to 0.05 with AdamW",
        ),
        Family(
            "adam",  # L2 decay through Adam's normaliser: it acts as λ·sqrt(numel)·‖w‖/g̃
            named("Adam"),
            base="adam",
            dynamics=_adam_dynamics,
            decay=_coupled_decay,
            projected_variant="AdamP",
            typical_weight_decay=(
                "0.01 to 0.05 as decoupled decay: torch.optim.AdamW, or stepsize_lens.AdamP; "
                "Adam's own weight_decay is an L2 term that its normaliser rescales"
            ),
        ),
        Family(
            "sgdp",
            named("SGDP"),
            base="sgd",
            projects=True,
            dynamics=_sgdp_dynamics,
            decay=_sgdp_decay,
            decoupled_decay=lambda h: F.sgdp_decoupled_decay(
                h.weight_decay, h.momentum, h.applied_ratio()
            ),
            projected_variant="SGDP",
            typical_weight_decay=(
                "1e-4 to 5e-4 with SGDP, as for SGD; it applies weight_decay x wd_ratio / "
                "(1 - momentum) on the tensors it projects"
            ),
        ),
        Family(
            "adamp",
            named("AdamP"),
            base="adam",
            projects=True,
            dynamics=lambda h: _adam_dynamics(h, projects=True),
            decay=_adamp_decay,
            decoupled_decay=lambda h: F.adamp_decoupled_decay(h.weight_decay, h.applied_ratio()),
            projected_variant="AdamP",
            typical_weight_decay=(
                "0.01 to 0.05 with AdamP, as for AdamW; it applies weight_decay x wd_ratio on "
                "the tensors it projects"
            ),
        ),
        Family(
            "lion",
            named("Lion"),
            base="sign",
            dynamics=_lion_dynamics,
            decay=_decoupled_decay,
            decoupled_decay=decoupled(_decoupled_decay),
            projected_variant=None,
            typical_weight_decay=(
                "3 to 10 times AdamW's with Lion (e.g. 0.1 to 1), whose lr is 3 to 10 times smaller"
            ),
        ),
        Family(
            "muon",
            named("Muon"),
            base="orthogonal",
            modules=("torch.optim",),
            dynamics=_muon_dynamics,
            decay=_decoupled_decay,
            decoupled_decay=decoupled(_decoupled_decay),
            covers=lambda h: np.isfinite(h.rows) & np.isfinite(h.cols),
            projected_variant=None,
            typical_weight_decay="0.01 to 0.1 with torch.optim.Muon (its default is 0.1)",
            note="torch.optim.Muon on 2-D weights; other tensors belong to another optimizer",
        ),
    )
}
UNKNOWN = Family("unknown", lambda class_name, defaults: False, projected_variant=None)
FAMILIES: tuple[str, ...] = (*FAMILY_TABLE, UNKNOWN.name)


def family_entry(name: str) -> Family:
    """The table entry of a family name; `UNKNOWN` (no theory) for names not in the table."""
    return FAMILY_TABLE.get(name, UNKNOWN)


def family_of_optimizer(
    class_name: str, defaults: Mapping[str, Any] | None = None, module: str | None = None
) -> str:
    """The name of the first family in `FAMILY_TABLE` that recognises this optimizer (and, for
    families that name modules, whose module matches), else ``"unknown"``."""
    defaults = defaults if isinstance(defaults, Mapping) else {}
    for family in FAMILY_TABLE.values():
        if family.modules and not str(module or "").startswith(family.modules):
            continue
        if family.recognise(class_name, defaults):
            return family.name
    return UNKNOWN.name


def _undefined(h: Hyper) -> np.ndarray:
    return np.full(np.broadcast(np.asarray(h.lr), np.asarray(h.weight_decay)).shape, np.nan)


def equilibrium_angle(
    family: str, lr: ArrayLike, weight_decay: ArrayLike, **hyper: Any
) -> ArrayLike:
    """Equilibrium angular update of a family (docs/design.md §5.3, §5.9).

    ``family``: a name of `FAMILY_TABLE`; ``hyper``: the other fields of `Hyper` (momentum,
    dampening, beta1, beta2, wd_ratio, nesterov, projected — whether AdamP/SGDP projected the
    tensor; if not, SGDP gives sqrt(2ηλ/(1+μ)) and AdamP the AdamW value — numel, rows, cols,
    max_lr, corrected, defaults). Unknown families give NaN.
    """
    h = Hyper(lr, weight_decay, **hyper)
    formula = family_entry(family).equilibrium_angle
    return _undefined(h) if formula is None else formula(h)


def equilibrium_norm(
    family: str, lr: ArrayLike, weight_decay: ArrayLike, **hyper: Any
) -> ArrayLike:
    """Equilibrium weight norm of a family: SGD-based families from the scale-free gradient norm
    g̃ = ‖w‖‖g‖ (``scale_free_grad_norm``), Adam-based ones from ``numel`` (Adam with L2 from
    both), Lion from ``numel``, Muon from ``rows`` and ``cols``; NaN without a theory."""
    h = Hyper(lr, weight_decay, **hyper)
    formula = family_entry(family).equilibrium_norm
    return _undefined(h) if formula is None else formula(h)


def relaxation_steps(
    family: str, lr: ArrayLike, weight_decay: ArrayLike, **hyper: Any
) -> ArrayLike:
    """Steps for the distance to equilibrium to shrink by e (`formulas.time_constant` of the
    family's relaxation rate).

    SGD-like families relax ‖w‖⁴ at rate 4ηλ' per step (λ' the decay they apply per unit lr:
    λ(1−d)/(1−μ) for SGD, λr/(1−μ) for SGDP on projected tensors); Adam, Lion and Muon relax
    ‖w‖² at 2ηλ' (AdamP: λr; AdamC: λη/η_max); Adam with L2 at 3η·λ_eff. Infinite when λ = 0,
    NaN for a family without a theory.
    """
    h = Hyper(lr, weight_decay, **hyper)
    formula = family_entry(family).relaxation_rate
    if formula is None:
        return F.time_constant(_undefined(h))
    rate = np.asarray(formula(h), dtype=np.float64)
    no_decay = ~(np.asarray(weight_decay, dtype=np.float64) > 0) & ~np.isnan(rate)
    return F.time_constant(np.where(no_decay, 0.0, rate))
