"""The report as a list of blocks (header, findings, tables, figures) of formatted strings.

Built once from the JSON-friendly dicts of `report.data`; the text, markdown and HTML views
only lay the blocks out, so they always show the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stepsize_lens.analysis.sets import set_name
from stepsize_lens.report.formatting import num, share, step, times

SEVERITY_COLORS = {"critical": "red", "warning": "yellow", "info": "blue"}
METRIC_NAMES = {"weight_norm": "‖w‖", "angular_update": "angular update", "effective_lr": "η/‖w‖²"}
SET_TITLES = {"class": "invariance class", "group": "param group", "tensor": "tensor"}
FIGURE_CAPTIONS = {
    "paper_panel": "Weight norm, effective step (angular update), loss and accuracy.",
    "norm_growth": "Weight-norm growth, mean over each set of tensors.",
    "effective_step": "Effective step: angular update and η/‖w‖² (log scale); lr changes marked.",
    "decay_split": "Why the effective step fell: its norm-growth, lr and scale-free-gradient "
    "factors (their product is the angular update relative to its early level).",
    "theory": "Measured norm and angular update against the recurrence that follows the "
    "recorded schedule (dashed) and the constant-lr equilibrium (dotted, ±25% band).",
    "cos_threshold": "The paper's scale-invariance test: |cos(w, g)| per tensor against "
    "δ/sqrt(dim).",
    "heatmap": "Angular update per tensor and step (log colour scale).",
}


@dataclass
class Header:
    title: str
    items: list[tuple[str, str]]


@dataclass
class Verdict:
    """The report's opening: two or three sentences (`analysis.verdict`)."""

    healthy: bool
    text: str
    title: str = "Verdict"


@dataclass
class Findings:
    title: str
    items: list[dict[str, Any]]


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]]
    note: str = ""
    text_columns: int = 1  # leading columns that are labels, not numbers


@dataclass
class FigureRef:
    name: str
    caption: str
    path: Path  # the PNG


@dataclass
class Figures:
    title: str
    items: list[FigureRef]
    folder: Path | None = None


@dataclass
class Document:
    title: str
    blocks: list[Any] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------------------------


def _hyper(hyper: dict[str, Any]) -> str:
    parts = []
    for key, value in hyper.items():
        if isinstance(value, list):
            value = "(" + ", ".join(num(v) for v in value) + ")"
        elif isinstance(value, float):
            value = num(value)
        parts.append(f"{key}={value}")
    return ", ".join(parts) or "–"


def _scalars(scalars: dict[str, dict[str, Any]]) -> str:
    return (
        " · ".join(f"{k} {num(v['last'])} (step {v['last_step']})" for k, v in scalars.items())
        or "none"
    )


def evidence_text(evidence: dict[str, Any], limit: int = 6) -> str:
    """The scalar items of a finding's evidence as ``key=value`` (lists shown when short)."""
    parts = []
    for key, value in evidence.items():
        if isinstance(value, dict):
            continue
        if isinstance(value, list):
            if len(value) > 4:
                continue
            value = "[" + ", ".join(str(v) for v in value) + "]"
        elif isinstance(value, float):
            value = num(value)
        parts.append(f"{key}={value}")
    return " · ".join(parts[:limit])


def advice_lines(finding: dict[str, Any]) -> list[str]:
    """The finding's advice lines (changes in the user's own arguments, `analysis.advice`)."""
    return [a["text"] for a in finding.get("advice") or []]


# --------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------


