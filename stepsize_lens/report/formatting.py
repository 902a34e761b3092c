"""How the reports write a number: significant digits, a ratio, a share, a step; "–" when
undefined. A leaf of `report`, shared by the document and the compare tables."""

from __future__ import annotations

from typing import Any


def num(value: Any, digits: int = 3) -> str:
    """A number in ``digits`` significant digits; "–" when undefined."""
    if value is None:
        return "–"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return f"{value:.{digits}g}"


def times(value: Any) -> str:
    return "–" if value is None else f"{value:.3g}×"


def share(value: Any) -> str:
    return "–" if value is None else f"{value:.0%}"


def step(value: Any) -> str:
    return "–" if value is None else str(int(value))
