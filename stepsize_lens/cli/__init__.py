"""The ``stepsize-lens`` command line: parses arguments and calls library functions, nothing more.

This module holds the typer app, its commands and `main` (the console script). The command line
also owns what only it needs: `model_spec` turns ``inspect``'s MODEL and input options into a
model and inputs, `render` draws the rich tables of ``inspect``.

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


def _print_version(value: bool) -> None:
    if value:
        from stepsize_lens._version import __version__

        typer.echo(f"stepsize-lens {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print the version and exit.",
        ),
    ] = False,
) -> None:
    """Options before the command (a typer callback: without one, --version has no home)."""


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


class CompareBy(str, Enum):
    """What ``compare --by`` accepts: its ratio table needs the same sets in every run."""

    cls = "class"
    group = "group"


class InputDtype(str, Enum):
    """`cli.model_spec.INPUT_DTYPES`, spelled here too so that --help needs no torch."""

    float = "float"
    double = "double"
    half = "half"
    bfloat16 = "bfloat16"
    long = "long"
    int = "int"


class Experiment(str, Enum):
    toy2d = "toy2d"
    toy3d = "toy3d"
    digits = "digits"
    schedules = "schedules"
    transformer = "transformer"
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
    seed: Annotated[int, typer.Option(help="Random seed (initial weights, minibatch order).")] = 0,
) -> None:
    """Train a small BatchNorm CNN on real digits with SGD, SGD+momentum, SGDP, AdamW, AdamP and
    AdamC (lens attached; under a minute on two CPU cores), then write their comparison report."""
    from stepsize_lens.demo import run_demo

    run_demo(out=out, steps=steps, seed=seed)


@app.command()
@_user_errors
def reproduce(
    experiment: Annotated[
        Experiment,
        typer.Argument(
            help="toy2d, toy3d, digits (the CNN, minutes), schedules (the CNN under cosine and "
            "WSD with the theory's predictions, minutes), transformer (a tiny GPT, minutes) or "
            "all."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Folder for figures, tables and runs/.")] = Path(
        "figures"
    ),
    steps: Annotated[
        int | None,
        typer.Option(
            help="Steps of every run (default: toy2d 1000, toy3d 5000, digits and schedules "
            "1000, transformer 1500)."
        ),
    ] = None,
    seed: Annotated[
        int,
        typer.Option(help="First digits seed, the schedules and transformer seed (toys: none)."),
    ] = 0,
    seeds: Annotated[int, typer.Option(help="Number of digits seeds.")] = 3,
) -> None:
    """Reproduce the AdamP paper's experiments and the schedule and transformer ones: tables
    printed and saved (markdown, CSV) with their figures (PNG) in --out; run files and
    trajectories in --out/runs/."""
    from stepsize_lens.experiments.reproduce import reproduce as run_reproduce

    run_reproduce(experiment.value, out=out, steps=steps, seed=seed, seeds=seeds)


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
    input_dtype: Annotated[
        InputDtype | None,
        typer.Option(help="Type of the random inputs (default float); long for token ids."),
    ] = None,
    input_range: Annotated[
        str | None,
        typer.Option(
            help="LOW,HIGH: draw inputs uniformly in [LOW, HIGH), e.g. 0,1000 for token ids "
            "below 1000 (default: floats standard normal; integers below the smallest "
            "nn.Embedding's size)."
        ),
    ] = None,
    example: Annotated[
        str | None,
        typer.Option(
            help="package.module:function returning the probe inputs (a tensor, a tuple of "
            "arguments or a dict of keyword arguments), instead of a random batch."
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Examples in the random probe batch.")] = 4,
    draws: Annotated[int, typer.Option(help="Random rescalings per tensor and view.")] = 3,
    seed: Annotated[int, typer.Option(help="Random seed (model init, batch, factors).")] = 0,
    tensors: Annotated[bool, typer.Option(help="Also list every tensor's verdict.")] = False,
    threads: Annotated[
        int | None,
        typer.Option(
            help="Intra-op threads for the probe's forwards (default: the idle CPUs, CPU count "
            "minus load average, at least 1 and at most torch's setting).",
        ),
    ] = None,
) -> None:
    """Probe which weights of MODEL are scale-invariant and print the census."""
    from stepsize_lens.cli.model_spec import model_and_inputs
    from stepsize_lens.cli.render import print_inspection
    from stepsize_lens.errors import UserInputError
    from stepsize_lens.invariance import idle_threads, probe

    if threads is not None and threads < 1:
        raise UserInputError(f"--threads must be at least 1, not {threads}")
    module, inputs = model_and_inputs(
        model,
        input_shape,
        batch_size=batch_size,
        seed=seed,
        input_dtype=None if input_dtype is None else input_dtype.value,
        input_range=input_range,
        example=example,
    )
    with idle_threads(threads):  # a busy machine's CPUs make threads wait for each other
        result = probe(module, inputs, draws=draws, seed=seed)
    print_inspection(result, spec=model, tensors=tensors)


class Reducer(str, Enum):
    mean = "mean"
    weighted = "weighted"
    median = "median"


# arguments and options that several commands share, declared once
RunFile = Annotated[Path, typer.Argument(help="A run file recorded with stepsize_lens.attach.")]
OutFolder = Annotated[
    Path | None,
    typer.Option(
        help="Folder for the figures and the report file (default: beside the first run)."
    ),
]
Format = Annotated[
    ReportFormat,
    typer.Option(
        "--format",
        "-f",
        help="text (terminal view), markdown, html (one self-contained page) or json (for "
        "scripts).",
    ),
]
Delta = Annotated[
    float | None,
    typer.Option(help="δ of the paper's scale-invariance test (default: the run's, usually 0.1)."),
]
Figures = Annotated[
    bool, typer.Option("--figures/--no-figures", help="Draw the figures (PNG + PDF) into --out.")
]


@app.command()
@_user_errors
def export(
    run: RunFile,
    tensorboard: Annotated[
        Path,
        typer.Option(help="Folder for TensorBoard event files (created if needed)."),
    ],
    reducer: Annotated[
        Reducer, typer.Option(help="How to combine the tensors of a group or class.")
    ] = Reducer.mean,
) -> None:
    """Export RUN as TensorBoard scalars, per param group and per scale-invariance class.
    Exporting again into the same folder replaces the earlier export there."""
    from stepsize_lens.integrations.tensorboard import (
        exported_event_files,
        other_event_files,
        to_tensorboard,
    )
    from stepsize_lens.run import load

    loaded = load(run)
    replaced = len(exported_event_files(tensorboard))
    logdir = to_tensorboard(loaded, tensorboard, reducer=reducer.value)
    again = " (replacing the earlier export there; give each run its own folder)"
    again = again if replaced else ""
    typer.echo(f"wrote {run} to {logdir}{again}; view with: tensorboard --logdir {logdir}")
    others = len(other_event_files(logdir))
    if others:
        typer.echo(
            f"note: {logdir} also holds {others} event file(s) that this export did not write; "
            "TensorBoard shows them as one run with it"
        )


def _reference(text: str | None) -> int | str:
    if text is None:
        return 0
    return int(text) if text.lstrip("-").isdigit() else text


@app.command()
@_user_errors
def report(
    run: RunFile,
    out: OutFolder = None,
    fmt: Format = ReportFormat.text,
    delta: Delta = None,
    by: Annotated[
        GroupBy, typer.Option(help="Split tensors into sets by invariance class, group or tensor.")
    ] = GroupBy.cls,
    figures: Figures = True,
) -> None:
    """Report on RUN: findings, norm growth and effective-step decay per class and group, and
    the paper's figures."""
    from stepsize_lens.report import report as make_report

    make_report(run, out=out, format=fmt.value, delta=delta, by=by.value, figures=figures)


