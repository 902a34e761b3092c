"""The ``stepsize-lens`` command line: parses arguments and calls library functions, nothing more.

This module holds the typer app, its commands and `main` (the console script). The command line
also owns what only it needs: `model_spec` turns ``inspect``'s MODEL and input options into a
model and inputs, `render` draws the rich tables of ``inspect``.

Heavy modules (torch, matplotlib, pandas) are imported inside the commands, so ``--help`` is
instant.

Errors never end in a traceback; each is one line on stderr:

- a `UserInputError` (a bad run file, a bad model spec, a bad option value), a usage error (an
  unknown option, a missing argument) or an operating-system error (permission denied, disk
  full, a folder that is a symlink owned by another user): exit code 2;
- Ctrl-C: ``stepsize-lens: error: interrupted``, exit code 130;
- anything else (a bug, or a file that slipped past validation; MemoryError included):
  ``stepsize-lens: internal error: <type>: <message> (<file:line> in <function>)``, naming the
  innermost stepsize_lens frame, with how to get the traceback, exit code 1.

``--debug`` (anywhere on the command line) or ``STEPSIZE_LENS_DEBUG=1`` prints the full
traceback before that line, and lets the warnings of the libraries below (numpy, pandas,
matplotlib) through, which are otherwise silenced; the exit codes stay the same.
"""

from __future__ import annotations

import functools
import os
import sys
import traceback
import warnings
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from stepsize_lens._sanitize import one_line, terminal_text

DEBUG_FLAG = "--debug"
DEBUG_ENV = "STEPSIZE_LENS_DEBUG"
_debug_flag = False  # set by --debug (main strips it from the arguments, or the callback)

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
    debug: Annotated[
        bool,
        typer.Option(
            DEBUG_FLAG,
            help=f"On an error, print the full traceback too (or set {DEBUG_ENV}=1); "
            "accepted anywhere on the command line.",
        ),
    ] = False,
) -> None:
    """Options before the command (a typer callback: without one, --version has no home)."""
    global _debug_flag
    _debug_flag = _debug_flag or debug


def _debugging() -> bool:
    return _debug_flag or os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false")


def _say(line: str) -> None:
    """One line on stderr (sanitised: no control character reaches the terminal)."""
    try:
        typer.echo(f"stepsize-lens: {one_line(line, limit=None)}", err=True)
    except Exception:  # noqa: BLE001 - stderr itself failed (closed, full); nothing to say it on
        pass


def _passthrough() -> tuple[type[BaseException], ...]:
    """What typer / click raise to end a command on purpose (an exit, a usage error, an
    abort), looked up by name: which of them exist differs between typer and click versions."""
    errors = _click_exceptions()
    found = [typer.Exit, SystemExit]
    for owner, name in ((typer, "Abort"), (errors, "ClickException"), (errors, "Exit")):
        found.append(getattr(owner, name, None))
    found.append(getattr(errors, "Abort", None))
    return tuple(t for t in found if isinstance(t, type) and issubclass(t, BaseException))


def _abort_types() -> tuple[type[BaseException], ...]:
    found = (getattr(typer, "Abort", None), getattr(_click_exceptions(), "Abort", None))
    return tuple(t for t in found if isinstance(t, type) and issubclass(t, BaseException))


