"""The optimizer-family table (docs/design.md §5): recognition, family-keyed formulas, and that a
new family is one table entry."""

from __future__ import annotations

import numpy as np
import pytest
from _runs import Tensor, crafted_run

from stepsize_lens.analysis import find, theory
from stepsize_lens.analysis.theory import families


def test_family_dispatch_matches_the_formulas() -> None:
    # with the unprojected fall-backs
    assert theory.equilibrium_angle(
        "sgdp", 0.1, 1e-4, momentum=0.9, projected=False
    ) == pytest.approx(theory.sgd_equilibrium_angle(0.1, 1e-4, 0.9))
    assert theory.equilibrium_angle(
        "adamp", 1e-3, 0.05, beta1=0.9, projected=False
    ) == pytest.approx(theory.adamw_equilibrium_angle(1e-3, 0.05, 0.9))
    assert np.isnan(theory.equilibrium_angle("adam", 1e-3, 0.05))
    assert theory.relaxation_steps("sgd", 0.1, 0.01, momentum=0.9) == pytest.approx(25.0)
    assert theory.relaxation_steps("adamw", 0.01, 0.5) == pytest.approx(100.0)
    assert theory.relaxation_steps("sgd", 0.1, 0.0) == np.inf


def test_equilibrium_norm_dispatch() -> None:
    assert families.equilibrium_norm(
        "sgd", 0.1, 1e-3, scale_free_grad_norm=2.0, momentum=0.9
    ) == pytest.approx(float(theory.sgd_equilibrium_norm(0.1, 1e-3, 2.0, 0.9)))
    assert families.equilibrium_norm("adamw", 1e-3, 0.05, numel=100) == pytest.approx(
        float(theory.adamw_equilibrium_norm(1e-3, 0.05, 100))
    )
    projected = families.equilibrium_norm(
        "adamp", 1e-3, 0.05, numel=100, projected=np.array([True, False])
    )
    assert projected[0] == pytest.approx(float(theory.adamp_equilibrium_norm(1e-3, 0.05, 100)))
    assert projected[1] == pytest.approx(float(theory.adamw_equilibrium_norm(1e-3, 0.05, 100)))
    assert np.isnan(families.equilibrium_norm("adam", 1e-3, 0.05, numel=100))
    assert np.isnan(families.relaxation_steps("nonesuch", 0.1, 0.01))


def test_recognition_from_the_optimizer_class() -> None:
    assert families.family_of_optimizer("SGD") == "sgd"
    assert families.family_of_optimizer("AdamW") == "adamw"
    assert families.family_of_optimizer("Adam", {}) == "adam"
    assert families.family_of_optimizer("Adam", {"decoupled_weight_decay": True}) == "adamw"
    assert families.family_of_optimizer("Lion") == "unknown"
    assert families.family_of_optimizer("SGD", None) == "sgd"
    assert families.FAMILIES == ("sgd", "adamw", "adam", "sgdp", "adamp", "unknown")
    assert families.family_entry("nonesuch") is families.UNKNOWN


def test_table_entries_say_what_each_family_does() -> None:
    table = families.FAMILY_TABLE
    assert {name for name, f in table.items() if f.projects} == {"sgdp", "adamp"}
    assert {name for name, f in table.items() if f.base == "sgd"} == {"sgd", "sgdp"}
    assert {name for name, f in table.items() if f.decoupled_decay} == {"adamw", "sgdp", "adamp"}
    assert [name for name, f in table.items() if f.gradient_identity] == ["sgd"]
    assert table["adam"].equilibrium_angle is None  # L2 through Adam's normaliser: no theory
    for name, family in table.items():
        assert family.name == name and family.typical_weight_decay


def test_a_new_family_is_one_table_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    """An optimizer the table does not know gets NaN predictions; one entry gives it a theory
    everywhere (recognition, angle, relaxation, predictions, findings' suggestion)."""
    tensors = (Tensor("conv.weight", (4, 2, 3, 3), 0, "channel"),)
    run = crafted_run(tensors=tensors, records=5, optimizer="Toy", groups={"weight_decay": 0.02})
    assert theory.optimizer_family(run) == "unknown"
    assert theory.equilibrium_predictions(run)["predicted_angle"].isna().all()
    toy = families.Family(
        "toy",
        families.named("Toy"),
        base="sgd",
        equilibrium_angle=lambda h: np.sqrt(2.0 * h.lr * h.weight_decay),
        relaxation_rate=lambda h: 2.0 * h.lr * h.weight_decay,
        typical_weight_decay="about 0.02 with Toy",
    )
    monkeypatch.setitem(families.FAMILY_TABLE, "toy", toy)
    assert theory.optimizer_family(run) == "toy"
    pred = theory.equilibrium_predictions(run)
    np.testing.assert_allclose(pred["predicted_angle"], np.sqrt(2 * 0.1 * 0.02))
    np.testing.assert_allclose(pred["relaxation_steps"], 1 / (2 * 0.1 * 0.02))
    assert pred["predicted_norm"].isna().all()  # no norm formula given
    no_decay = crafted_run(tensors=tensors, records=5, optimizer="Toy", groups={"weight_decay": 0})
    (finding,) = [f for f in find(no_decay) if f.kind == "no_weight_decay"]
    assert "about 0.02 with Toy" in finding.suggestion