def header_items(run: dict[str, Any]) -> list[tuple[str, str]]:
    counts = run["class_counts"]
    invariance = " · ".join(f"{c} {n}" for c, n in counts.items()) + f"  (δ = {num(run['delta'])})"
    lr = ", ".join(num(v) for v in run["lr_final"]) or "–"
    changes = len(run["lr_changes"])
    items = [
        ("run file", run["path"] or "–"),
        (
            "optimizer",
            f"{run['optimizer']} ({run['family']} family): {_hyper(run['hyperparameters'])}",
        ),
        (
            "model",
            f"{run['model_class'] or '–'} · {run['tensors']} tensors · {run['numel']:,} parameters"
            f" · {run['groups']} param group(s)",
        ),
        ("invariance classes", invariance),
        (
            "records",
            f"{run['records']:,} records, steps {step(run['first_step'])}–{step(run['last_step'])}"
            f" · schedule {run['schedule'] or '–'}",
        ),
        ("final lr per group", f"{lr} · {changes} lr change(s) recorded"),
        (
            "skipped / non-finite",
            f"{run['skipped']} skipped steps · {run['nonfinite']} non-finite cells",
        ),
        ("logged scalars", _scalars(run["scalars"])),
        (
            "created",
            f"{run['created'] or '–'} · torch {run['torch_version'] or '–'} · stepsize_lens "
            f"{run['stepsize_lens_version'] or '–'}",
        ),
    ]
    if run.get("closed") is False:
        items.append(("note", "the lens was not closed: training still running or interrupted"))
    return items


SUMMARY_COLUMNS = [
    "tensors",
    "params",
    "‖w‖ first",
    "‖w‖ last",
    "‖w‖ grew",
    "Δθ early",
    "Δθ late",
    "Δθ fell",
    "= ‖w‖ part",
    "× lr part",
    "× grad part",
    "½ at step",
    "⅒ at step",
    "test pass",
    "projected",
]
SUMMARY_NOTE = (
    "Δθ: angular update (rad/step), mean of the first / last records; fell: early/late, the "
    "product of three parts: ‖w‖ (norm growth, (‖w‖ late/early)^k: η/‖w‖² for SGD-like "
    "updates, η/‖w‖ for adaptive ones; premature step-size decay), lr (the schedule) and grad "
    "(the scale-free gradient, the rest); "
    "½ and ⅒ at step: when Δθ fell to that fraction of its early level at constant lr; "
    "test pass: share of records passing the paper's test; projected: AdamP/SGDP projections. "
    "Tensors that start at zero (biases) are left out of a set's ‖w‖, Δθ and η/‖w‖² unless all do; "
    "–: undefined (e.g. ‖w‖ grew from 0)."
)


def summary_cells(row: dict[str, Any]) -> list[str]:
    return [
        num(row["tensors"]),
        num(row["numel"]),
        num(row["weight_norm_initial"]),
        num(row["weight_norm_final"]),
        times(row["weight_norm_ratio"]),
        num(row["angular_update_initial"]),
        num(row["angular_update_final"]),
        times(row["angular_update_decay"]),
        times(row["norm_part"]),
        times(row["lr_part"]),
        times(row["gradient_part"]),
        step(row["half_step"]),
        step(row["tenth_step"]),
        share(row["test_pass_share"]),
        share(row["projected_share"]),
    ]


def summary_tables(data: dict[str, Any]) -> list[Table]:
    tables = []
    for by in dict.fromkeys([data["by"], "class", "group"]):
        rows = [r for r in data["summary"] if r["by"] == by]
        if rows:
            tables.append(
                Table(
                    f"Summary per {SET_TITLES[by]}",
                    [SET_TITLES[by], *SUMMARY_COLUMNS],
                    [[set_name(by, r["key"]), *summary_cells(r)] for r in rows],
                    SUMMARY_NOTE,
                )
            )
    return tables


THEORY_COLUMNS = [
    "tensors",
    "Δθ measured",
    "Δθ predicted",
    "Δθ equilibrium",
    "‖w‖ measured",
    "‖w‖ predicted",
    "‖w‖ equilibrium",
]


