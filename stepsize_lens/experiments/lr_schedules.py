"""Learning-rate schedules of the experiments, as torch ``LambdaLR`` factors.

With ``steps`` optimizer steps, ``warmup`` of them warming up, the factor on the base lr for the
step with 0-based index s is::

    constant  1
    cosine    (s + 1) / warmup                                    for s < warmup
              (1 + cos(π (s − warmup) / (steps − warmup))) / 2    after (1 → 0)
    wsd       (s + 1) / warmup                                    for s < warmup
              1                                                   until the decay starts
              (steps − s) / decay                                 for the last ``decay`` steps

(warmup-stable-decay; ``decay`` = round(``decay_fraction`` × steps), default a fifth). The
optimizers read the base lr as the peak: torch's schedulers store it in each group's
``initial_lr``, which is where `stepsize_lens.optim.AdamC` takes η_max from.
"""

from __future__ import annotations

import math

import torch

from stepsize_lens.errors import UserInputError

SCHEDULES = ("constant", "cosine", "wsd")
DECAY_FRACTION = 0.2


def lr_factor(
    kind: str, step: int, steps: int, warmup: int = 0, decay_fraction: float = DECAY_FRACTION
) -> float:
    """The factor on the base lr at the step with 0-based index ``step`` (module docstring)."""
    if kind not in SCHEDULES:
        raise UserInputError(f"schedule must be one of {', '.join(SCHEDULES)}, not {kind!r}")
    if kind == "constant":
        return 1.0
    if step < warmup:
        return (step + 1) / warmup
    if kind == "cosine":
        span = max(steps - warmup, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup, span) / span))
    decay = max(1, round(decay_fraction * steps))
    if step < steps - decay:
        return 1.0
    return max(steps - step, 0) / decay


def lr_scheduler(
    optimizer: torch.optim.Optimizer, kind: str, steps: int, warmup: int = 0
) -> torch.optim.lr_scheduler.LambdaLR | None:
    """A ``LambdaLR`` following `lr_factor` (None for ``constant``); call ``.step()`` after
    every ``optimizer.step()``."""
    lr_factor(kind, 0, steps, warmup)  # validates kind
    if kind == "constant":
        return None
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(kind, step, steps, warmup)
    )
