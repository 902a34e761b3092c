"""Shared by the scale-invariance tests: synthetic runs with given cosines, a small model."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stepsize_lens._schema import GROUP_FIELDS, METRICS, VIEWS
from stepsize_lens.run import Run, RunWriter, validate

NAN = float("nan")


def make_run(
    tensors: list[dict],
    cos: np.ndarray,
    chan: np.ndarray,
    *,
    skipped: list[bool] | None = None,
    weight_norm: np.ndarray | None = None,
    grad_norm: np.ndarray | None = None,
    applied: np.ndarray | None = None,
    weight_decay: float = 0.0,
    delta: float = 0.1,
) -> Run:
    """A run built through RunWriter from given cosines, one param group."""
    writer = RunWriter(None, {"delta": delta, "label": "synthetic"})
    rows = []
    for index, spec in enumerate(tensors):
        shape = spec["shape"]
        row = {
            "name": spec["name"],
            "group": 0,
            "index": index,
            "shape": list(shape),
            "numel": int(np.prod(shape)),
            "ndim": len(shape),
            "rows": shape[0],
            "module_type": spec.get("module_type", "Linear"),
            "dtype": "float32",
            "aliases": [],
        }
        row.update({k: v for k, v in spec.items() if k.startswith("probe_")})
        rows.append(row)
    writer.add_params(rows)
    writer.set_num_groups(1)
    num_records, num_tensors = cos.shape
    skipped = skipped or [False] * num_records
    for r in range(num_records):
        metrics = torch.full((len(METRICS), num_tensors), NAN)
        metrics[METRICS.index("cos_grad")] = torch.as_tensor(cos[r], dtype=torch.float32)
        metrics[METRICS.index("channel_cos_grad_max")] = torch.as_tensor(chan[r])
        if weight_norm is not None:
            metrics[METRICS.index("weight_norm")] = torch.as_tensor(weight_norm[r])
        if grad_norm is not None:
            metrics[METRICS.index("grad_norm")] = torch.as_tensor(grad_norm[r])
        views = torch.full((len(VIEWS), num_tensors), -1, dtype=torch.int8)
        if applied is not None:
            views[VIEWS.index("applied_view")] = torch.as_tensor(applied[r], dtype=torch.int8)
        groups = torch.zeros(len(GROUP_FIELDS), 1, dtype=torch.float64)
        groups[GROUP_FIELDS.index("weight_decay")] = weight_decay
        writer.append(r * 10, float(r), skipped[r], metrics, views, groups)
    return Run(validate(writer.to_dict()))


TENSORS = [
    {"name": "a", "shape": (10, 10)},
    {"name": "b", "shape": (10,), "module_type": "BatchNorm1d"},
]


def two_tensor_run(skipped=None, **params) -> Run:
    # tensor a: layer, layer, channel, channel, channel(skipped)
    cos = np.array([[0.001, 0.5]] * 5)
    chan = np.array([[0.5, NAN], [0.5, NAN], [0.001, NAN], [0.001, NAN], [0.001, NAN]])
    tensors = [dict(TENSORS[0], **params), TENSORS[1]]
    return make_run(tensors, cos, chan, skipped=skipped)


class ConvBNClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, bias=False)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        return self.fc(F.relu(self.bn(self.conv(x))).mean((2, 3)))
