"""Norm growth and effective-step decay during real training (docs/design.md §6), at laptop scale.

The paper trained ResNet-18 on ImageNet; here `models.digits_cnn` (a small ResNet with
BatchNorm, 77k parameters, six scale-invariant conv weights) learns scikit-learn's bundled 8x8
handwritten digits (1,348 training and 449 test images, no download). Every optimizer of
`OPTIMIZERS` trains from the same initial weights on the same minibatch order for a given seed,
recorded with the lens, which also logs the training loss every step and the test accuracy
every 50 steps:

====================  ==========================================================
``sgd``               SGD, lr 0.1, weight decay 1e-4
``sgd_momentum``      SGD, lr 0.1, momentum 0.9, weight decay 1e-4
``sgdp``              SGDP, lr 0.1, momentum 0.9, weight decay 1e-4 (wd_ratio 0.1)
``adamw``             AdamW, lr 1e-3, betas (0.9, 0.999), weight decay 1e-2
``adamp``             AdamP, lr 1e-3, betas (0.9, 0.999), weight decay 1e-2 (wd_ratio 0.1)
``adamc``             AdamC, lr 1e-3, betas (0.9, 0.999), weight decay 1e-2
====================  ==========================================================

(the paper's ImageNet choices for SGD and AdamW, all at the same lr within a family; AdamC
equals AdamW at a constant lr, so the paper's comparison, `PAPER_OPTIMIZERS`, leaves it out).
``lr_schedule`` adds warmup + cosine or warmup-stable-decay (`lr_schedules`). Per run,
`run_metrics` reads off, over the scale-invariant tensors (channel or layer class,
`invariance.classify_tensors`) and from `analysis.summarize`:

- ``norm_growth`` = ‖w‖_final / ‖w‖_initial of the mean norm over those tensors;
- ``angular_decay`` = Δθ_early / Δθ_late, the angular update (the effective step) averaged over
  the first and the last ``window`` records (``window`` = max(1, min(50, records // 20)));
- ``effective_lr_decay`` = the same ratio for η/‖w‖² (with a constant lr, purely the norm's doing);
- ``half_step``: the first step at which the angular update (trailing mean over ``window``
  records) fell to half its early level (NaN: never) — how *fast* the effective step decays;
- ``test_accuracy`` (last logged) and ``loss`` (mean of the last 20 logged losses).

`aggregate` gives mean ± sample std over seeds per optimizer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from stepsize_lens.errors import UserInputError
from stepsize_lens.experiments.specs import select as select_specs

if TYPE_CHECKING:
    import pandas as pd

    from stepsize_lens.run import Run

DEFAULT_STEPS = 300
"""Steps of one quick run (the demo): about 14 epochs at batch 64."""
FULL_STEPS = 1000
"""Steps of one run of ``stepsize-lens reproduce digits``: about 47 epochs."""
SEEDS = 3
EVAL_EVERY = 50
METRICS = (
    "test_accuracy",
    "norm_growth",
    "effective_lr_decay",
    "angular_decay",
    "half_step",
    "loss",
)


def train_digits_run(
    path: Path,
    make_optimizer: Callable[[Any], torch.optim.Optimizer],
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
    label: str | None = None,
    schedule=None,
    batch_size: int = 64,
    progress: Callable[[], None] | None = None,
    lr_schedule: str = "constant",
    warmup: int | None = None,
    shuffle_labels: bool = False,
) -> Path:
    """Train `models.digits_cnn` for ``steps`` steps with the lens attached; return the run path.

    ``seed`` fixes the initial weights (``torch.manual_seed``) and the minibatch order; the
    train/test split is always the one of ``datasets.digits(seed=0)``. ``make_optimizer(params)
    -> Optimizer``. ``schedule``: when the lens records. ``lr_schedule``: constant, cosine or
    wsd (`lr_schedules`, a torch ``LambdaLR`` on the optimizer's lr; ``warmup`` steps, default
    `warmup_steps`). ``shuffle_labels``: train on the training images with their labels
    permuted at random (seeded, the same for every seed and optimizer): nothing generalises,
    so the gradients are dominated by noise. The loss is logged every step, the test accuracy
    every 50 steps and at the last; ``progress()`` is called after every step.
    """
    import stepsize_lens
    from stepsize_lens.experiments.datasets import batches, digits
    from stepsize_lens.experiments.lr_schedules import lr_scheduler
    from stepsize_lens.experiments.models import digits_cnn

    torch.manual_seed(seed)
    data = digits(seed=0)
    labels = data.y_train
    if shuffle_labels:
        labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]
    model = digits_cnn()
    optimizer = make_optimizer(model.parameters())
    warmup = warmup_steps(steps) if warmup is None else warmup
    scheduler = lr_scheduler(optimizer, lr_schedule, steps, warmup)
    # the experiment's own output: running it again regenerates the run (overwrite=True)
    with stepsize_lens.attach(
        model, optimizer, path=path, schedule=schedule, label=label, overwrite=True
    ) as lens:
        for step, (x, y) in enumerate(batches(data.x_train, labels, batch_size, steps, seed), 1):
            model.train()
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            lens.log(loss=loss)
            if step % EVAL_EVERY == 0 or step == steps:
                model.eval()
                with torch.no_grad():
                    accuracy = (model(data.x_test).argmax(1) == data.y_test).float().mean()
                lens.log(test_accuracy=accuracy)
            if progress is not None:
                progress()
    return Path(path)


def warmup_steps(steps: int) -> int:
    """Warmup of the decaying schedules: a twentieth of the run (50 of 1,000 steps)."""
    return steps // 20


# --------------------------------------------------------------------------------------------
# The optimizers compared
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OptimizerSpec:
    """One optimizer of the comparison: ``name`` (file stem), ``label`` (legend), ``build``."""

    name: str
    label: str
    build: Callable[[Any], torch.optim.Optimizer]


def _sgd(params: Any) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.1, weight_decay=1e-4)


def _sgd_momentum(params: Any) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4)


def _sgdp(params: Any) -> torch.optim.Optimizer:
    from stepsize_lens.optim import SGDP

    return SGDP(params, lr=0.1, momentum=0.9, weight_decay=1e-4)


def _adamw(params: Any) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-2)


def _adamp(params: Any) -> torch.optim.Optimizer:
    from stepsize_lens.optim import AdamP

    return AdamP(params, lr=1e-3, weight_decay=1e-2)


def _adamc(params: Any) -> torch.optim.Optimizer:
    from stepsize_lens.optim import AdamC

    return AdamC(params, lr=1e-3, weight_decay=1e-2)


OPTIMIZERS: tuple[OptimizerSpec, ...] = (
    OptimizerSpec("sgd", "SGD", _sgd),
    OptimizerSpec("sgd_momentum", "SGD momentum 0.9", _sgd_momentum),
    OptimizerSpec("sgdp", "SGDP", _sgdp),
    OptimizerSpec("adamw", "AdamW", _adamw),
    OptimizerSpec("adamp", "AdamP", _adamp),
    OptimizerSpec("adamc", "AdamC", _adamc),
)
OPTIMIZER_NAMES = tuple(spec.name for spec in OPTIMIZERS)
PAPER_OPTIMIZERS = ("sgd", "sgd_momentum", "sgdp", "adamw", "adamp")
"""The paper's comparison at a constant lr (``reproduce digits``). AdamC is left out there: at a
constant lr its decay factor η_t/η_max is 1 and it *is* AdamW, bit for bit; the demo keeps it
to show exactly that, ``reproduce schedules`` shows where it differs."""


def select(names: Sequence[str] | None = None) -> list[OptimizerSpec]:
    """The specs for ``names`` (default: all of `OPTIMIZERS`, in their order)."""
    return select_specs(OPTIMIZERS, names)


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(threads)`` (None: leave as is).

    One thread is the default of the experiments: this 77k-parameter CNN gains little from a
    second thread, and on a machine whose cores are busy, two threads per process slow training
    down many times over (OpenMP workers wait for each other)."""
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------------------------
# Training the comparison
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DigitsRun:
    """One trained run: optimizer name and label, seed, run file."""

    optimizer: str
    label: str
    seed: int
    path: Path


