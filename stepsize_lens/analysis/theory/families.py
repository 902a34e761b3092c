"""The optimizer families the theory knows, as one table (docs/design.md §5).

Each `Family` is data: how a run's optimizer is recognised from its class name (and defaults),
which update it builds on, whether it projects scale-invariant tensors (AdamP/SGDP: then its
``wd_ratio`` applies there), and the formulas of `formulas` that give its equilibrium angle and
norm, its relaxation rate and its per-step decoupled decay, each a function of `Hyper` (the
hyperparameters per record and tensor). A formula left at None means "no theory": the
predictions are NaN. Adding a family is adding one entry to `FAMILY_TABLE`.

    family_of_optimizer("AdamW", defaults) -> "adamw";  family_entry("adamw") -> Family
    equilibrium_angle(family, lr, weight_decay, momentum=, dampening=, beta1=, wd_ratio=,
                      projected=)                                  -> radians per step
    equilibrium_norm(family, lr, weight_decay, scale_free_grad_norm=, numel=, ...) -> ‖w‖
    relaxation_steps(family, lr, weight_decay, momentum=, dampening=, wd_ratio=, projected=)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from stepsize_lens.analysis.theory import formulas as F
from stepsize_lens.analysis.theory.formulas import ArrayLike


@dataclass(frozen=True)
class Hyper:
    """The hyperparameters a family's formulas read, each a scalar or an array (per record and
    tensor). ``projected``: whether AdamP/SGDP projected the tensor (its ``wd_ratio`` applies);
    ``scale_free_grad_norm`` g̃ = ‖w‖‖g‖ and ``numel`` feed the equilibrium norms."""

    lr: ArrayLike
    weight_decay: ArrayLike
    momentum: ArrayLike = 0.0
    dampening: ArrayLike = 0.0
    beta1: ArrayLike = 0.9
    wd_ratio: ArrayLike = 0.1
    projected: ArrayLike = True
    scale_free_grad_norm: ArrayLike = np.nan
    numel: ArrayLike = np.nan

    def applied_ratio(self) -> np.ndarray:
        """r where the tensor was projected, 1 elsewhere (float64)."""
        return np.where(self.projected, np.asarray(self.wd_ratio, dtype=np.float64), 1.0)


Formula = Callable[[Hyper], ArrayLike]


@dataclass(frozen=True)
class Family:
    """One optimizer family (see the module docstring).

    ``recognise(class_name, defaults)``: is a run whose optimizer has this class name (and these
    defaults) of this family. ``base``: the update it builds on (``"sgd"``: heavy-ball momentum
    SGD, whose norm without weight decay follows `formulas.no_decay_norm`; ``"adam"``).
    ``projects``: removes the radial part of the update on the tensors it finds scale-invariant.
    ``equilibrium_angle`` / ``equilibrium_norm`` / ``relaxation_rate``: formulas, None without
    a theory. ``decoupled_decay``: the per-step decoupled decay λ_eff, the shrink (1−ηλ_eff) of
    ‖w‖ before the update (None for coupled L2 decay). ``gradient_identity``: without momentum the
    step is −η(g + λw), so ‖w'‖² follows from g alone. ``projected_variant``: the projected
    optimizer a finding suggests instead of this one. ``typical_weight_decay``: the usual range,
    for the no-weight-decay finding.
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
    projected_variant: str = "SGDP"
    typical_weight_decay: str = "a small value"


def named(*class_names: str) -> Callable[[str, Mapping[str, Any]], bool]:
    """A `Family.recognise` that matches these optimizer class names."""
    return lambda class_name, defaults: class_name in class_names


def _adamw(class_name: str, defaults: Mapping[str, Any]) -> bool:
    """AdamW, or torch's Adam with ``decoupled_weight_decay=True`` (the same update)."""
    return class_name == "AdamW" or (
        class_name == "Adam" and bool(defaults.get("decoupled_weight_decay"))
    )


