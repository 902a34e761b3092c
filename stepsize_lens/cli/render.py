"""Rich tables for ``stepsize-lens inspect``: a census, a probe's per-tensor classes, both.

The numbers come from `stepsize_lens.invariance` (`census`, `probe`); this module only lays
them out. Tables go through `stepsize_lens.table_fit.print_table`: piped output keeps every
column at full width, a narrow terminal gets the table split into parts that fit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich import box
from rich.console import Console
from rich.table import Table

from stepsize_lens._sanitize import rich_text
from stepsize_lens._schema import CLASSES, INVARIANT_CLASSES
from stepsize_lens.table_fit import print_table

if TYPE_CHECKING:
    import pandas as pd

    from stepsize_lens.invariance import ProbeResult


def _human_count(count: float) -> str:
    for limit, unit, suffix in ((1e9, 1e9, "G"), (1e6, 1e6, "M"), (1e4, 1e3, "k")):
        if count >= limit:
            return f"{count / unit:.1f}{suffix}"
    return f"{int(count):,}"


def print_census(table: pd.DataFrame, console: Any = None, title: str | None = None) -> None:
    """Render a `census` table with rich: per class, "% of parameters / % of tensors"."""
    console = console or Console()
    out = Table(title=title, box=box.SIMPLE_HEAD, caption="cells: % of parameters / % of tensors")
    out.add_column(table.index.name or "scope", style="bold")
    out.add_column("tensors", justify="right")
    out.add_column("params", justify="right")
    for cls in CLASSES:
        out.add_column(cls, justify="right", style="bold" if cls in INVARIANT_CLASSES else None)

    def pct(value: float, digits: int) -> str:
        return "-" if value != value else f"{100 * value:.{digits}f}"

    for scope, row in table.iterrows():
        out.add_row(
            rich_text(str(scope)),
            f"{int(row['tensors'])}",
            _human_count(float(row["parameters"])),
            *(
                f"{pct(row[f'params_{cls}'], 1)} / {pct(row[f'tensors_{cls}'], 0)}"
                for cls in CLASSES
            ),
            end_section=scope == "all",
        )
    print_table(console, out)


def print_probe(result: ProbeResult, console: Any = None) -> None:
    """Render the per-tensor probe verdicts (classes) with rich (tested tensors only)."""
    console = console or Console()
    out = Table(title="probe verdicts (tensors with ndim >= 2)", box=box.SIMPLE_HEAD)
    out.add_column("tensor", overflow="fold", ratio=1)
    for column in ("module", "shape", "verdict", "chan Δ", "layer Δ", "eps Δ"):
        out.add_column(column, justify="left" if column == "module" else "right", no_wrap=True)

    def num(value: float) -> str:
        return "-" if value != value else f"{value:.1e}"

    for name, row in result.table[result.table["tested"]].iterrows():
        out.add_row(
            rich_text(str(name)),
            rich_text(str(row["module_type"])),
            "x".join(str(size) for size in row["shape"]),
            str(row["verdict"]) + (" (approx.)" if row["approximate"] else ""),
            num(row["channel_change"]),
            num(row["layer_change"]),
            num(row["numerical_change"]),
        )
    print_table(console, out)


def print_inspection(
    result: ProbeResult, spec: str = "", tensors: bool = False, console: Any = None
) -> None:
    """Print the census of a probe (and with ``tensors=True`` every verdict) for ``inspect``."""
    from stepsize_lens.invariance import STRUCTURAL_EPS, census

    console = console or Console()
    if tensors:
        print_probe(result, console)
    table = census(result)
    title = f"scale-invariance census of {rich_text(spec)}" if spec else "scale-invariance census"
    print_census(table, console, title=title)
    overall = table.loc["all"]
    invariant_tensors = sum(overall[f"tensors_{cls}"] for cls in INVARIANT_CLASSES)
    approximate = result.table.index[result.table["approximate"]].tolist()
    console.print(
        f"scale-invariant: {100 * overall['params_invariant']:.1f}% of parameters, "
        f"{100 * invariant_tensors:.1f}% of tensors "
        f"(structural verdicts: float64, eps -> {STRUCTURAL_EPS:g}, tolerance "
        f"{result.tolerance:g}; 1-D tensors are not tested)."
    )
    if approximate:
        example = rich_text(str(approximate[0]))
        console.print(
            f"{len(approximate)} invariant tensor(s) change the output by more than "
            f"{result.numerical_tolerance:g} under the real eps, e.g. {example}."
        )
