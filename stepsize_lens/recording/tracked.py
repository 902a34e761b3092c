"""Which tensors the lens watches: the optimizer's parameters in optimizer order, and the
params-table row (name, group, shape, module type, aliases...) of each.

Complex tensors are left out (their real and imaginary parts would need a metric of their own;
copying them into the real buffers would make torch warn "Casting complex values to real" into
the training process): `take_complex` names them once, for the lens's one note.

Param groups can grow while training runs (``optimizer.add_param_group``); `TrackedParams.sync`
notices that from the groups' lengths alone, so a step where nothing changed costs one tuple
comparison.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from stepsize_lens.model_names import Naming
from stepsize_lens.recording.selection import Matcher


class TrackedParams:
    """The tracked tensors (``params``), the param group of each (``group_of``) and their rows.

    ``names``: `naming.parameter_names` of the model; a tensor the model does not name is
    called ``group{g}.{i}``. ``select``: `selection.matcher` of ``attach(..., tensors=...)``;
    tensors it rejects are never tracked.
    """

    def __init__(self, names: Mapping[int, Naming], select: Matcher | None = None) -> None:
        self.names = names
        self.select = select
        self._left_out: set[int] = set()
        self._complex: list[str] = []  # complex tensors left out since `take_complex`
        self.params: list[torch.Tensor] = []
        self.group_of: list[int] = []
        self._index: dict[int, int] = {}
        self._signature: tuple[int, ...] = ()

    def __len__(self) -> int:
        return len(self.params)

    def sync(self, param_groups: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]] | None:
        """Track params added since the last call: None if the groups did not change, else the
        params-table rows of the new tensors (possibly none: a tensor may move between groups)."""
        signature = tuple(len(group["params"]) for group in param_groups)
        if signature == self._signature:
            return None
        self._signature = signature
        new_rows = []
        self.group_of = list(self.group_of)
        for group_index, group in enumerate(param_groups):
            for position, param in enumerate(group["params"]):
                key = id(param)
                if key in self._index:
                    self.group_of[self._index[key]] = group_index
                    continue
                if key in self._left_out:
                    continue
                naming = self.names.get(key, Naming([], "", None))
                name = naming.names[0] if naming.names else f"group{group_index}.{position}"
                if self.select is not None and not self.select(name, param, naming.owner):
                    self._left_out.add(key)
                    continue
                if param.is_complex():
                    self._left_out.add(key)
                    self._complex.append(name)
                    continue
                self._index[key] = len(self.params)
                self.params.append(param)
                self.group_of.append(group_index)
                new_rows.append(self._row(param, name, naming, group_index, position))
        return new_rows

    def take_complex(self) -> list[str]:
        """The names of the complex tensors left out since the last call."""
        names, self._complex = self._complex, []
        return names

    @staticmethod
    def _row(
        param: torch.Tensor, name: str, naming: Naming, group_index: int, position: int
    ) -> dict[str, Any]:
        names, module_type = naming.names, naming.module_type
        return {
            "name": name,
            "group": group_index,
            "index": position,
            "shape": list(param.shape),
            "numel": param.numel(),
            "ndim": param.ndim,
            "rows": param.shape[0] if param.ndim >= 1 else 1,
            "module_type": module_type,
            "dtype": str(param.dtype).replace("torch.", ""),
            "aliases": names[1:],
            "requires_grad": bool(param.requires_grad),
        }
