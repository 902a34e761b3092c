"""Param-group hyperparameters as numbers: the ``GROUP_FIELDS`` of every record.

Optimizers spell their settings differently (``betas`` is a pair, ``nesterov`` a bool, ``lr``
may be a tensor); each field becomes one float, NaN where a group does not have it. A setting
held as a tensor on an accelerator (``lr`` of a capturable optimizer) is never read on the
host during a record: `split_group_values` leaves it to travel with the record's results.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from stepsize_lens._schema import GROUP_FIELDS


def as_float(value: Any) -> float:
    """A number, a 0-d tensor or None (NaN) as a Python float."""
    if value is None:
        return math.nan
    if isinstance(value, torch.Tensor):
        return float(value.detach().float().item())
    return float(value)


_GROUP_ALIASES: Mapping[str, Callable[[Mapping[str, Any]], Any]] = {
    "beta1": lambda group: group["betas"][0] if "betas" in group else None,
    "beta2": lambda group: group["betas"][1] if "betas" in group else None,
}


def group_field(group: Mapping[str, Any], field: str) -> float:
    """One field of one param group as a float (bools as 0/1; NaN if missing or not a number)."""
    value = _GROUP_ALIASES[field](group) if field in _GROUP_ALIASES else group.get(field)
    if isinstance(value, bool):
        return float(value)
    try:
        return as_float(value)
    except (TypeError, ValueError):
        return math.nan


def group_values(param_groups: Sequence[Mapping[str, Any]]) -> torch.Tensor:
    """float64 [len(GROUP_FIELDS), groups]: every field of every group."""
    rows = [[group_field(group, field) for group in param_groups] for field in GROUP_FIELDS]
    return torch.tensor(rows, dtype=torch.float64)


def _on_accelerator(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.device.type != "cpu"


def _raw(group: Mapping[str, Any], field: str) -> Any:
    return _GROUP_ALIASES[field](group) if field in _GROUP_ALIASES else group.get(field)


def split_group_values(
    param_groups: Sequence[Mapping[str, Any]],
) -> tuple[torch.Tensor, list[tuple[int, int, torch.Tensor]]]:
    """`group_values` without reading accelerator tensors: the host table (NaN where a value
    is such a tensor) and those entries as (field index, group index, tensor)."""
    # built as Python numbers, then one tensor: no per-entry tensor writes
    rows: list[list[float]] = []
    later: list[tuple[int, int, torch.Tensor]] = []
    for f, field in enumerate(GROUP_FIELDS):
        row = []
        for g, group in enumerate(param_groups):
            value = _raw(group, field)
            if _on_accelerator(value):
                later.append((f, g, value))
                row.append(math.nan)
            else:
                row.append(group_field(group, field))
        rows.append(row)
    table = torch.tensor(rows, dtype=torch.float64).reshape(len(GROUP_FIELDS), len(param_groups))
    return table, later


def tensor_lrs(
    param_groups: Sequence[Mapping[str, Any]],
    group_of: torch.Tensor,
    device: torch.device,
    to_device: Callable[[torch.Tensor, torch.device], torch.Tensor],
) -> torch.Tensor:
    """float64 [T] on ``device``: the lr of each tracked tensor's group (``group_of`` [T] on
    ``device``), without reading an accelerator tensor on the host; ``to_device`` moves host
    tensors (`device.to_device`)."""
    lrs = [group.get("lr") for group in param_groups]
    if not any(_on_accelerator(lr) for lr in lrs):
        host = torch.tensor([as_float(lr) for lr in lrs], dtype=torch.float64)
        return to_device(host, device)[group_of]
    values = [
        lr.detach().to(device=device, dtype=torch.float64).reshape(())
        if _on_accelerator(lr)
        else to_device(torch.tensor(as_float(lr), dtype=torch.float64), device)
        for lr in lrs
    ]
    return torch.stack(values)[group_of]
