"""The figures of a report, drawn and saved one by one behind a progress bar."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from stepsize_lens.run import Run

Drawer = Callable[[], "Figure"]


def report_figures(
    run: Run,
    by: str,
    classes: pd.Series,
    delta: float | None,
    forecasted: Any = None,
) -> list[tuple[str, Drawer]]:
    """(name, drawer) for the figures of a one-run report, in page order. ``forecasted``:
    `analysis.forecast` for the theory figure, if already computed."""
    from stepsize_lens import plots

    return [
        ("paper_panel", lambda: plots.paper_panel(run, classes=classes)),
        ("norm_growth", lambda: plots.norm_growth(run, by=by, classes=classes)),
        ("effective_step", lambda: plots.effective_step(run, by=by, classes=classes)),
        ("decay_split", lambda: plots.decay_split(run, classes=classes)),
        ("theory", lambda: plots.theory_overlay(run, classes=classes, forecasted=forecasted)),
        ("cos_threshold", lambda: plots.cos_threshold(run, delta=delta)),
        ("heatmap", lambda: plots.step_heatmap(run, classes=classes)),
    ]


def compare_figures(
    runs: Sequence[Run], by: str, classes: pd.Series | None
) -> list[tuple[str, Drawer]]:
    """(name, drawer) for the overlaid figures of a comparison."""
    from stepsize_lens import plots

    return [
        ("paper_panel", lambda: plots.paper_panel(runs, classes=classes)),
        ("norm_growth", lambda: plots.norm_growth(runs, by=by, classes=classes)),
        ("effective_step", lambda: plots.effective_step(runs, by=by, classes=classes)),
    ]


@contextlib.contextmanager
def progress(console: Any, total: int, description: str) -> Iterator[Callable[[str], None]]:
    """A transient rich progress bar on ``console`` (hidden when it is not a terminal); yields
    ``advance(next_description)``."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    bar = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )
    with bar:
        task = bar.add_task(description, total=total)

        def advance(next_description: str) -> None:
            bar.update(task, advance=1, description=next_description)

        yield advance


def draw_and_save(
    drawers: list[tuple[str, Drawer]],
    out: Path,
    formats: Sequence[str],
    advance: Callable[[str], None],
) -> dict[str, list[Path]]:
    """Draw each figure, save it as ``out/<name>.<format>``, report progress; name → paths."""
    from stepsize_lens.plots import save_figure

    saved = {}
    for i, (name, draw) in enumerate(drawers):
        saved[name] = save_figure(draw(), out / name, formats)
        following = drawers[i + 1][0] if i + 1 < len(drawers) else "done"
        advance(f"drawing {following}")
    return saved
