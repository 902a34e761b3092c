"""AdamC: AdamW bit for bit on the tensors it leaves alone, Defazio's corrected decay on the others
(against a hand-written float64 reference and against timm 1.0.31's ``adamc``)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from stepsize_lens.errors import UserInputError
from stepsize_lens.optim import AdamC
from stepsize_lens.optim.adamc import TEST_STEPS, decay_scale, invariance_test
from tests._timm import timm_optim_module, timm_version

LR, WEIGHT_DECAY, STEPS, WARMUP = 1e-2, 0.1, 40, 5
BETAS, EPS = (0.9, 0.999), 1e-8
# name -> (shape, how its gradient relates to w): the paper's test passes on "channel" and
# "layer" (gradients orthogonal to every row / to the whole tensor), never on "free"
TENSORS = {
    "conv": ((8, 3, 3, 3), "channel"),
    "proj": ((6, 8), "layer"),
    "head": ((5, 8), "free"),
    "bias": ((5,), "free"),
}
INVARIANT = ("conv", "proj")


def _params(dtype: torch.dtype = torch.float32) -> dict[str, nn.Parameter]:
    gen = torch.Generator().manual_seed(0)
    return {
        name: nn.Parameter(torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype))
        for name, (shape, _) in TENSORS.items()
    }


def _set_grads(params: dict[str, nn.Parameter], step: int) -> None:
    """The gradient of step ``step``: the same draw for every optimizer, made orthogonal to this
    optimizer's own w for the invariant tensors (as a scale-invariant loss makes it)."""
    gen = torch.Generator().manual_seed(1000 + step)
    for name, p in params.items():
        shape, kind = TENSORS[name]
        g = torch.randn(shape, generator=gen, dtype=torch.float64)
        w = p.detach().double()
        if kind == "channel":
            rows, w_rows = g.reshape(shape[0], -1), w.reshape(shape[0], -1)
            coef = (rows * w_rows).sum(1, keepdim=True) / (w_rows * w_rows).sum(1, keepdim=True)
            g = (rows - coef * w_rows).reshape(shape)
        elif kind == "layer":
            g = g - w * (g * w).sum() / (w * w).sum()
        p.grad = g.to(p.dtype)


def _schedule(step: int) -> float:
    """Linear warmup over WARMUP steps, then cosine to zero at STEPS."""
    if step < WARMUP:
        return (step + 1) / WARMUP
    return 0.5 * (1 + math.cos(math.pi * (step - WARMUP) / (STEPS - WARMUP)))


def _train(
    optimizer: torch.optim.Optimizer, params: dict[str, nn.Parameter], steps: int = STEPS
) -> list[dict[str, torch.Tensor]]:
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule)
    history = []
    for step in range(steps):
        _set_grads(params, step)
        optimizer.step()
        scheduler.step()
        history.append({name: p.detach().clone() for name, p in params.items()})
    return history


# --------------------------------------------------------------------------------------------
# Bitwise AdamW where it leaves tensors alone
# --------------------------------------------------------------------------------------------

PATHS = [
    pytest.param({"foreach": False}, id="single-tensor"),
    pytest.param({"foreach": True}, id="foreach"),
    pytest.param({"fused": True}, id="fused"),
    pytest.param({"foreach": False, "amsgrad": True, "maximize": True}, id="amsgrad-maximize"),
]


@pytest.mark.parametrize("options", PATHS)
def test_tensors_left_alone_follow_adamw_bit_for_bit_under_a_schedule(options) -> None:
    ours, theirs = _params(), _params()
    adamc = AdamC(ours.values(), lr=LR, weight_decay=WEIGHT_DECAY, **options)
    adamw = torch.optim.AdamW(theirs.values(), lr=LR, weight_decay=WEIGHT_DECAY, **options)
    mine, reference = _train(adamc, ours), _train(adamw, theirs)
    for step in range(STEPS):
        for name in ("head", "bias"):
            assert torch.equal(mine[step][name], reference[step][name]), (name, step)
        # while the paper's test is still deciding, the invariant tensors decay as in AdamW too
        for name in INVARIANT:
            same = torch.equal(mine[step][name], reference[step][name])
            assert same == (step < TEST_STEPS), (name, step)
    assert [adamc.state[p]["normalized"] for p in ours.values()] == [True, True, False, False]


