"""``stepsize-lens demo``: a small real training run on CPU, recorded with the lens.

Trains the built-in digits CNN (BatchNorm, ~77k parameters) on scikit-learn's handwritten digits
with SGD + momentum, records every metric with the lens's default schedule, and prints what it
recorded: per tensor, the weight norm and the angular update (the effective step) early and late.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

DEFAULT_STEPS = 300


def train_digits_run(
    path: Path,
    make_optimizer,
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
    label: str | None = None,
    schedule=None,
    batch_size: int = 64,
    progress=None,
) -> Path:
    """Train `models.digits_cnn` for ``steps`` steps with the lens attached; return the run path.

    ``make_optimizer(params) -> Optimizer``. Loss is logged every step, test accuracy every 50.
    """
    import stepsize_lens
    from stepsize_lens.datasets import batches, digits
    from stepsize_lens.models import digits_cnn

    torch.manual_seed(seed)
    data = digits(seed=0)
    model = digits_cnn()
    optimizer = make_optimizer(model.parameters())
    with stepsize_lens.attach(model, optimizer, path=path, schedule=schedule, label=label) as lens:
        for step, (x, y) in enumerate(
            batches(data.x_train, data.y_train, batch_size, steps, seed), 1
        ):
            model.train()
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            lens.log(loss=loss)
            if step % 50 == 0 or step == steps:
                model.eval()
                with torch.no_grad():
                    accuracy = (model(data.x_test).argmax(1) == data.y_test).float().mean()
                lens.log(test_accuracy=accuracy)
            if progress is not None:
                progress()
    return Path(path)


def run_demo(out: Path, steps: int | None = None, seed: int = 0) -> Path:
    """Train, record and print a summary; returns the run file's path."""
    from rich.console import Console
    from rich.progress import Progress

    import stepsize_lens

    console = Console()
    steps = steps or DEFAULT_STEPS
    out.mkdir(parents=True, exist_ok=True)
    path = out / "sgd_momentum.pt"
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("training digits CNN (SGD, momentum 0.9)", total=steps)
        train_digits_run(
            path,
            lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
            steps=steps,
            seed=seed,
            label="SGD momentum 0.9",
            progress=lambda: progress.advance(task),
        )
    run = stepsize_lens.load(path)
    print_run_summary(run, console)
    console.print(f"run file: [bold]{path}[/bold]")
    return path


def print_run_summary(run, console) -> None:
    """Print a per-tensor table: weight norm and angular update, early vs late, and the test."""
    from rich.table import Table

    steps = run.steps
    early = slice(0, max(1, min(10, len(steps))))
    late = slice(max(0, len(steps) - 10), len(steps))
    norm = run.metric("weight_norm")
    angle = run.metric("angular_update")
    test = run.view("test_view")
    table = Table(title=f"{run.label}: {run.num_records} records over {int(steps[-1])} steps")
    for column in (
        "tensor",
        "shape",
        "‖w‖ first",
        "‖w‖ last",
        "angle early",
        "angle late",
        "invariant",
    ):
        table.add_column(column, justify="left" if column in ("tensor", "shape") else "right")
    for t, name in enumerate(run.tensor_names):
        tested = test[:, t][test[:, t] >= 0]
        share = f"{(tested > 0).mean():.0%}" if len(tested) else "-"
        table.add_row(
            name,
            "x".join(str(s) for s in run.params.loc[t, "shape"]),
            f"{norm[0, t]:.3f}",
            f"{norm[-1, t]:.3f}",
            f"{np.nanmean(angle[early, t]):.2e}",
            f"{np.nanmean(angle[late, t]):.2e}",
            share,
        )
    console.print(table)
    scalars = run.scalars
    accuracy = scalars[scalars["name"] == "test_accuracy"]
    if len(accuracy):
        console.print(f"final test accuracy: {accuracy['value'].iloc[-1]:.1%}")
