"""Findings: each kind fires on a crafted run with the problem and is silent on a healthy run."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _runs import DEFAULT_TENSORS, Tensor, equilibrium_angle_sgd, healthy_run

from stepsize_lens.analysis import KINDS, Finding, Thresholds, find, rank

T = len(DEFAULT_TENSORS)
INVARIANT = [0, 1, 2]  # conv1, conv2 (channel), proj (layer)
RECORDS = 200


def kinds(findings: list[Finding]) -> set[str]:
    return {f.kind for f in findings}


def _noise(seed: int = 1) -> np.ndarray:
    return 1 + 0.03 * np.random.default_rng(seed).standard_normal((RECORDS, T))


def test_healthy_run_only_reports_equilibrium() -> None:
    findings = find(healthy_run())
    assert kinds(findings) == {"equilibrium_reached"}
    reached = findings[0]
    assert reached.severity == "info"
    assert reached.evidence["ratio"] == pytest.approx(1.0, abs=0.02)
    assert set(reached.tensors) == {"conv1.weight", "conv2.weight", "proj.weight"}


def test_nonfinite_gradient_fires() -> None:
    grad = np.ones((RECORDS, T))
    grad[50, 1] = np.inf
    grad[60, 3] = np.nan  # NaN gradient that was applied: update is NaN too
    update = np.full((RECORDS, T), 0.01)
    update[60, 3] = np.nan
    findings = find(healthy_run(overrides={"grad_norm": grad, "update_norm": update}))
    assert findings[0].kind == "nonfinite" and findings[0].severity == "critical"
    evidence = findings[0].evidence
    assert evidence["cells"] == 2 and evidence["first_step"] == 51
    assert evidence["gradient_cells"] == 2 and evidence["update_cells"] == 1
    assert set(findings[0].tensors) == {"conv2.weight", "fc.weight"}
    assert "nonfinite" not in kinds(find(healthy_run()))


def test_norm_blowup_fires_with_severity_by_ratio() -> None:
    weight = np.full((RECORDS, T), 1.5)
    weight[:, 3] = np.linspace(1.5, 30.0, RECORDS)  # 20x on the (not invariant) classifier
    warning = [f for f in find(healthy_run(weight_norm=weight)) if f.kind == "norm_blowup"]
    assert len(warning) == 1 and warning[0].severity == "warning"
    assert warning[0].tensors == ("fc.weight",)
    assert warning[0].evidence["max_ratio"] == pytest.approx(20.0, rel=1e-5)
    assert warning[0].evidence["not_scale_invariant"] == 1
    weight[:, 3] = np.linspace(1.5, 300.0, RECORDS)
    critical = [f for f in find(healthy_run(weight_norm=weight)) if f.kind == "norm_blowup"]
    assert critical[0].severity == "critical"
    assert "norm_blowup" not in kinds(
        find(healthy_run(weight_norm=weight), thresholds=Thresholds(blowup_ratio=1000))
    )
    zero_start = np.full((RECORDS, T), 1.5)
    zero_start[0, 5] = 0.0  # a zero-initialised bias has no growth ratio
    assert "norm_blowup" not in kinds(find(healthy_run(weight_norm=zero_start)))


def test_premature_decay_fires_when_the_step_collapses_at_constant_lr() -> None:
    eq = equilibrium_angle_sgd()
    r = np.arange(RECORDS)[:, None]
    angle = np.where(np.isin(np.arange(T), INVARIANT), 20 * eq / (1 + r / 5.0), eq) * _noise()
    findings = find(healthy_run(angular_update=angle))
    decay = [f for f in findings if f.kind == "premature_decay"]
    assert len(decay) == 1
    assert set(decay[0].tensors) == {"conv1.weight", "conv2.weight", "proj.weight"}
    assert decay[0].evidence["first_step"] < 100
    assert decay[0].evidence["median_decay"] > 10
    assert "SGDP" in decay[0].suggestion
    assert "premature_decay" not in kinds(find(healthy_run()))
    # the same fall caused by an lr schedule is not premature
    lr = np.where(r < 20, 0.1, 0.1 * 20 / (1 + r))[:, [0, 0]] * np.ones((1, 2))
    scheduled = find(
        healthy_run(angular_update=angle, groups={"lr": lr, "weight_decay": [5e-4, 5e-4]})
    )
    assert "premature_decay" not in kinds(scheduled)


def test_no_weight_decay_on_scale_invariant_tensors_fires() -> None:
    r = np.arange(1, RECORDS + 1)[:, None]
    angle = 0.05 * r**-0.5 * np.ones((1, T))
    findings = find(healthy_run(angular_update=angle, groups={"weight_decay": [0.0, 0.0]}))
    found = [f for f in findings if f.kind == "no_weight_decay"]
    assert len(found) == 1
    assert found[0].evidence["tensor_count"] == 3 and found[0].evidence["groups"] == [0]
    assert found[0].evidence["median_decay_exponent"] == pytest.approx(-0.5, abs=0.01)
    assert "equilibrium_reached" not in kinds(findings) and "equilibrium_missed" not in kinds(
        findings
    )
    # weight decay only on the 1-D group does not help; only on the invariant group is healthy
    one_d_only = find(healthy_run(groups={"weight_decay": [0.0, 5e-4]}))
    assert "no_weight_decay" in kinds(one_d_only)
    assert "no_weight_decay" not in kinds(find(healthy_run(groups={"weight_decay": [5e-4, 0.0]})))


@pytest.mark.parametrize(
    ("optimizer", "expected", "absent"),
    [
        ("SGD", "1e-4 to 5e-4 with SGD)", "AdamW"),
        ("SGDP", "1e-4 to 5e-4 with SGDP", "0.01"),
        ("AdamW", "0.01 to 0.05 with AdamW", "5e-4"),
        ("AdamP", "0.01 to 0.05 with AdamP", "5e-4"),
        ("Adam", "torch.optim.AdamW", "5e-4"),
        ("Shampoo", "typically a small value", "5e-4"),
    ],
)
def test_no_weight_decay_suggests_a_value_for_the_optimizer_family(
    optimizer: str, expected: str, absent: str
) -> None:
    run = healthy_run(optimizer=optimizer, groups={"weight_decay": [0.0, 0.0]})
    (finding,) = [f for f in find(run) if f.kind == "no_weight_decay"]
    assert expected in finding.suggestion
    assert absent not in finding.suggestion


def test_equilibrium_missed_fires_when_off_the_prediction() -> None:
    angle = 2.0 * equilibrium_angle_sgd() * _noise()
    findings = find(healthy_run(angular_update=angle))
    missed = [f for f in findings if f.kind == "equilibrium_missed"]
    assert len(missed) == 1 and "equilibrium_reached" not in kinds(findings)
    assert missed[0].evidence["ratio"] == pytest.approx(2.0, rel=0.03)
    assert missed[0].evidence["tensors_outside_tolerance"] == 3
    # 200 steps against a relaxation time of 500: the suggestion says to train longer
    assert "train longer" in missed[0].suggestion
    assert "equilibrium_missed" not in kinds(find(healthy_run()))


def test_equilibrium_reached_is_silent_when_missed_or_undefined() -> None:
    assert "equilibrium_reached" in kinds(find(healthy_run()))
    assert "equilibrium_reached" not in kinds(
        find(healthy_run(angular_update=0.5 * equilibrium_angle_sgd()))
    )
    assert not kinds(find(healthy_run(optimizer="Shampoo"))) & {
        "equilibrium_reached",
        "equilibrium_missed",
    }
    assert "equilibrium_reached" not in kinds(find(healthy_run(records=5)))  # too short to judge


def _sgdp_run(applied: np.ndarray, **kwargs):
    angle = np.sqrt(2 * 0.1 * 5e-4 * 0.1 / 0.1) * _noise()  # SGDP's projected equilibrium
    return healthy_run(optimizer="SGDP", applied_view=applied, angular_update=angle, **kwargs)


def test_projection_never_and_always() -> None:
    sensible = np.tile([1, 1, 2, 0, -1, -1], (RECORDS, 1))
    assert kinds(find(_sgdp_run(sensible))) == {"equilibrium_reached"}
    never = np.tile([0, 0, 0, 0, -1, -1], (RECORDS, 1))
    found = [f for f in find(_sgdp_run(never)) if f.kind == "projection_never"]
    assert len(found) == 1 and found[0].evidence["tensor_count"] == 4
    assert "SGDP" in found[0].title
    always = np.tile([1, 1, 2, 2, -1, -1], (RECORDS, 1))
    found = [f for f in find(_sgdp_run(always)) if f.kind == "projection_always"]
    assert len(found) == 1
    assert found[0].evidence["projected_but_not_invariant"] == ["fc.weight"]
    # plain SGD has no projection to judge
    assert not kinds(find(healthy_run())) & {"projection_never", "projection_always"}


def test_weight_decay_mismatch_across_groups() -> None:
    tensors = (
        Tensor("conv1.weight", (8, 3, 3, 3), 0, "channel"),
        Tensor("conv2.weight", (16, 8, 3, 3), 1, "channel"),
        Tensor("fc.weight", (10, 16), 2, "none"),
    )
    eq = np.sqrt(2 * 0.1 * np.array([5e-4, 5e-2, 0.0]) / 1.9)
    mismatch = healthy_run(
        tensors=tensors,
        angular_update=eq * np.ones((RECORDS, 1)),
        weight_norm=1.5,
        groups={"weight_decay": [5e-4, 5e-2, 0.0]},
    )
    found = [f for f in find(mismatch) if f.kind == "wd_mismatch"]
    assert len(found) == 1
    assert found[0].evidence["weight_decay_by_group"] == {"0": 5e-4, "1": 5e-2}
    assert found[0].evidence["ratio"] == pytest.approx(100.0)
    equal = healthy_run(
        tensors=tensors,
        angular_update=eq[0],
        weight_norm=1.5,
        groups={"weight_decay": [5e-4, 5e-4, 0.0]},
    )
    assert kinds(find(equal)) == {"equilibrium_reached"}
    assert "wd_mismatch" not in kinds(find(healthy_run()))


def test_ranking_and_serialisation() -> None:
    grad = np.ones((RECORDS, T))
    grad[10, 0] = np.inf
    run = healthy_run(overrides={"grad_norm": grad}, groups={"weight_decay": [0.0, 0.0]})
    findings = find(run)
    severities = [f.severity for f in findings]
    assert severities == sorted(severities, key=["critical", "warning", "info"].index)
    assert findings[0].kind == "nonfinite"
    assert all(f.kind in KINDS for f in findings)
    json.dumps([f.to_dict() for f in findings])  # JSON-friendly evidence
    shuffled = list(reversed(findings))
    assert rank(shuffled) == findings
    for finding in findings:
        assert finding.title and finding.suggestion and finding.tensors


@pytest.mark.parametrize("records", [0, 1, 3])
def test_short_empty_and_all_skipped_runs_do_not_crash(records) -> None:
    from stepsize_lens.analysis import summarize

    for run in (
        healthy_run(records=records),
        healthy_run(records=records, skipped=[True] * records),
    ):
        with np.errstate(all="raise"):
            assert not kinds(find(run)) & {"premature_decay", "equilibrium_reached", "nonfinite"}
            assert len(summarize(run)) == len(summarize(run, by="group")) + len(
                summarize(run, by="class")
            )
