"""Framework integrations: Lightning, the Hugging Face Trainer, TensorBoard export.

- `stepsize_lens.integrations.lightning.StepSizeLensCallback` (``lightning.pytorch``)
- `stepsize_lens.integrations.huggingface.StepSizeLensTrainerCallback` (``transformers``)
- `stepsize_lens.integrations.tensorboard.to_tensorboard`

Each framework is imported only by its own submodule: importing ``stepsize_lens`` or this
package never imports lightning, transformers or tensorboard. The shared pieces live here:
finding the torch optimizer inside a framework's wrapper, and the few key scalars a callback
logs to the framework's logger.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from stepsize_lens.recording.lens import Lens

PREFIX = "stepsize_lens/"
KEY_SCALARS: tuple[str, ...] = (
    "angular_update",
    "weight_norm",
    "effective_lr",
    "invariant_fraction",
)


def unwrap_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside a framework's wrapper (Lightning's ``LightningOptimizer``,
    accelerate's ``AcceleratedOptimizer``): the one whose ``step()`` runs the lens's hooks."""
    import torch

    seen = 0
    while seen < 8:  # wrappers nest at most a couple of times; never loop forever
        inner = getattr(optimizer, "optimizer", None)
        if inner is None:
            inner = getattr(optimizer, "_optimizer", None)
        if not isinstance(inner, torch.optim.Optimizer) or inner is optimizer:
            break
        optimizer, seen = inner, seen + 1
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"expected a torch.optim.Optimizer, got {type(optimizer).__name__}")
    return optimizer


def key_scalars(lens: Lens, prefix: str = PREFIX) -> dict[str, float]:
    """A summary of the lens's latest record, for a training framework's logger.

    Over the tensors the paper's test found scale-invariant at that record (channel or layer
    view passed; docs/design.md §3): the mean ``angular_update`` (radians per step), ``weight_norm``
    and ``effective_lr`` (η/‖w‖²), plus ``invariant_fraction`` = passed / tested. Means over an
    empty set are NaN. Empty dict before the first record or when the latest step was skipped.
    """
    latest = _latest_record(lens)
    if latest is None:
        return {}
    metrics, test_view = latest
    tested = test_view >= 0
    invariant = test_view > 0  # View.CHANNEL or View.LAYER
    out = {
        f"{prefix}{name}": _nanmean(metrics[name][invariant])
        for name in ("angular_update", "weight_norm", "effective_lr")
    }
    count = int(tested.sum())
    out[f"{prefix}invariant_fraction"] = int(invariant.sum()) / count if count else math.nan
    return out


def _latest_record(lens: Lens) -> tuple[Mapping[str, torch.Tensor], torch.Tensor] | None:
    """(metric name -> [T] values, test_view [T]) of the lens's last record; None if none or
    if that step was skipped. `Lens.latest` is O(tensors), unlike building a whole `Run`."""
    record = lens.latest()
    if record is None or record.skipped:
        return None
    return record.metrics, record.test_view


def _nanmean(values: torch.Tensor) -> float:
    finite = values[~values.isnan()]
    return float(finite.double().mean()) if finite.numel() else math.nan