def run_path(folder: Path, optimizer: str, seed: int) -> Path:
    return Path(folder) / f"{optimizer}_seed{seed}.pt"


def train_all(
    folder: str | Path,
    steps: int = FULL_STEPS,
    seeds: Sequence[int] = (0, 1, 2),
    optimizers: Sequence[str] | None = None,
    batch_size: int = 64,
    threads: int | None = 1,
    on_run: Callable[[str], None] | None = None,
    on_step: Callable[[], None] | None = None,
    lr_schedule: str = "constant",
    shuffle_labels: bool = False,
) -> list[DigitsRun]:
    """Train every optimizer (`OPTIMIZERS`, or the ``optimizers`` named) on every seed, one after
    the other, each recorded to ``folder/<name>_seed<seed>.pt`` with the spec's label; returns
    them seed by seed.

    ``on_run(description)`` is called before each run, ``on_step()`` after every step.
    ``threads``: torch threads while training (`torch_threads`). ``lr_schedule`` and
    ``shuffle_labels``: as in `train_digits_run`."""
    if steps < 1:
        raise UserInputError(f"--steps must be at least 1, not {steps}")
    if not seeds:
        raise UserInputError("need at least one seed")
    specs = select(optimizers)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    done: list[DigitsRun] = []
    with torch_threads(threads):
        for seed in seeds:
            for spec in specs:
                if on_run is not None:
                    on_run(f"{spec.label}, seed {seed}")
                path = train_digits_run(
                    run_path(folder, spec.name, seed),
                    spec.build,
                    steps=steps,
                    seed=seed,
                    label=spec.label,
                    batch_size=batch_size,
                    progress=on_step,
                    lr_schedule=lr_schedule,
                    shuffle_labels=shuffle_labels,
                )
                done.append(DigitsRun(spec.name, spec.label, seed, path))
    return done