FAMILY_TABLE: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            "sgd",
            named("SGD"),
            base="sgd",
            equilibrium_angle=lambda h: F.sgd_equilibrium_angle(
                h.lr, h.weight_decay, h.momentum, h.dampening
            ),
            equilibrium_norm=lambda h: F.sgd_equilibrium_norm(
                h.lr, h.weight_decay, h.scale_free_grad_norm, h.momentum, h.dampening
            ),
            relaxation_rate=lambda h: F.sgd_relaxation_rate(
                h.lr, h.weight_decay, h.momentum, h.dampening
            ),
            gradient_identity=True,
            projected_variant="SGDP",
            typical_weight_decay="1e-4 to 5e-4 with SGD",
        ),
        Family(
            "adamw",
            _adamw,
            base="adam",
            equilibrium_angle=lambda h: F.adamw_equilibrium_angle(h.lr, h.weight_decay, h.beta1),
            equilibrium_norm=lambda h: (
                F.adamw_equilibrium_norm(h.lr, h.weight_decay, h.numel) * np.ones_like(h.lr)
            ),
            relaxation_rate=lambda h: F.adamw_relaxation_rate(h.lr, h.weight_decay),
            decoupled_decay=lambda h: h.weight_decay,
            projected_variant="AdamP",
            typical_weight_decay="0.01 to 0.05 with AdamW",
        ),
        Family(
            "adam",  # L2 decay through Adam's normaliser: no equilibrium theory here
            named("Adam"),
            base="adam",
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
            equilibrium_angle=lambda h: np.where(
                h.projected,
                F.sgdp_equilibrium_angle(h.lr, h.weight_decay, h.momentum, h.wd_ratio),
                F.sgd_equilibrium_angle(h.lr, h.weight_decay, h.momentum, 0.0),
            ),
            equilibrium_norm=lambda h: np.where(
                h.projected,
                F.sgdp_equilibrium_norm(
                    h.lr,
                    h.weight_decay,
                    h.scale_free_grad_norm,
                    h.momentum,
                    h.dampening,
                    h.wd_ratio,
                ),
                F.sgdp_unprojected_equilibrium_norm(
                    h.lr, h.weight_decay, h.scale_free_grad_norm, h.momentum, h.dampening
                ),
            ),
            relaxation_rate=lambda h: F.sgdp_relaxation_rate(
                h.lr, h.weight_decay, h.momentum, h.applied_ratio()
            ),
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
            equilibrium_angle=lambda h: np.where(
                h.projected,
                F.adamp_equilibrium_angle(h.lr, h.weight_decay, h.wd_ratio),
                F.adamw_equilibrium_angle(h.lr, h.weight_decay, h.beta1),
            ),
            equilibrium_norm=lambda h: np.where(
                h.projected,
                F.adamp_equilibrium_norm(h.lr, h.weight_decay, h.numel, h.beta1, h.wd_ratio),
                F.adamw_equilibrium_norm(h.lr, h.weight_decay, h.numel),
            ),
            relaxation_rate=lambda h: F.adamp_relaxation_rate(
                h.lr, h.weight_decay, h.applied_ratio()
            ),
            decoupled_decay=lambda h: F.adamp_decoupled_decay(h.weight_decay, h.applied_ratio()),
            projected_variant="AdamP",
            typical_weight_decay=(
                "0.01 to 0.05 with AdamP, as for AdamW; it applies weight_decay x wd_ratio on "
                "the tensors it projects"
            ),
        ),
    )
}
UNKNOWN = Family("unknown", lambda class_name, defaults: False)
FAMILIES: tuple[str, ...] = (*FAMILY_TABLE, UNKNOWN.name)


def family_entry(name: str) -> Family:
    """The table entry of a family name; `UNKNOWN` (no theory) for names not in the table."""
    return FAMILY_TABLE.get(name, UNKNOWN)


def family_of_optimizer(class_name: str, defaults: Mapping[str, Any] | None = None) -> str:
    """The name of the first family in `FAMILY_TABLE` that recognises this optimizer, else
    ``"unknown"``."""
    defaults = defaults if isinstance(defaults, Mapping) else {}
    for family in FAMILY_TABLE.values():
        if family.recognise(class_name, defaults):
            return family.name
    return UNKNOWN.name


def _undefined(h: Hyper) -> np.ndarray:
    return np.full(np.broadcast(np.asarray(h.lr), np.asarray(h.weight_decay)).shape, np.nan)


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
    """Equilibrium angular update of a family (see `formulas`).

    ``family``: a name of `FAMILY_TABLE` (``projected`` says whether AdamP/SGDP projected the
    tensor; if not, SGDP gives sqrt(2ηλ/(1+μ)) and AdamP the AdamW value). ``adam`` (L2 decay
    through Adam's normaliser) and unknown families give NaN.
    """
    h = Hyper(lr, weight_decay, momentum, dampening, beta1, wd_ratio, projected)
    formula = family_entry(family).equilibrium_angle
    return _undefined(h) if formula is None else formula(h)


def equilibrium_norm(
    family: str,
    lr: ArrayLike,
    weight_decay: ArrayLike,
    *,
    scale_free_grad_norm: ArrayLike = np.nan,
    numel: ArrayLike = np.nan,
    momentum: ArrayLike = 0.0,
    dampening: ArrayLike = 0.0,
    beta1: ArrayLike = 0.9,
    wd_ratio: ArrayLike = 0.1,
    projected: ArrayLike = True,
) -> ArrayLike:
    """Equilibrium weight norm of a family: SGD-based families from the scale-free gradient norm
    g̃ = ‖w‖‖g‖, Adam-based ones from ``numel``; NaN without a theory."""
    h = Hyper(
        lr,
        weight_decay,
        momentum,
        dampening,
        beta1,
        wd_ratio,
        projected,
        scale_free_grad_norm,
        numel,
    )
    formula = family_entry(family).equilibrium_norm
    return _undefined(h) if formula is None else formula(h)


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
    """Steps for the distance to equilibrium to shrink by e (`formulas.time_constant` of the
    family's relaxation rate).

    SGD: ‖w‖⁴ relaxes at rate 4η(1−d)λ/(1−α) per step; SGDP (projected) at 4ηλr/(1−μ); AdamW
    and AdamP relax ‖w‖² at rate 2ηλ (2ηλr when projected). Infinite when λ = 0, NaN for a family
    without a theory.
    """
    h = Hyper(
        np.asarray(lr, dtype=np.float64),
        np.asarray(weight_decay, dtype=np.float64),
        np.asarray(momentum, dtype=np.float64),
        dampening,
        wd_ratio=wd_ratio,
        projected=projected,
    )
    formula = family_entry(family).relaxation_rate
    return F.time_constant(_undefined(h) if formula is None else formula(h))
