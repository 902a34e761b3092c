"""Integrations: Lightning, the Hugging Face Trainer, Weights & Biases, TensorBoard.

- `stepsize_lens.integrations.lightning.StepSizeLensCallback` (``lightning.pytorch``)
- `stepsize_lens.integrations.huggingface.StepSizeLensTrainerCallback` (``transformers``)
- `stepsize_lens.integrations.wandb.WandbWriter` (``wandb``): live, ``attach(...,
  on_record=WandbWriter())``
- `stepsize_lens.integrations.tensorboard.live_writer` (live) and
  `stepsize_lens.integrations.tensorboard.to_tensorboard` (export of a finished run)

Each framework is imported only by its own submodule: importing ``stepsize_lens`` or this
package never imports lightning, transformers, wandb or tensorboard. The shared pieces live
here: finding the torch optimizer inside a framework's wrapper, the key scalars every logger
gets (`key_scalars`: one computation, `stepsize_lens.recording.record.key_scalars`, for the
callbacks, W&B and TensorBoard), and how a callback continues a run when its trainer resumes
(`resume_options`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from stepsize_lens.recording.lens import Lens
    from stepsize_lens.recording.record import Record

PREFIX = "stepsize_lens/"


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
    """The key scalars of the lens's latest record, each name prefixed (``prefix``): per set
    of tensors (the scale-invariant ones, each invariance class, each param group) the mean
    angular update, the mean weight norm and the set's η/‖w‖², and the share of tested tensors
    passing the paper's test (`stepsize_lens.recording.record` says how each is formed). Every
    value is finite; empty before the first record and when the latest step was skipped."""
    record = lens.latest()
    return {} if record is None else prefixed(record, prefix)


def prefixed(record: Record, prefix: str = PREFIX) -> dict[str, float]:
    """``record.key_scalars`` with every name prefixed: what a logger writes for one record."""
    return {f"{prefix}{name}": value for name, value in record.key_scalars.items()}


def writer_options(
    per_tensor: str | None,
    allowed: tuple[str | None, ...],
    every: int,
    metrics: Iterable[str] | None,
) -> tuple[str, ...]:
    """Check a live writer's per-tensor options (one of ``allowed``; ``every`` a whole number
    >= 1; every metric known) and return the metrics to show (default the key metrics);
    ValueError naming the first bad one."""
    from stepsize_lens._schema import METRICS
    from stepsize_lens.recording.record import KEY_METRICS

    if per_tensor not in allowed:
        words = ", ".join(repr(a) if a is not None else "None" for a in allowed)
        raise ValueError(f"per_tensor must be one of {words}, not {per_tensor!r}")
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"every must be a whole number >= 1, not {every!r}")
    shown = tuple(KEY_METRICS if metrics is None else metrics)
    unknown = [name for name in shown if name not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric {unknown[0]!r}; known: {', '.join(METRICS)}")
    return shown


def resume_options(
    path: str | os.PathLike[str] | None,
    global_step: int,
    counts_this_optimizer: bool = True,
    resume: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """The `attach` options of a callback whose trainer starts at ``global_step``.

    Nothing for a trainer starting afresh (step 0). For a trainer resumed from a checkpoint:
    ``step=global_step`` (unless the trainer's step does not count this optimizer's steps,
    ``counts_this_optimizer=False``: the lens then takes the optimizer's own step count, or
    asks for it) and, when ``resume`` and the run file exists, ``resume=True``: the run
    continues, and its records after that step, from the stretch the checkpoint discarded, are
    dropped (`stepsize_lens.recording.resume`). ``overwrite``: a fit that does not continue
    the file replaces a run already at ``path`` (without it, `attach` raises there rather than
    replace it)."""
    options: dict[str, Any] = {"overwrite": True} if overwrite else {}
    if global_step <= 0:
        return options
    step = int(global_step) if counts_this_optimizer else None
    if resume and path is not None and Path(path).exists():
        return {"resume": True, "step": step}
    return options if step is None else {**options, "step": step}
