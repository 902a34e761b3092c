"""Recording: the lens's optimizer step hooks and everything they use while training runs.

`lens` (the `Lens` and `attach`) → `snapshot` (buffers for w across the step) → `metrics`
(pure batched math from row statistics to every metric) → `stepsize_lens.run.RunWriter`.
`distributed` merges row statistics of sharded parameters exactly.
"""

from __future__ import annotations

from stepsize_lens.recording.lens import Lens, attach

__all__ = ["Lens", "attach"]
