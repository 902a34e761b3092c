"""Agreement: the paper's recorded test against the probe's verdict, per tensor, explained.

Where they differ, `agreement` says why: weight decay or another radial term in the gradient,
normalisation eps, a non-invariant path, or chance.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from stepsize_lens._schema import CLASSES, INVARIANT_CLASSES, PROBE_VERDICT_COLUMN
from stepsize_lens.invariance.recorded_test import majority_class, run_delta, view_counts
from stepsize_lens.paper_test import channel_threshold, layer_threshold

if TYPE_CHECKING:
    import pandas as pd

    from stepsize_lens.invariance.functional_probe import ProbeResult
    from stepsize_lens.run import Run


def _nanmedian(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(np.median(finite)) if finite.size else float("nan")


def _explain(row: dict[str, Any], delta: float) -> str:
    """Why the recorded test and the probe disagree on one tensor (empty when they agree)."""
    import math

    probe_cls, recorded = row["probe"], row["recorded"]
    if row["tested_records"] == 0:
        return "no tested record (every record skipped or its cosines undefined)"
    if probe_cls == recorded:
        return ""
    rate = f"{100 * row['pass_rate']:.0f}%"
    if probe_cls in INVARIANT_CLASSES and recorded == "none":
        k, wd, positive = row["radial_coef"], row["weight_decay"], row["radial_positive"]
        detail = (
            f"the test passed its view in only {rate} of records (median |cos(w, g)| "
            f"{row['median_abs_cos']:.2g} vs threshold {row['layer_threshold']:.2g})"
        )
        if wd > 0 and k > 0 and abs(k - wd) <= 0.25 * wd:
            return (
                f"{detail}: the gradient carries weight decay, <w,g>/|w|^2 = {k:.3g} matches "
                f"weight_decay {wd:.3g}, a radial term the loss-only gradient does not have"
            )
        if positive > 0.9 and k > 0:
            return (
                f"{detail}: the gradient points outward in {100 * positive:.0f}% of records "
                f"(<w,g>/|w|^2 = {k:.3g}), an L2 penalty in the loss or a non-invariant path "
                "mixed into the gradient (an extra loss term, a branch without normalisation, "
                "or a forward that differs from the probe's, e.g. eval-mode BatchNorm)"
            )
        numerical = row.get("numerical_change", float("nan"))
        eps_note = (
            f"; under the real eps the probe's output moves by {numerical:.2g}"
            if numerical == numerical
            else ""
        )
        return (
            f"{detail}: a non-invariant path mixed into the gradient, or normalisation eps on "
            f"low-variance channels making the invariance approximate{eps_note}"
        )
    if probe_cls == "channel" and recorded == "layer":
        return (
            f"the channel test failed (median max-row |cos| {row['median_channel_cos']:.2g} vs "
            f"threshold {row['channel_threshold']:.2g}) while the whole tensor passed: a few rows "
            "are not tangential, e.g. dead or low-variance channels where eps dominates"
        )
    if probe_cls == "none":
        chance = 100 * math.erf(delta / math.sqrt(2))
        return (
            f"the test passed in {rate} of records although rescaling changes the output on the "
            f"probe batch (a random gradient passes the layer view about {chance:.0f}% of the "
            "time): the gradient is nearly orthogonal to w in training, e.g. the tensor is "
            "approximately invariant there or the probe batch/mode differs from training"
        )
    return (
        f"the recorded test says {recorded} but rescaling per row changes the probe's output: "
        "rows happen to be orthogonal to their gradients in training, a stronger pattern than "
        "the structure guarantees"
    )


def agreement(
    run: Run, probe_result: ProbeResult | None = None, delta: float | None = None
) -> pd.DataFrame:
    """Per tensor (ndim >= 2), the recorded test against the probe verdict, explained.

    Probe verdicts come from ``probe_result`` (matched by tensor name) or the run's params
    column ``probe_verdict``. Columns: ``module_type``, ``probe``, ``recorded`` (most frequent
    test outcome), ``applied`` (most frequent view AdamP/SGDP applied; None if unknown),
    ``pass_rate`` (share of tested records passing the probe's view: channel for "channel",
    channel-or-layer otherwise), ``channel_rate``, ``layer_rate``, ``tested_records``,
    ``agree`` and ``explanation`` (why they differ: weight decay or another radial term in the
    gradient, eps, a non-invariant path, chance).
    """
    import pandas as pd

    from stepsize_lens.errors import UserInputError

    names = run.tensor_names
    numerical = [float("nan")] * len(names)
    if probe_result is not None:
        table = probe_result.table
        verdicts = [table.at[n, "verdict"] if n in table.index else None for n in names]
        numerical = [
            float(table.at[n, "numerical_change"]) if n in table.index else float("nan")
            for n in names
        ]
    elif run.param_column(PROBE_VERDICT_COLUMN) is not None:
        verdicts = run.param_column(PROBE_VERDICT_COLUMN)
        if run.param_column("probe_numerical_change") is not None:
            numerical = list(run.param_values("probe_numerical_change"))
    else:
        raise UserInputError(
            f"run {run.label!r} has no probe verdicts: pass a probe result or record with "
            "attach(..., probe_inputs=...)"
        )
    delta = run_delta(run, delta)
    counts = view_counts(run, delta)
    recorded = majority_class(counts)
    applied_counts = view_counts(run, which="applied_view")
    applied = majority_class(applied_counts)
    applied_known = applied_counts["known"].to_numpy() > 0

    valid = ~run.skipped.astype(bool)
    cos = run.metric("cos_grad")[valid]
    chan = run.metric("channel_cos_grad_max")[valid]
    with np.errstate(invalid="ignore", divide="ignore"):
        radial = cos * run.metric("grad_norm")[valid] / run.metric("weight_norm")[valid]
    wd_by_group = run.group_field("weight_decay")[valid] if valid.any() else np.zeros((0, 0))
    numel = run.numel
    rows_count = run.param_values("rows", 1.0)
    ndim = run.param_values("ndim", 0.0)
    groups = run.tensor_groups
    module_types = run.param_column("module_type") or [""] * len(names)

    records = []
    for t, name in enumerate(names):
        if ndim[t] < 2 or verdicts[t] not in CLASSES:
            continue
        probe_cls = verdicts[t]
        channel_rate = float(counts["channel"].iloc[t])
        layer_rate = float(counts["layer"].iloc[t])
        g = groups[t]
        wd = (
            _nanmedian(wd_by_group[:, g])
            if wd_by_group.ndim == 2 and g < wd_by_group.shape[1]
            else float("nan")
        )
        finite_radial = radial[:, t][np.isfinite(radial[:, t])]
        row: dict[str, Any] = {
            "tensor": name,
            "module_type": str(module_types[t] or ""),
            "probe": probe_cls,
            "recorded": str(recorded[t]),
            "applied": str(applied[t]) if applied_known[t] else None,
            "pass_rate": channel_rate if probe_cls == "channel" else channel_rate + layer_rate,
            "channel_rate": channel_rate,
            "layer_rate": layer_rate,
            "tested_records": int(counts["known"].iloc[t]),
            "median_abs_cos": _nanmedian(np.abs(cos[:, t])),
            "median_channel_cos": _nanmedian(chan[:, t]),
            "layer_threshold": layer_threshold(int(numel[t]), delta),
            "channel_threshold": channel_threshold(int(numel[t]), int(rows_count[t]), delta),
            "radial_coef": _nanmedian(radial[:, t]),
            "radial_positive": float((finite_radial > 0).mean()) if finite_radial.size else 0.0,
            "weight_decay": wd if wd == wd else 0.0,
            "numerical_change": numerical[t],
        }
        row["agree"] = bool(row["tested_records"] > 0 and row["probe"] == row["recorded"])
        row["explanation"] = _explain(row, delta)
        if row["applied"] is not None and row["applied"] != probe_cls:
            note = f"AdamP/SGDP mostly applied the {row['applied']} view"
            row["explanation"] = f"{row['explanation']}; {note}" if row["explanation"] else note
        records.append(row)
    columns = [
        "tensor",
        "module_type",
        "probe",
        "recorded",
        "applied",
        "pass_rate",
        "channel_rate",
        "layer_rate",
        "tested_records",
        "agree",
        "explanation",
    ]
    frame = pd.DataFrame.from_records(records, columns=columns + ["_"])[columns]
    return frame.set_index("tensor")


def disagreements(
    run: Run, probe_result: ProbeResult | None = None, delta: float | None = None
) -> pd.DataFrame:
    """The rows of `agreement` where the recorded test and the probe differ."""
    frame = agreement(run, probe_result, delta)
    return frame[~frame["agree"]]
