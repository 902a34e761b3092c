"""``stepsize-lens reproduce``: run the paper's experiments and write tables and figures.

    reproduce("toy2d" | "toy3d" | "digits" | "schedules" | "transformer" | "all",
              out="figures", steps=None, seed=0, seeds=3)

writes into ``out``:

- ``toy2d.png``, ``toy2d.md``, ``toy2d.csv``: the 2D toy (`toys.toy2d_all`, lr 0.04, 1000 steps,
  start 90° from w*): final ‖w‖ per method beside the paper's, and the steps until the angle to
  w* stays below 0.01 rad; per-step norms and angles in ``runs/toy2d_trajectories.csv``.
- ``toy3d.png``, ``toy3d.md``, ``toy3d.csv``: the scale-invariant Rosenbrock
  (`toys.rosenbrock3d_all`, lr 3e-4, momentum 0.9, weight decay 0.05, 5000 iterations from
  (−1.5, 2)): final and largest radius, final distance of (w1/w3, w2/w3) to (1, 1) and the
  iterations until it stays within 0.01; per-iteration data in ``runs/toy3d_trajectories.csv``.
- ``digits_panel.png``, ``digits_seeds.png``, ``digits.md``, ``digits.csv``,
  ``digits_runs.csv``: the digits CNN with the five optimizers of `digits.PAPER_OPTIMIZERS` on seeds
  seed … seed+seeds−1 (1000 steps each), mean ± std over seeds; run files in ``runs/digits/``.
- ``digits_schedules.png``, ``digits_schedules.md``, ``digits_schedules.csv``: the digits CNN
  under warmup + cosine and warmup-stable-decay, and cosine with shuffled labels
  (`digits_schedules`, seed ``seed``), with `analysis.predict`'s curves beside the measured ones
  and their agreement over the second half; run files in ``runs/digits_schedules/``.
- ``transformer_probe.md``/``.csv``, ``transformer.png``, ``transformer.md``,
  ``transformer.csv``: the tiny GPT on the standard library's source (`transformer`): which
  tensors the functional probe finds scale-invariant without and with QK-norm, then AdamW,
  AdamP, AdamC and Muon under warmup + cosine (the late gradient-norm rise, predicted against
  measured); run files in ``runs/transformer/``.

``steps`` overrides every experiment's horizon. The toys are deterministic; ``seed`` moves the
digits seeds and the seed of the schedules and transformer runs. Everything in ``out`` except
``runs/`` is small enough to commit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from stepsize_lens._files import atomic_write_text
from stepsize_lens.errors import UserInputError
from stepsize_lens.report.text import markdown_table, rich_table
from stepsize_lens.table_fit import print_table

if TYPE_CHECKING:
    import pandas as pd

EXPERIMENTS = ("toy2d", "toy3d", "digits", "schedules", "transformer")
TOY2D_LR = 0.04
TOY2D_STEPS = 1000
TOY2D_TOLERANCE = 1e-2
TOY2D_PAPER = {"momentum(beta=0.9)": 2.93, "momentum(beta=0.99)": 27.87}
"""Final ‖w‖ the paper reports for momentum SGD on the 2D toy (Heo et al. 2021, Sec. 2)."""
TOY3D_STEPS = 5000
TOY3D_TOLERANCE = 1e-2


@dataclass
class Reproduction:
    """What one experiment produced: its summary ``table``, the same as ``markdown`` (from the
    formatted ``header`` and ``rows``), and the ``files`` written (figures first)."""

    experiment: str
    table: pd.DataFrame
    markdown: str
    files: list[Path] = field(default_factory=list)
    header: Sequence[str] = ()
    rows: list[list[str]] = field(default_factory=list)


def _check_steps(steps: int | None) -> None:
    if steps is not None and steps < 1:
        raise UserInputError(f"--steps must be at least 1, not {steps}")


def _save(fig: Any, stem: Path) -> Path:
    from stepsize_lens.plots import save_figure

    return save_figure(fig, stem, formats=("png",))[0]


def _toy_files(
    name: str,
    runs: dict[str, Any],
    table: pd.DataFrame,
    header: Sequence[str],
    rows: list[list[str]],
    figure: Any,
    out: Path,
) -> Reproduction:
    """Write a toy's ``figure`` (``<name>.png``), ``table`` (``<name>.md`` from the formatted
    ``header`` and ``rows``, ``<name>.csv``) and every run's per-step frame
    (``runs/<name>_trajectories.csv``)."""
    import pandas as pd

    markdown = markdown_table(header, rows)
    files = [
        _save(figure, out / name),
        atomic_write_text(out / f"{name}.md", markdown),
        atomic_write_text(out / f"{name}.csv", table.to_csv(index=False)),
        atomic_write_text(
            out / "runs" / f"{name}_trajectories.csv",
            pd.concat([run.frame() for run in runs.values()]).to_csv(index=False),
        ),
    ]
    return Reproduction(name, table, markdown, files, header, rows)


# --------------------------------------------------------------------------------------------
# 2D toy
# --------------------------------------------------------------------------------------------

TOY2D_HEADER = ("method", "β", "final ‖w‖", "paper", "steps to angle < 0.01 rad")


def toy2d_table(runs: dict[str, Any]) -> pd.DataFrame:
    """One row per method: method, label, beta, lr, steps, final_norm, paper_norm (NaN where the
    paper gives none), steps_to_optimum (first step from which the angle to w* stays below
    0.01 rad; NaN: not within the horizon)."""
    import pandas as pd

    from stepsize_lens.experiments.figures import TOY2D_LABELS

    rows = []
    for method, run in runs.items():
        reached = run.steps_to_angle(TOY2D_TOLERANCE)
        rows.append(
            {
                "method": method,
                "label": TOY2D_LABELS.get(method, method),
                "beta": run.params["beta"],
                "lr": run.params["lr"],
                "steps": int(run.params["steps"]),
                "final_norm": run.final_norm,
                "paper_norm": TOY2D_PAPER.get(method, np.nan),
                "steps_to_optimum": np.nan if reached is None else reached,
            }
        )
    return pd.DataFrame(rows)


def toy2d_rows(table: pd.DataFrame) -> list[list[str]]:
    """The formatted cells of the 2D-toy table (`TOY2D_HEADER`): norms to 2 decimals, the
    paper's value or –."""
    rows = []
    for _, row in table.iterrows():
        rows.append(
            [
                row["label"],
                "–" if row["beta"] == 0 else f"{row['beta']:g}",
                f"{row['final_norm']:.2f}",
                "–" if np.isnan(row["paper_norm"]) else f"{row['paper_norm']:.2f}",
                "not reached"
                if np.isnan(row["steps_to_optimum"])
                else f"{row['steps_to_optimum']:.0f}",
            ]
        )
    return rows


