"""`Record`: the lens's latest record as a small typed object (`Lens.latest`).

What a training framework's callback needs after a step (`integrations.key_scalars`): the
step, whether it was skipped, and per tracked tensor every metric and both views, without
building a whole `Run`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Record:
    """One record. ``metrics``: metric name -> float32 [T]; ``views``: ``test_view`` and
    ``applied_view`` -> int8 [T] (`View` codes); ``tensor_names`` [T]. Copies: a `Record`
    stays valid while the lens records on."""

    step: int
    skipped: bool
    tensor_names: tuple[str, ...]
    metrics: Mapping[str, torch.Tensor]
    views: Mapping[str, torch.Tensor]

    @property
    def test_view(self) -> torch.Tensor:
        """The paper's test at this record: int8 [T] `View` codes."""
        return self.views["test_view"]

    @property
    def applied_view(self) -> torch.Tensor:
        """The view AdamP/SGDP applied at this record: int8 [T] `View` codes (-1 unknown)."""
        return self.views["applied_view"]