@app.command()
@_user_errors
def compare(
    runs: Annotated[
        list[Path], typer.Argument(help="Two or more run files (the first is the reference).")
    ],
    out: OutFolder = None,
    fmt: Format = ReportFormat.text,
    delta: Delta = None,
    by: Annotated[
        CompareBy, typer.Option(help="Split tensors into sets by invariance class or group.")
    ] = CompareBy.cls,
    reference: Annotated[
        str | None,
        typer.Option(help="Label or index of the run the ratios refer to (default: the first)."),
    ] = None,
    figures: Figures = True,
) -> None:
    """Compare RUNS side by side: overlaid curves, and ratios to the reference run."""
    from stepsize_lens.report import compare_report

    compare_report(
        runs,
        out=out,
        format=fmt.value,
        delta=delta,
        by=by.value,
        reference=_reference(reference),
        figures=figures,
    )


def _click_exceptions() -> Any:
    """click's exception module: typer >= 0.20 vendors its own copy of click."""
    try:
        from typer._click import exceptions
    except ImportError:  # older typer runs on click itself
        from click import exceptions
    return exceptions


def main() -> None:
    """Console-script entry point. Usage errors (an unknown option, a missing argument, a bad
    choice) become one line on stderr and exit code 2, like every other bad input."""
    errors = _click_exceptions()
    try:
        code = app(standalone_mode=False, prog_name="stepsize-lens")
    except errors.NoArgsIsHelpError as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except errors.ClickException as exc:
        ctx = getattr(exc, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        message = " ".join(exc.format_message().split())
        typer.echo(f"stepsize-lens: error: {message}{hint}", err=True)
        sys.exit(exc.exit_code)
    except errors.Abort:
        typer.echo("stepsize-lens: error: interrupted", err=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
