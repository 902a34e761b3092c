"""The verdict a report opens with (`analysis.verdict`): healthy or not, why, and what would
change it, quoted from the findings; the same text in JSON, markdown, HTML and the terminal."""

from __future__ import annotations

import numpy as np
from _runs import DEFAULT_TENSORS, healthy_run, steady_run

from stepsize_lens.analysis import Finding, find, verdict
from stepsize_lens.analysis.verdict import first_sentence


def _finding(kind: str, severity: str, title: str, suggestion: str, advice=()) -> Finding:
    return Finding(kind, severity, title, {}, (), suggestion, 0.0, tuple(advice))


def test_a_run_at_equilibrium_is_healthy_and_says_why() -> None:
    findings = find(steady_run())
    out = verdict(findings)
    assert out["healthy"] is True and len(out["sentences"]) == 3
    (reached,) = [f for f in findings if f.kind == "equilibrium_reached"]
    assert out["sentences"][1] == reached.title + "."
    assert out["kinds"] == ["equilibrium_reached"]


def test_a_problem_gives_its_title_its_cause_and_the_advice() -> None:
    advice = {"text": "`weight_decay=0.0001 → 0.001`: the angular update would be 1.5x larger"}
    findings = [
        _finding("wd_timescale", "warning", "Weight-decay timescale τ exceeds the run", "A. B."),
        _finding(
            "premature_decay",
            "warning",
            "Norm growth alone cut the effective step 2.13x",
            "Norm growth shrank η/‖w‖² 2.13x; the rest is the lr. Momentum grows norms.",
            [advice],
        ),
        _finding("gradient_faded", "info", "Effective step fell", "x"),
    ]
    out = verdict(findings)
    assert out["healthy"] is False
    assert out["sentences"] == [
        "Not healthy: norm growth alone cut the effective step 2.13x.",
        "Why: norm growth shrank η/‖w‖² 2.13x; the rest is the lr.",
        f"What would change it: {advice['text']}.",
    ]
    assert out["kinds"] == ["premature_decay"]
    without = verdict(findings[:1])
    assert without["healthy"] is False and "No change" in without["sentences"][2]
    assert verdict([])["healthy"] is True


def test_first_sentence_keeps_numbers_and_names_whole() -> None:
    assert first_sentence("Norm grew 0.98x over 1,000 steps. Then more.") == (
        "Norm grew 0.98x over 1,000 steps"
    )
    assert first_sentence("Switch to `stepsize_lens.SGDP`: it projects.") == (
        "Switch to `stepsize_lens.SGDP`: it projects"
    )
    assert first_sentence("One sentence only") == "One sentence only"


def test_every_view_opens_with_the_same_verdict(tmp_path) -> None:
    from stepsize_lens.report import report_data
    from stepsize_lens.report.document import Verdict, report_document
    from stepsize_lens.report.html import html_document
    from stepsize_lens.report.text import markdown_document

    weight = np.full((200, len(DEFAULT_TENSORS)), 1.5)
    weight[:, :3] = np.linspace(1.0, 3.0, 200)[:, None]  # the invariant tensors' norms triple
    angle = 0.02 / weight**2  # and their effective step falls as 1/‖w‖²
    data = report_data(healthy_run(weight_norm=weight, angular_update=angle))
    text = data["verdict"]["text"]
    assert data["verdict"]["healthy"] is False and text.startswith("Not healthy:")
    doc = report_document(data)
    assert isinstance(doc.blocks[0], Verdict) and doc.blocks[0].text == text
    from html import escape

    assert escape(text) in html_document(doc)
    markdown = markdown_document(doc)
    assert markdown.splitlines()[2] == f"**{text}**"
    from io import StringIO

    from rich.console import Console

    from stepsize_lens.report.text import print_document

    console = Console(file=StringIO(), width=400)
    print_document(doc, console)
    assert " ".join(text.split()) in " ".join(console.file.getvalue().split())
    assert all(not f["advice"] for f in data["findings"])  # its optimizer class is unknown
