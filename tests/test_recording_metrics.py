"""Every metric of docs/design.md §3 against a brute-force per-tensor float64 reference."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import stepsize_lens
from stepsize_lens._schema import METRICS
from stepsize_lens.recording import metrics


def _angle(a: torch.Tensor, b: torch.Tensor) -> float:
    """Angle between two vectors, Kahan's stable form 2·atan2(‖â − b̂‖, ‖â + b̂‖)."""
    na, nb = a.norm(), b.norm()
    if na == 0 or nb == 0:
        return math.nan
    ua, ub = a / na, b / nb
    return float(2 * torch.atan2((ua - ub).norm(), (ua + ub).norm()))


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    den = a.norm() * b.norm()
    return float(a @ b / den) if den > 0 else math.nan


def reference_metrics(
    w: torch.Tensor, g: torch.Tensor | None, w_after: torch.Tensor, lr: float
) -> dict[str, float]:
    """The definitions of docs/design.md §3, one tensor at a time, in float64, with Python loops."""
    w64, w2 = w.double().flatten(), w_after.double().flatten()
    g64 = g.double().flatten() if g is not None else None
    d = w2 - w64
    wn, dn = float(w64.norm()), float(d.norm())
    out = {
        "weight_norm": wn,
        "grad_norm": float(g64.norm()) if g64 is not None else math.nan,
        "update_norm": dn,
        "relative_update": dn / wn if wn > 0 else math.nan,
        "angular_update": _angle(w64, w2) if wn > 0 else math.nan,
        "effective_lr": lr / wn**2 if wn > 0 else math.nan,
        "cos_grad": _cos(w64, g64) if g64 is not None else math.nan,
        "cos_update": _cos(w64, d),
        "norm_growth": float(w2 @ w2 - w64 @ w64),
    }
    if w.ndim >= 2:
        rows_w = w.double().reshape(w.shape[0], -1)
        rows_w2 = w_after.double().reshape(w.shape[0], -1)
        coss, norms, angles = [], [], []
        for r in range(w.shape[0]):
            if g is not None:
                c = _cos(rows_w[r], g.double().reshape(w.shape[0], -1)[r])
                if not math.isnan(c):
                    coss.append(abs(c))
            norms.append(float(rows_w[r].norm()))
            a = _angle(rows_w[r], rows_w2[r])
            if not math.isnan(a):
                angles.append(a)
        out["channel_cos_grad_max"] = max(coss) if coss else math.nan
        out["channel_weight_norm"] = sum(norms) / len(norms)
        mean = sum(angles) / len(angles) if angles else math.nan
        out["channel_angular_update"] = mean
        if angles and mean > 0:
            spread = math.sqrt(sum((a - mean) ** 2 for a in angles) / len(angles))
            out["channel_angular_update_cv"] = spread / mean
        else:
            out["channel_angular_update_cv"] = math.nan
    else:
        out.update(
            channel_cos_grad_max=math.nan,
            channel_weight_norm=math.nan,
            channel_angular_update=math.nan,
            channel_angular_update_cv=math.nan,
        )
    return out


class Zoo(nn.Module):
    """Conv, BatchNorm, LayerNorm, embedding, linear, biases and a frozen tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6 + 8, 16)
        self.ln = nn.LayerNorm(16)
        self.head = nn.Linear(16, 5)
        self.frozen = nn.Parameter(torch.randn(4, 3), requires_grad=False)

    def forward(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3))
        e = self.embed(tokens).mean(dim=1)
        z = self.ln(self.fc(torch.cat([h, e], dim=1)))
        return self.head(torch.relu(z))


def _groups(model: Zoo) -> list[dict]:
    return [
        {
            "params": [model.conv.weight, model.conv.bias, model.bn.weight, model.bn.bias],
            "lr": 0.05,
        },
        {"params": [model.embed.weight, model.fc.weight, model.fc.bias, model.frozen], "lr": 0.02},
        {"params": [model.ln.weight, model.ln.bias, model.head.weight, model.head.bias], "lr": 0.1},
    ]


class Capture:
    """Independent pre/post hooks that keep copies of w, g, w' for the reference."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self.steps: list[list[tuple]] = []
        optimizer.register_step_pre_hook(self.pre)
        optimizer.register_step_post_hook(self.post)

    def params(self):
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                yield group, p

    def pre(self, *_):
        self._before = [
            (p.detach().clone(), None if p.grad is None else p.grad.detach().clone(), group["lr"])
            for group, p in self.params()
        ]

    def post(self, *_):
        after = [p.detach().clone() for _, p in self.params()]
        self.steps.append([(*b, a) for b, a in zip(self._before, after)])


