"""The two views of every record: the paper's test run live, and the view AdamP/SGDP applied.

``test_view``: `paper_test.paper_test` on the record's cosines; a tensor without a gradient
at this step was not tested. ``applied_view``: this package's AdamP/SGDP keep the view they
used in ``state[p]["projection"]``; other optimizers leave it unknown (untested).
Both are computed on the metrics' device, without a host synchronisation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from stepsize_lens._schema import METRICS, View
from stepsize_lens.paper_test import paper_test

Move = Callable[[torch.Tensor, torch.device], torch.Tensor]  # `device.to_device`


def _stay(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    return host.to(device)


class ShapeTable:
    """numel, rows and ndim of the tracked tensors as tensors on one device (built once).
    ``move`` puts a host tensor on the device (`device.to_device`: without waiting)."""

    def __init__(
        self,
        params_table: Mapping[str, Sequence[Any]],
        device: torch.device,
        move: Move = _stay,
    ) -> None:
        self.numel = move(torch.tensor(params_table["numel"], dtype=torch.float64), device)
        self.rows = move(torch.tensor(params_table["rows"], dtype=torch.float64), device)
        self.ndim = move(torch.tensor(params_table["ndim"], dtype=torch.int64), device)


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
    state: Mapping[Any, Mapping[str, Any]],
    params: Sequence[torch.Tensor],
    device: torch.device,
    move: Move = _stay,
) -> torch.Tensor:
    """float64 [T] on ``device``: the view AdamP/SGDP applied (``state[p]["projection"]``); -1
    where unknown. Values held on an accelerator are gathered there, never read on the host."""
    host = torch.full((len(params),), float(View.UNTESTED), dtype=torch.float64)
    on_device: list[tuple[int, torch.Tensor]] = []
    for index, param in enumerate(params):
        value = state[param].get("projection") if param in state else None
        if value is None:
            continue
        if isinstance(value, torch.Tensor) and value.device.type != "cpu":
            on_device.append((index, value))
        else:
            host[index] = float(value)
    out = move(host, device)
    if on_device:
        where = move(torch.tensor([index for index, _ in on_device], dtype=torch.long), device)
        values = torch.stack(
            [value.detach().to(device, torch.float64).reshape(()) for _, value in on_device]
        )
        out = out.index_put((where,), values)
    return out
