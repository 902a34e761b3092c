"""The census: fractions of tensors and of parameters per scale-invariance class.

`census` counts overall (row ``"all"``) and per module type, from a probe, a run or a table;
`print_census` and `print_probe` render a census and a probe's verdicts with rich for
``stepsize-lens inspect``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from stepsize_lens._schema import CLASSES
from stepsize_lens.invariance.cosine_test import classify_tensors
from stepsize_lens.invariance.functional_probe import ProbeResult

if TYPE_CHECKING:
    import pandas as pd

    from stepsize_lens.run import Run

CENSUS_COLUMNS: tuple[str, ...] = (
    "tensors",
    "parameters",
    "tensors_channel",
    "tensors_layer",
    "tensors_none",
    "params_channel",
    "params_layer",
    "params_none",
    "params_invariant",
)


def _class_table(source: ProbeResult | Run | pd.DataFrame, delta: float | None) -> pd.DataFrame:
    """(class, numel, module_type) per tensor from a probe result, a run or a ready table."""
    import pandas as pd

    if isinstance(source, ProbeResult):
        table = source.table
        return pd.DataFrame(
            {
                "class": table["verdict"],
                "numel": table["numel"],
                "module_type": table["module_type"],
            }
        )
    if isinstance(source, pd.DataFrame):
        missing = {"class", "numel"} - set(source.columns)
        if missing:
            raise ValueError(f"census table lacks column(s) {', '.join(sorted(missing))}")
        frame = source.copy()
        if "module_type" not in frame.columns:
            frame["module_type"] = ""
        return frame[["class", "numel", "module_type"]]
    classes = classify_tensors(source, delta)
    module_types = source.param_column("module_type") or [""] * source.num_tensors
    return pd.DataFrame(
        {
            "class": classes.to_numpy(),
            "numel": source.param_values("numel", 0.0),
            "module_type": [str(value or "") for value in module_types],
        },
        index=classes.index,
    )


def census(
    source: ProbeResult | Run | pd.DataFrame, by: str = "module_type", delta: float | None = None
) -> pd.DataFrame:
    """Fractions of tensors and of parameters per class, overall (row ``"all"``) and per ``by``.

    ``source``: a `ProbeResult`, a `Run` (classes from `classify_tensors`) or a DataFrame with
    columns ``class``, ``numel`` (and ``module_type``). Columns: ``tensors``, ``parameters``
    (counts), ``tensors_<class>`` (fraction of the scope's tensors in each class),
    ``params_<class>`` (fraction of its parameter count) and ``params_invariant`` (channel +
    layer). Rows after ``"all"`` are sorted by parameter count, largest first.
    """
    import pandas as pd

    table = _class_table(source, delta)
    if by not in table.columns:
        raise ValueError(f"cannot group a census by {by!r}")

    def summarise(part: pd.DataFrame) -> dict[str, float]:
        numel = part["numel"].astype(np.float64)
        total = float(numel.sum())
        row: dict[str, float] = {"tensors": len(part), "parameters": total}
        for cls in CLASSES:
            mask = part["class"] == cls
            row[f"tensors_{cls}"] = float(mask.mean()) if len(part) else float("nan")
        for cls in CLASSES:
            mask = part["class"] == cls
            row[f"params_{cls}"] = float(numel[mask].sum()) / total if total else float("nan")
        row["params_invariant"] = row["params_channel"] + row["params_layer"]
        return row

    rows = {"all": summarise(table)}
    grouped = sorted(table.groupby(by, sort=False), key=lambda item: -float(item[1]["numel"].sum()))
    for key, part in grouped:
        rows[str(key) or "(unknown)"] = summarise(part)
    frame = pd.DataFrame.from_dict(rows, orient="index")[list(CENSUS_COLUMNS)]
    frame["tensors"] = frame["tensors"].astype(np.int64)
    frame["parameters"] = frame["parameters"].astype(np.int64)
    frame.index.name = "scope" if by == "module_type" else by
    return frame


def _human_count(count: float) -> str:
    for limit, unit, suffix in ((1e9, 1e9, "G"), (1e6, 1e6, "M"), (1e4, 1e3, "k")):
        if count >= limit:
            return f"{count / unit:.1f}{suffix}"
    return f"{int(count):,}"


def print_census(table: pd.DataFrame, console: Any = None, title: str | None = None) -> None:
    """Render a `census` table with rich: per class, "% of parameters / % of tensors"."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    out = Table(title=title, box=box.SIMPLE_HEAD, caption="cells: % of parameters / % of tensors")
    out.add_column(table.index.name or "scope", style="bold")
    out.add_column("tensors", justify="right")
    out.add_column("params", justify="right")
    for cls in CLASSES:
        out.add_column(cls, justify="right", style="bold" if cls != "none" else None)

    def pct(value: float, digits: int) -> str:
        return "-" if value != value else f"{100 * value:.{digits}f}"

    for scope, row in table.iterrows():
        out.add_row(
            str(scope),
            f"{int(row['tensors'])}",
            _human_count(float(row["parameters"])),
            *(
                f"{pct(row[f'params_{cls}'], 1)} / {pct(row[f'tensors_{cls}'], 0)}"
                for cls in CLASSES
            ),
            end_section=scope == "all",
        )
    console.print(out)


def print_probe(result: ProbeResult, console: Any = None) -> None:
    """Render the per-tensor probe verdicts with rich (tested tensors only)."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    out = Table(title="probe verdicts (tensors with ndim >= 2)", box=box.SIMPLE_HEAD)
    out.add_column("tensor", overflow="fold", ratio=1)
    for column in ("module", "shape", "verdict", "chan Δ", "layer Δ", "eps Δ"):
        out.add_column(column, justify="left" if column == "module" else "right", no_wrap=True)

    def num(value: float) -> str:
        return "-" if value != value else f"{value:.1e}"

    for name, row in result.table[result.table["tested"]].iterrows():
        out.add_row(
            str(name),
            str(row["module_type"]),
            "x".join(str(size) for size in row["shape"]),
            str(row["verdict"]) + (" (approx.)" if row["approximate"] else ""),
            num(row["channel_change"]),
            num(row["layer_change"]),
            num(row["numerical_change"]),
        )
    console.print(out)
