"""Recording: the lens's optimizer step hooks and everything they use while training runs.

`lens` (the `Lens` and `attach`, the orchestrator) → `snapshot` (the one copy of w across the
step, and the passes over w, g and w') → `row_stats` (the per-row sums those passes take) →
`metrics` (pure batched math from row sums to every metric) → `pending` (records on their way
from the device, the final save) → `stepsize_lens.run.RunWriter`. Beside them, one job each:
`model_names` (tensor names and the model class through compile/DDP/FSDP wrappers), `selection`
(``attach(..., tensors=...)``), `tracked` (the watched tensors and their params-table rows),
`views` (the paper's test live, the view AdamP/SGDP applied), `group_fields` (param-group
hyperparameters), `scaler` (GradScaler skips), `hooks` (closures, sparse gradients), `device`
(accelerator paths, transfers without waiting), `files` (where a run goes and how it is never
lost), `lock` (one writing process per run file), `signals` (SIGTERM/SIGHUP save every live
lens), `resume` (continuing a run file), `record` (`Lens.latest`), `schedules` (when to
record; also ``stepsize_lens.schedules``), `distributed` (exact reductions over sharded
parameters).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["Lens", "Record", "attach"]

# imported on first use, so that `schedules` (``stepsize_lens.schedules``) stays free of torch
_LAZY = {
    "Lens": "stepsize_lens.recording.lens",
    "attach": "stepsize_lens.recording.lens",
    "Record": "stepsize_lens.recording.record",
}

if TYPE_CHECKING:  # pragma: no cover
    from stepsize_lens.recording.lens import Lens, attach
    from stepsize_lens.recording.record import Record


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
