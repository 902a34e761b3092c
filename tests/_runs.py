"""Builders of crafted runs for the analysis tests (no training: metrics written directly).

`crafted_run` writes a run through `RunWriter` exactly as the lens would, from per-record,
per-tensor weight norms and angular updates; everything else (update norm, η/‖w‖², cosines,
the paper's test views) is derived consistently:

- update_norm = ‖w‖·tan(angle) (a purely tangential step), cos_update = 0, norm_growth = ‖Δ‖²,
  relative_update = ‖Δ‖/‖w‖, effective_lr = η/‖w‖², grad_norm = ``grad_scale``/‖w‖;
- channel_angular_update_cv = 0.05 (rows turning at nearly one rate) for tensors with ndim >= 2;
- a tensor's class sets its cosines: channel → channel_cos_grad_max = cos_grad = 0, layer →
  channel max 0.5 and cos_grad 0, none → both 0.5 (so `classify_tensors` recovers the class);
  1-D tensors are never tested.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from stepsize_lens._schema import GROUP_FIELDS, METRICS, View
from stepsize_lens.run import Run, RunWriter, validate


@dataclass
class Tensor:
    name: str
    shape: tuple[int, ...]
    group: int = 0
    cls: str = "channel"


CODES = {"channel": View.CHANNEL, "layer": View.LAYER, "none": View.NONE}

# a small BN network: two channel-invariant convs, one layer-invariant linear, a classifier,
# and 1-D norm/bias tensors
DEFAULT_TENSORS = (
    Tensor("conv1.weight", (8, 3, 3, 3), 0, "channel"),
    Tensor("conv2.weight", (16, 8, 3, 3), 0, "channel"),
    Tensor("proj.weight", (16, 16), 0, "layer"),
    Tensor("fc.weight", (10, 16), 0, "none"),
    Tensor("bn.weight", (16,), 1, "none"),
    Tensor("fc.bias", (10,), 1, "none"),
)

# four tensors of two groups, one per class but channel twice (the frames and sets tests)
FOUR_TENSORS = (
    Tensor("a.weight", (2, 3), 0, "channel"),  # numel 6
    Tensor("b.weight", (4, 6), 0, "channel"),  # numel 24
    Tensor("c.weight", (5, 2), 1, "layer"),  # numel 10
    Tensor("d.bias", (5,), 1, "none"),  # numel 5
)


def _grid(value, num_records: int, num_cols: int) -> np.ndarray:
    """Broadcast a scalar, [cols], [records, cols] or callable(step_index [R,1]) to [R, cols]."""
    if callable(value):
        value = value(np.arange(num_records)[:, None].astype(np.float64))
    return np.broadcast_to(np.asarray(value, dtype=np.float64), (num_records, num_cols)).copy()


def crafted_run(
    *,
    tensors: Sequence[Tensor] = DEFAULT_TENSORS,
    records: int = 200,
    steps: Sequence[int] | None = None,
    weight_norm=1.0,
    angular_update=0.02,
    grad_scale: float = 1.0,
    optimizer: str = "SGD",
    groups: Mapping[str, object] | None = None,
    applied_view=None,
    skipped: Sequence[bool] | None = None,
    overrides: Mapping[str, np.ndarray] | None = None,
    scalars: Mapping[str, tuple[Sequence[int], Sequence[float]]] | None = None,
    label: str = "crafted",
    delta: float = 0.1,
) -> Run:
    """A `Run` with the given per-record [R, T] (or broadcastable / callable) weight norms and
    angular updates. ``groups``: field → value per group ([G], [R, G] or scalar), defaulting to
    SGD with lr 0.1, momentum 0.9, weight decay 5e-4 on every group. ``overrides``: metric →
    [R, T] array replacing the derived one. ``applied_view``: [R, T] codes (default -1)."""
    num_tensors = len(tensors)
    num_groups = max(t.group for t in tensors) + 1
    step_values = np.arange(1, records + 1) if steps is None else np.asarray(steps)
    fields = {"lr": 0.1, "weight_decay": 5e-4, "momentum": 0.9, "dampening": 0.0, "nesterov": 0.0}
    if optimizer in ("Adam", "AdamW", "AdamP"):
        fields = {"lr": 1e-3, "weight_decay": 0.01, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}
    if optimizer in ("SGDP", "AdamP"):
        fields.update({"wd_ratio": 0.1, "delta": delta})
    fields.update(groups or {})
    group_grid = {
        name: _grid(fields.get(name, np.nan), records, num_groups) for name in GROUP_FIELDS
    }
    w = _grid(weight_norm, records, num_tensors)
    angle = _grid(angular_update, records, num_tensors)
    lr = group_grid["lr"][:, [t.group for t in tensors]]
    update = w * np.tan(angle)
    multi = np.array([len(t.shape) >= 2 for t in tensors])
    cos_grad = np.array([0.0 if t.cls in ("channel", "layer") else 0.5 for t in tensors])
    chan_cos = np.array([0.0 if t.cls == "channel" else 0.5 for t in tensors])
    with np.errstate(divide="ignore", invalid="ignore"):
        derived = {
            "weight_norm": w,
            "grad_norm": grad_scale / w,
            "update_norm": update,
            "relative_update": update / w,
            "angular_update": angle,
            "effective_lr": lr / w**2,
            "cos_grad": np.broadcast_to(cos_grad, w.shape),
            "cos_update": np.zeros_like(w),
            "norm_growth": update**2,
            "channel_cos_grad_max": np.where(multi, chan_cos, np.nan) * np.ones_like(w),
            "channel_weight_norm": np.where(multi, w, np.nan),
            "channel_angular_update": np.where(multi, angle, np.nan),
            "channel_angular_update_cv": np.where(multi, 0.05, np.nan) * np.ones_like(w),
        }
    derived.update({k: np.asarray(v, dtype=np.float64) for k, v in (overrides or {}).items()})
    test = np.array([CODES[t.cls] if len(t.shape) >= 2 else View.UNTESTED for t in tensors])
    applied = _grid(View.UNTESTED if applied_view is None else applied_view, records, num_tensors)
    skip = np.zeros(records, bool) if skipped is None else np.asarray(skipped, bool)

    writer = RunWriter(
        None,
        {
            "label": label,
            "optimizer": {"class": optimizer, "module": "test", "defaults": {}},
            "delta": delta,
            "schedule": "every(1)",
        },
    )
    writer.add_params(
        [
            {
                "name": t.name,
                "group": t.group,
                "index": i,
                "shape": list(t.shape),
                "numel": int(np.prod(t.shape)),
                "ndim": len(t.shape),
                "rows": t.shape[0],
                "module_type": "",
                "dtype": "float32",
                "aliases": [],
            }
            for i, t in enumerate(tensors)
        ]
    )
    writer.set_num_groups(num_groups)
    for r in range(records):
        metrics = torch.tensor(
            np.stack([derived[name][r] for name in METRICS]), dtype=torch.float32
        )
        views = torch.tensor(np.stack([test, applied[r]]), dtype=torch.int8)
        if skip[r]:
            metrics = torch.full_like(metrics, float("nan"))
            views = torch.full_like(views, View.UNTESTED)
        group_values = torch.tensor(np.stack([group_grid[name][r] for name in GROUP_FIELDS]))
        writer.append(int(step_values[r]), float(r), bool(skip[r]), metrics, views, group_values)
    for name, (s, v) in (scalars or {}).items():
        for step, value in zip(s, v):
            writer.log_scalars(int(step), {name: float(value)})
    return Run(validate(writer.to_dict()))


def equilibrium_angle_sgd(lr: float = 0.1, wd: float = 5e-4, momentum: float = 0.9) -> float:
    return float(np.sqrt(2 * lr * wd / (1 + momentum)))


def healthy_run(**kwargs) -> Run:
    """SGD + momentum + weight decay on every tensor, norms steady, every scale-invariant tensor
    turning at the predicted equilibrium angle (with 3% noise), nothing non-finite."""
    rng = np.random.default_rng(0)
    records = kwargs.pop("records", 200)
    angle = equilibrium_angle_sgd() * (
        1 + 0.03 * rng.standard_normal((records, len(DEFAULT_TENSORS)))
    )
    weight = 1.5 + 0.01 * rng.standard_normal((records, len(DEFAULT_TENSORS)))
    base = dict(
        records=records,
        weight_norm=weight,
        angular_update=angle,
        groups={"weight_decay": [5e-4, 5e-4]},
        label="healthy",
    )
    base.update(kwargs)
    return crafted_run(**base)


STEADY_STEPS = 15  # steps between records of `steady_run`: 200 records span 3000 steps


def steady_grad_scale(norm: float = 1.5, lr: float = 0.1, wd: float = 5e-4, momentum: float = 0.9):
    """The scale-free gradient g̃ whose SGD-momentum equilibrium norm is ``norm``:
    ‖w‖⁴ = ηg̃²/(2λ(1−μ)) (docs/design.md §5.3), so g̃² = 2λ(1−μ)‖w‖⁴/η."""
    return float(np.sqrt(2 * wd * (1 - momentum) * norm**4 / lr))


def steady_run(**kwargs) -> Run:
    """`healthy_run` long enough to be at equilibrium: 200 records every `STEADY_STEPS` steps
    (3000 steps, six relaxation times 1/(4ηλ/(1−μ)) = 500), norms at the SGD-momentum
    equilibrium norm 1.5 of its scale-free gradient, angles at the equilibrium angle."""
    records = kwargs.get("records", 200)
    base = dict(
        steps=STEADY_STEPS * np.arange(1, records + 1),
        grad_scale=steady_grad_scale(),
        label="steady",
    )
    base.update(kwargs)
    return healthy_run(**base)


def bn_net(seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.nn.Module:
    """Conv + BN, conv + BN, linear + BN1d (all scale-invariant) and a linear classifier."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1, bias=False),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1, bias=False),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 16, bias=False),
        torch.nn.BatchNorm1d(16),
        torch.nn.ReLU(),
        torch.nn.Linear(16, 4),
    )
    return net.to(dtype)


def record_run(path, make_optimizer, steps: int = 20, seed: int = 0, dtype=torch.float64) -> Run:
    """Train `bn_net` on random data for ``steps`` with the lens recording every step."""
    import stepsize_lens
    from stepsize_lens.recording.schedules import every

    model = bn_net(seed, dtype)
    optimizer = make_optimizer(model.parameters())
    lens = stepsize_lens.attach(model, optimizer, path=path, schedule=every(1))
    gen = torch.Generator().manual_seed(seed + 1)
    for _ in range(steps):
        x = torch.randn(16, 3, 6, 6, generator=gen, dtype=dtype)
        y = torch.randint(0, 4, (16,), generator=gen)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    lens.close()
    return stepsize_lens.load(path)


def four_tensor_run(**kwargs) -> Run:
    """`FOUR_TENSORS` over 3 records, ‖w‖ growing linearly: 1, 2, 3, 4 times the record."""
    weight = np.array([[1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0, 8.0], [3.0, 6.0, 9.0, 12.0]])
    return crafted_run(tensors=FOUR_TENSORS, records=3, weight_norm=weight, **kwargs)
