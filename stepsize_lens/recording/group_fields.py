"""Param-group hyperparameters as numbers: the ``GROUP_FIELDS`` of every record.

Optimizers spell their settings differently (``betas`` is a pair, ``nesterov`` a bool, ``lr``
may be a tensor); each field becomes one float, NaN where a group does not have it.
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


def tensor_lrs(
    param_groups: Sequence[Mapping[str, Any]], group_of: Sequence[int], device: torch.device
) -> torch.Tensor:
    """float64 [T]: the lr of each tracked tensor's group, on ``device``."""
    return torch.tensor(
        [as_float(param_groups[g].get("lr")) for g in group_of], dtype=torch.float64, device=device
    )
