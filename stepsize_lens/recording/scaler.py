"""GradScaler: record the steps a `torch.amp.GradScaler` skips.

When the scaled gradients hold inf or NaN, ``scaler.step(optimizer)`` does not call
``optimizer.step()``, so the optimizer's hooks never run and the lens would not see that the
step happened. `ScalerWatch` wraps the scaler's ``step`` (an instance attribute shadowing the
class method) and reports a skip when the wrapped call ran no optimizer step. The wrapper holds
the lens only weakly: a scaler outliving its lens keeps nothing alive and just steps.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any


class ScalerWatch:
    """Wraps ``scaler.step`` while attached; `restore` puts the class method back.

    ``steps_seen()`` counts the optimizer steps the lens's post hook saw; ``on_skip()`` records
    a skipped step. Both are bound methods of the lens, held weakly.
    """

    def __init__(
        self,
        scaler: Any,
        optimizer: Any,
        steps_seen: Callable[[], int],
        on_skip: Callable[[], None],
    ) -> None:
        self.scaler = scaler
        original = scaler.step
        seen = weakref.WeakMethod(steps_seen)  # type: ignore[arg-type]
        skip = weakref.WeakMethod(on_skip)  # type: ignore[arg-type]
        watched = weakref.ref(optimizer)

        def step(optimizer: Any, *args: Any, **kwargs: Any) -> Any:
            count = seen()
            before = count() if count is not None else None
            result = original(optimizer, *args, **kwargs)
            report = skip()
            if (
                before is not None
                and report is not None
                and optimizer is watched()
                and count is not None
                and count() == before
            ):
                report()
            return result

        scaler.step = step

    def restore(self) -> None:
        """Drop the wrapper: the scaler's class method is in effect again."""
        try:
            del self.scaler.step  # the instance attribute; the class method returns
        except AttributeError:
            pass
