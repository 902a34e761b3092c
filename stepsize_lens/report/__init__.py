"""Reports on recorded runs: ``stepsize-lens report`` and ``stepsize-lens compare``.

    report(run_or_path, out=None, format="text", delta=None, by="class")    -> ReportResult
    compare_report([run_or_path, ...], out=None, format="text", reference=0) -> ReportResult
    report_data(run, delta=None, by="class") / compare_data(runs, ...)      -> JSON-ready dict
    load_run(path) -> Run   (`load`, plus a UserInputError for a run without records)

Formats: ``text`` prints a rich terminal view; ``markdown`` prints markdown and writes
``report.md``; ``html`` writes one self-contained ``report.html`` (figures embedded as base64
PNG, no script, no external resource) and prints its path; ``json`` prints the data below and
writes ``report.json``. Figures (PNG + PDF, see `stepsize_lens.plots`) go to ``out`` (default:
``<run stem>_report/`` beside the run; ``<stem1>_vs_<stem2>_compare/`` for a comparison) unless
``figures=False``.

JSON of ``report`` (``schema`` = ``"stepsize_lens.report/1"``); undefined numbers are null:

- ``by``: how tensors were grouped into sets (group, class or tensor).
- ``verdict``: the report's opening (`analysis.verdict`, docs/findings.md): healthy (bool),
  sentences (two or three: is the effective step healthy, why, what would change it), text
  (them joined), kinds (the findings they come from). Text and HTML print it first.
- ``run``: label, path, optimizer (class name), family (sgd / adamw / adam / sgdp / adamp /
  unknown), hyperparameters (the optimizer's defaults: lr, momentum, betas, weight_decay...),
  model_class, created, closed, schedule, torch_version, stepsize_lens_version, delta (of the
  scale-invariance test), records, first_step, last_step, tensors, numel, groups,
  class_counts {channel, layer, none}, skipped (steps), nonfinite (cells), lr_final and
  weight_decay_final (per param group), lr_changes (steps), scalars {name: {count, last_step,
  last}}.
- ``summary``: one row per set of tensors (`analysis.summarize`): by (group / class / tensor),
  key, tensors, numel, weight_norm_initial / _final / _ratio, angular_update_initial / _final /
  _decay (initial/final), effective_lr_initial / _final / _decay, lr_part, norm_part,
  gradient_part (angular_update_decay split into the lr's, the norm growth's and the
  scale-free gradient's factors, `analysis.decay_split`), early_angular_update,
  constant_lr_from, constant_lr_until, half_step, tenth_step, test_pass_share,
  projected_share, nonfinite, skipped. A ratio whose denominator is 0 is null (a tensor that
  starts at zero has no weight_norm_ratio); tensors that start at zero are left out of a set's
  norm and step columns unless every tensor of the set does.
- ``findings``: ranked, most severe first (`analysis.find`): kind, severity (critical /
  warning / info), title, evidence {...}, tensors [...], suggestion, score, advice [...]
  (changes in the user's own optimizer arguments: optimizer, argument, old, new, switch_to,
  arguments, effect {angle_ratio, equilibrium_step, ...}, text). docs/findings.md is the
  contract of every kind.
- ``theory``: family, optimizer (class), derived (whether the theory predicts this optimizer:
  when not, nothing is guessed and ``note`` says why), note, window (the last fraction of the
  steps averaged), sets: per invariance class set, tensors, angle_measured / _predicted /
  _equilibrium and norm_measured / _predicted / _equilibrium (predicted: the per-step
  recurrence along the recorded schedule, `analysis.predict`; equilibrium: the constant-lr
  fixed point at the recorded lr and weight decay, null without weight decay), window_start.
- ``strongest_decay_scope``: "scale-invariant" (or "all" when no tensor is).
- ``strongest_decay``: up to 10 tensors by angular_update_decay: tensor, class, group, shape,
  numel, weight_norm_initial / _final / _ratio, angular_update_initial / _final / _decay,
  norm_part, lr_part, gradient_part, half_step, tenth_step, exponent (fitted k in Δθ ∝ step^k
  over the second half; null where the lr changed there, since the schedule then sets it).
- ``figures``: {name: [paths]} for paper_panel, norm_growth, effective_step, decay_split,
  theory, cos_threshold, heatmap ({} without figures).

JSON of ``compare`` (``schema`` = ``"stepsize_lens.compare/1"``): ``by``; ``reference`` (label);
``shared_classes`` (true when every run is split by the reference run's classes);
``runs``: one object per run with verdict, run, summary, findings, theory, strongest_decay_scope,
strongest_decay as above; ``comparison``: rows of run, key (the set), metric (weight_norm /
angular_update / effective_lr), x (the last step shared with the reference where every run's
lr is ≥ 10% of its peak), value, reference_value, final_ratio (value/reference there),
mean_ratio (geometric mean over those steps); ``norm_growth``, ``windows``,
``premature_decay``, ``premature_decay_tensors`` and ``headline``
(`report.compare_tables`: rows with set_by (invariant / all / class / group / tensor) and set,
then the columns of `analysis.compare.norm_growth`, `compare_windows` and
`premature_decay`); ``figures`` (paper_panel, norm_growth, effective_step).
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stepsize_lens._files import atomic_write_text, check_folder
from stepsize_lens._sanitize import json_text, terminal_text
from stepsize_lens.errors import UserInputError
from stepsize_lens.report.data import (
    BY_CHOICES,
    COMPARE_SCHEMA,
    SCHEMA,
    compare_data,
    default_out,
    load_run,
    report_data,
    require_records,
)

if TYPE_CHECKING:
    from stepsize_lens.run import Run

FORMATS = ("text", "markdown", "html", "json")
FILE_NAMES = {"markdown": "report.md", "html": "report.html", "json": "report.json"}

__all__ = [
    "BY_CHOICES",
    "COMPARE_SCHEMA",
    "FORMATS",
    "ReportResult",
    "SCHEMA",
    "compare_data",
    "compare_report",
    "load_run",
    "report",
    "report_data",
    "require_records",
]


@dataclass
class ReportResult:
    """What a report produced: ``data`` (the JSON dict), ``out`` (figure folder or None),
    ``page`` (the report.md / .html / .json written, or None), ``figures`` (name → paths),
    ``text`` (what was printed for markdown / json, else None)."""

    data: dict[str, Any]
    out: Path | None
    page: Path | None = None
    figures: dict[str, list[Path]] = field(default_factory=dict)
    text: str | None = None


def _as_run(item: Run | str | os.PathLike[str]) -> Run:
    from stepsize_lens.run import Run

    return require_records(item) if isinstance(item, Run) else load_run(item)


def _check(format: str, by: str, delta: float | None) -> None:
    if delta is not None and not 0.0 < delta < float("inf"):
        raise UserInputError(f"--delta must be a positive number, not {delta}")
    if format not in FORMATS:
        raise UserInputError(f"--format must be one of {', '.join(FORMATS)}, not {format!r}")
    if by not in BY_CHOICES:
        raise UserInputError(f"--by must be one of {', '.join(BY_CHOICES)}, not {by!r}")


def _console(console: Any) -> Any:
    if console is not None:
        return console
    from rich.console import Console

    return Console()


def _status_console() -> Any:
    """Progress bars go to stderr, so stdout stays clean JSON / markdown."""
    from rich.console import Console

    return Console(stderr=True)


def report(
    run: Run | str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    format: str = "text",
    delta: float | None = None,
    by: str = "class",
    figures: bool = True,
    formats: Sequence[str] = ("png", "pdf"),
    console: Any = None,
) -> ReportResult:
    """Analyse one run and emit the report in ``format`` (see the module docstring)."""
    from stepsize_lens.analysis import forecast, tensor_classes
    from stepsize_lens.report.document import report_document
    from stepsize_lens.report.figures import draw_and_save, progress, report_figures

    _check(format, by, delta)
    console = _console(console)
    status = _status_console()
    with progress(status, 1, "loading run") as advance:
        run = _as_run(run)
        advance("analysing")
    folder = check_folder(out if out is not None else default_out([run.path]))
    with progress(status, 1, "analysing (summaries, findings)") as advance:
        classes = tensor_classes(run, None, delta)
        # the recurrence along the schedule, computed once for the findings, the theory
        # section and the theory figure
        forecasted = forecast(run, classes)
        data = report_data(run, delta, by, classes, forecasted)
        advance("done")
    saved: dict[str, list[Path]] = {}
    if figures:
        drawers = report_figures(run, by, classes, delta, forecasted)
        with progress(status, len(drawers), f"drawing {drawers[0][0]}") as advance:
            saved = draw_and_save(drawers, folder, formats, advance)
        data["figures"] = {name: [str(p) for p in paths] for name, paths in saved.items()}
    doc = report_document(data, folder if figures else None)
    return _emit(data, doc, format, folder, saved, console, str(run.path or run.label))


def compare_report(
    runs: Sequence[Run | str | os.PathLike[str]],
    out: str | os.PathLike[str] | None = None,
    format: str = "text",
    delta: float | None = None,
    by: str = "class",
    reference: int | str = 0,
    figures: bool = True,
    formats: Sequence[str] = ("png", "pdf"),
    console: Any = None,
) -> ReportResult:
    """Several runs side by side: overlaid figures, ratio columns against ``reference``."""
    from stepsize_lens.report.data import shared_classes
    from stepsize_lens.report.document import compare_document
    from stepsize_lens.report.figures import compare_figures, draw_and_save, progress

    _check(format, by, delta)
    if len(runs) < 2:
        raise UserInputError("compare needs at least two run files")
    console = _console(console)
    status = _status_console()
    with progress(status, len(runs), "loading runs") as advance:
        loaded = []
        for item in runs:
            loaded.append(_as_run(item))
            advance("loading runs")
    folder = check_folder(out if out is not None else default_out([r.path for r in loaded], True))
    with progress(status, 1, "analysing (summaries, findings, ratios)") as advance:
        data = compare_data(loaded, delta, by, reference)
        advance("done")
    saved: dict[str, list[Path]] = {}
    if figures:
        labels = [r["run"]["label"] for r in data["runs"]]
        ref = labels.index(data["reference"])
        classes = shared_classes(loaded, ref, delta)
        drawers = compare_figures(loaded, by, classes)
        with progress(status, len(drawers), f"drawing {drawers[0][0]}") as advance:
            saved = draw_and_save(drawers, folder, formats, advance)
        data["figures"] = {name: [str(p) for p in paths] for name, paths in saved.items()}
    doc = compare_document(data, folder if figures else None)
    source = ", ".join(str(r.path or r.label) for r in loaded)
    return _emit(data, doc, format, folder, saved, console, source)


def _emit(
    data: dict[str, Any],
    doc: Any,
    format: str,
    folder: Path,
    saved: dict[str, list[Path]],
    console: Any,
    source: str,
) -> ReportResult:
    from stepsize_lens._version import __version__

    result = ReportResult(data=data, out=folder if saved else None, figures=saved)
    if format == "text":
        from stepsize_lens.report.text import print_document

        print_document(doc, console)
        return result
    page = folder / FILE_NAMES[format]
    if format == "markdown":
        from stepsize_lens.report.text import markdown_document

        text = markdown_document(doc, relative_to=folder)
    elif format == "json":
        text = json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
        text = json_text(text)  # C1 controls and the like as \uXXXX: the same JSON
    else:
        from stepsize_lens.report.html import html_document

        when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
        text = html_document(doc, footer=f"stepsize_lens {__version__} · {source} · {when}")
    atomic_write_text(page, text)
    result.page = page
    if format == "html":
        console.file.write(f"{terminal_text(str(page))}\n")
    else:
        console.file.write(text)
        result.text = text
    console.file.flush()
    return result
