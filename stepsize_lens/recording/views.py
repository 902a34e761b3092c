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
from stepsize_lens.paper_test import paper_bounds, views_from_cosines

Move = Callable[[torch.Tensor, torch.device], torch.Tensor]  # `device.to_device`


def _stay(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    return host.to(device)


class ShapeTable:
    """numel, rows and ndim of the tracked tensors as tensors on one device (built once), and
    the paper test's bounds per δ (`bounds`, computed once on the host and moved). ``move``
    puts a host tensor on the device (`device.to_device`: without waiting)."""

    def __init__(
        self,
        params_table: Mapping[str, Sequence[Any]],
        device: torch.device,
        move: Move = _stay,
    ) -> None:
        self._host = {
            "numel": torch.tensor(params_table["numel"], dtype=torch.float64),
            "rows": torch.tensor(params_table["rows"], dtype=torch.float64),
            "ndim": torch.tensor(params_table["ndim"], dtype=torch.int64),
        }
        self.device = device
        self._move = move
        self.numel = move(self._host["numel"], device)
        self.rows = move(self._host["rows"], device)
        self.ndim = move(self._host["ndim"], device)
        self.testable = move(self._host["ndim"] >= 2, device)
        self._bounds: dict[float, torch.Tensor] = {}

    def bounds(self, delta: float) -> torch.Tensor:
        """[2, T] float64 on the device: `paper_test.paper_bounds` for ``delta``."""
        if delta not in self._bounds:
            host = paper_bounds(self._host["numel"], self._host["rows"], delta)
            self._bounds[delta] = self._move(host, self.device)
        return self._bounds[delta]


def live_test_views(
    block: torch.Tensor, shapes: ShapeTable, has_grad: torch.Tensor, delta: float
) -> torch.Tensor:
    """The paper's test on one record's [len(METRICS), T] block: float64 [T] `View` codes
    (`paper_test.views_from_cosines`; a tensor without a gradient was not tested)."""
    cos_grad = block[METRICS.index("cos_grad")]
    channel_max = block[METRICS.index("channel_cos_grad_max")]
    views = views_from_cosines(cos_grad, channel_max, shapes.bounds(delta), shapes.testable)
    return views.masked_fill_(has_grad.logical_not(), int(View.UNTESTED)).to(torch.float64)


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