# --------------------------------------------------------------------------------------------
# Numbers per run and over seeds
# --------------------------------------------------------------------------------------------


def invariant_summary(run: Run) -> pd.Series:
    """`analysis.summarize` over the scale-invariant tensors of ``run`` taken as one set (channel
    and layer class together, ``by="invariant"``). Raises ValueError when the run has none."""
    from stepsize_lens.analysis import summarize

    summary = summarize(run, by="invariant")
    if summary.empty:
        raise ValueError(f"run {run.label!r} has no scale-invariant tensor")
    return summary.set_index("key").loc["invariant"]


def run_metrics(run: Run) -> dict[str, float]:
    """The numbers of one run (module docstring): test_accuracy, norm_growth,
    effective_lr_decay, angular_decay, half_step, loss."""
    from stepsize_lens.analysis import last_logged

    summary = invariant_summary(run)
    scalars = run.scalars
    loss = scalars.loc[scalars["name"] == "loss", "value"]
    return {
        "test_accuracy": last_logged(run, "test_accuracy"),
        "norm_growth": float(summary["weight_norm_ratio"]),
        "angular_decay": float(summary["angular_update_decay"]),
        "effective_lr_decay": float(summary["effective_lr_decay"]),
        "half_step": _float(summary["half_step"]),
        "loss": float(loss.iloc[-20:].mean()) if len(loss) else float("nan"),
    }


def _float(value: Any) -> float:
    import pandas as pd

    return float("nan") if pd.isna(value) else float(value)


