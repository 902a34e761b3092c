"""Choosing an experiment's optimizers by name, shared by the digits and transformer
comparisons."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

from stepsize_lens.errors import UserInputError


class _Named(Protocol):
    name: str


Spec = TypeVar("Spec", bound=_Named)


def select(specs: Sequence[Spec], names: Sequence[str] | None = None) -> list[Spec]:
    """The specs called ``names``, in that order (default: every spec, in its order); an unknown
    name is a `UserInputError` listing the known ones."""
    if names is None:
        return list(specs)
    by_name = {spec.name: spec for spec in specs}
    unknown = [name for name in names if name not in by_name]
    if unknown:
        raise UserInputError(
            f"unknown optimizer(s) {', '.join(unknown)}; choose from {', '.join(by_name)}"
        )
    return [by_name[name] for name in names]
