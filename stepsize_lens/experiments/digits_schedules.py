"""The digits CNN under decaying lr schedules, with the theory's predictions beside measurements.

The digits experiment (`digits`: same model, data, hyperparameters and seed 0, 1,000 steps) run
under warmup + cosine and warmup-stable-decay (`lr_schedules`, warmup = a twentieth of the run,
WSD decaying over the last fifth), each optimizer of `OPTIMIZERS`, plus a noise-dominated
variant: cosine with the training labels shuffled (`digits.train_digits_run`'s
``shuffle_labels``), where nothing generalises and the gradients are noise, the regime the
theory's mean-field recurrence describes.

For every run, over its scale-invariant tensors (the paper's test on the recorded gradients):
`analysis.predict` integrates each optimizer family's per-step recurrence along the recorded
lr and weight decay from the first record's ‖w‖, driven by the measured scale-free gradient
‖g‖·‖w‖; `run_metrics` compares predicted and measured angular update and ‖w‖ over the second
half of the run (`predicted.agreement`, a ratio of means).

With these hyperparameters η·λ·steps is 1e-2 or less, so weight decay barely acts within the
run and AdamC stays within a hair of AdamW; the transformer experiment
(`transformer`, η·λ·steps = 4.5) is where their decays part.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stepsize_lens.errors import UserInputError

OPTIMIZERS = ("sgd_momentum", "sgdp", "adamw", "adamp", "adamc")
"""Names of `digits.OPTIMIZERS` trained under the schedules."""
SHUFFLED_OPTIMIZERS = ("sgd_momentum", "adamw", "adamc")
"""Names trained with shuffled labels (cosine): the issue's check on noise-dominated gradients."""


@dataclass(frozen=True)
class Variant:
    """One training setting: the lr schedule and whether the labels are shuffled."""

    schedule: str
    shuffled: bool = False

    @property
    def name(self) -> str:
        return self.schedule + ("_shuffled" if self.shuffled else "")

    @property
    def label(self) -> str:
        words = {"cosine": "warmup + cosine", "wsd": "warmup-stable-decay"}[self.schedule]
        return words + (", shuffled labels" if self.shuffled else "")


VARIANTS = (Variant("cosine"), Variant("wsd"), Variant("cosine", shuffled=True))


def variant_optimizers(variant: Variant) -> tuple[str, ...]:
    return SHUFFLED_OPTIMIZERS if variant.shuffled else OPTIMIZERS


@dataclass(frozen=True)
class ScheduleRun:
    """One trained run: variant, optimizer name and label, run file."""

    variant: Variant
    optimizer: str
    label: str
    path: Path


def train_all(
    folder: str | Path,
    steps: int,
    seed: int = 0,
    variants: Sequence[Variant] = VARIANTS,
    threads: int | None = 1,
    on_run: Callable[[str], None] | None = None,
    on_step: Callable[[], None] | None = None,
) -> list[ScheduleRun]:
    """Train every variant's optimizers into ``folder/<variant>/<name>_seed<seed>.pt``."""
    from stepsize_lens.experiments import digits

    if steps < 1:
        raise UserInputError(f"--steps must be at least 1, not {steps}")
    done = []
    for variant in variants:
        trained = digits.train_all(
            Path(folder) / variant.name,
            steps=steps,
            seeds=[seed],
            optimizers=variant_optimizers(variant),
            threads=threads,
            on_run=None if on_run is None else _described(on_run, variant),
            on_step=on_step,
            lr_schedule=variant.schedule,
            shuffle_labels=variant.shuffled,
        )
        done += [ScheduleRun(variant, t.optimizer, t.label, t.path) for t in trained]
    return done


def _described(on_run: Callable[[str], None], variant: Variant) -> Callable[[str], None]:
    return lambda description: on_run(f"{description}, {variant.label}")


METRICS = ("test_accuracy", "norm_growth", "angle_agreement", "norm_agreement")


def run_metrics(item: ScheduleRun) -> dict[str, float]:
    """``test_accuracy`` (last logged), ``norm_growth`` (‖w‖ final ÷ initial, mean over the
    scale-invariant tensors), ``angle_agreement`` and ``norm_agreement`` (predicted ÷ measured
    angular update and ‖w‖ over the second half; NaN without a prediction)."""
    from stepsize_lens.analysis import last_logged
    from stepsize_lens.experiments.digits import invariant_summary
    from stepsize_lens.experiments.predicted import agreement, predicted_series
    from stepsize_lens.run import load

    run = load(item.path)
    curves = predicted_series(run)

    def agrees(metric: str) -> float:
        return agreement(curves[metric]) if metric in curves else float("nan")

    return {
        "test_accuracy": last_logged(run, "test_accuracy"),
        "norm_growth": float(invariant_summary(run)["weight_norm_ratio"]),
        "angle_agreement": agrees("angular_update"),
        "norm_agreement": agrees("weight_norm"),
    }


def runs_table(runs: Sequence[ScheduleRun]) -> Any:
    """One row per run: variant, schedule, shuffled, optimizer, label, steps, then `METRICS`."""
    import pandas as pd

    from stepsize_lens.run import load

    rows = []
    for item in runs:
        run = load(item.path)
        rows.append(
            {
                "variant": item.variant.name,
                "schedule": item.variant.schedule,
                "shuffled": item.variant.shuffled,
                "optimizer": item.optimizer,
                "label": item.label,
                "steps": int(run.steps[-1]) if run.num_records else 0,
                **run_metrics(item),
            }
        )
    return pd.DataFrame(rows)


HEADER = (
    "schedule",
    "optimizer",
    "test accuracy",
    "‖w‖ grew",
    "Δθ predicted ÷ measured",
    "‖w‖ predicted ÷ measured",
)


def table_rows(table: Any) -> list[list[str]]:
    """Formatted cells of `runs_table` (`HEADER`); shuffled-label runs have no test accuracy
    worth showing (chance)."""
    rows = []
    for _, row in table.iterrows():
        variant = next(v for v in VARIANTS if v.name == row["variant"])
        accuracy = "chance" if row["shuffled"] else f"{row['test_accuracy']:.1%}"
        rows.append(
            [
                variant.label,
                str(row["label"]),
                accuracy,
                f"{row['norm_growth']:.3f}×",
                _ratio(row["angle_agreement"]),
                _ratio(row["norm_agreement"]),
            ]
        )
    return rows


def _ratio(value: float) -> str:
    return "–" if value != value else f"{value:.2f}"


CAPTION = (
    "Over the scale-invariant tensors (the six conv weights), seed 0: predicted ÷ measured = "
    "mean of stepsize_lens.analysis.predict's curve ÷ mean of the measured one over the second "
    "half of the run. ‖w‖ grew = final ÷ initial mean norm."
)