def theory_table(data: dict[str, Any]) -> Table | None:
    """Measured against predicted per invariance class (the "theory" section), or a note that
    the optimizer has no derived prediction."""
    theory = data.get("theory")
    if not theory:
        return None
    title = f"Theory: {theory['optimizer']} ({theory['family']} family)"
    if not theory["derived"]:
        note = (
            f"{theory['note']}: no prediction is given rather than a guess (docs/design.md §5 "
            "lists the families the theory covers)."
        )
        return Table(title, ["set", *THEORY_COLUMNS], [], note)
    rows = [
        [
            r["set"],
            num(r["tensors"]),
            num(r["angle_measured"]),
            num(r["angle_predicted"]),
            num(r["angle_equilibrium"]),
            num(r["norm_measured"]),
            num(r["norm_predicted"]),
            num(r["norm_equilibrium"]),
        ]
        for r in theory["sets"]
    ]
    note = (
        f"Means over the last {theory['window']:.0%} of the steps. predicted: the per-step "
        "recurrence of the optimizer on scale-invariant tensors with noise-dominated gradients, "
        "driven by the recorded lr and weight decay (analysis.predict); equilibrium: its "
        "constant-lr fixed point at the last records' hyperparameters (–: no weight decay). "
        "Predicted far from measured means the gradients are not noise-dominated (they carry "
        "signal), or the tensors are not scale-invariant."
    )
    if theory.get("note"):
        note += f" Note: {theory['note']}."
    return Table(title, ["set", *THEORY_COLUMNS], rows, note)


def strongest_table(data: dict[str, Any]) -> Table:
    scope = data["strongest_decay_scope"]
    rows = [
        [
            r["tensor"],
            r["class"],
            "×".join(str(s) for s in r["shape"] or []) or "–",
            times(r["weight_norm_ratio"]),
            num(r["angular_update_initial"]),
            num(r["angular_update_final"]),
            times(r["angular_update_decay"]),
            times(r["norm_part"]),
            times(r["lr_part"]),
            times(r["gradient_part"]),
            step(r["half_step"]),
            step(r["tenth_step"]),
            num(r["exponent"], 2),
        ]
        for r in data["strongest_decay"]
    ]
    columns = ["tensor", "class", "shape", "‖w‖ grew", "Δθ early", "Δθ late", "Δθ fell"]
    columns += ["= ‖w‖ part", "× lr part", "× grad part", "½ at step", "⅒ at step", "exponent"]
    note = (
        "Δθ fell = its norm-growth, lr and scale-free-gradient parts (as in the summary); "
        "exponent: fitted k in Δθ ∝ step^k over the second half, where the lr was constant "
        "there (–: the schedule moved the lr, which then sets the slope): −½ the law without "
        "weight decay, 0 equilibrium, below −½ the scale-free gradient fading as well "
        "(see × grad part)."
    )
    title = f"Strongest effective-step decay ({scope} tensors)"
    return Table(title, columns, rows, note, 3)


def figures_block(figures: dict[str, list[str]], folder: Path | None) -> Figures | None:
    items = []
    for name, paths in figures.items():
        png = next((Path(p) for p in paths if str(p).endswith(".png")), None)
        if png is not None:
            items.append(FigureRef(name, FIGURE_CAPTIONS.get(name, name), png))
    return Figures("Figures", items, folder) if items else None


def report_document(data: dict[str, Any], out: Path | None = None) -> Document:
    """The blocks of a one-run report."""
    run = data["run"]
    doc = Document(f"stepsize-lens report: {run['label']}")
    if data.get("verdict"):
        doc.blocks.append(Verdict(data["verdict"]["healthy"], data["verdict"]["text"]))
    doc.blocks.append(Header("Run", header_items(run)))
    doc.blocks.append(Findings("Findings", data["findings"]))
    theory = theory_table(data)
    if theory is not None:
        doc.blocks.append(theory)
    doc.blocks.extend(summary_tables(data))
    doc.blocks.append(strongest_table(data))
    figures = figures_block(data["figures"], out)
    if figures is not None:
        doc.blocks.append(figures)
    return doc


def _last(scalars: dict[str, Any], names: tuple[str, ...]) -> str:
    for name in names:
        if name in scalars:
            return num(scalars[name]["last"])
    return "–"


def compare_document(data: dict[str, Any], out: Path | None = None) -> Document:
    """The blocks of a comparison: runs, ratio table, summaries side by side, findings."""
    from stepsize_lens.plots._series import ACCURACY_NAMES, LOSS_NAMES
    from stepsize_lens.report.compare_tables import compare_tables, headline_items

    runs = [d["run"] for d in data["runs"]]
    labels = [r["label"] for r in runs]
    ref = data["reference"]
    doc = Document("stepsize-lens compare: " + " vs ".join(labels))
    headline = headline_items(data)
    if headline:
        doc.blocks.append(Header("Headline", headline))
    doc.blocks.append(
        Table(
            "Runs",
            [
                "run",
                "optimizer",
                "hyperparameters",
                "records",
                "steps",
                "tensors",
                "loss",
                "accuracy",
            ],
            [
                [
                    r["label"],
                    f"{r['optimizer']} ({r['family']})",
                    _hyper(r["hyperparameters"]),
                    num(r["records"]),
                    f"{step(r['first_step'])}–{step(r['last_step'])}",
                    num(r["tensors"]),
                    _last(r["scalars"], LOSS_NAMES),
                    _last(r["scalars"], ACCURACY_NAMES),
                ]
                for r in runs
            ],
            "loss, accuracy: the last logged value.",
            3,
        )
    )
    doc.blocks.extend(Table(**spec) for spec in compare_tables(data, labels, ref))
    doc.blocks.append(ratio_table(data, labels, ref))
    by = data["by"]
    for set_by in dict.fromkeys([by, "class", "group"]):
        rows = []
        keys = list(
            dict.fromkeys(r["key"] for d in data["runs"] for r in d["summary"] if r["by"] == set_by)
        )
        for key in keys:
            for d in data["runs"]:
                for r in d["summary"]:
                    if r["by"] == set_by and r["key"] == key:
                        rows.append([set_name(set_by, key), d["run"]["label"], *summary_cells(r)])
        if rows:
            title = f"Summary per {SET_TITLES[set_by]}, side by side"
            columns = [SET_TITLES[set_by], "run", *SUMMARY_COLUMNS]
            doc.blocks.append(Table(title, columns, rows, SUMMARY_NOTE, 2))
    for d in data["runs"]:
        doc.blocks.append(Findings(f"Findings: {d['run']['label']}", d["findings"]))
    figures = figures_block(data["figures"], out)
    if figures is not None:
        doc.blocks.append(figures)
    return doc


def ratio_table(data: dict[str, Any], labels: list[str], ref: str) -> Table:
    """One row per (set, metric): each run's value at the last shared step, and for every
    other run its ratio to the reference there and the geometric-mean ratio over the run."""
    others = [label for label in labels if label != ref]
    columns = [SET_TITLES[data["by"]], "metric", *labels]
    for label in others:
        columns += [f"{label} ÷ ref", "(mean)"]
    cells: dict[tuple[Any, str], dict[str, dict[str, Any]]] = {}
    for row in data["comparison"]:
        cells.setdefault((row["key"], row["metric"]), {})[row["run"]] = row
    rows = []
    for (key, metric), per in cells.items():
        line = [set_name(data["by"], key), METRIC_NAMES.get(metric, metric)]
        line += [num(per[label]["value"]) if label in per else "–" for label in labels]
        for label in others:
            entry = per.get(label)
            line += (
                [times(entry["final_ratio"]), times(entry["mean_ratio"])] if entry else ["–", "–"]
            )
        rows.append(line)
    note = (
        f"Values at the last step every run shares with the reference (ref: {ref}) where every "
        "run's lr is at least 10% of its peak; ÷ ref: the ratio there; (mean): geometric mean "
        "of the ratio over those steps."
    )
    return Table(f"Side by side, ratios to {ref} (ref)", columns, rows, note, 2)
