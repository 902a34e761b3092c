"""Why the effective step fell: norm growth, the lr schedule, or the scale-free gradient.

On a scale-invariant tensor the angular update of one step is Δθ ≈ η·s/‖w‖^k, where s is the
scale-free size of the step and k the power with which the norm enters (docs/design.md §5.11):

- SGD-like updates (SGD, SGD momentum, SGDP; and optimizers the theory does not know): the
  step is η·p with p ∝ g ∝ 1/‖w‖, so Δθ = (η/‖w‖²)·(‖w‖·‖p‖): k = 2, s = ‖w‖‖p‖ (‖w‖‖g‖ = g̃
  without momentum). η/‖w‖² is the paper's effective learning rate;
- adaptive and normalized updates (Adam, AdamW, AdamP, AdamC, Lion, Muon): the update u is
  scale-free already, Δθ = η‖u⊥‖/‖w‖: k = 1, s = ‖u⊥‖.

So the fall of Δθ between an early and a late window splits exactly into three factors,

    Δθ_early/Δθ_late = (η_early/η_late) · (‖w‖_late/‖w‖_early)^k · (s_early/s_late)
                          lr part           norm-growth part          scale-free part

The norm-growth part is the premature step-size decay the paper is about (momentum and the
update's own growth inflating ‖w‖; weight decay or projection act on it); the scale-free part
is the gradient (or the normalized update) shrinking — the task being learned, gradients
vanishing, or correlated gradients turning into noise — which neither touches. Each window is
the mean of ``window`` records (non-skipped, finite); the lr and norm parts are ratios of
window means, and the scale-free part is what remains, so the three multiply to the measured
fall exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from stepsize_lens.analysis.sets import (
    left_out_of_means,
    measured,
    reduce_values,
    set_name,
    tensor_classes,
    tensor_group_field,
    tensor_sets,
)
from stepsize_lens.analysis.smoothing import default_window

if TYPE_CHECKING:
    import pandas as pd

    from stepsize_lens.run import Run

COLUMNS: tuple[str, ...] = (
    "set",
    "tensors",
    "power",
    "angle_early",
    "angle_late",
    "total",
    "lr_part",
    "norm_part",
    "gradient_part",
    "norm_growth",
)


def norm_power(run: Run, family: str | None = None) -> int:
    """k of the module docstring for a run's optimizer family: 1 for Adam-, sign- and
    Newton–Schulz-based updates, 2 for SGD-based ones and for optimizers the theory does not
    know (the paper's η/‖w‖²)."""
    from stepsize_lens.analysis.theory import family_entry, optimizer_family

    base = family_entry(family or optimizer_family(run)).base
    return 1 if base in ("adam", "sign", "orthogonal") else 2


def _window_mean(values: np.ndarray, window: int, tail: bool) -> np.ndarray:
    """Per column: the mean of the first (or last) ``window`` finite values."""
    out = np.full(values.shape[1], np.nan)
    for j in range(values.shape[1]):
        finite = values[np.isfinite(values[:, j]), j]
        if finite.size:
            out[j] = (finite[-window:] if tail else finite[:window]).mean()
    return out


def split_values(
    angle: np.ndarray, weight: np.ndarray, lr: np.ndarray, power: int, window: int
) -> dict[str, np.ndarray]:
    """The three factors of the fall per column of [records, k] series (module docstring):
    total, lr_part, norm_part, gradient_part (all early/late, > 1 meaning "fell"), plus
    angle_early, angle_late and norm_growth (‖w‖ late/early)."""
    a0, a1 = _window_mean(angle, window, False), _window_mean(angle, window, True)
    w0, w1 = _window_mean(weight, window, False), _window_mean(weight, window, True)
    l0, l1 = _window_mean(lr, window, False), _window_mean(lr, window, True)
    with np.errstate(divide="ignore", invalid="ignore"):
        total = a0 / a1
        lr_part = l0 / l1
        growth = w1 / w0
        norm_part = growth**power
        gradient_part = total / (lr_part * norm_part)
    clean = lambda x: np.where(np.isfinite(x) & (x > 0), x, np.nan)  # noqa: E731
    return {
        "angle_early": a0,
        "angle_late": a1,
        "total": clean(total),
        "lr_part": clean(lr_part),
        "norm_part": clean(norm_part),
        "gradient_part": clean(gradient_part),
        "norm_growth": clean(growth),
    }


def _set_series(
    run: Run,
    by: str,
    classes: pd.Series | Mapping[str, str] | None,
    window: int | None,
) -> tuple[np.ndarray, int, list[tuple[str, int, tuple[np.ndarray, np.ndarray, np.ndarray]]]]:
    """The series a split is taken from, over the non-skipped records: their steps, the window
    (``window`` or `smoothing.default_window`), and per set of tensors its name, its size and the
    means of angular_update, weight_norm and lr over the tensors its figures use
    (`sets.measured`: frozen and zero-start tensors left out unless all are)."""
    cls = tensor_classes(run, classes)
    keep = ~run.skipped.astype(bool)
    win = window if window is not None else default_window(int(keep.sum()))
    angle = run.metric("angular_update")[keep]
    weight = run.metric("weight_norm")[keep]
    lr = tensor_group_field(run, "lr")[keep]
    left_out = left_out_of_means(run)
    sets = []
    for key, index in tensor_sets(run, by, cls).items():
        used = measured(index, left_out)
        series = tuple(reduce_values(x[:, used], "mean") for x in (angle, weight, lr))
        sets.append((set_name(by, key), len(index), series))
    return run.steps[keep], win, sets


def decay_split(
    run: Run,
    by: str = "class",
    classes: pd.Series | Mapping[str, str] | None = None,
    window: int | None = None,
    family: str | None = None,
) -> pd.DataFrame:
    """The fall of the effective step per set of tensors, split into its lr, norm-growth and
    scale-free parts (module docstring).

    Columns: set, tensors, power (k), angle_early, angle_late, total (Δθ early/late), lr_part,
    norm_part ((‖w‖_late/‖w‖_early)^k), gradient_part (the rest), norm_growth. A set's series
    is the mean over its tensors, leaving out frozen tensors and tensors that start at zero
    unless all are (`sets.measured`, as every set figure);
    ``window`` defaults to `smoothing.default_window` of the non-skipped records.
    """
    import pandas as pd

    _, win, sets = _set_series(run, by, classes, window)
    power = norm_power(run, family)
    rows = []
    for name, tensors, series in sets:
        parts = split_values(*(x[:, None] for x in series), power=power, window=win)
        rows.append(
            {
                "set": name,
                "tensors": tensors,
                "power": power,
                **{key: float(values[0]) for key, values in parts.items()},
            }
        )
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    return frame


def split_series(
    run: Run,
    by: str = "class",
    classes: pd.Series | Mapping[str, str] | None = None,
    family: str | None = None,
    window: int | None = None,
) -> pd.DataFrame:
    """The split along the run, for figures: per record and set, each factor relative to the
    first ``window`` records, as the fraction of the early effective step it leaves (< 1: it
    shrank the step): ``total`` Δθ/Δθ_early, ``lr`` η/η_early, ``norm`` (‖w‖_early/‖w‖)^k,
    ``gradient`` total/(lr·norm). Long form: step, set, part, value."""
    import pandas as pd

    steps, win, sets = _set_series(run, by, classes, window)
    power = norm_power(run, family)
    frames = []
    for name, _, (a, w, eta) in sets:
        a0, w0, e0 = (_window_mean(x[:, None], win, False)[0] for x in (a, w, eta))
        with np.errstate(divide="ignore", invalid="ignore"):
            total = a / a0
            lr_part = eta / e0
            norm = (w0 / w) ** power
            gradient = total / (lr_part * norm)
        for part, values in (
            ("total", total),
            ("lr", lr_part),
            ("norm", norm),
            ("gradient", gradient),
        ):
            frames.append(pd.DataFrame({"step": steps, "set": name, "part": part, "value": values}))
    if not frames:
        return pd.DataFrame({"step": [], "set": [], "part": [], "value": []})
    return pd.concat(frames, ignore_index=True)
