"""The report's content as JSON-friendly dicts (the keys are documented in `stepsize_lens.report`).

Everything the text, markdown and HTML views show comes from these dicts, so the JSON a script
reads and the page a person reads never disagree. Undefined numbers (NaN, ±inf) become None.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from stepsize_lens._jsonable import jsonable
from stepsize_lens._schema import CLASSES, INVARIANT_CLASSES
from stepsize_lens.errors import UserInputError

if TYPE_CHECKING:
    import pandas as pd

    from stepsize_lens.run import Run

SCHEMA = "stepsize_lens.report/1"
COMPARE_SCHEMA = "stepsize_lens.compare/1"
BY_CHOICES = ("group", "class", "tensor")
STRONGEST = 10  # tensors listed in "strongest_decay"
# optimizer defaults shown in the header, in this order (others, e.g. foreach, are noise)
_OPTIMIZER_KEYS = (
    "lr",
    "momentum",
    "dampening",
    "nesterov",
    "betas",
    "eps",
    "weight_decay",
    "delta",
    "wd_ratio",
    "amsgrad",
)


def load_run(path: str | os.PathLike[str]) -> Run:
    """`stepsize_lens.load`, then `require_records`."""
    from stepsize_lens.run import load

    return require_records(load(path), path)


def require_records(run: Run, source: str | os.PathLike[str] | None = None) -> Run:
    """A run with no records, or only skipped ones, is a `UserInputError`: nothing to report."""
    source = source if source is not None else (run.path or run.label)
    if run.num_records == 0:
        raise UserInputError(
            f"{source}: the run has no records (did the optimizer step while the lens was "
            "attached?)"
        )
    if bool(run.skipped.all()):
        raise UserInputError(
            f"{source}: all {run.num_records} records are skipped steps (inf/NaN gradients "
            "under a GradScaler); nothing to report"
        )
    return run


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [jsonable(row) for row in frame.to_dict(orient="records")]


def _scalars(run: Run) -> dict[str, dict[str, Any]]:
    out = {}
    for name in run.scalar_names:
        steps, values = run.scalar(name)
        if steps.size:
            out[name] = {
                "count": int(steps.size),
                "last_step": int(steps[-1]),
                "last": jsonable(float(values[-1])),
            }
    return out


def _group_values(run: Run, field: str) -> list[Any]:
    values = run.group_field(field)
    keep = ~run.skipped.astype(bool)
    return jsonable(values[keep][-1]) if values.size and keep.any() else []


def run_header(run: Run, classes: pd.Series, delta: float | None) -> dict[str, Any]:
    """The "run" section: metadata, size, classes, logged scalars."""
    from stepsize_lens.analysis import lr_changes, overview
    from stepsize_lens.invariance import run_delta

    ov = overview(run, classes)
    info = run.meta.get("optimizer") or {}
    defaults = info.get("defaults") or {}
    return jsonable(
        {
            "label": run.label,
            "path": str(run.path.resolve()) if run.path is not None else None,
            "optimizer": ov.optimizer,
            "family": ov.family,
            "hyperparameters": {k: defaults[k] for k in _OPTIMIZER_KEYS if k in defaults},
            "model_class": run.meta.get("model_class"),
            "created": run.meta.get("created"),
            "closed": run.meta.get("closed"),
            "schedule": run.meta.get("schedule"),
            "torch_version": run.meta.get("torch_version"),
            "stepsize_lens_version": run.meta.get("stepsize_lens_version"),
            "delta": run_delta(run, delta),
            "records": ov.records,
            "first_step": ov.first_step,
            "last_step": ov.last_step,
            "tensors": ov.tensors,
            "numel": ov.numel,
            "groups": int(run.group_field("lr").shape[1]),
            "class_counts": {c: ov.class_counts.get(c, 0) for c in CLASSES},
            "skipped": ov.skipped,
            "nonfinite": ov.nonfinite,
            "lr_final": _group_values(run, "lr"),
            "weight_decay_final": _group_values(run, "weight_decay"),
            "lr_changes": [int(s) for s in lr_changes(run)][:50],
            "scalars": _scalars(run),
        }
    )


def _constant_late_lr(run: Run, start: float = 0.5, rtol: float = 1e-2) -> np.ndarray:
    """[T] bool: the tensor's lr stayed within ``rtol`` over the non-skipped records from
    ``start`` × the last step on (where `decay_exponents` fits), so the fitted exponent speaks
    of the norms and gradients and not of the schedule."""
    from stepsize_lens.analysis.sets import tensor_group_field

    steps = run.steps.astype(np.float64)
    late = (steps >= start * steps.max()) & ~run.skipped.astype(bool)
    lr = tensor_group_field(run, "lr", np.nan)[late]
    if lr.shape[0] == 0:
        return np.zeros(run.num_tensors, bool)
    with np.errstate(all="ignore"):
        low, high = np.nanmin(lr, axis=0), np.nanmax(lr, axis=0)
        return np.isfinite(low) & (high <= low * (1.0 + rtol))


def strongest_decay(run: Run, classes: pd.Series, delta: float | None) -> tuple[str, list[dict]]:
    """The tensors whose angular update fell the most (initial/final), scale-invariant ones if
    any; returns (scope, rows)."""
    from stepsize_lens.analysis import decay_exponents, summarize

    per_tensor = summarize(run, by="tensor", classes=classes, delta=delta)
    per_tensor["class"] = [classes.get(k, "none") for k in per_tensor["key"]]
    per_tensor["group"] = list(run.tensor_groups)
    per_tensor["shape"] = [list(s) if s is not None else None for s in run.param_column("shape")]
    per_tensor["exponent"] = np.where(
        _constant_late_lr(run), decay_exponents(run, classes)["exponent"].to_numpy(), np.nan
    )
    invariant = per_tensor["class"].isin(INVARIANT_CLASSES)
    scope = "scale-invariant" if invariant.any() else "all"
    rows = per_tensor[invariant] if invariant.any() else per_tensor
    decay = rows["angular_update_decay"].to_numpy(dtype=np.float64)
    rows = rows.assign(_order=np.where(np.isfinite(decay), decay, -np.inf))
    rows = rows.sort_values("_order", ascending=False, kind="stable").head(STRONGEST)
    columns = [
        "key",
        "class",
        "group",
        "shape",
        "numel",
        "weight_norm_initial",
        "weight_norm_final",
        "weight_norm_ratio",
        "angular_update_initial",
        "angular_update_final",
        "angular_update_decay",
        "norm_part",
        "lr_part",
        "gradient_part",
        "half_step",
        "tenth_step",
        "exponent",
    ]
    out = rows[columns].rename(columns={"key": "tensor"})
    return scope, _records(out)


THEORY_WINDOW = 0.2  # the theory table averages the last fifth of the run's steps


def theory_section(run: Run, classes: pd.Series, forecasted: Any) -> dict[str, Any]:
    """The "theory" section: the optimizer family, whether the theory predicts it (and why
    not), and per invariance class the measured, predicted (the recurrence along the recorded
    schedule, `analysis.predict`) and equilibrium angular update and norm, means over the last
    `THEORY_WINDOW` of the steps."""
    from stepsize_lens.analysis.theory import predict

    fc = forecasted
    optimizer = str((run.meta.get("optimizer") or {}).get("class") or "unknown")
    out: dict[str, Any] = {
        "family": fc.family.name,
        "optimizer": optimizer,
        "derived": not fc.empty,
        "note": fc.reason or fc.family.note,
        "window": THEORY_WINDOW,
        "sets": [],
    }
    if fc.empty:
        return jsonable(out)
    frame = predict(run, by="class", classes=classes, forecasted=fc)
    steps = fc.steps.astype(np.float64)
    start = steps[-1] - THEORY_WINDOW * (steps[-1] - steps[0])
    late = frame[frame["step"] >= start]
    means = late.groupby(["set", "metric"], sort=False)[["measured", "predicted", "equilibrium"]]
    table = means.mean()
    counts = dict(
        zip(*np.unique(np.asarray(classes, dtype=object)[fc.tensors], return_counts=True))
    )
    for name in dict.fromkeys(frame["set"]):
        row: dict[str, Any] = {"set": name, "tensors": int(counts.get(name, 0))}
        for metric, short in (("angular_update", "angle"), ("weight_norm", "norm")):
            for column in ("measured", "predicted", "equilibrium"):
                row[f"{short}_{column}"] = float(table.loc[(name, metric), column])
        row["window_start"] = int(start)
        out["sets"].append(row)
    return jsonable(out)


def report_data(
    run: Run,
    delta: float | None = None,
    by: str = "class",
    classes: pd.Series | Mapping[str, str] | None = None,
    forecasted: Any = None,
) -> dict[str, Any]:
    """Summary, findings, theory and strongest decays of one run (see the schema in `report`).

    ``forecasted``: `analysis.forecast` of the run with these classes, if the caller computed
    it already (`report` shares it between the findings, the theory section and the figures).
    """
    from stepsize_lens.analysis import find, forecast, summarize, tensor_classes, verdict

    if by not in BY_CHOICES:
        raise UserInputError(f"--by must be one of {', '.join(BY_CHOICES)}, not {by!r}")
    cls = tensor_classes(run, classes, delta)
    fc = forecasted if forecasted is not None else forecast(run, cls)
    sets = list(dict.fromkeys([by, "class", "group"]))
    summary = summarize(run, by=sets, classes=cls, delta=delta)
    scope, strongest = strongest_decay(run, cls, delta)
    findings = find(run, classes=cls, delta=delta, forecasted=fc)
    return {
        "schema": SCHEMA,
        "by": by,
        "verdict": jsonable(verdict(findings)),
        "run": run_header(run, cls, delta),
        "summary": _records(summary),
        "findings": [jsonable(f.to_dict()) for f in findings],
        "theory": theory_section(run, cls, fc),
        "strongest_decay_scope": scope,
        "strongest_decay": strongest,
        "figures": {},
    }


def shared_classes(runs: Sequence[Run], reference: int, delta: float | None) -> pd.Series | None:
    """The reference run's invariance classes when every run has the same tensor names (so
    each class holds the same tensors in every run), else None (each run classifies itself)."""
    from stepsize_lens.analysis import tensor_classes

    names = runs[reference].tensor_names
    if any(run.tensor_names != names for run in runs):
        return None
    return tensor_classes(runs[reference], None, delta)


def compare_data(
    runs: Sequence[Run],
    delta: float | None = None,
    by: str = "class",
    reference: int | str = 0,
) -> dict[str, Any]:
    """Every run's report plus the side-by-side ratios (`analysis.compare_summary`) against the
    reference run (an index or a label)."""
    from stepsize_lens.analysis import compare_summary
    from stepsize_lens.analysis.axes import run_labels
    from stepsize_lens.analysis.compare import reference_index

    if len(runs) < 2:
        raise UserInputError("compare needs at least two run files")
    if by not in ("group", "class"):
        raise UserInputError(f"compare --by must be class or group, not {by!r}")
    labels = run_labels(runs)
    try:
        ref = reference_index(runs, reference)
    except ValueError as exc:
        raise UserInputError(f"--reference: {exc}") from None
    classes = shared_classes(runs, ref, delta)
    per_run = [report_data(run, delta, by, classes) for run in runs]
    for data, label in zip(per_run, labels):
        data["run"]["label"] = label
        del data["schema"], data["figures"], data["by"]
    from stepsize_lens.report.compare_tables import compare_sections

    table = compare_summary(runs, by=by, reference=ref, classes=classes)
    table = table.rename(columns={by: "key"})
    return {
        "schema": COMPARE_SCHEMA,
        "by": by,
        "reference": labels[ref],
        "shared_classes": classes is not None,
        "runs": per_run,
        "comparison": _records(table),
        **compare_sections(runs, by, ref, classes),
        "figures": {},
    }


def default_out(paths: Sequence[Path | None], compare: bool = False) -> Path:
    """Where figures go by default: ``<stem>_report/`` beside the run, or
    ``<stem1>_vs_<stem2>..._compare/`` beside the first run of a comparison."""
    first = next((p for p in paths if p is not None), None)
    folder = first.parent if first is not None else Path(".")
    stems = [p.stem if p is not None else "run" for p in paths]
    if not compare:
        return folder / f"{stems[0]}_report"
    name = "_vs_".join(stems[:4]) + ("_etc" if len(stems) > 4 else "")
    return folder / f"{name}_compare"
