"""Names and codes of the scale-invariance classes, shared by the test, the probe and the census.

A tensor is ``"channel"`` invariant (every row w_k may be rescaled by its own c_k > 0),
``"layer"`` invariant (only the whole tensor by one c > 0) or ``"none"``; `CLASS_OF_CODE` maps
the run file's view codes (`stepsize_lens.run.VIEW_*`) to these names.
"""

from __future__ import annotations

from stepsize_lens.run import VIEW_CHANNEL, VIEW_LAYER, VIEW_NONE

DEFAULT_DELTA = 0.1
CLASSES: tuple[str, ...] = ("channel", "layer", "none")
CLASS_OF_CODE = {VIEW_CHANNEL: "channel", VIEW_LAYER: "layer", VIEW_NONE: "none"}
PROBE_VERDICT_COLUMN = "probe_verdict"