def _train(make_optimizer, dtype=torch.float32, steps=4, tmp_path=None):
    torch.manual_seed(0)
    model = Zoo().to(dtype)
    optimizer = make_optimizer(_groups(model))
    capture = Capture(optimizer)
    lens = stepsize_lens.attach(model, optimizer, path=tmp_path / "run.pt", schedule=1)
    for _ in range(steps):
        x = torch.randn(4, 3, 5, 5, dtype=dtype)
        tokens = torch.randint(0, 20, (4, 3))
        loss = model(x, tokens).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    lens.close()
    return stepsize_lens.load(tmp_path / "run.pt"), capture


TOLERANCE_FLOOR = {  # absolute floors for float32 inputs, in units of the metric's own scale
    "cos_grad": 1e-6,
    "cos_update": 1e-6,
    "channel_cos_grad_max": 1e-6,
    "channel_angular_update_cv": 1e-6,  # a spread of nearly equal angles, relative to their mean
}


@pytest.mark.parametrize(
    "make_optimizer",
    [
        pytest.param(lambda g: torch.optim.SGD(g, lr=0.1, momentum=0.9), id="sgd-momentum"),
        pytest.param(lambda g: torch.optim.AdamW(g, lr=1e-2, weight_decay=0.1), id="adamw"),
    ],
)
def test_metrics_match_brute_force_reference(make_optimizer, tmp_path):
    run, capture = _train(make_optimizer, tmp_path=tmp_path)
    assert run.num_records == len(capture.steps) == 4
    names = run.tensor_names
    assert "frozen" in names and "embed.weight" in names
    for record, tensors in enumerate(capture.steps):
        for t, (w, g, lr, w_after) in enumerate(tensors):
            ref = reference_metrics(w, g, w_after, lr)
            scale = {
                "norm_growth": float(w.double().norm() * (w_after - w).double().norm()),
                "angular_update": float(
                    (w_after - w).double().norm() / max(w.double().norm(), 1e-30)
                ),
            }
            for name in METRICS:
                ours = float(run.metric(name)[record, t])
                expected = ref[name]
                where = f"{name} of {names[t]} at record {record}"
                if math.isnan(expected):
                    assert math.isnan(ours), where
                    continue
                floor = TOLERANCE_FLOOR.get(name, 0.0) + 1e-6 * scale.get(name, 0.0)
                assert abs(ours - expected) <= 1e-5 * abs(expected) + floor, (where, ours, expected)


def test_float64_run_is_exact(tmp_path):
    run, capture = _train(
        lambda g: torch.optim.SGD(g, lr=0.1, momentum=0.9), torch.float64, 3, tmp_path
    )
    for record, tensors in enumerate(capture.steps):
        for t, (w, g, lr, w_after) in enumerate(tensors):
            ref = reference_metrics(w, g, w_after, lr)
            for name in ("weight_norm", "update_norm", "effective_lr", "norm_growth"):
                expected = ref[name]
                ours = float(run.metric(name)[record, t])  # stored as float32
                if math.isnan(expected):
                    assert math.isnan(ours), (name, t)
                    continue
                assert ours == pytest.approx(expected, rel=1e-6, abs=1e-12), (name, t)


