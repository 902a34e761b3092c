"""``stepsize-lens demo``: the quick form of the digits experiment, then its comparison report.

Trains the built-in digits CNN (BatchNorm, 77k parameters) on scikit-learn's bundled
handwritten digits with SGD, SGD + momentum, SGDP, AdamW, AdamP and AdamC
(`experiments.digits`: same initial weights, same minibatches, 300 steps each, one torch
thread), each recorded with the lens; prints the scale-invariant tensors' norm growth and
effective-step decay per optimizer, then writes the comparison report
(``stepsize_lens.report.compare_report``: one HTML page and its figures) and prints where
everything is. Under a minute on two CPU cores.

At the demo's constant lr AdamC's decay factor η_t/η_max is 1, so its run is AdamW's bit for
bit, and the demo says so; ``stepsize-lens reproduce transformer`` shows where they part.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stepsize_lens.experiments.digits import DEFAULT_STEPS, train_digits_run

__all__ = ["DEFAULT_STEPS", "DemoResult", "run_demo", "train_digits_run"]


@dataclass
class DemoResult:
    """What the demo wrote: the run files (one per optimizer), the per-run numbers, the report
    page and the report's figures (name → paths)."""

    runs: list[Path]
    table: Any
    report: Path | None
    figures: dict[str, list[Path]]


def run_demo(
    out: str | Path = "stepsize_lens_out",
    steps: int | None = None,
    seed: int = 0,
    threads: int | None = 1,
    console: Any = None,
) -> DemoResult:
    """Train the six optimizers for ``steps`` (default `DEFAULT_STEPS`) steps on ``seed``,
    recording to ``out/runs/``, then write the comparison report to ``out/compare/``."""
    from rich.console import Console

    from stepsize_lens.experiments import digits
    from stepsize_lens.experiments.reproduce import training_progress
    from stepsize_lens.report import compare_report
    from stepsize_lens.table_fit import print_table

    console = console if console is not None else Console()
    steps = DEFAULT_STEPS if steps is None else steps
    out = Path(out)
    specs = digits.select()
    console.print(
        f"Training the digits CNN with {', '.join(spec.label for spec in specs)}: "
        f"{steps} steps each, seed {seed}, same weights and minibatches for all."
    )
    progress, on_run, on_step = training_progress(console, len(specs) * steps)
    with progress:
        trained = digits.train_all(
            out / "runs",
            steps=steps,
            seeds=[seed],
            threads=threads,
            on_run=on_run,
            on_step=on_step,
        )
    table = digits.runs_table(trained)
    print_table(console, digits.rich_table(digits.aggregate(table), _title(steps)))
    console.print(
        "SGD momentum grows the scale-invariant weights' norms, so their effective step "
        "(angle per update) shrinks; SGDP and AdamP keep the norms nearly constant."
    )
    console.print(
        "AdamC's row is AdamW's: at a constant lr its decay factor η_t/η_max is 1. Under a "
        "decaying schedule it decays the scale-invariant weights by η_t²λ/η_max instead of "
        "η_t·λ (stepsize-lens reproduce transformer)."
    )
    result = compare_report(
        [item.path for item in trained],
        out=out / "compare",
        format="html",
        reference=1,
        console=Console(file=_Discard()),
    )
    console.print(f"run files:  {out / 'runs'}/ ({', '.join(p.path.name for p in trained)})")
    console.print(f"report:     {result.page}")
    pngs = [path for paths in result.figures.values() for path in paths if path.suffix == ".png"]
    console.print(f"figures:    {', '.join(str(path) for path in pngs)}")
    console.print(
        f"next:       stepsize-lens report {trained[1].path}   "
        f"(or: stepsize-lens compare {out / 'runs'}/*.pt)"
    )
    return DemoResult(
        runs=[item.path for item in trained],
        table=table,
        report=result.page,
        figures=result.figures,
    )


def _title(steps: int) -> str:
    return f"Digits CNN, {steps} steps: scale-invariant tensors (the six conv weights)"


class _Discard:
    """A file that drops what is written (the report prints its own path; we print ours)."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass
