"""stepsize_lens.report: the data behind every view, and each format, on real recorded runs."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from _cli_runs import REPORT_FIGURES as CLI_REPORT_FIGURES
from PIL import Image
from rich.console import Console

import stepsize_lens
from stepsize_lens.errors import UserInputError
from stepsize_lens.report import compare_data, compare_report, load_run, report, report_data
from stepsize_lens.report.data import default_out
from stepsize_lens.report.formatting import num, share, step, times
from stepsize_lens.run import save_run_dict

# the keys the module docstring documents
REPORT_KEYS = {
    "schema",
    "verdict",
    "theory",
    "by",
    "run",
    "summary",
    "findings",
    "strongest_decay_scope",
    "strongest_decay",
    "figures",
}
RUN_KEYS = {
    "label",
    "path",
    "optimizer",
    "family",
    "hyperparameters",
    "model_class",
    "created",
    "closed",
    "schedule",
    "torch_version",
    "stepsize_lens_version",
    "delta",
    "records",
    "first_step",
    "last_step",
    "tensors",
    "numel",
    "groups",
    "class_counts",
    "skipped",
    "nonfinite",
    "lr_final",
    "weight_decay_final",
    "lr_changes",
    "scalars",
}


def initial_final(metric: str, change: str) -> set[str]:
    """The docstring's ``<metric>_initial / _final / _<change>``."""
    return {f"{metric}_initial", f"{metric}_final", f"{metric}_{change}"}


SUMMARY_KEYS = {
    "by",
    "key",
    "tensors",
    "numel",
    *initial_final("weight_norm", "ratio"),
    *initial_final("angular_update", "decay"),
    *initial_final("effective_lr", "decay"),
    "lr_part",
    "norm_part",
    "gradient_part",
    "early_angular_update",
    "constant_lr_from",
    "constant_lr_until",
    "half_step",
    "tenth_step",
    "test_pass_share",
    "projected_share",
    "nonfinite",
    "skipped",
}
FINDING_KEYS = {
    "kind",
    "severity",
    "title",
    "evidence",
    "tensors",
    "suggestion",
    "score",
    "advice",
}
DECAY_KEYS = {
    "tensor",
    "class",
    "group",
    "shape",
    "numel",
    *initial_final("weight_norm", "ratio"),
    *initial_final("angular_update", "decay"),
    "norm_part",
    "lr_part",
    "gradient_part",
    "half_step",
    "tenth_step",
    "exponent",
}
THEORY_KEYS = {"family", "optimizer", "derived", "note", "window", "sets"}
COMPARISON_KEYS = {
    "run",
    "key",
    "metric",
    "x",
    "value",
    "reference_value",
    "final_ratio",
    "mean_ratio",
}
REPORT_FIGURES = set(CLI_REPORT_FIGURES)


def quiet(width: int = 160) -> Console:
    return Console(file=io.StringIO(), width=width, color_system=None)


def check_png(path: Path) -> None:
    with Image.open(path) as image:
        image.load()
        assert image.format == "PNG" and image.width > 500


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def test_report_data_has_the_documented_keys_and_is_strict_json(report_runs):
    run = stepsize_lens.load(report_runs["sgdp"])
    data = report_data(run)
    assert set(data) == REPORT_KEYS and data["schema"] == "stepsize_lens.report/1"
    assert set(data["run"]) == RUN_KEYS
    assert data["run"]["optimizer"] == "SGDP" and data["run"]["family"] == "sgdp"
    assert data["run"]["records"] == 40 and data["run"]["tensors"] == 20
    assert set(data["run"]["scalars"]) == {"loss", "test_accuracy"}
    assert all(set(row) == SUMMARY_KEYS for row in data["summary"])
    assert {row["by"] for row in data["summary"]} == {"class", "group"}
    assert all(set(f) == FINDING_KEYS for f in data["findings"])
    assert all(set(row) == DECAY_KEYS for row in data["strongest_decay"])
    assert set(data["theory"]) == THEORY_KEYS
    json.dumps(data, allow_nan=False)  # undefined numbers became null


def test_summary_rows_match_analysis_summarize(report_runs):
    from stepsize_lens.analysis import summarize

    run = stepsize_lens.load(report_runs["sgd_momentum"])
    data = report_data(run, by="group")
    expected = summarize(run, by=["group", "class"])
    rows = {(r["by"], r["key"]): r for r in data["summary"]}
    for _, row in expected.iterrows():
        mine = rows[(row["by"], row["key"])]
        assert mine["weight_norm_ratio"] == pytest.approx(row["weight_norm_ratio"])
        assert mine["angular_update_decay"] == pytest.approx(row["angular_update_decay"])


def test_by_tensor_adds_per_tensor_rows(report_runs):
    run = stepsize_lens.load(report_runs["sgd"])
    data = report_data(run, by="tensor")
    tensors = [r["key"] for r in data["summary"] if r["by"] == "tensor"]
    assert tensors == run.tensor_names


def test_strongest_decay_lists_scale_invariant_tensors_by_decay(report_runs):
    run = stepsize_lens.load(report_runs["sgd_momentum"])
    data = report_data(run)
    assert data["strongest_decay_scope"] == "scale-invariant"
    rows = data["strongest_decay"]
    assert rows and all(r["class"] in ("channel", "layer") for r in rows)
    decays = [r["angular_update_decay"] for r in rows]
    assert decays == sorted(decays, reverse=True)
    assert all(
        r["angular_update_decay"]
        == pytest.approx(r["angular_update_initial"] / r["angular_update_final"])
        for r in rows
    )


def test_findings_are_those_of_analysis_find(report_runs):
    from stepsize_lens.analysis import find

    run = stepsize_lens.load(report_runs["sgd_momentum"])
    data = report_data(run)
    assert [f["kind"] for f in data["findings"]] == [f.kind for f in find(run)]
    assert "no_weight_decay" in [f["kind"] for f in data["findings"]]


def test_tensors_that_start_at_zero_have_no_norm_ratio(report_runs):
    """The digits CNN's BatchNorm biases start at zero: their ‖w‖ ratio is undefined (null in
    the JSON, – on the page), and the "none" class they belong to shows its other tensors."""
    from stepsize_lens.analysis import tensor_classes
    from stepsize_lens.report.document import summary_tables

    run = stepsize_lens.load(report_runs["sgd_momentum"])
    data = report_data(run, by="tensor")
    json.dumps(data, allow_nan=False)
    rows = {r["key"]: r for r in data["summary"] if r["by"] == "tensor"}
    zero = [name for name, r in rows.items() if r["weight_norm_initial"] == 0]
    assert zero and all(name.endswith(".bias") for name in zero)
    assert all(rows[name]["weight_norm_ratio"] is None for name in zero)
    (table,) = [t for t in summary_tables(data) if t.columns[0] == "tensor"]
    grew = table.columns.index("‖w‖ grew")
    assert {row[0]: row[grew] for row in table.rows if row[0] in zero} == dict.fromkeys(zero, "–")
    classes = tensor_classes(run)
    others = [n for n in run.tensor_names if classes[n] == "none" and n not in zero]
    none = next(r for r in data["summary"] if r["by"] == "class" and r["key"] == "none")
    for column in ("weight_norm_initial", "weight_norm_final"):
        assert none[column] == pytest.approx(np.mean([rows[n][column] for n in others]))