def test_frozen_tensor_has_nan_grad_metrics_and_zero_update(tmp_path):
    run, _ = _train(lambda g: torch.optim.SGD(g, lr=0.1), tmp_path=tmp_path)
    t = run.tensor_names.index("frozen")
    assert math.isnan(run.metric("grad_norm")[0, t])
    assert math.isnan(run.metric("cos_grad")[0, t])
    assert run.metric("update_norm")[0, t] == 0
    assert run.metric("angular_update")[0, t] == 0
    assert run.view("test_view")[0, t] == -1


def test_safe_div_is_nan_on_zero_and_nan_denominators():
    num = torch.tensor([1.0, 1.0, 0.0, 2.0])
    den = torch.tensor([0.0, float("nan"), 0.0, 4.0])
    out = metrics.safe_div(num, den)
    assert torch.isnan(out[:3]).all() and out[3] == 0.5


def test_zero_norm_row_is_left_out_of_channel_mean():
    # two rows: one all-zero (undefined angle), one rotated by 90 degrees
    w = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    d = torch.tensor([[0.0, 0.0], [-1.0, 1.0]])
    g = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    stacked = torch.stack([w, g, d], dim=1).double()
    grams = metrics.row_grams(stacked)
    perp2 = torch.tensor([0.0, 1.0], dtype=torch.float64)
    block = metrics.all_metrics(
        grams,
        perp2,
        torch.tensor([0, 0]),
        torch.tensor([True]),
        torch.tensor([1.0]),
        torch.tensor([True]),
    )
    values = dict(zip(METRICS, block[:, 0].tolist()))
    assert values["channel_angular_update"] == pytest.approx(math.pi / 2)
    assert values["channel_angular_update_cv"] == pytest.approx(0.0)  # one defined row
    assert values["channel_weight_norm"] == pytest.approx(0.5)
    assert values["channel_cos_grad_max"] == pytest.approx(0.0)
    assert values["weight_norm"] == pytest.approx(1.0)


def test_channel_angular_update_cv_is_the_spread_of_the_row_angles():
    """Three rows turned by 0.1, 0.2 and 0.3 rad (and an all-zero row left out): the
    coefficient of variation std/mean of (0.1, 0.2, 0.3) in float64; NaN when no row turned
    (mean 0) and for a 1-D tensor."""
    angles = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    w = torch.zeros(4, 2, dtype=torch.float64)
    w[:3, 0] = 1.0
    after = w.clone()
    after[:3] = torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    d = after - w
    g = torch.zeros_like(w)
    stacked = torch.stack([w, g, d], dim=1)
    perp2 = (d - w * (w * d).sum(1, keepdim=True)).square().sum(1)
    block = metrics.all_metrics(
        metrics.row_grams(stacked),
        perp2,
        torch.zeros(4, dtype=torch.long),
        torch.tensor([True]),
        torch.tensor([1.0]),
        torch.tensor([True]),
    )
    values = dict(zip(METRICS, block[:, 0].tolist()))
    expected = float(angles.std(unbiased=False) / angles.mean())
    assert values["channel_angular_update_cv"] == pytest.approx(expected, rel=1e-12)
    still = metrics.all_metrics(
        metrics.row_grams(torch.stack([w, g, torch.zeros_like(w)], dim=1)),
        torch.zeros(4, dtype=torch.float64),
        torch.zeros(4, dtype=torch.long),
        torch.tensor([True]),
        torch.tensor([1.0]),
        torch.tensor([True]),
    )
    assert math.isnan(dict(zip(METRICS, still[:, 0].tolist()))["channel_angular_update_cv"])
    one_d = metrics.all_metrics(
        metrics.row_grams(stacked[:1]),
        perp2[:1],
        torch.zeros(1, dtype=torch.long),
        torch.tensor([False]),
        torch.tensor([1.0]),
        torch.tensor([True]),
    )
    assert math.isnan(dict(zip(METRICS, one_d[:, 0].tolist()))["channel_angular_update_cv"])