def runs_table(runs: Sequence[DigitsRun]) -> pd.DataFrame:
    """One row per run: optimizer, label, seed, steps, then `METRICS`."""
    import pandas as pd

    from stepsize_lens.run import load

    rows = []
    for item in runs:
        run = load(item.path)
        rows.append(
            {
                "optimizer": item.optimizer,
                "label": item.label,
                "seed": item.seed,
                "steps": int(run.steps[-1]) if run.num_records else 0,
                **run_metrics(run),
            }
        )
    return pd.DataFrame(rows)


def aggregate(table: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample std (ddof=1; NaN for one seed) of `METRICS` over seeds, per optimizer in
    the table's order; NaN when a seed's value is NaN (e.g. the effective step never halved).
    Columns: optimizer, label, seeds, steps, then ``<metric>_mean`` and ``<metric>_std`` for
    each metric."""
    import pandas as pd

    rows = []
    for name in dict.fromkeys(table["optimizer"]):
        part = table[table["optimizer"] == name]
        row: dict[str, Any] = {
            "optimizer": name,
            "label": part["label"].iloc[0],
            "seeds": len(part),
            "steps": int(part["steps"].max()),
        }
        for metric in METRICS:
            row[f"{metric}_mean"] = float(part[metric].mean(skipna=False))
            row[f"{metric}_std"] = (
                float(part[metric].std(ddof=1)) if len(part) > 1 else float("nan")
            )
        rows.append(row)
    return pd.DataFrame(rows)


COLUMNS = (
    ("test_accuracy", "test accuracy", "{:.1%}"),
    ("norm_growth", "‖w‖ grew", "{:.3f}×"),
    ("effective_lr_decay", "η/‖w‖² fell", "{:.3f}×"),
    ("angular_decay", "Δθ fell", "{:.0f}×"),
    ("half_step", "Δθ halved by step", "{:.0f}"),
)


def caption(seeds: int) -> str:
    """What the table's columns mean; "–" is "never" with one seed, "not in every seed" with
    several (a seed whose angular update never halved makes the mean undefined)."""
    never = "never" if seeds <= 1 else "not in every seed"
    return (
        "Over the scale-invariant tensors: ‖w‖ grew = final / initial mean norm; η/‖w‖² fell and "
        "Δθ fell = the effective step (as η/‖w‖² and as the angular update) early / late; Δθ "
        f"halved by step = first step with the angular update at half its early level (–: {never})."
    )


def _pm(mean: float, std: float, fmt: str) -> str:
    if mean != mean:  # NaN: never happened
        return "–"
    if std != std:  # NaN: one seed
        return fmt.format(mean)
    if fmt.endswith("%}"):
        return f"{mean:.1%} ± {std:.1%}"
    return fmt.format(mean).removesuffix("×") + " ± " + fmt.format(std)


def table_rows(summary: pd.DataFrame) -> list[list[str]]:
    """Formatted cells of `aggregate`'s frame: optimizer label, then mean ± std per column."""
    rows = []
    for _, row in summary.iterrows():
        cells = [str(row["label"])]
        for metric, _, fmt in COLUMNS:
            cells.append(_pm(row[f"{metric}_mean"], row[f"{metric}_std"], fmt))
        rows.append(cells)
    return rows


def table_header() -> list[str]:
    return ["optimizer", *(title for _, title, _ in COLUMNS)]


def markdown_table(summary: pd.DataFrame) -> str:
    """`aggregate`'s frame as a GitHub markdown table (numbers right-aligned)."""
    from stepsize_lens.report.text import markdown_table as table

    return table(table_header(), table_rows(summary))


def rich_table(summary: pd.DataFrame, title: str) -> Any:
    """`aggregate`'s frame as a `rich.table.Table`."""
    from stepsize_lens.report.text import rich_table as table

    seeds = int(summary["seeds"].max()) if len(summary) else 1
    return table(table_header(), table_rows(summary), title, caption(seeds))
