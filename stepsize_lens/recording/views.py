"""The two views of every record: the paper's test run live, and the view AdamP/SGDP applied.

``test_view``: `paper_test.paper_test` on the record's cosines; a tensor without a gradient
at this step was not tested. ``applied_view``: this package's AdamP/SGDP keep the view they
used in ``state[p]["projection"]``; other optimizers leave it unknown (untested).
Both are computed on the metrics' device, without a host synchronisation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from stepsize_lens._schema import METRICS, View
from stepsize_lens.paper_test import paper_test


class ShapeTable:
    """numel, rows and ndim of the tracked tensors as tensors on one device (built once)."""

    def __init__(self, params_table: Mapping[str, Sequence[Any]], device: torch.device) -> None:
        self.numel = torch.tensor(params_table["numel"], dtype=torch.float64, device=device)
        self.rows = torch.tensor(params_table["rows"], dtype=torch.float64, device=device)
        self.ndim = torch.tensor(params_table["ndim"], dtype=torch.int64, device=device)


def live_test_views(
    block: torch.Tensor, shapes: ShapeTable, has_grad: torch.Tensor, delta: float
) -> torch.Tensor:
    """The paper's test on one record's [len(METRICS), T] block: float64 [T] `View` codes."""
    cos_grad = block[METRICS.index("cos_grad")]
    channel_max = block[METRICS.index("channel_cos_grad_max")]
    views = paper_test(cos_grad, channel_max, shapes.numel, shapes.rows, shapes.ndim, delta=delta)
    # a tensor without a gradient was not tested
    views = torch.where(has_grad, views, torch.full_like(views, View.UNTESTED))
    return views.to(torch.float64)


def applied_views(
    state: Mapping[Any, Mapping[str, Any]], params: Sequence[torch.Tensor], device: torch.device
) -> torch.Tensor:
    """float64 [T]: the view AdamP/SGDP applied (``state[p]["projection"]``); -1 where unknown."""
    values: list[torch.Tensor] = []
    known = False
    for param in params:
        value = state[param].get("projection") if param in state else None
        if value is None:
            values.append(torch.tensor(float(View.UNTESTED), dtype=torch.float64, device=device))
        else:
            known = True
            values.append(torch.as_tensor(value).to(device=device, dtype=torch.float64).reshape(()))
    if not known:
        return torch.full((len(params),), float(View.UNTESTED), dtype=torch.float64, device=device)
    return torch.stack(values)
