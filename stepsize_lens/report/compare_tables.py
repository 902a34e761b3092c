"""What ``compare`` shows beyond the side-by-side summaries: the paper's point in tables.

`compare_sections` computes, with `analysis.compare`, the JSON sections of a comparison that
read the runs against the schedule (``compare_data`` adds them):

- ``norm_growth``: per set and run, ‖w‖ first, peak (and its step), last; peak ÷ first and
  last ÷ first (`analysis.compare.norm_growth`);
- ``windows``: the effective step (angular update and η/‖w‖²) of every run against the
  reference's, geometric means over the schedule's windows: all steps with lr ≥ 10% of its
  peak, warmup, peak, decay (thirds at a constant lr), never where the lr is about 0
  (`analysis.compare.compare_windows`);
- ``premature_decay``: per set and run, how much norm growth alone cut the effective step, at
  the end and at the norm's peak, with a verdict (`analysis.compare.premature_decay`);
  ``premature_decay_tensors``: the same per scale-invariant tensor;
- ``headline``: per run other than the reference, one sentence with its norm growth and its
  effective-step ratio against the reference's.

`headline_items` and `compare_tables` lay them out as the header items and the tables of the
report (plain dicts with the fields of `report.document.Table`, which wraps them: this module
stays below the document).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from stepsize_lens._jsonable import jsonable
from stepsize_lens.report.formatting import num, times

if TYPE_CHECKING:
    import pandas as pd

    from stepsize_lens.run import Run

TableSpec = dict[str, Any]
"""title, columns, rows, note, text_columns: the fields of `report.document.Table`."""


def _table(
    title: str, columns: list[str], rows: list[list[str]], note: str, text_columns: int
) -> TableSpec:
    return {
        "title": title,
        "columns": columns,
        "rows": rows,
        "note": note,
        "text_columns": text_columns,
    }


SET_NAMES = {"invariant": "scale-invariant", "all": "all tracked"}
"""How the two sets every comparison shows are named for people."""


def _set_label(by: str, key: Any) -> str:
    from stepsize_lens.analysis.sets import set_name

    return SET_NAMES[by] if by in SET_NAMES else set_name(by, key)


def _records(frame: pd.DataFrame, by: str) -> list[dict[str, Any]]:
    """Rows as JSON-ready dicts, the set column renamed to ``set`` and ``set_by`` added."""
    rows = []
    for row in frame.to_dict(orient="records"):
        key = row.pop(by)
        rows.append(jsonable({"set_by": by, "set": _set_label(by, key), **row}))
    return rows


def _set_kinds(by: str) -> list[str]:
    return list(dict.fromkeys(["invariant", "all", by]))


def _by_set(rows: list[dict[str, Any]], labels: list[str]) -> list[dict[str, Any]]:
    """Rows of one kind of set ordered set by set (in order of first appearance), then by run."""
    first = {name: i for i, name in reversed(list(enumerate(r["set"] for r in rows)))}
    order = {label: i for i, label in enumerate(labels)}
    return sorted(rows, key=lambda r: (first[r["set"]], order.get(r["run"], len(order))))


def compare_sections(
    runs: Sequence[Run], by: str, reference: int, classes: pd.Series | None
) -> dict[str, Any]:
    """The JSON sections of the module docstring (``by``: the comparison's sets, class or
    group; ``reference``: the index of the reference run; ``classes``: shared invariance
    classes, or None when each run classifies itself)."""
    from stepsize_lens.analysis.axes import run_labels
    from stepsize_lens.analysis.compare import (
        compare_windows,
        norm_growth,
        premature_decay,
    )
    from stepsize_lens.analysis.sets import is_invariant, tensor_classes

    labels = run_labels(runs)
    norms, windows, decay = [], [], []
    for kind in _set_kinds(by):
        norms += _by_set(_records(norm_growth(runs, by=kind, classes=classes), kind), labels)
        decay += _by_set(_records(premature_decay(runs, by=kind, classes=classes), kind), labels)
    for kind in ("invariant", "all"):
        frame = compare_windows(runs, by=kind, reference=reference, classes=classes)
        windows += _records(frame, kind)
    tensors: list[dict[str, Any]] = []
    names = runs[reference].tensor_names
    if classes is not None and all(run.tensor_names == names for run in runs):
        flags = is_invariant(tensor_classes(runs[reference], classes))
        invariant = set(np.asarray(names, dtype=object)[flags])
        per_tensor = premature_decay(runs, by="tensor", classes=classes)
        tensors = [r for r in _records(per_tensor, "tensor") if r["set"] in invariant]
    sections = {
        "norm_growth": norms,
        "windows": windows,
        "premature_decay": decay,
        "premature_decay_tensors": tensors,
    }
    sections["headline"] = [
        line
        for label in labels
        if label != labels[reference]
        for line in [headline(sections, label, labels[reference])]
        if line
    ]
    return sections


# --------------------------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------------------------


def _step(value: Any) -> str:
    return "–" if value is None else f"{int(value):,}"


def _pick(rows: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    return next((r for r in rows if all(r.get(k) == v for k, v in match.items())), None)


def headline(sections: dict[str, Any], label: str, ref: str) -> str:
    """One sentence: ``label``'s norm growth (peak and last over first) against the
    reference's, and its effective step (angular update) as a multiple of the reference's,
    the geometric mean over the steps where the lr is ≥ 10% of its peak; over the
    scale-invariant tensors when there are any, else all tracked ones. "" when undefined."""
    for kind in ("invariant", "all"):
        set_label = SET_NAMES[kind]
        mine = _pick(sections["norm_growth"], set_by=kind, run=label)
        theirs = _pick(sections["norm_growth"], set_by=kind, run=ref)
        step = _pick(
            sections["windows"], set_by=kind, run=label, window="active", metric="angular_update"
        )
        if mine and theirs and step:
            break
    else:
        return ""
    return (
        f"{label} against {ref} ({set_label} tensors): norm growth "
        f"{times(mine['peak_growth'])} at its peak and {times(mine['last_growth'])} at the "
        f"end, against {times(theirs['peak_growth'])} and {times(theirs['last_growth'])}; "
        f"effective step (angular update) {times(step['ratio'])} the reference's (geometric "
        "mean over the steps where the lr is at least 10% of its peak)."
    )


def headline_items(data: dict[str, Any]) -> list[tuple[str, str]]:
    """The headline sentences as header items, the first keyed "headline" ([] without any)."""
    lines = data.get("headline") or []
    return [("headline" if i == 0 else "", line) for i, line in enumerate(lines)]


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


def norm_growth_table(data: dict[str, Any]) -> TableSpec:
    rows = [
        [
            r["set"],
            r["run"],
            num(r["first"]),
            num(r["peak"]),
            _step(r["peak_step"]),
            num(r["last"]),
            times(r["peak_growth"]),
            times(r["last_growth"]),
        ]
        for r in data.get("norm_growth", [])
    ]
    columns = ["set", "run", "‖w‖ first", "‖w‖ peak", "peak at step", "‖w‖ last"]
    columns += ["peak ÷ first", "last ÷ first"]
    note = (
        "‖w‖: mean norm over the set's tensors (those that start at zero left out) at the first "
        "record, its largest value and the step it was reached, and the last record. peak ÷ "
        "first shows an early norm bump (momentum's) even where weight decay pulled the norm "
        "back by the end."
    )
    return _table("Norm growth per set: peak and last over first", columns, rows, note, 2)


def windows_table(data: dict[str, Any], labels: list[str], ref: str) -> TableSpec:
    """Per set and window: each run's geometric-mean angular update, and for each other run
    its angular update and η/‖w‖² as multiples of the reference's."""
    from stepsize_lens.analysis.compare import WINDOWS

    others = [label for label in labels if label != ref]
    columns = ["set", "window", "steps", *(f"Δθ {label}" for label in labels)]
    for label in others:
        columns += [f"{label} Δθ ÷ ref", f"{label} η/‖w‖² ÷ ref"]
    rows = []
    windows = data.get("windows", [])
    keys = list(dict.fromkeys((r["set"], r["window"]) for r in windows))
    for set_label, window in keys:
        angle = {
            r["run"]: r
            for r in windows
            if (r["set"], r["window"], r["metric"]) == (set_label, window, "angular_update")
        }
        lr = {
            r["run"]: r
            for r in windows
            if (r["set"], r["window"], r["metric"]) == (set_label, window, "effective_lr")
        }
        first = angle.get(ref) or next(iter(angle.values()), None)
        span = "–" if first is None else f"{_step(first['x_first'])}–{_step(first['x_last'])}"
        line = [set_label, WINDOWS.get(window, window), span]
        line += [num(angle[label]["value"]) if label in angle else "–" for label in labels]
        for label in others:
            line += [
                times(angle[label]["ratio"]) if label in angle else "–",
                times(lr[label]["ratio"]) if label in lr else "–",
            ]
        rows.append(line)
    note = (
        f"Δθ: angular update (rad/step), geometric mean over the window's steps on {ref}'s "
        "(the reference's) steps; ÷ ref: the geometric mean of the ratio to the reference "
        "there. Windows come from the recorded lr (the smallest share of its peak over the "
        "runs): lr ≥ 10% of peak = every compared step; warmup before the lr first reaches 90% "
        "of its peak, peak lr at or above 90%, decay between 10% and 90% (at a constant lr: "
        "thirds of the run). Steps where any run's lr is below 10% of its peak are never "
        "compared: there every effective step goes to 0 with the lr."
    )
    return _table("Effective step over the schedule's windows", columns, rows, note, 3)


