"""The ``stepsize-lens`` command line: parses arguments and calls library functions, nothing more.

Heavy modules (torch, matplotlib, pandas) are imported inside the commands, so ``--help`` is
instant. Every `UserInputError` (a bad run file, a bad model spec, a bad option value) becomes
one line on stderr and exit code 2.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(
    name="stepsize-lens",
    help=(
        "See what your optimizer does to the effective step size of scale-invariant weights: "
        "report on run files recorded with stepsize_lens.attach, compare runs, inspect a "
        "model's scale invariance, reproduce the AdamP paper's figures."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"stepsize-lens: error: {message}", err=True)
    raise typer.Exit(code)


def _user_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn library errors caused by user input into one line on stderr and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from stepsize_lens.errors import UserInputError

        try:
            return func(*args, **kwargs)
        except UserInputError as exc:
            _fail(str(exc))
        except KeyboardInterrupt:
            _fail("interrupted", code=130)

    return wrapper


class ReportFormat(str, Enum):
    text = "text"
    markdown = "markdown"
    html = "html"
    json = "json"


class GroupBy(str, Enum):
    group = "group"
    cls = "class"
    tensor = "tensor"


class Experiment(str, Enum):
    toy2d = "toy2d"
    toy3d = "toy3d"
    digits = "digits"
    all = "all"


@app.command()
@_user_errors
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the run files, report and figures.")] = Path(
        "stepsize_lens_out"
    ),
    steps: Annotated[
        int | None, typer.Option(help="Training steps per run (default: the quick setting).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Train a small BatchNorm CNN on CPU with the lens attached and summarise what it recorded."""
    from stepsize_lens.demo import run_demo

    run_demo(out=out, steps=steps, seed=seed)


@app.command()
@_user_errors
def inspect(
    model: Annotated[
        str,
        typer.Argument(
            help="A built-in model (resnet18, vit, mlp, digits_cnn) or package.module:factory "
            "(called with no arguments)."
        ),
    ],
    input_shape: Annotated[
        str | None,
        typer.Option(help="Shape of one input without the batch dimension, e.g. 3,32,32."),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Examples in the random probe batch.")] = 4,
    draws: Annotated[int, typer.Option(help="Random rescalings per tensor and view.")] = 3,
    seed: Annotated[int, typer.Option(help="Random seed (model init, batch, factors).")] = 0,
    tensors: Annotated[bool, typer.Option(help="Also list every tensor's verdict.")] = False,
) -> None:
    """Probe which weights of MODEL are scale-invariant and print the census."""
    from stepsize_lens.invariance import inspect_model, print_inspection

    result = inspect_model(model, input_shape, batch_size=batch_size, seed=seed, draws=draws)
    print_inspection(result, spec=model, tensors=tensors)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except SystemExit as exc:  # keep click's exit codes (2 for usage errors)
        sys.exit(exc.code)