def toy2d_markdown(table: pd.DataFrame) -> str:
    """The 2D-toy table of docs/experiments.md."""
    return markdown_table(TOY2D_HEADER, toy2d_rows(table))


def reproduce_toy2d(out: str | Path, steps: int | None = None) -> Reproduction:
    """Run the 2D toy's four methods (lr `TOY2D_LR`) and write figure, tables and data."""
    from stepsize_lens.experiments.figures import toy2d_figure
    from stepsize_lens.experiments.toys import toy2d_all

    _check_steps(steps)
    runs = toy2d_all(lr=TOY2D_LR, steps=steps or TOY2D_STEPS)
    table = toy2d_table(runs)
    rows = toy2d_rows(table)
    return _toy_files("toy2d", runs, table, TOY2D_HEADER, rows, toy2d_figure(runs), Path(out))


# --------------------------------------------------------------------------------------------
# 3D toy
# --------------------------------------------------------------------------------------------

TOY3D_HEADER = (
    "method",
    "final radius",
    "largest radius",
    "final distance to (1, 1)",
    "iterations to within 0.01",
)


def _steps_within(distance: np.ndarray, tolerance: float) -> float:
    outside = np.flatnonzero(distance > tolerance)
    if outside.size == 0:
        return 0.0
    return float(outside[-1] + 1) if outside[-1] + 1 < len(distance) else np.nan


def toy3d_table(runs: dict[str, Any]) -> pd.DataFrame:
    """One row per method: method, label, lr, momentum, weight_decay, steps, final_radius,
    max_radius, final_distance (of (w1/w3, w2/w3) to (1, 1)), steps_to_optimum (first
    iteration from which that distance stays below 0.01; NaN: not within the horizon)."""
    import pandas as pd

    from stepsize_lens.experiments.figures import TOY3D_LABELS

    rows = []
    for method, run in runs.items():
        distance = np.hypot(run.path[:, 0] - 1.0, run.path[:, 1] - 1.0)
        rows.append(
            {
                "method": method,
                "label": TOY3D_LABELS.get(method, method),
                "lr": run.params["lr"],
                "momentum": run.params.get("momentum", 0.0),
                "weight_decay": run.params.get("weight_decay", 0.0),
                "steps": int(run.params["steps"]),
                "final_radius": float(run.radius[-1]),
                "max_radius": float(run.radius.max()),
                "final_distance": run.final_distance,
                "steps_to_optimum": _steps_within(distance, TOY3D_TOLERANCE),
            }
        )
    return pd.DataFrame(rows)