_VERDICTS = {
    "premature": "premature decay",
    "transient": "transient (at the peak)",
    "none": "no",
    "": "–",
}


def premature_table(data: dict[str, Any]) -> TableSpec:
    rows = [
        [
            r["set"],
            r["run"],
            str(r["tensors"]),
            times(r["norm_part"]),
            times(r["peak_norm_part"]),
            _VERDICTS.get(r["verdict"], r["verdict"]),
            f"{r['premature_tensors']} of {r['tensors']}",
        ]
        for r in data.get("premature_decay", [])
    ]
    columns = ["set", "run", "tensors", "‖w‖ part at end", "‖w‖ part at peak", "verdict"]
    columns += ["tensors premature"]
    note = (
        "‖w‖ part: how much norm growth alone cut the effective step, (‖w‖ late/‖w‖ early)^k "
        "(k = 2, η/‖w‖², for SGD-like updates; 1 for adaptive ones), late = the last records or "
        "the norm's peak. premature decay: the part at the end is at least 1.5× (the "
        "premature_decay finding's threshold); transient: only at the peak (weight decay "
        "pulled the norm back). tensors premature: how many of the set's tensors reach 1.5× "
        "each (the verdict per tensor)."
    )
    return _table("Premature step-size decay per set", columns, rows, note, 2)


