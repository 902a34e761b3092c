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
    # Adam with L2 has an equilibrium now: the decay acts through the normaliser
    assert theory.equilibrium_angle("adam", 1e-3, 0.05, numel=100, scale_free_grad_norm=10.0) > 0
    assert np.isnan(theory.equilibrium_angle("adam", 1e-3, 0.05))  # needs numel and g̃
    assert np.isnan(theory.equilibrium_angle("nonesuch", 1e-3, 0.05))
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
    # Adam with L2: ‖w‖³ = η·sqrt(numel)·g̃/(2λ) (noise-dominated, λ‖w‖ ≪ ‖g‖)
    assert families.equilibrium_norm(
        "adam", 1e-3, 0.05, numel=100, scale_free_grad_norm=10.0
    ) == pytest.approx((1e-3 * 10 * 10 / (2 * 0.05)) ** (1 / 3))
    assert np.isnan(families.equilibrium_norm("adam", 1e-3, 0.05, numel=100))  # needs g̃
    assert np.isnan(families.relaxation_steps("nonesuch", 0.1, 0.01))


def test_recognition_from_the_optimizer_class() -> None:
    assert families.family_of_optimizer("SGD") == "sgd"
    assert families.family_of_optimizer("AdamW") == "adamw"
    assert families.family_of_optimizer("Adam", {}) == "adam"
    assert families.family_of_optimizer("Adam", {"decoupled_weight_decay": True}) == "adamw"
    assert families.family_of_optimizer("Lion") == "lion"  # lion_pytorch's and timm's
    assert families.family_of_optimizer("AdamC") == "adamc"
    assert families.family_of_optimizer("AdamW", {"corrected_weight_decay": True}) == "adamc"
    assert families.family_of_optimizer("Muon", {}, "torch.optim._muon") == "muon"
    assert families.family_of_optimizer("Muon", {}, "timm.optim.muon") == "unknown"
    assert families.family_of_optimizer("Shampoo") == "unknown"
    assert families.family_of_optimizer("SGD", None) == "sgd"
    assert families.FAMILIES == (
        "sgd",
        "adamc",
        "adamw",
        "adam",
        "sgdp",
        "adamp",
        "lion",
        "muon",
        "unknown",
    )
    assert families.family_entry("nonesuch") is families.UNKNOWN


def test_table_entries_say_what_each_family_does() -> None:
    table = families.FAMILY_TABLE
    assert {name for name, f in table.items() if f.projects} == {"sgdp", "adamp"}
    assert {name for name, f in table.items() if f.base == "sgd"} == {"sgd", "sgdp"}
    coupled = {"sgd", "adam"}  # weight decay added to the gradient
    assert {name for name, f in table.items() if f.decoupled_decay} == set(table) - coupled
    assert [name for name, f in table.items() if f.gradient_identity] == ["sgd"]
    for name, family in table.items():
        assert family.name == name and family.typical_weight_decay
        assert family.predicts and family.equilibrium_angle is not None
    assert not families.UNKNOWN.predicts


def test_a_new_family_is_one_table_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    """An optimizer the table does not know gets NaN predictions; one entry gives it a theory
    everywhere (recognition, angle, relaxation, predictions, findings' suggestion)."""
    tensors = (Tensor("conv.weight", (4, 2, 3, 3), 0, "channel"),)
    run = crafted_run(tensors=tensors, records=5, optimizer="Toy", groups={"weight_decay": 0.02})
    assert theory.optimizer_family(run) == "unknown"
    assert theory.equilibrium_predictions(run)["predicted_angle"].isna().all()
    assert theory.predict(run).empty  # no derived prediction: left out, not guessed
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