def toy3d_rows(table: pd.DataFrame) -> list[list[str]]:
    """The formatted cells of the 3D-toy table (`TOY3D_HEADER`)."""
    rows = []
    for _, row in table.iterrows():
        reached = row["steps_to_optimum"]
        rows.append(
            [
                row["label"],
                f"{row['final_radius']:.2f}",
                f"{row['max_radius']:.2f}",
                f"{row['final_distance']:.2g}",
                "not reached" if np.isnan(reached) else f"{reached:.0f}",
            ]
        )
    return rows


def toy3d_markdown(table: pd.DataFrame) -> str:
    """The 3D-toy table of docs/experiments.md."""
    return markdown_table(TOY3D_HEADER, toy3d_rows(table))


def reproduce_toy3d(out: str | Path, steps: int | None = None) -> Reproduction:
    """Run the scale-invariant Rosenbrock with every method and write figure, tables, data."""
    from stepsize_lens.experiments.figures import toy3d_figure
    from stepsize_lens.experiments.toys import rosenbrock3d_all

    _check_steps(steps)
    runs = rosenbrock3d_all(steps=steps or TOY3D_STEPS)
    table = toy3d_table(runs)
    rows = toy3d_rows(table)
    return _toy_files("toy3d", runs, table, TOY3D_HEADER, rows, toy3d_figure(runs), Path(out))


# --------------------------------------------------------------------------------------------
# Digits CNN
# --------------------------------------------------------------------------------------------


