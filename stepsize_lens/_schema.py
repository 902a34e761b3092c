"""The vocabulary every part of stepsize_lens shares. A leaf: it imports nothing of the package.

- the metric catalog (`LAYER_METRICS`, `CHANNEL_METRICS`, `METRICS`; defined in docs/design.md §3);
- the scale-invariance `View` codes the run file stores, and the class names they stand for;
- the param-group fields recorded per record (`GROUP_FIELDS`) and the params-table columns;
- the paper's default threshold δ.

One idea, one name: a tensor's *view* is the outcome of the paper's cosine test as a code
(`View`), its *class* is the same outcome as a word (``"channel"``, ``"layer"``, ``"none"``),
used wherever people read it (probe verdicts, reports, `classify_tensors`).
"""

from __future__ import annotations

from enum import IntEnum

LAYER_METRICS: tuple[str, ...] = (
    "weight_norm",
    "grad_norm",
    "update_norm",
    "relative_update",
    "angular_update",
    "effective_lr",
    "cos_grad",
    "cos_update",
    "norm_growth",
)
CHANNEL_METRICS: tuple[str, ...] = (
    "channel_cos_grad_max",
    "channel_weight_norm",
    "channel_angular_update",
    "channel_angular_update_cv",
)
METRICS: tuple[str, ...] = LAYER_METRICS + CHANNEL_METRICS

VIEWS: tuple[str, ...] = ("test_view", "applied_view")


class View(IntEnum):
    """The outcome of the paper's cosine test for one tensor, as the run file stores it (int8).

    ``UNTESTED`` means "not tested" (a 1-D tensor, no gradient, undefined cosines) in
    ``test_view`` and "unknown" (the optimizer exposes no projection state) in ``applied_view``.
    """

    UNTESTED = -1
    NONE = 0
    CHANNEL = 1
    LAYER = 2

    @property
    def class_name(self) -> str:
        """``"channel"``, ``"layer"`` or ``"none"`` (an untested tensor counts as ``"none"``)."""
        return CLASS_OF_VIEW.get(self, "none")


CLASSES: tuple[str, ...] = ("channel", "layer", "none")
INVARIANT_CLASSES: tuple[str, ...] = ("channel", "layer")
CLASS_OF_VIEW: dict[View, str] = {View.CHANNEL: "channel", View.LAYER: "layer", View.NONE: "none"}
VIEW_OF_CLASS: dict[str, View] = {name: code for code, name in CLASS_OF_VIEW.items()}

DEFAULT_DELTA = 0.1
PROBE_VERDICT_COLUMN = "probe_verdict"

GROUP_FIELDS: tuple[str, ...] = (
    "lr",
    "weight_decay",
    "momentum",
    "dampening",
    "beta1",
    "beta2",
    "eps",
    "wd_ratio",
    "delta",
    "nesterov",
)

PARAM_COLUMNS: tuple[str, ...] = (
    "name",
    "group",
    "index",
    "shape",
    "numel",
    "ndim",
    "rows",
    "module_type",
    "dtype",
    "aliases",
)
