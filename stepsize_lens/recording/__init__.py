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
lens), `resume` (continuing a run file), `record` (`Lens.latest`), `distributed` (exact
reductions over sharded parameters).
"""

from __future__ import annotations

from stepsize_lens.recording.lens import Lens, attach
from stepsize_lens.recording.record import Record

__all__ = ["Lens", "Record", "attach"]
