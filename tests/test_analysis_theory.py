"""Theory (DESIGN.md §5): pure formulas against brute force and simulation, and the predictions
made from recorded runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _runs import Tensor, crafted_run, record_run

import stepsize_lens
from stepsize_lens.analysis import theory
from stepsize_lens.experiments.toys import noisy_sphere

# --------------------------------------------------------------------------------------------
# Pure functions
# --------------------------------------------------------------------------------------------


def _tangent(rng: np.random.Generator, w: np.ndarray) -> np.ndarray:
    xi = rng.standard_normal(w.shape)
    unit = w / np.linalg.norm(w)
    return xi - (xi @ unit) * unit


def test_one_step_identities_match_brute_force() -> None:
    rng = np.random.default_rng(0)
    w, delta, u = rng.standard_normal((3, 50))
    after = w + delta
    cos = (w @ delta) / (np.linalg.norm(w) * np.linalg.norm(delta))
    assert theory.norm_sq_after(np.linalg.norm(w), np.linalg.norm(delta), cos) == pytest.approx(
        after @ after
    )
    lr, wd = 0.05, 0.3
    decoupled = (1 - lr * wd) * w - lr * u
    assert theory.decoupled_norm_sq(w @ w, lr, wd, w @ u, u @ u) == pytest.approx(
        decoupled @ decoupled
    )
    g = _tangent(rng, w)
    plain = w - lr * g
    assert theory.plain_gd_norm_sq(w @ w, lr, g @ g) == pytest.approx(plain @ plain)
    # a zero update has an undefined cosine but a well-defined result
    assert theory.norm_sq_after(2.0, 0.0, np.nan) == pytest.approx(4.0)


def test_momentum_lemma_matches_simulation_with_a_changing_lr() -> None:
    rng = np.random.default_rng(1)
    beta = 0.8
    lrs = np.linspace(0.1, 0.02, 60)
    w = rng.standard_normal(20)
    buf = np.zeros(20)
    norms_sq = [w @ w]
    buffer_norms = []
    for lr in lrs:
        buf = beta * buf + _tangent(rng, w)  # any gradient orthogonal to the current w
        buffer_norms.append(np.linalg.norm(buf))
        w = w - lr * buf
        norms_sq.append(w @ w)
    predicted = theory.momentum_norm_sq(norms_sq[0], lrs, buffer_norms, beta)
    np.testing.assert_allclose(predicted, norms_sq, rtol=1e-12)


def test_projected_norm_matches_simulation() -> None:
    rng = np.random.default_rng(2)
    w = rng.standard_normal(10)
    norms_sq, projected = [w @ w], []
    for _ in range(30):
        step = _tangent(rng, w)
        projected.append(np.linalg.norm(step))
        w = w - 0.1 * step
        norms_sq.append(w @ w)
    np.testing.assert_allclose(
        theory.projected_norm_sq(norms_sq[0], 0.1, projected), norms_sq, rtol=1e-12
    )


def test_growth_factor_and_angle_formulas() -> None:
    assert theory.momentum_growth_factor(0.9) == pytest.approx(19.0)
    assert theory.momentum_growth_factor(0.0) == pytest.approx(1.0)
    assert theory.sgd_equilibrium_angle(0.1, 5e-4, 0.9) == pytest.approx(
        np.sqrt(2 * 0.1 * 5e-4 / 1.9)
    )
    assert theory.sgd_equilibrium_angle(0.1, 5e-4, 0.9, dampening=0.5) == pytest.approx(
        np.sqrt(2 * 0.05 * 5e-4 / 1.9)
    )
    assert theory.adamw_equilibrium_angle(1e-3, 0.05, 0.9) == pytest.approx(
        np.sqrt(2e-3 * 0.05 * 0.1 / 1.9)
    )
    assert theory.sgdp_equilibrium_angle(0.1, 1e-4, 0.9, 0.1) == pytest.approx(
        np.sqrt(2 * 0.1 * 1e-5 / 0.1)
    )
    assert theory.adamp_equilibrium_angle(1e-3, 0.05, 0.1) == pytest.approx(np.sqrt(2e-3 * 0.005))
    # dispatch, with the unprojected fall-backs
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


@pytest.mark.parametrize(
    ("name", "make", "predicted", "steps"),
    [
        (
            "sgd",
            lambda p: torch.optim.SGD(p, lr=0.1, weight_decay=0.01),
            theory.sgd_equilibrium_angle(0.1, 0.01),
            1000,
        ),
        (
            "sgd-dampening",
            lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.8, dampening=0.5, weight_decay=0.02),
            theory.sgd_equilibrium_angle(0.1, 0.02, 0.8, 0.5),
            1500,
        ),
        (
            "sgdp",
            lambda p: stepsize_lens.SGDP(p, lr=0.1, momentum=0.9, weight_decay=0.02, wd_ratio=0.1),
            theory.sgdp_equilibrium_angle(0.1, 0.02, 0.9, 0.1),
            1500,
        ),
        (
            "adamp",
            lambda p: stepsize_lens.AdamP(p, lr=0.01, weight_decay=2.0, wd_ratio=0.1),
            theory.adamp_equilibrium_angle(0.01, 2.0, 0.1),
            2000,
        ),
    ],
)
def test_equilibrium_angle_matches_noise_driven_simulation(name, make, predicted, steps) -> None:
    trajectory = noisy_sphere(make, steps=steps, dim=500)
    assert trajectory.tail_angle() == pytest.approx(float(predicted), rel=0.03), name


def test_equilibrium_norms_match_simulation() -> None:
    dim = 500
    scale_free = np.sqrt(dim - 1)  # ‖w‖‖g‖ = ‖Π ξ‖ for the sphere's gradients
    sgd = noisy_sphere(
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.01), steps=1000, dim=dim
    )
    assert sgd.norms[-500:].mean() == pytest.approx(
        float(theory.sgd_equilibrium_norm(0.1, 0.01, scale_free, 0.9)), rel=0.03
    )
    sgdp = noisy_sphere(
        lambda p: stepsize_lens.SGDP(p, lr=0.1, momentum=0.9, weight_decay=0.02, wd_ratio=0.1),
        steps=1500,
        dim=dim,
    )
    assert sgdp.norms[-500:].mean() == pytest.approx(
        float(theory.sgdp_equilibrium_norm(0.1, 0.02, scale_free, 0.9, 0.0, 0.1)), rel=0.03
    )
    # Adam's norm rests on "update RMS per element ≈ sqrt((1−β1)/(1+β1))": an approximation
    adamw = noisy_sphere(
        lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.5), steps=1500, dim=dim
    )
    assert adamw.norms[-500:].mean() == pytest.approx(
        float(theory.adamw_equilibrium_norm(0.01, 0.5, dim)), rel=0.1
    )


def test_no_weight_decay_follows_the_quarter_power_law() -> None:
    dim = 500
    trajectory = noisy_sphere(lambda p: torch.optim.SGD(p, lr=0.2), steps=2000, dim=dim)
    predicted = theory.no_decay_norm(np.arange(2001), 1.0, 0.2, np.sqrt(dim - 1))
    np.testing.assert_allclose(trajectory.norms[::100], predicted[::100], rtol=0.03)
    momentum = noisy_sphere(
        lambda p: torch.optim.SGD(p, lr=0.02, momentum=0.9), steps=2000, dim=dim
    )
    predicted = theory.no_decay_norm(2000, 1.0, 0.02, np.sqrt(dim - 1), momentum=0.9)
    assert momentum.norms[-1] == pytest.approx(float(predicted), rel=0.05)
    steps = np.arange(1, 2001)
    assert theory.decay_exponent(steps[1000:], trajectory.angles[1000:]) == pytest.approx(
        -0.5, abs=0.05
    )


def test_decay_exponent_edge_cases() -> None:
    t = np.arange(1.0, 101.0)
    assert theory.decay_exponent(t, 3 * t**-0.5) == pytest.approx(-0.5)
    assert theory.decay_exponent(t, np.full(100, 0.1)) == pytest.approx(0.0, abs=1e-12)
    assert np.isnan(theory.decay_exponent([1, 2], [1, 1]))
    assert np.isnan(theory.decay_exponent([5, 5, 5], [1, 2, 3]))


# --------------------------------------------------------------------------------------------
# From recorded runs
# --------------------------------------------------------------------------------------------

OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1, weight_decay=1e-3),
    "sgd-momentum": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-3),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    "sgdp": lambda p: stepsize_lens.SGDP(p, lr=0.1, momentum=0.9, weight_decay=1e-3),
    "adamp": lambda p: stepsize_lens.AdamP(p, lr=1e-2, weight_decay=0.1),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_norm_identity_holds_on_recorded_float64_runs(tmp_path, name) -> None:
    run = record_run(tmp_path / "run.pt", OPTIMIZERS[name], steps=15)
    table = theory.norm_identity(run)
    checked = table[np.isfinite(table["measured_sq"])]
    assert len(checked) == 14 * run.num_tensors  # every consecutive pair of records
    assert checked["rel_error"].max() < 1e-5, checked.sort_values("rel_error").tail(3)
    family = theory.optimizer_family(run)
    assert family == {"sgd-momentum": "sgd"}.get(name, name)
    if name == "sgd":  # predicted from the gradient alone
        rel = np.abs(checked["gradient_sq"] - checked["measured_sq"]) / checked["measured_sq"]
        assert rel.max() < 1e-5
    else:
        assert table["gradient_sq"].isna().all()
    if family in ("adamw", "sgdp", "adamp"):
        assert (table["decay_sq"] <= table["weight_sq"] * (1 + 1e-12)).all()
        assert (table["decay_sq"] < table["weight_sq"]).any()
    else:
        assert table["decay_sq"].isna().all()


def test_optimizer_family_from_meta() -> None:
    assert theory.optimizer_family(crafted_run(records=2, optimizer="SGD")) == "sgd"
    assert theory.optimizer_family(crafted_run(records=2, optimizer="AdamP")) == "adamp"
    assert theory.optimizer_family(crafted_run(records=2, optimizer="Lion")) == "unknown"
    run = crafted_run(records=2, optimizer="Adam")
    assert theory.optimizer_family(run) == "adam"
    run.meta["optimizer"]["defaults"] = {"decoupled_weight_decay": True}
    assert theory.optimizer_family(run) == "adamw"


TENSORS = (
    Tensor("conv.weight", (4, 2, 3, 3), 0, "channel"),
    Tensor("fc.weight", (3, 4), 0, "none"),
    Tensor("other.weight", (4, 4), 1, "layer"),
)


def test_equilibrium_predictions_per_family_and_projection() -> None:
    sgd = crafted_run(tensors=TENSORS, records=5, groups={"weight_decay": [1e-3, 0.0]})
    pred = theory.equilibrium_predictions(sgd)
    conv = pred[pred["tensor"] == "conv.weight"]
    assert np.allclose(conv["predicted_angle"], np.sqrt(2 * 0.1 * 1e-3 / 1.9))
    assert pred[pred["tensor"] == "other.weight"]["predicted_angle"].isna().all()  # λ = 0
    assert list(conv["class"].unique()) == ["channel"]
    # SGD norm from the measured scale-free gradient g̃ = ‖w‖‖g‖ = grad_scale = 1
    assert np.allclose(conv["predicted_norm"], (0.1 * 1.0 / (2 * 1e-3 * 0.1)) ** 0.25, rtol=1e-6)

    applied = np.array([[1, 0, 2]] * 5)
    sgdp = crafted_run(
        tensors=TENSORS,
        records=5,
        optimizer="SGDP",
        applied_view=applied,
        groups={"weight_decay": [1e-3, 1e-3]},
    )
    pred = theory.equilibrium_predictions(sgdp).set_index("tensor")
    assert pred.loc["conv.weight", "projected"].all()
    assert not pred.loc["fc.weight", "projected"].any()
    assert np.allclose(
        pred.loc["conv.weight", "predicted_angle"], np.sqrt(2 * 0.1 * 1e-3 * 0.1 / 0.1)
    )
    assert np.allclose(pred.loc["fc.weight", "predicted_angle"], np.sqrt(2 * 0.1 * 1e-3 / 1.9))

    adamp = crafted_run(tensors=TENSORS, records=5, optimizer="AdamP", applied_view=applied)
    pred = theory.equilibrium_predictions(adamp).set_index("tensor")
    assert np.allclose(pred.loc["other.weight", "predicted_angle"], np.sqrt(2 * 1e-3 * 0.01 * 0.1))
    assert np.allclose(
        pred.loc["other.weight", "predicted_norm"],
        np.sqrt(1e-3 * 16 * 0.1 / (2 * 0.01 * 0.1 * 1.9)),
    )

    unknown = theory.equilibrium_predictions(
        crafted_run(tensors=TENSORS, records=3, optimizer="Lion")
    )
    assert unknown["predicted_angle"].isna().all()


def test_equilibrium_check_compares_the_final_window() -> None:
    predicted = np.sqrt(2 * 0.1 * 5e-4 / 1.9)
    records = 100
    # angle starts 3x too high and settles; the last 20% sit at 1.1x the prediction
    angle = lambda r: np.where(r < 50, 3 * predicted, 1.1 * predicted) * np.ones((1, 3))  # noqa: E731
    run = crafted_run(tensors=TENSORS, records=records, angular_update=angle)
    per_tensor = theory.equilibrium_check(run)
    assert set(per_tensor["tensor"]) == {"conv.weight", "other.weight"}  # fc is not invariant
    assert np.allclose(per_tensor["ratio"], 1.1, rtol=1e-5)
    assert per_tensor["window_start"].iloc[0] == 81
    per_class = theory.equilibrium_check(run, by="class")
    assert list(per_class["class"]) == ["channel", "layer"]
    overall = theory.equilibrium_check(run, by="invariant")
    assert len(overall) == 1 and overall["tensors"].iloc[0] == 2
    assert overall["ratio"].iloc[0] == pytest.approx(1.1, rel=1e-5)
    whole = theory.equilibrium_check(run, window=1.0, by="invariant")
    assert whole["ratio"].iloc[0] == pytest.approx(2.05, rel=1e-5)
    with pytest.raises(ValueError, match="by"):
        theory.equilibrium_check(run, by="group")
    # predictions computed once can be handed in: same result, checked against the run's size
    pred = theory.equilibrium_predictions(run)
    for by in ("tensor", "class", "invariant"):
        reused = theory.equilibrium_check(run, by=by, predictions=pred)
        assert reused.equals(theory.equilibrium_check(run, by=by))
    with pytest.raises(ValueError, match="one per record and tensor"):
        theory.equilibrium_check(run, predictions=pred.iloc[: len(pred) // 2])
    no_decay = crafted_run(tensors=TENSORS, records=20, groups={"weight_decay": 0.0})
    assert theory.equilibrium_check(no_decay).empty


def test_decay_exponents_per_tensor() -> None:
    run = crafted_run(
        tensors=TENSORS,
        records=400,
        angular_update=lambda r: 0.05 * (r + 1) ** -0.5 * np.ones((1, 3)),
    )
    table = theory.decay_exponents(run)
    assert np.allclose(table["exponent"], -0.5, atol=1e-4)
    assert list(table["class"]) == ["channel", "none", "layer"]


@pytest.mark.slow
def test_bn_network_reaches_the_sgd_momentum_equilibrium(tmp_path) -> None:
    """A BatchNorm CNN on the scikit-learn digits, SGD + momentum + weight decay, 600 steps.

    Labels are shuffled: the theory assumes noise-dominated gradients, and with the true labels
    this small network fits the data and its training has transients (we measured ratios from
    0.72 to 1.05 across seeds), while random labels keep the gradient noise stationary.
    Measured (seed 0): 0.0231 rad/step against sqrt(2ηλ/(1+α)) = 0.0229 (ratio 1.008).
    """
    from sklearn.datasets import load_digits

    from stepsize_lens.analysis import find
    from stepsize_lens.models import digits_cnn
    from stepsize_lens.schedules import every

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        images, labels = load_digits(return_X_y=True)
        x = torch.tensor(images, dtype=torch.float32).reshape(-1, 1, 8, 8)
        x = (x - x.mean()) / x.std()
        torch.manual_seed(0)
        y = torch.randint(0, 10, (len(labels),))
        lr, wd, momentum = 0.1, 5e-3, 0.9
        model = digits_cnn(width=16)
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=wd)
        lens = stepsize_lens.attach(model, optimizer, path=tmp_path / "run.pt", schedule=every(5))
        gen = torch.Generator().manual_seed(0)
        for _ in range(600):
            index = torch.randint(0, len(x), (64,), generator=gen)
            loss = torch.nn.functional.cross_entropy(model(x[index]), y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        lens.close()
    finally:
        torch.set_num_threads(threads)
    run = stepsize_lens.load(tmp_path / "run.pt")
    result = theory.equilibrium_check(run, by="invariant")
    conv_weights = {n for n, p in model.named_parameters() if p.ndim == 4}
    assert set(theory.equilibrium_check(run)["tensor"]) == conv_weights
    predicted = np.sqrt(2 * lr * wd / (1 + momentum))
    assert result["predicted"].iloc[0] == pytest.approx(predicted)
    measured = result["measured"].iloc[0]
    print(
        f"\nmeasured {measured:.5f} rad/step, predicted {predicted:.5f}, "
        f"ratio {measured / predicted:.3f}"
    )
    assert measured == pytest.approx(predicted, rel=0.15)
    assert "equilibrium_reached" in {f.kind for f in find(run)}


def test_sqrt_law_overlay() -> None:
    r = np.arange(100)[:, None]
    # conv and fc follow 0.05 t^(-1/2) exactly; other.weight is flat at 0.01
    angle = np.concatenate(
        [0.05 * (r + 1) ** -0.5, 0.05 * (r + 1) ** -0.5, np.full_like(r, 0.01, float)], 1
    )
    run = crafted_run(tensors=TENSORS, records=100, angular_update=angle)
    table = theory.sqrt_law(run)
    conv = table[table.tensor == "conv.weight"]
    np.testing.assert_allclose(conv["predicted"], conv["measured"], rtol=1e-5)
    assert conv["exponent"].iloc[0] == pytest.approx(-0.5, abs=1e-4)
    flat = table[table.tensor == "other.weight"]
    assert flat["exponent"].iloc[0] == pytest.approx(0.0, abs=1e-6)
    # fitted on the second half: there the overlay passes through the measurements on average
    late = flat[flat.step >= 50]
    assert np.exp(np.mean(np.log(late["predicted"] / late["measured"]))) == pytest.approx(1.0)
