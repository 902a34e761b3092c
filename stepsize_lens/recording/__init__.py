"""Recording: the lens's optimizer step hooks and everything they use while training runs.

`lens` (the `Lens` and `attach`, the orchestrator) → `snapshot` (buffers for w across the
step) → `metrics` (pure batched math from row statistics to every metric) →
`stepsize_lens.run.RunWriter`. Beside them, one job each: `naming` (tensor names and the model
class through compile/DDP/FSDP wrappers), `tracked` (the watched tensors and their params-table
rows), `views` (the paper's test live, the view AdamP/SGDP applied), `group_fields` (param-group
hyperparameters), `scaler` (GradScaler skips), `hooks` (closures, sparse gradients), `record`
(`Lens.latest`), `distributed` (exact reductions over sharded parameters).
"""

from __future__ import annotations

from stepsize_lens.recording.lens import Lens, attach
from stepsize_lens.recording.record import Record

__all__ = ["Lens", "Record", "attach"]
