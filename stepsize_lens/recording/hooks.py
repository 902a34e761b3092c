"""Plumbing between ``optimizer.step()`` and the lens: what the step hooks are given.

Optimizer step hooks receive ``(optimizer, args, kwargs)`` of the ``step`` call. A closure
(LBFGS, Lightning) means the gradient is computed *inside* ``step``, so the lens must read it
after the step instead of before; sparse gradients (``nn.Embedding(sparse=True)``) are read
dense.
"""

from __future__ import annotations

from typing import Any

import torch


def closure_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The closure passed to ``optimizer.step(closure)``, if any (the hooks' ``args`` start
    with the optimizer itself)."""
    closure = kwargs.get("closure")
    positional = [a for a in args if not isinstance(a, torch.optim.Optimizer)]
    if closure is None and positional and callable(positional[0]):
        closure = positional[0]
    return closure


def dense_grad(param: torch.Tensor) -> torch.Tensor | None:
    """``param.grad`` as a dense tensor (None if there is none)."""
    grad = param.grad
    if grad is not None and grad.is_sparse:
        return grad.to_dense()
    return grad
