"""The findings matrix (docs/findings.md): every optimizer under every lr schedule, short and
long against the weight-decay timescale, noise and real labels; each report checked against
rules derived from the run's recorded lr, weight decay and norms and from the recurrence.

The runs are trained once per module (`matrix`); the three must-hold properties of issue 20
are separate tests over the same reports, and the rules themselves are tested to fail on a
report that breaks them."""

from __future__ import annotations

import copy

import pytest

from stepsize_lens.experiments import findings_matrix as M

DECAYING_NAMED = ("cosine", "wsd", "step")  # the must-hold schedules


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    """(cell, run, report data) for every cell of `findings_matrix.CELLS`."""
    from stepsize_lens.report import report_data

    folder = tmp_path_factory.mktemp("findings_matrix")
    out = []
    for cell in M.CELLS:
        run = M.train_cell(cell, folder / f"{cell.name}.pt")
        out.append((cell, run, report_data(run)))
    return out


def test_the_matrix_covers_every_optimizer_schedule_length_and_labels() -> None:
    assert {c.optimizer for c in M.CELLS} == set(M.OPTIMIZERS)
    assert {c.schedule for c in M.CELLS} == set(M.SCHEDULES)
    for optimizer in M.OPTIMIZERS:
        cells = [c for c in M.CELLS if c.optimizer == optimizer]
        assert {c.length for c in cells} == set(M.LENGTHS)
        assert {c.labels for c in cells} == set(M.LABELS)
    for schedule in M.SCHEDULES:
        assert {c.length for c in M.CELLS if c.schedule == schedule} == set(M.LENGTHS)
    assert len(M.all_cells()) == 7 * 5 * 2 * 2


@pytest.mark.slow
def test_every_cell_keeps_every_rule(matrix) -> None:
    problems = [v for cell, run, data in matrix for v in M.violations(run, data, cell)]
    assert problems == []
    # the matrix exercises what it checks: the rules had something to bite on
    truths = {cell.name: M.truth(run) for cell, run, _ in matrix}
    assert any(t.covered > 1.2 for t in truths.values())  # runs longer than the timescale
    assert any(t.covered < 0.8 for t in truths.values())  # and shorter
    assert any(t.norm_part >= 2.0 for t in truths.values())  # premature decay to find
    kinds = {f["kind"] for _, _, data in matrix for f in data["findings"]}
    assert {"premature_decay", "equilibrium_tracking", "equilibrium_time"} <= kinds
    assert {"wd_timescale", "no_weight_decay", "gradient_faded"} <= kinds


@pytest.mark.slow
def test_no_finding_speaks_of_a_step_beyond_the_run_on_decaying_schedules(matrix) -> None:
    """Must hold 1: on warmup+cosine, WSD and step decay, no title, suggestion, advice line or
    step-valued evidence names a step after the run's last step."""
    checked = 0
    for cell, run, data in matrix:
        if cell.schedule not in DECAYING_NAMED:
            continue
        last = int(run.steps[-1])
        for f in data["findings"]:
            for key, value in M._step_keys(f["evidence"]).items():
                assert value <= last, (cell.name, f["kind"], key, value)
                checked += 1
            for text in M._texts(f):
                for match in M._STEP_TEXT.finditer(text):
                    assert int(match.group(1).replace(",", "")) <= last, (cell.name, text)
                    checked += 1
        assert "step" not in data["verdict"]["text"] or all(
            int(m.group(1).replace(",", "")) <= last
            for m in M._STEP_TEXT.finditer(data["verdict"]["text"])
        )
        assert "equilibrium_time" not in {f["kind"] for f in data["findings"]}
    assert checked > 10


@pytest.mark.slow
def test_every_title_number_is_an_evidence_value(matrix) -> None:
    """Must hold 2: every number a title quotes is one of its evidence fields, to the digits
    shown."""
    quoted = 0
    for cell, _, data in matrix:
        for f in data["findings"]:
            values = M._scalars(f["evidence"])
            for value, tolerance in M.title_numbers(f["title"]):
                assert any(abs(value - v) <= tolerance for v in values), (cell.name, f["title"])
                quoted += 1
    assert quoted > 50


@pytest.mark.slow
def test_every_advice_line_names_a_real_argument_within_the_ranges(matrix) -> None:
    """Must hold 3: advice names an argument of the recorded optimizer class (its signature)
    with a value inside `advice.PLAUSIBLE_WEIGHT_DECAY`; a switch keeps only arguments both
    classes take."""
    lines = 0
    for cell, run, data in matrix:
        last = int(run.steps[-1])
        for f in data["findings"]:
            assert M.advice_problems(run, f, last) == [], cell.name
            lines += len(f["advice"])
    assert lines >= 1


# --------------------------------------------------------------------------------------------
# The rules fail on reports that break them
# --------------------------------------------------------------------------------------------


def test_title_numbers_parse_quotes_and_skip_formula_constants() -> None:
    parsed = M.title_numbers(
        "τ = 1/(ηλ') = 10,000 steps covers 0.02 timescale(s): 2.13x, 1.75e+03x, within 10%"
    )
    assert [v for v, _ in parsed] == [10000.0, 0.02, 2.13, 1750.0, 0.1]
    assert [t for _, t in parsed] == pytest.approx([0.5, 0.005, 0.005, 5.0, 0.005], rel=1e-6)
    assert M.title_numbers("conv1.weight of 3 tensor(s) (η/‖w‖²)") == [(3.0, pytest.approx(0.5))]


@pytest.mark.slow
def test_the_rules_catch_a_contradicting_title_a_late_step_and_absurd_advice(matrix) -> None:
    cell, run, data = next(
        (cell, run, data)
        for cell, run, data in matrix
        if cell.schedule in M.DECAYING and any(f["advice"] for f in data["findings"])
    )
    assert M.violations(run, data, cell) == []
    last = int(run.steps[-1])
    broken = copy.deepcopy(data)
    finding = next(f for f in broken["findings"] if f["advice"])
    finding["title"] += " (0.94 apart)"
    finding["suggestion"] += f" Equilibrium predicted at step {last * 1000:,}."
    finding["advice"][0]["new"] = 2.5 if finding["advice"][0]["argument"] else None
    if finding["advice"][0]["argument"] is None:
        finding["advice"][0]["arguments"] = ["maximize_everything"]
    finding["advice"][0]["effect"]["angle_ratio"] = 1.01
    finding["advice"][0]["effect"]["equilibrium_step"] = None
    problems = " | ".join(M.violations(run, broken, cell))
    assert "title number 0.94" in problems
    assert "not material" in problems
    assert "outside" in problems or "not an argument of both" in problems
    assert "beyond the run" in problems
