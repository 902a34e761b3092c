"""analysis.predict / forecast: the recurrence along a run's recorded schedule (docs/design.md
§5.9), its tidy frame, how each family reads a run, and predicted against measured on a real
BatchNorm network."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _runs import Tensor, bn_net, crafted_run

import stepsize_lens
from stepsize_lens.analysis import forecast, predict, theory
from stepsize_lens.recording.schedules import log_spaced

TENSORS = (
    Tensor("conv.weight", (4, 2, 3, 3), 0, "channel"),
    Tensor("proj.weight", (6, 4), 0, "layer"),
    Tensor("fc.weight", (3, 4), 0, "none"),
    Tensor("bn.weight", (4,), 1, "none"),
)


def test_predict_is_tidy_per_set_and_metric() -> None:
    run = crafted_run(tensors=TENSORS, records=30, groups={"weight_decay": [5e-4, 0.0]})
    frame = predict(run)
    assert list(frame.columns) == ["step", "set", "metric", "predicted", "measured", "equilibrium"]
    assert set(frame["set"]) == {"channel", "layer"}  # only scale-invariant tensors
    assert set(frame["metric"]) == {"angular_update", "weight_norm", "grad_norm"}
    assert len(frame) == 30 * 2 * 3
    channel = frame[(frame["set"] == "channel") & (frame["metric"] == "weight_norm")]
    np.testing.assert_allclose(channel["measured"], run.metric("weight_norm")[:, 0], rtol=1e-6)
    assert channel["predicted"].iloc[0] == pytest.approx(channel["measured"].iloc[0])
    assert frame[frame["metric"] == "grad_norm"]["equilibrium"].isna().all()
    per_tensor = predict(run, by="tensor", metrics=("angular_update",))
    assert set(per_tensor["set"]) == {"conv.weight", "proj.weight"}
    assert set(predict(run, by="group")["set"]) == {"group 0"}
    assert set(predict(run, by="invariant")["set"]) == {"invariant"}
    with pytest.raises(ValueError, match="metrics"):
        predict(run, metrics=("loss",))


def test_no_weight_decay_still_predicts_the_growing_norm() -> None:
    run = crafted_run(tensors=TENSORS, records=50, groups={"weight_decay": [0.0, 0.0]})
    frame = predict(run, metrics=("weight_norm",))
    assert frame["equilibrium"].isna().all()
    channel = frame[frame["set"] == "channel"]["predicted"].to_numpy()
    assert (np.diff(channel) > 0).all()  # momentum SGD without decay: the norm only grows


def test_each_family_reads_its_hyperparameters_from_the_run() -> None:
    """AdamC decays the corrected tensors by λ·η_t/η_max (η_max: a recorded max_lr, the
    defaults', or the largest recorded lr), Muon covers 2-D tensors only, Lion reads β2."""
    lr = 1e-3 * np.linspace(1.0, 0.1, 40)[:, None] * np.ones((1, 2))
    adam = {"lr": lr, "weight_decay": 0.01, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}
    run = crafted_run(tensors=TENSORS, records=40, optimizer="AdamC", groups=adam)
    fc = forecast(run)
    assert fc.family.name == "adamc"
    names = [run.tensor_names[i] for i in fc.tensor_index()]
    assert names == ["conv.weight", "proj.weight"]
    np.testing.assert_allclose(fc.decay[:, 0], 0.01 * lr[:, 0] / 1e-3)  # λ·η_t/η_max
    run.meta["optimizer"]["defaults"] = {"normalized": False}
    np.testing.assert_allclose(forecast(run).decay[:, 0], 0.01)  # AdamW on every tensor
    run.meta["optimizer"]["defaults"] = {"max_lr": 2e-3}
    np.testing.assert_allclose(forecast(run).decay[:, 0], 0.01 * lr[:, 0] / 2e-3)
    timm = crafted_run(tensors=TENSORS, records=40, optimizer="AdamW", groups=adam)
    timm.meta["optimizer"]["defaults"] = {"corrected_weight_decay": True, "max_lr_snapshot": 1e-3}
    assert theory.optimizer_family(timm) == "adamc"
    np.testing.assert_allclose(forecast(timm).decay[:, 1], 0.01 * lr[:, 0] / 1e-3)

    muon = crafted_run(tensors=TENSORS, records=10, optimizer="Muon", groups={"momentum": 0.95})
    muon.meta["optimizer"]["module"] = "torch.optim._muon"
    fc = forecast(muon)
    assert fc.family.name == "muon"
    assert [muon.tensor_names[i] for i in fc.tensor_index()] == ["proj.weight"]

    lion = crafted_run(
        tensors=TENSORS, records=10, optimizer="Lion", groups={"beta1": 0.9, "beta2": 0.99}
    )
    eq = forecast(lion).eq_angle[-1, 0]
    assert eq == pytest.approx(float(theory.lion_equilibrium_angle(0.1, 5e-4, 0.9, 0.99)))


def test_records_every_hundred_steps_are_integrated_in_between() -> None:
    """A run recorded at steps 100, 200, ...: the recurrence runs every step in between (the
    norm of momentum SGD without decay grows as with every step recorded)."""
    dense = crafted_run(tensors=TENSORS, records=1000, groups={"weight_decay": [0.0, 0.0]})
    sparse = crafted_run(
        tensors=TENSORS,
        records=10,
        steps=np.arange(100, 1001, 100),
        groups={"weight_decay": [0.0, 0.0]},
    )
    # start both at step 100 with the same norm: the sparse run warms its buffer up
    a = forecast(sparse)
    b = forecast(
        crafted_run(
            tensors=TENSORS,
            records=901,
            steps=np.arange(100, 1001),
            groups={"weight_decay": [0.0, 0.0]},
        )
    )
    np.testing.assert_allclose(a.sq, b.sq[::100], rtol=1e-6)
    assert forecast(dense).sq[-1, 0] > forecast(dense).sq[0, 0]


def _train(make_optimizer, steps: int, warmup: int, path, seed: int = 0):
    """`bn_net` on random labels (noise-dominated gradients), warmup + cosine, recorded on the
    default log-spaced schedule; one thread, so the trajectory is the same on every machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train_on_one_thread(make_optimizer, steps, warmup, path, seed)
    finally:
        torch.set_num_threads(threads)


def _train_on_one_thread(make_optimizer, steps: int, warmup: int, path, seed: int):
    torch.manual_seed(seed)
    model = bn_net(seed, torch.float32)
    optimizer = make_optimizer(model.parameters())

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / (steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    lens = stepsize_lens.attach(model, optimizer, path=path, schedule=log_spaced(50, 20))
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(512, 3, 6, 6, generator=gen)
    y = torch.randint(0, 4, (512,), generator=gen)
    for _ in range(steps):
        batch = torch.randint(0, 512, (32,), generator=gen)
        loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    lens.close()
    return stepsize_lens.load(path)


class AdamC(torch.optim.Optimizer):
    """AdamC on every tensor as its run file shows it (class name, lr, betas, weight decay λ):
    AdamW whose decay follows the schedule, λ·η_t/η_max (Defazio 2025), η_max the scheduler's
    initial lr. An inner AdamW takes the steps, so the lens (attached to this one) sees λ."""

    def __init__(self, params, lr: float, weight_decay: float) -> None:
        defaults = {"lr": lr, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": weight_decay}
        super().__init__(params, {**defaults, "normalized": True})
        groups = [{"params": group["params"]} for group in self.param_groups]
        self._inner = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)

    @torch.no_grad()
    def step(self, closure=None):
        for outer, inner in zip(self.param_groups, self._inner.param_groups):
            inner["lr"] = outer["lr"]
            inner["weight_decay"] = outer["weight_decay"] * outer["lr"] / outer["initial_lr"]
        return self._inner.step(closure)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("make", "angle_tolerance"),
    [
        (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=5e-3), 0.2),
        (lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1), 0.2),
        (lambda p: AdamC(p, lr=1e-2, weight_decay=0.1), 0.3),
    ],
    ids=["sgd-momentum", "adamw", "adamc"],
)
def test_predict_follows_warmup_and_cosine_on_a_batchnorm_network(
    make, angle_tolerance, tmp_path
) -> None:
    """Random labels make the gradients noise-dominated: from the middle of a warmup + cosine
    run (recorded every 20 steps late) to where the lr has fallen to a twentieth, the predicted
    norm of the scale-invariant weights is within 20% of the measured one, and the angular
    update within 20% (SGD momentum: measured 3% off; AdamW: 6%).

    AdamC's angle is allowed 30% (measured 21%): its decay fades as η_t², so late in the
    cosine its weights barely move; consecutive minibatch gradients then share their
    full-batch mean, and Adam's first moment, which averages about 10 of them, picks that
    signal up — its updates run above the noise model's, in bursts up to 1.7x per record. The
    norm, which integrates them, stays within 2%."""
    run = _train(make, steps=1000, warmup=50, path=tmp_path / "run.pt")
    frame = predict(run, by="invariant")
    late = frame[(frame["step"] >= 500) & (frame["step"] <= 850)]
    for metric, tolerance in (("angular_update", angle_tolerance), ("weight_norm", 0.2)):
        rows = late[late["metric"] == metric]
        ratio = rows["measured"].mean() / rows["predicted"].mean()
        assert abs(ratio - 1) < tolerance, (metric, ratio)


def test_a_run_spanning_too_many_steps_gets_no_prediction_instead_of_hanging() -> None:
    """A step far out (a flipped bit in a run file) would make the recurrence walk 2^40 steps;
    past `MAX_INTEGRATED_STEPS` the forecast is empty and says why, at once."""
    from stepsize_lens.analysis.theory.forecast import MAX_INTEGRATED_STEPS

    far = crafted_run(records=4, steps=[1, 2, 3, 2**40])
    result = forecast(far)
    assert result.empty and "more than the 10,000,000 the recurrence integrates" in result.reason
    near = crafted_run(records=4, steps=[1, 2, 3, MAX_INTEGRATED_STEPS // 10**4])
    assert not forecast(near).empty