def test_report_computes_the_forecast_once(report_runs, tmp_path, monkeypatch):
    """The recurrence along the schedule is integrated once, for the findings, the theory
    section and the theory figure."""
    from stepsize_lens import analysis
    from stepsize_lens.analysis import theory

    calls = []
    original = theory.forecast

    def counting(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(theory, "forecast", counting)
    monkeypatch.setattr(analysis, "forecast", counting)
    run = stepsize_lens.load(report_runs["sgdp"])  # weight decay: the findings need it too
    result = report(run, out=tmp_path, format="json", formats=("png",), console=quiet())
    assert len(calls) == 1 and "theory" in result.figures
    monkeypatch.undo()
    assert "equilibrium_time" in [f["kind"] for f in result.data["findings"]]
    assert result.data["findings"] == report_data(run)["findings"]


def test_the_theory_section_holds_predicted_against_measured(report_runs):
    data = report_data(stepsize_lens.load(report_runs["adamw"]))
    theory = data["theory"]
    assert theory["family"] == "adamw" and theory["derived"] is True
    (channel,) = [s for s in theory["sets"] if s["set"] == "channel"]
    for key in ("angle", "norm"):
        assert channel[f"{key}_measured"] > 0 and channel[f"{key}_predicted"] > 0
        assert channel[f"{key}_equilibrium"] > 0
    lr, wd, beta1 = 1e-3, 0.05, 0.9
    assert channel["angle_equilibrium"] == pytest.approx(
        np.sqrt(2 * lr * wd * (1 - beta1) / (1 + beta1))
    )
    from stepsize_lens.report.document import report_document

    (table,) = [b for b in report_document(data).blocks if b.title.startswith("Theory")]
    assert table.rows and table.rows[0][0] == "channel"


def test_an_optimizer_without_theory_is_said_so_not_guessed():
    from _runs import crafted_run

    from stepsize_lens.report.document import report_document

    data = report_data(crafted_run(records=30, optimizer="Shampoo"))
    assert data["theory"]["derived"] is False and data["theory"]["sets"] == []
    assert "no derived prediction for Shampoo" in data["theory"]["note"]
    (table,) = [b for b in report_document(data).blocks if b.title.startswith("Theory")]
    assert not table.rows and "rather than a guess" in table.note


def test_delta_changes_the_classes(report_runs):
    run = stepsize_lens.load(report_runs["sgd_momentum"])
    strict = report_data(run, delta=1e-9)["run"]
    assert strict["delta"] == 1e-9
    assert strict["class_counts"]["channel"] == 0 and strict["class_counts"]["layer"] == 0


def test_compare_data_ratios_against_the_reference(report_runs):
    runs = [stepsize_lens.load(report_runs[n]) for n in ("sgd_momentum", "sgdp", "adamw")]
    data = compare_data(runs)
    assert data["reference"] == "SGD momentum 0.9" and data["shared_classes"]
    assert [d["run"]["label"] for d in data["runs"]] == ["SGD momentum 0.9", "SGDP", "AdamW"]
    assert all(set(row) == COMPARISON_KEYS for row in data["comparison"])
    for row in data["comparison"]:
        if row["run"] == data["reference"]:
            assert row["final_ratio"] == pytest.approx(1.0)
        elif row["value"] is not None and row["reference_value"]:
            assert row["final_ratio"] == pytest.approx(row["value"] / row["reference_value"])
    by_label = compare_data(runs, reference="SGDP")
    assert by_label["reference"] == "SGDP"
    json.dumps(data, allow_nan=False)


def test_compare_data_rejects_bad_requests(report_runs):
    runs = [stepsize_lens.load(report_runs[n]) for n in ("sgd", "sgdp")]
    with pytest.raises(UserInputError, match="at least two"):
        compare_data(runs[:1])
    with pytest.raises(UserInputError, match="no run labelled 'nope'"):
        compare_data(runs, reference="nope")
    with pytest.raises(UserInputError, match="out of range"):
        compare_data(runs, reference=5)
    with pytest.raises(UserInputError, match="class or group"):
        compare_data(runs, by="tensor")


def test_load_run_refuses_runs_without_records(report_empty_run, report_runs, tmp_path):
    with pytest.raises(UserInputError, match="has no records"):
        load_run(report_empty_run)
    data = torch.load(report_runs["sgd"], weights_only=True)
    data["records"]["skipped"][:] = True
    save_run_dict(data, tmp_path / "skipped.pt")
    with pytest.raises(UserInputError, match="all 40 records are skipped"):
        load_run(tmp_path / "skipped.pt")
    with pytest.raises(UserInputError, match="has no records"):
        report(stepsize_lens.load(report_empty_run), console=quiet())  # a Run object too


def test_default_out_is_beside_the_run(tmp_path):
    assert default_out([tmp_path / "a.pt"]) == tmp_path / "a_report"
    assert (
        default_out([tmp_path / "a.pt", Path("b.pt")], compare=True) == tmp_path / "a_vs_b_compare"
    )


def test_number_formatting():
    assert num(None) == "–" and num(1234) == "1,234" and num(0.012345) == "0.0123"
    assert times(2.5) == "2.5×" and share(0.256) == "26%" and step(12.0) == "12"


# --------------------------------------------------------------------------------------------
# Formats
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_one_table_renderer_for_markdown_and_rich():
    from stepsize_lens.report.text import markdown_table, rich_table

    text = markdown_table(["set", "run", "a|b"], [["x", "y", "1"], ["z", "w|v", "2"]], 2)
    assert text == (
        "| set | run | a\\|b |\n| :-- | :-- | --: |\n| x | y | 1 |\n| z | w\\|v | 2 |\n"
    )
    table = rich_table(["set", "value"], [["x", "1"]], title="T", caption="C")
    assert [c.justify for c in table.columns] == ["left", "right"]
    assert table.title == "T" and table.caption == "C" and table.row_count == 1


def test_text_report_prints_every_section_and_writes_figures(local_runs):
    console = quiet()
    result = report(local_runs["adamp"], console=console)
    text = console.file.getvalue()
    for expected in (
        "stepsize-lens report: AdamP",
        "adamp family",
        "Findings",
        "Summary per invariance class",
        "Summary per param group",
        "Strongest effective-step decay",
        "Figures",
    ):
        assert expected in text
    assert result.out == local_runs["adamp"].parent / "adamp_report"
    assert set(result.figures) == REPORT_FIGURES
    for paths in result.figures.values():
        assert [p.suffix for p in paths] == [".png", ".pdf"]
        check_png(paths[0])


def test_text_report_on_a_narrow_terminal_keeps_tensor_names(report_runs):
    console = Console(file=io.StringIO(), width=80, color_system=None, force_terminal=True)
    report(report_runs["sgd_momentum"], console=console, figures=False)
    text = console.file.getvalue()
    assert "block2.shortcut.0.weight" in text  # names are never cut
    assert max(len(line) for line in text.splitlines()) <= 80


def _summary_headers() -> list[str]:
    from stepsize_lens.report.document import SUMMARY_COLUMNS

    return [c for c in SUMMARY_COLUMNS if c not in ("test pass", "projected")]


def test_piped_text_report_keeps_every_column_whole(report_runs):
    # not a terminal (a file, a pipe, a CI log): rich's 80 columns must not cut or drop cells
    console = Console(file=io.StringIO(), width=80, color_system=None, force_terminal=False)
    report(report_runs["sgd_momentum"], console=console, figures=False)
    out = console.file.getvalue()
    assert "…" not in out
    for header in _summary_headers():
        for word in header.split(" "):
            assert word in out, header


def test_narrow_terminal_splits_tables_instead_of_dropping_columns(report_runs):
    console = Console(file=io.StringIO(), width=70, color_system=None, force_terminal=True)
    report(report_runs["sgd_momentum"], console=console, figures=False)
    out = console.file.getvalue()
    assert "(continued)" in out
    for header in _summary_headers():
        for word in header.split(" "):
            assert word in out, header
    assert max(len(line) for line in out.splitlines()) <= 70


def test_json_report_prints_what_it_writes(report_runs, tmp_path):
    console = quiet()
    result = report(
        report_runs["adamw"], out=tmp_path, format="json", figures=False, console=console
    )
    printed = json.loads(console.file.getvalue())
    assert printed == json.loads((tmp_path / "report.json").read_text())
    assert set(printed) == REPORT_KEYS and printed["figures"] == {}
    assert result.page == tmp_path / "report.json"


@pytest.mark.slow
def test_html_report_embeds_every_figure_and_nothing_external(report_runs, tmp_path):
    console = quiet()
    result = report(report_runs["sgdp"], out=tmp_path / "out", format="html", console=console)
    assert console.file.getvalue().strip() == str(result.page)
    page = result.page.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    sources = re.findall(r'<img [^>]*src="([^"]+)"', page)
    assert len(sources) == len(REPORT_FIGURES)
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        image = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        image.load()
        assert image.format == "PNG"
    assert "<script" not in page and "<link" not in page
    assert not re.search(r'(src|href)="(?!data:)', page)
    assert "Findings" in page and "Summary per invariance class" in page


def test_markdown_report_links_figures_relative_to_the_page(report_runs, tmp_path):
    console = quiet()
    result = report(report_runs["sgd"], out=tmp_path, format="markdown", console=console)
    text = result.page.read_text(encoding="utf-8")
    assert text == console.file.getvalue()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(links) == len(REPORT_FIGURES)
    for link in links:
        assert not Path(link).is_absolute() and (tmp_path / link).is_file()
    assert "| invariance class |" in text


@pytest.mark.slow
def test_compare_report_overlays_runs(local_runs):
    console = quiet()
    chosen = [local_runs[n] for n in ("sgd_momentum", "sgdp", "adamw")]
    result = compare_report(chosen, format="html", console=console)
    assert result.out == chosen[0].parent / "sgd_momentum_vs_sgdp_vs_adamw_compare"
    assert set(result.figures) == {"paper_panel", "norm_growth", "effective_step"}
    page = result.page.read_text(encoding="utf-8")
    assert page.count('src="data:image/png;base64,') == 3
    assert "SGDP ÷ ref" in page and "Findings: AdamW" in page


def test_compare_text_shows_ratio_columns(report_runs):
    console = quiet(width=200)
    result = compare_report(
        [report_runs["sgd_momentum"], report_runs["sgdp"]], figures=False, console=console
    )
    text = console.file.getvalue()
    assert "Side by side, ratios to SGD momentum 0.9 (ref)" in text
    (row,) = [
        r
        for r in result.data["comparison"]
        if r["run"] == "SGDP" and r["key"] == "channel" and r["metric"] == "weight_norm"
    ]
    line = next(x for x in text.splitlines() if x.lstrip().startswith("channel") and "‖w‖ " in x)
    assert times(row["final_ratio"]) in line and times(row["mean_ratio"]) in line


def test_bad_options_are_user_errors(report_runs):
    with pytest.raises(UserInputError, match="--format"):
        report(report_runs["sgd"], format="pdf")
    with pytest.raises(UserInputError, match="--by"):
        report(report_runs["sgd"], by="layer")
    with pytest.raises(UserInputError, match="--delta"):
        report(report_runs["sgd"], delta=0.0)
