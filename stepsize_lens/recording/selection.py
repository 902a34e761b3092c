"""Which tensors to watch: ``attach(..., tensors=...)``.

A selection is one of, or a list of (any match counts):

- a name (``"fc.weight"``) or a glob pattern (``"layer4.*"``, ``"*.weight"``), matched against
  the tensor's name (``group{g}.{i}`` without a model);
- a compiled regular expression (``re.compile(r"blocks\\.\\d+\\.attn")``), searched in the name;
- a module type (``nn.Conv2d``): the tensors owned by modules of that type or a subclass;
- a callable ``(name, param) -> bool``.

Tensors left out are never tracked: no buffer, no pass, no column in the run. A selection that
matches nothing is valid and records an empty run.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable
from typing import Any, Union

import torch

Selection = Union[  # noqa: UP007 - a runtime alias
    str,
    "re.Pattern[str]",
    type,
    Callable[[str, torch.Tensor], bool],
    Iterable[Any],
]
# (name, param, class of the module that owns it or None) -> watched?
Matcher = Callable[[str, torch.Tensor, "type | None"], bool]


def matcher(selection: Selection | None) -> Matcher | None:
    """The predicate for ``selection``; None watches everything."""
    if selection is None:
        return None
    if isinstance(selection, str):
        pattern = selection
        return lambda name, param, owner: name == pattern or fnmatch.fnmatchcase(name, pattern)
    if isinstance(selection, re.Pattern):
        regex = selection
        return lambda name, param, owner: regex.search(name) is not None
    if isinstance(selection, type):
        if not issubclass(selection, torch.nn.Module):
            raise TypeError(f"tensors=: a type must be a torch.nn.Module class, got {selection}")
        kind = selection
        return lambda name, param, owner: owner is not None and issubclass(owner, kind)
    if callable(selection):
        function = selection
        return lambda name, param, owner: bool(function(name, param))
    if isinstance(selection, Iterable):
        parts = [matcher(item) for item in selection]
        return lambda name, param, owner: any(
            part(name, param, owner) for part in parts if part is not None
        )
    raise TypeError(
        "tensors= takes a name, a glob pattern, a compiled regex, a module type, a callable "
        f"(name, param) -> bool, or a list of these; got {type(selection).__name__}"
    )