def training_progress(console: Any, total: int) -> tuple[Any, Callable[[str], None], Callable]:
    """A rich progress bar over ``total`` training steps; returns (progress, on_run, on_step)
    for `digits.train_all` (use the progress as a context manager)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    progress = Progress(
        TextColumn("training {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("steps"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )
    task = progress.add_task("", total=total)

    def on_run(description: str) -> None:
        progress.update(task, description=description)

    def on_step() -> None:
        progress.advance(task)

    return progress, on_run, on_step


def reproduce_digits(
    out: str | Path,
    steps: int | None = None,
    seed: int = 0,
    seeds: int = 3,
    optimizers: Sequence[str] | None = None,
    threads: int | None = 1,
    console: Any = None,
) -> Reproduction:
    """Train every optimizer on seeds seed … seed+seeds−1 and write figures and tables."""
    from stepsize_lens.experiments import digits
    from stepsize_lens.experiments.figures import digits_seeds_figure
    from stepsize_lens.plots import paper_panel
    from stepsize_lens.run import load

    _check_steps(steps)
    if seeds < 1:
        raise UserInputError(f"--seeds must be at least 1, not {seeds}")
    out = Path(out)
    steps = steps or digits.FULL_STEPS
    seed_list = list(range(seed, seed + seeds))
    specs = digits.select(digits.PAPER_OPTIMIZERS if optimizers is None else optimizers)
    progress, on_run, on_step = training_progress(console, len(specs) * len(seed_list) * steps)
    with progress:
        trained = digits.train_all(
            out / "runs" / "digits",
            steps=steps,
            seeds=seed_list,
            optimizers=[spec.name for spec in specs],
            threads=threads,
            on_run=on_run,
            on_step=on_step,
        )
    per_run = digits.runs_table(trained)
    summary = digits.aggregate(per_run)
    header, rows = digits.table_header(), digits.table_rows(summary)
    markdown = markdown_table(header, rows)
    loaded = {item.path: load(item.path) for item in trained}
    by_label: dict[str, list[Any]] = {}
    for item in trained:
        by_label.setdefault(item.label, []).append(loaded[item.path])
    first = [loaded[item.path] for item in trained if item.seed == seed_list[0]]
    files = [
        _save(paper_panel(first), out / "digits_panel"),
        _save(digits_seeds_figure(by_label), out / "digits_seeds"),
        atomic_write_text(out / "digits.md", markdown),
        atomic_write_text(out / "digits.csv", summary.to_csv(index=False)),
        atomic_write_text(out / "digits_runs.csv", per_run.to_csv(index=False)),
    ]
    return Reproduction("digits", summary, markdown, files, header, rows)


# --------------------------------------------------------------------------------------------
# Digits under decaying schedules
# --------------------------------------------------------------------------------------------


def reproduce_schedules(
    out: str | Path,
    steps: int | None = None,
    seed: int = 0,
    threads: int | None = 1,
    console: Any = None,
) -> Reproduction:
    """The digits CNN under warmup + cosine, WSD and cosine with shuffled labels
    (`digits_schedules`), predictions overlaid: ``digits_schedules.png``, ``.md``, ``.csv``;
    run files in ``runs/digits_schedules/``."""
    from stepsize_lens.experiments import digits, digits_schedules

    _check_steps(steps)
    out = Path(out)
    steps = steps or digits.FULL_STEPS
    variants = digits_schedules.VARIANTS
    total = sum(len(digits_schedules.variant_optimizers(v)) for v in variants) * steps
    progress, on_run, on_step = training_progress(console, total)
    with progress:
        trained = digits_schedules.train_all(
            out / "runs" / "digits_schedules",
            steps,
            seed=seed,
            threads=threads,
            on_run=on_run,
            on_step=on_step,
        )
    return schedules_files(trained, out)


def schedules_files(trained: Sequence[Any], out: str | Path) -> Reproduction:
    """The schedules experiment's table, figure and files from its trained runs
    (`digits_schedules.ScheduleRun`)."""
    from stepsize_lens.experiments import digits_schedules
    from stepsize_lens.experiments.figures import schedules_figure
    from stepsize_lens.experiments.predicted import predicted_series
    from stepsize_lens.run import load

    out = Path(out)
    table = digits_schedules.runs_table(trained)
    header, rows = digits_schedules.HEADER, digits_schedules.table_rows(table)
    markdown = markdown_table(header, rows)
    runs: dict[str, dict[str, Any]] = {}
    predicted: dict[str, dict[str, Any]] = {}
    for item in trained:
        run = load(item.path)
        runs.setdefault(item.variant.label, {})[item.label] = run
        curves = {metric: curve[:2] for metric, curve in predicted_series(run).items()}
        predicted.setdefault(item.variant.label, {})[item.label] = curves
    files = [
        _save(schedules_figure(runs, predicted), out / "digits_schedules"),
        atomic_write_text(out / "digits_schedules.md", markdown),
        atomic_write_text(out / "digits_schedules.csv", table.to_csv(index=False)),
    ]
    return Reproduction("schedules", table, markdown, files, header, rows)


# --------------------------------------------------------------------------------------------
# A tiny GPT on the standard library's source
# --------------------------------------------------------------------------------------------


def reproduce_transformer(
    out: str | Path,
    steps: int | None = None,
    seed: int = 0,
    threads: int | None = 1,
    console: Any = None,
) -> list[Reproduction]:
    """The probe census without and with QK-norm (``transformer_probe.md``/``.csv``), then
    AdamW, AdamP, AdamC and Muon on the tiny GPT under warmup + cosine (``transformer.png``,
    ``transformer.md``, ``transformer.csv``; run files in ``runs/transformer/``)."""
    from dataclasses import replace

    from stepsize_lens.experiments import transformer
    from stepsize_lens.experiments.digits import torch_threads

    _check_steps(steps)
    out = Path(out)
    config = transformer.TransformerConfig(seed=seed)
    if steps is not None:
        config = replace(config, steps=steps)
    config = config.checked()
    with torch_threads(threads):
        census = transformer.probe_census(config)
    census_rows = transformer.probe_rows(census)
    census_md = markdown_table(transformer.PROBE_HEADER, census_rows)
    census_files = [
        atomic_write_text(out / "transformer_probe.md", census_md),
        atomic_write_text(out / "transformer_probe.csv", census.to_csv(index=False)),
    ]
    probe_result = Reproduction(
        "transformer_probe", census, census_md, census_files, transformer.PROBE_HEADER, census_rows
    )
    specs = transformer.select()
    progress, on_run, on_step = training_progress(console, len(specs) * config.steps)
    with progress:
        trained = transformer.train_all(
            out / "runs" / "transformer",
            config,
            threads=threads,
            on_run=on_run,
            on_step=on_step,
        )
    return [probe_result, transformer_files(trained, config, out)]


def transformer_files(trained: Sequence[Any], config: Any, out: str | Path) -> Reproduction:
    """The transformer comparison's table, figure and files from its trained runs
    (`transformer.TransformerRun`) and their `transformer.TransformerConfig`."""
    from stepsize_lens.experiments import transformer
    from stepsize_lens.experiments.figures import transformer_figure
    from stepsize_lens.run import load

    out = Path(out)
    table = transformer.runs_table(trained)
    header, rows = transformer.table_header(), transformer.table_rows(table)
    markdown = markdown_table(header, rows)
    runs = {item.label: load(item.paths[0]) for item in trained}
    series = {label: transformer.invariant_series(run) for label, run in runs.items()}
    predicted = {
        label: {metric: curve[:2] for metric, curve in transformer.predicted_series(run).items()}
        for label, run in runs.items()
    }
    figure = transformer_figure(
        series,
        predicted,
        windows=(transformer.MID, transformer.END),
        title=(
            f"Tiny GPT (QK-norm) on the standard library's source, warmup + cosine, "
            f"{config.steps} steps: means over q and k"
        ),
    )
    files = [
        _save(figure, out / "transformer"),
        atomic_write_text(out / "transformer.md", markdown),
        atomic_write_text(out / "transformer.csv", table.to_csv(index=False)),
    ]
    return Reproduction("transformer", table, markdown, files, header, rows)


# --------------------------------------------------------------------------------------------
# All of it, with terminal output
# --------------------------------------------------------------------------------------------


def _rich_table(reproduction: Reproduction, title: str) -> Any:
    from stepsize_lens.experiments.digits import caption as digits_caption
    from stepsize_lens.experiments.transformer import CAPTION as TRANSFORMER_CAPTION

    caption = None
    if reproduction.experiment == "digits":
        seeds = reproduction.table["seeds"]
        caption = digits_caption(int(seeds.max()) if len(seeds) else 1)
    elif reproduction.experiment == "transformer":
        caption = TRANSFORMER_CAPTION
    elif reproduction.experiment == "schedules":
        from stepsize_lens.experiments.digits_schedules import CAPTION as SCHEDULES_CAPTION

        caption = SCHEDULES_CAPTION
    return rich_table(reproduction.header, reproduction.rows, title, caption)


TITLES = {
    "toy2d": "2D toy: −cos(w, w*), lr 0.04, from ‖w0‖ = 1",
    "toy3d": "3D scale-invariant Rosenbrock",
    "digits": "Digits CNN: scale-invariant tensors, mean ± std over seeds",
    "schedules": "Digits CNN under decaying schedules: the theory against the measurements",
    "transformer_probe": "Tiny GPT: which 2-D tensors the functional probe finds scale-invariant",
    "transformer": "Tiny GPT, warmup + cosine: the late gradient-norm rise on q and k",
}


def reproduce(
    experiment: str,
    out: str | Path = "figures",
    steps: int | None = None,
    seed: int = 0,
    seeds: int = 3,
    threads: int | None = 1,
    console: Any = None,
) -> list[Reproduction]:
    """Run ``experiment`` (toy2d, toy3d, digits or all), write its files into ``out`` and print
    each summary table and the files written."""
    if experiment not in (*EXPERIMENTS, "all"):
        raise UserInputError(
            f"experiment must be one of {', '.join(EXPERIMENTS)}, all; not {experiment!r}"
        )
    _check_steps(steps)
    if seeds < 1:
        raise UserInputError(f"--seeds must be at least 1, not {seeds}")
    if console is None:
        from rich.console import Console

        console = Console()
    names = EXPERIMENTS if experiment == "all" else (experiment,)
    results = []
    for name in names:
        if name == "toy2d":
            produced = [reproduce_toy2d(out, steps)]
        elif name == "toy3d":
            produced = [reproduce_toy3d(out, steps)]
        elif name == "digits":
            produced = [
                reproduce_digits(
                    out, steps, seed=seed, seeds=seeds, threads=threads, console=console
                )
            ]
        elif name == "schedules":
            produced = [
                reproduce_schedules(out, steps, seed=seed, threads=threads, console=console)
            ]
        else:
            produced = reproduce_transformer(
                out, steps, seed=seed, threads=threads, console=console
            )
        for result in produced:
            title = TITLES[result.experiment]
            if result.experiment in ("digits", "schedules", "transformer"):
                title += f" ({int(result.table['steps'].max())} steps)"
            print_table(console, _rich_table(result, title))
            console.print("wrote " + ", ".join(str(path) for path in result.files))
            results.append(result)
    return results
