"""One finding: what a run says the user should look at (the record every check returns)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

MAX_LISTED = 20  # tensors listed in a finding's evidence


@dataclass(frozen=True)
class Finding:
    """One finding: ``kind`` (one of `KINDS`), ``severity`` (critical / warning / info), a
    one-line ``title``, ``evidence`` (numbers, JSON-friendly), the ``tensors`` concerned (at most
    20 listed; ``evidence["tensor_count"]`` has the total), a concrete ``suggestion``, and a
    ``score`` that orders findings of equal severity (larger first)."""

    kind: str
    severity: str
    title: str
    evidence: dict[str, Any]
    tensors: tuple[str, ...]
    suggestion: str
    score: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["tensors"] = list(self.tensors)
        return out


def listed(names: list[str]) -> tuple[str, ...]:
    """The first `MAX_LISTED` names (``evidence["tensor_count"]`` has the total)."""
    return tuple(names[:MAX_LISTED])
