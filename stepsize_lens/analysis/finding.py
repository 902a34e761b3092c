"""One finding: what a run says the user should look at (the record every check returns), the
thresholds that decide when checks fire, and the context every check reads."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from stepsize_lens.analysis.smoothing import default_window
from stepsize_lens.analysis.split import norm_power
from stepsize_lens.analysis.theory.families import Family

if TYPE_CHECKING:
    import pandas as pd

    from stepsize_lens.run import Run

MAX_LISTED = 20  # tensors listed in a finding's evidence


@dataclass(frozen=True)
class Finding:
    """One finding: ``kind`` (one of `KINDS`), ``severity`` (critical / warning / info), a
    one-line ``title`` (every number in it is an ``evidence`` value, docs/findings.md),
    ``evidence`` (numbers, JSON-friendly), the ``tensors`` concerned (at most 20 listed;
    ``evidence["tensor_count"]`` has the total), a concrete ``suggestion``, a ``score`` that
    orders findings of equal severity (larger first), and ``advice``: changes in the user's own
    optimizer arguments whose effect the recurrence computed (`advice.Advice.to_dict`; empty when
    no change has a material effect within the plausible ranges)."""

    kind: str
    severity: str
    title: str
    evidence: dict[str, Any]
    tensors: tuple[str, ...]
    suggestion: str
    score: float = 0.0
    advice: tuple[dict[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["tensors"] = list(self.tensors)
        out["advice"] = [dict(a) for a in self.advice]
        return out


def listed(names: list[str]) -> tuple[str, ...]:
    """The first `MAX_LISTED` names (``evidence["tensor_count"]`` has the total)."""
    return tuple(names[:MAX_LISTED])


@dataclass(frozen=True)
class Thresholds:
    """When findings fire (see the module docstring)."""

    decay_fraction: float = 0.1
    norm_decay_ratio: float = 1.5
    blowup_ratio: float = 10.0
    blowup_critical_ratio: float = 100.0
    equilibrium_tolerance: float = 0.25
    equilibrium_time_tolerance: float = 0.1
    equilibrium_window: float = 0.2
    overshoot_ratio: float = 3.0
    warmup_target: float = 2.0
    lr_decayed: float = 0.5
    gradient_rise_ratio: float = 1.3
    gradient_norm_share: float = 0.5
    rotation_cv: float = 0.5
    projection_always_share: float = 0.99
    wd_mismatch_ratio: float = 10.0
    schedule_decayed: float = 0.9
    material_ratio: float = 1.25
    min_records: int = 10


@dataclass
class Context:
    """What every check reads: the run, its classes and thresholds, and what several checks
    share (the forecast, computed once on first use; ``cache`` for other shared results)."""

    run: Run
    classes: pd.Series
    thresholds: Thresholds
    keep: np.ndarray  # non-skipped records
    names: list[str]
    invariant: np.ndarray  # [T] bool
    family: Family
    wd_last: np.ndarray  # [T] weight decay at the last record (NaN -> 0)
    groups: np.ndarray  # [T] param group
    forecasted: Any = None  # theory.Forecast, if the caller has it
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def power(self) -> int:
        """k in Δθ ∝ η/‖w‖^k for this run's optimizer (`split.norm_power`)."""
        return norm_power(self.run, self.family.name)

    @property
    def window(self) -> int:
        return default_window(int(self.keep.sum()))

    @property
    def forecast(self) -> Any:
        """`theory.forecast` of the run with these classes (computed on first use)."""
        if self.forecasted is None:
            from stepsize_lens.analysis.theory import forecast

            self.forecasted = forecast(self.run, self.classes, self.family.name)
        return self.forecasted