def test_under_a_constant_lr_adamc_is_adamw_on_a_real_model() -> None:
    """c_t = η_t/η_max = 1 at a constant lr: every tensor, corrected or not, matches AdamW."""

    def model() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=False),
            nn.BatchNorm2d(8),
            nn.SiLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(8, 5),
        )

    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 3, 8, 8, generator=gen), torch.randint(0, 5, (16,), generator=gen)
    ours, theirs = model(), model()
    adamc = AdamC(ours.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    adamw = torch.optim.AdamW(theirs.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    for _ in range(2 * TEST_STEPS):
        for net, opt in ((ours, adamc), (theirs, adamw)):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
    for mine, reference in zip(ours.parameters(), theirs.parameters()):
        assert torch.equal(mine, reference)
    # the BatchNorm-fed conv weight is the one tensor the paper's test finds invariant
    assert [adamc.state[p]["normalized"] for p in ours.parameters()] == [True] + [False] * 4


# --------------------------------------------------------------------------------------------
# The formula on the corrected tensors
# --------------------------------------------------------------------------------------------


def _reference(corrected_from: dict[str, int], steps: int = STEPS) -> dict[str, torch.Tensor]:
    """AdamC written out in float64: tensor ``name`` gets the decay η_t²λ/η_max from step
    ``corrected_from[name]`` (1-based) on and AdamW's η_t λ before; η_max is the base lr."""
    params = {name: p.detach().double().clone() for name, p in _params(torch.float64).items()}
    m = {name: torch.zeros_like(w) for name, w in params.items()}
    v = {name: torch.zeros_like(w) for name, w in params.items()}
    beta1, beta2 = BETAS
    for t in range(1, steps + 1):
        lr = LR * _schedule(t - 1)
        holders = {name: nn.Parameter(w.clone()) for name, w in params.items()}
        _set_grads(holders, t - 1)
        for name, w in params.items():
            g = holders[name].grad
            corrected = t >= corrected_from.get(name, math.inf)
            decay = lr * lr * WEIGHT_DECAY / LR if corrected else lr * WEIGHT_DECAY
            w = w * (1 - decay)
            m[name] = beta1 * m[name] + (1 - beta1) * g
            v[name] = beta2 * v[name] + (1 - beta2) * g * g
            m_hat, v_hat = m[name] / (1 - beta1**t), v[name] / (1 - beta2**t)
            params[name] = w - lr * m_hat / (v_hat.sqrt() + EPS)
    return params


@pytest.mark.parametrize("options", [{"foreach": False}, {"foreach": True}, {"fused": True}])
def test_corrected_tensors_follow_the_formula(options) -> None:
    """ "auto": the invariant tensors are corrected from step TEST_STEPS + 1 on, the others
    never; η_max is the scheduler's initial_lr."""
    params = _params(torch.float64)
    optimizer = AdamC(params.values(), lr=LR, weight_decay=WEIGHT_DECAY, **options)
    final = _train(optimizer, params)[-1]
    expected = _reference({name: TEST_STEPS + 1 for name in INVARIANT})
    for name, w in expected.items():
        torch.testing.assert_close(final[name], w, rtol=1e-12, atol=1e-14)
    group = optimizer.param_groups[0]
    assert group["peak_lr"] == group["initial_lr"] == LR
    assert group["decay_scale"] == pytest.approx(_schedule(STEPS - 1))


def test_explicit_groups_choose_the_corrected_tensors() -> None:
    """normalized=True corrects a tensor from the first step whatever its gradient (head is not
    invariant), normalized=False never corrects one that is (conv)."""
    params = _params(torch.float64)
    groups = [
        {"params": [params["head"], params["proj"]], "normalized": True},
        {"params": [params["conv"], params["bias"]], "normalized": False},
    ]
    optimizer = AdamC(groups, lr=LR, weight_decay=WEIGHT_DECAY)
    final = _train(optimizer, params)[-1]
    expected = _reference({"head": 1, "proj": 1})
    for name, w in expected.items():
        torch.testing.assert_close(final[name], w, rtol=1e-12, atol=1e-14)


def test_timm_adamc_is_ours_with_every_tensor_corrected() -> None:
    """timm's ``adamc`` (AdamWLegacy with corrected_weight_decay) corrects every tensor with
    η_max = the lr given to its constructor; ours with normalized=True and a scheduler created
    after it (initial_lr = that lr) is the same algorithm."""
    assert timm_version() == "1.0.31"
    timm_adamw = timm_optim_module("adamw")
    ours, theirs = _params(torch.float64), _params(torch.float64)
    adamc = AdamC(ours.values(), lr=LR, weight_decay=WEIGHT_DECAY, normalized=True)
    reference = timm_adamw.AdamWLegacy(
        theirs.values(), lr=LR, weight_decay=WEIGHT_DECAY, corrected_weight_decay=True
    )
    mine, oracle = _train(adamc, ours), _train(reference, theirs)
    for step in (0, WARMUP, STEPS // 2, STEPS - 1):
        for name in TENSORS:
            torch.testing.assert_close(mine[step][name], oracle[step][name], rtol=1e-12, atol=0)
    # and it differs from plain AdamW once the schedule decays
    plain = _params(torch.float64)
    adamw = _train(torch.optim.AdamW(plain.values(), lr=LR, weight_decay=WEIGHT_DECAY), plain)
    assert not torch.allclose(mine[-1]["head"], adamw[-1]["head"], rtol=1e-6)


# --------------------------------------------------------------------------------------------
# η_max: initial_lr, the largest lr seen, or max_lr
# --------------------------------------------------------------------------------------------


def test_eta_max_is_the_largest_lr_seen_without_a_scheduler() -> None:
    group = {"lr": 0.1, "max_lr": None, "peak_lr": None}
    scales = []
    for lr in (0.1, 0.2, 0.05, 0.3):
        group["lr"] = lr
        scales.append(decay_scale(group))
    assert scales == [1.0, 1.0, 0.25, 1.0]
    assert group["peak_lr"] == 0.3


def test_eta_max_from_initial_lr_or_an_explicit_max_lr() -> None:
    assert decay_scale({"lr": 0.01, "initial_lr": 0.1, "max_lr": None, "peak_lr": None}) == (
        pytest.approx(0.1)
    )
    assert decay_scale({"lr": 0.01, "initial_lr": 0.1, "max_lr": 0.02, "peak_lr": 0.1}) == 0.5


def test_onecycle_max_lr_is_the_peak() -> None:
    """OneCycleLR writes its peak into each group's ``max_lr`` (and max_lr/25 into initial_lr):
    AdamC reads that peak."""
    params = _params()
    optimizer = AdamC(params.values(), lr=LR, weight_decay=WEIGHT_DECAY)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.05, total_steps=20)
    for step in range(19):
        _set_grads(params, step)
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
        assert optimizer.param_groups[0]["decay_scale"] == pytest.approx(lr / 0.05)


# --------------------------------------------------------------------------------------------
# State, the test, options
# --------------------------------------------------------------------------------------------


def test_state_dict_round_trip_mid_test_continues_identically() -> None:
    params = _params()
    optimizer = AdamC(params.values(), lr=LR, weight_decay=WEIGHT_DECAY)
    for step in range(TEST_STEPS // 2):
        _set_grads(params, step)
        optimizer.step()
    assert optimizer.state[params["conv"]]["normalized"] is None
    copies = {name: nn.Parameter(p.detach().clone()) for name, p in params.items()}
    restored = AdamC(copies.values(), lr=1.0)
    restored.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    assert restored.param_groups[0]["weight_decay"] == WEIGHT_DECAY
    for step in range(TEST_STEPS // 2, 2 * TEST_STEPS):
        for opt, tensors in ((optimizer, params), (restored, copies)):
            _set_grads(tensors, step)
            opt.step()
    for name in TENSORS:
        assert torch.equal(params[name], copies[name])
    assert restored.state[copies["conv"]]["normalized"] is True


def test_an_adamw_state_dict_loads_into_adamc() -> None:
    params = _params()
    adamw = torch.optim.AdamW(params.values(), lr=LR, weight_decay=WEIGHT_DECAY)
    _set_grads(params, 0)
    adamw.step()
    adamc = AdamC(params.values())
    adamc.load_state_dict(adamw.state_dict())
    assert adamc.param_groups[0]["normalized"] == "auto"
    _set_grads(params, 1)
    adamc.step()
    assert adamc.state[params["conv"]]["step"].item() == 2


def test_invariance_test_matches_the_paper_views() -> None:
    params = _params(torch.float64)
    _set_grads(params, 0)
    names = ["conv", "proj", "head"]
    passed = invariance_test([params[n] for n in names], [params[n].grad for n in names], 0.1)
    assert passed == [True, True, False]


def test_a_single_failure_leaves_a_tensor_to_adamw_for_good() -> None:
    params = _params()
    optimizer = AdamC([params["proj"]], lr=LR, weight_decay=WEIGHT_DECAY)
    for step in range(2 * TEST_STEPS):
        _set_grads(params, step)
        if step == 3:  # one gradient with a radial part
            params["proj"].grad += 0.5 * params["proj"].detach()
        optimizer.step()
    assert optimizer.state[params["proj"]]["normalized"] is False


@pytest.mark.parametrize(
    "options",
    [{"normalized": "yes"}, {"max_lr": 0.0}, {"test_steps": -1}, {"delta": -0.1}],
)
def test_bad_options_are_user_errors(options) -> None:
    with pytest.raises(UserInputError):
        AdamC(_params().values(), **options)
    with pytest.raises(UserInputError):
        AdamC([{"params": list(_params().values()), **options}])


def test_options_are_defaults_the_lens_records(tmp_path) -> None:
    import stepsize_lens

    params = _params()
    optimizer = AdamC(params.values(), lr=LR, normalized=False, max_lr=0.1, test_steps=3)
    assert {k: optimizer.defaults[k] for k in ("normalized", "max_lr", "test_steps")} == {
        "normalized": False,
        "max_lr": 0.1,
        "test_steps": 3,
    }
    with stepsize_lens.attach(None, optimizer, path=tmp_path / "run.pt") as lens:
        _set_grads(params, 0)
        optimizer.step()
        lens.log(loss=1.0)
    meta = stepsize_lens.load(tmp_path / "run.pt").meta["optimizer"]
    assert meta["class"] == "AdamC" and meta["defaults"]["normalized"] is False