def premature_tensor_table(data: dict[str, Any], labels: list[str]) -> TableSpec | None:
    rows_in = data.get("premature_decay_tensors") or []
    if not rows_in:
        return None
    per: dict[str, dict[str, dict[str, Any]]] = {}
    for r in rows_in:
        per.setdefault(r["set"], {})[r["run"]] = r
    rows = []
    for tensor, by_run in per.items():
        line = [tensor]
        for label in labels:
            r = by_run.get(label)
            if r is None:
                line.append("–")
                continue
            mark = {"premature": " premature", "transient": " transient"}.get(r["verdict"], "")
            line.append(times(r["norm_part"]) + mark)
        rows.append(line)
    note = (
        "Per scale-invariant tensor and run: the ‖w‖ part at the end of the run (as in the "
        "table per set), marked premature at 1.5× or more, transient when only the norm's peak "
        "reached it."
    )
    return _table("Premature step-size decay per tensor", ["tensor", *labels], rows, note, 1)


def compare_tables(data: dict[str, Any], labels: list[str], ref: str) -> list[TableSpec]:
    """The comparison's schedule-aware tables, in reading order."""
    tables = [windows_table(data, labels, ref), norm_growth_table(data), premature_table(data)]
    per_tensor = premature_tensor_table(data, labels)
    if per_tensor is not None:
        tables.append(per_tensor)
    return [t for t in tables if t["rows"]]