def _origin(exc: BaseException) -> str:
    """``stepsize_lens/<file>.py:<line> in <function>`` of the innermost frame of the package
    in ``exc``'s traceback, followed by ``; raised in <file>:<line> in <function>`` when the
    innermost frame of all is outside the package (a library's, say)."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return ""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def inside(frame: traceback.FrameSummary) -> bool:
        return os.path.abspath(frame.filename).startswith(package + os.sep)

    def where(frame: traceback.FrameSummary, relative: bool) -> str:
        name = os.path.abspath(frame.filename)
        shown = os.path.relpath(name, os.path.dirname(package)) if relative else name
        return f"{shown if relative else os.path.basename(shown)}:{frame.lineno} in {frame.name}"

    ours = [frame for frame in frames if inside(frame)]
    if not ours:
        return where(frames[-1], relative=False)
    text = where(ours[-1], relative=True)
    if not inside(frames[-1]):
        text += f"; raised in {where(frames[-1], relative=False)}"
    return text


def _exception_line(exc: BaseException) -> str:
    """``<type>: <message> (<origin>)``, the type with its module unless built in."""
    kind = type(exc)
    name = (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )
    message = str(exc)
    origin = _origin(exc)
    return (
        name
        + (f": {one_line(message, limit=300)}" if message.strip() else "")
        + (f" ({origin})" if origin else "")
    )


def _os_error_line(exc: OSError) -> str:
    if exc.filename is not None and exc.strerror:
        where = str(exc.filename)
        if exc.filename2 is not None:
            where += f" -> {exc.filename2}"
        return f"{where}: {exc.strerror}"
    return str(exc) or type(exc).__name__


def _handle(exc: BaseException) -> int:
    """The exit code for ``exc``, after its one line on stderr (and, when debugging, the
    traceback); re-raises what typer / click end a command with on purpose."""
    from stepsize_lens.errors import UserInputError

    if isinstance(exc, _passthrough()):
        raise exc
    if isinstance(exc, BrokenPipeError):  # stdout's reader went away (| head): stop quietly
        _silence_stdout()
        return 1
    if _debugging():
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    if isinstance(exc, (KeyboardInterrupt, *_abort_types())):
        _say("error: interrupted")
        return 130
    if isinstance(exc, UserInputError):
        _say(f"error: {exc}")
        return 2
    if isinstance(exc, OSError):
        _say(f"error: {_os_error_line(exc)}")
        return 2
    if not isinstance(exc, Exception):  # GeneratorExit and the like: not ours to turn into a line
        raise exc
    hint = "" if _debugging() else f"; run with {DEBUG_FLAG} or {DEBUG_ENV}=1 for the traceback"
    _say(f"internal error: {_exception_line(exc)}{hint}")
    return 1


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout without a file descriptor
        pass


def _user_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn every error of a command into one line on stderr and its exit code (module
    docstring): 2 for bad input, 130 for Ctrl-C, 1 for anything unexpected."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - _handle re-raises what is not ours
            code = _handle(exc)
        raise typer.Exit(code)

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
    from stepsize_lens.experiments.demo import run_demo

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
    shown, folder = terminal_text(str(run)), terminal_text(str(logdir))
    typer.echo(f"wrote {shown} to {folder}{again}; view with: tensorboard --logdir {folder}")
    others = len(other_event_files(logdir))
    if others:
        typer.echo(
            f"note: {folder} also holds {others} event file(s) that this export did not write; "
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


def _take_debug_flag(args: list[str]) -> tuple[list[str], bool]:
    """``args`` without ``--debug`` (wherever it stands before a ``--``), and whether it was
    there."""
    end = args.index("--") if "--" in args else len(args)
    kept = [a for a in args[:end] if a != DEBUG_FLAG] + args[end:]
    return kept, len(kept) < len(args)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (``argv``: the arguments, default ``sys.argv[1:]``). Never
    ends in a traceback: every error is one line on stderr and an exit code (module
    docstring); usage errors (an unknown option, a missing argument, a bad choice) exit 2."""
    global _debug_flag
    args, debug = _take_debug_flag(list(sys.argv[1:] if argv is None else argv))
    before, _debug_flag = _debug_flag, _debug_flag or debug
    try:
        with warnings.catch_warnings():
            if not _debugging():  # a library's warning would break the one line
                warnings.simplefilter("ignore")
            code = _run_app(args)
    finally:
        _debug_flag = before
    sys.exit(code)


def _run_app(args: list[str]) -> int:
    errors = _click_exceptions()
    no_args_help = getattr(errors, "NoArgsIsHelpError", None)
    try:
        code = app(args=args, standalone_mode=False, prog_name="stepsize-lens")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException as exc:  # noqa: BLE001 - every error becomes one line and a code
        if isinstance(no_args_help, type) and isinstance(exc, no_args_help):
            exc.show()
            return int(getattr(exc, "exit_code", 2))
        click_exception = getattr(errors, "ClickException", None)
        if isinstance(click_exception, type) and isinstance(exc, click_exception):
            ctx = getattr(exc, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            _say(f"error: {exc.format_message()}{hint}")
            return int(getattr(exc, "exit_code", 2))
        if isinstance(exc, typer.Exit) or type(exc).__name__ == "Exit":
            return int(getattr(exc, "exit_code", 1))
        if isinstance(exc, _abort_types()):
            _say("error: interrupted")
            return 130
        try:
            return _handle(exc)
        except BaseException:  # noqa: BLE001 - re-raised as not ours: still one line
            _say(f"internal error: {_exception_line(exc)}")
            return 1
    return code if isinstance(code, int) else 0
