"""Repeatable forwards for the probe: snapshot and replay of model state, calling, comparing.

A probe runs the model many times in training mode; each forward must see the same BatchNorm
statistics and dropout masks, and the model must come back bit for bit (`_StateGuard`). The
change between two outputs is max over output tensors of max|y' - y| / max|y|
(`_relative_change`). `trial_forward` runs one such forward and leaves the model as it was.
`idle_threads` sizes torch's thread pool for the probe's forwards to the idle CPUs.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch


class _StateGuard:
    """Snapshot of what a training-mode forward can change: buffers, RNG, ``training`` flags.

    ``replay()`` puts buffers and RNG back to the snapshot before each forward, so every forward
    sees the same BatchNorm statistics and the same dropout masks; ``restore()`` also puts the
    modules' train/eval flags back. Buffers are restored into the original tensor objects with
    ``copy_``, so the model is bit-for-bit what it was.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        import random

        self.modules = list(model.modules())
        self.training = [module.training for module in self.modules]
        self.buffers = [
            (module, name, buffer, buffer.detach().clone())
            for module in self.modules
            for name, buffer in module._buffers.items()
            if buffer is not None
        ]
        self.cpu_rng = torch.get_rng_state()
        self.cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        self.python_rng = random.getstate()
        self.numpy_rng = np.random.get_state()

    def _restore_rng(self) -> None:
        import random

        torch.set_rng_state(self.cpu_rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state_all(self.cuda_rng)
        random.setstate(self.python_rng)
        np.random.set_state(self.numpy_rng)

    def replay(self) -> None:
        with torch.no_grad():
            for module, name, buffer, saved in self.buffers:
                if module._buffers.get(name) is not buffer:
                    module._buffers[name] = buffer
                buffer.copy_(saved)
        self._restore_rng()

    def restore(self) -> None:
        self.replay()
        for module, training in zip(self.modules, self.training, strict=True):
            module.training = training


def _call(model: torch.nn.Module, inputs: Any) -> Any:
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def trial_forward(model: torch.nn.Module, inputs: Any) -> None:
    """One training-mode forward of ``model`` on ``inputs`` under ``torch.no_grad``, to check
    that the inputs fit; buffers, RNG states and train/eval flags are put back afterwards.
    Raises whatever the model raises."""
    guard = _StateGuard(model)
    try:
        model.train()
        with torch.no_grad():
            _call(model, inputs)
    finally:
        guard.restore()


def _float_leaves(output: Any) -> list[torch.Tensor]:
    """Floating-point tensors of a (nested) output: tensors, tuples, lists, dicts."""
    if isinstance(output, torch.Tensor):
        if output.is_floating_point() or output.is_complex():
            return [output.detach().clone()]
        return []
    if isinstance(output, dict):
        return [leaf for value in output.values() for leaf in _float_leaves(value)]
    if isinstance(output, (tuple, list)):
        return [leaf for value in output for leaf in _float_leaves(value)]
    return []


def _relative_change(new: list[torch.Tensor], base: list[torch.Tensor]) -> float:
    """max over output tensors of max|y' - y| / max|y| (absolute change where y is all zero)."""
    worst = 0.0
    for a, b in zip(new, base, strict=True):
        if a.numel() == 0:
            continue
        a64, b64 = (
            a.to(torch.complex128 if a.is_complex() else torch.float64),
            b.to(torch.complex128 if b.is_complex() else torch.float64),
        )
        diff = (a64 - b64).abs().max().item()
        scale = b64.abs().max().item()
        change = diff / scale if scale > 0 else diff
        if change != change:  # NaN output: the comparison is undefined, report NaN
            return float("nan")
        worst = max(worst, change)
    return worst


def _cast_inputs(inputs: Any, dtype: torch.dtype) -> Any:
    if isinstance(inputs, torch.Tensor):
        return inputs.to(dtype) if inputs.is_floating_point() else inputs
    if isinstance(inputs, dict):
        return {key: _cast_inputs(value, dtype) for key, value in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(_cast_inputs(value, dtype) for value in inputs)
    return inputs


@contextlib.contextmanager
def idle_threads(threads: int | None = None) -> Iterator[int]:
    """Run the block with ``threads`` intra-op threads (`torch.set_num_threads`), by default
    with as many as the machine has idle CPUs: torch's setting, capped at the CPU count minus
    the 1-minute load average (rounded), at least 1. torch's setting comes back afterwards;
    yields the number used.

    Why: the threads of an op wait for each other at its end. On a machine whose CPUs are busy
    with other processes, a thread that is not scheduled keeps the others waiting (spinning,
    so CPU time grows too): on a two-CPU machine at load 11, a training-mode forward of timm's
    ResNet-18 took 4.4 s of wall time with two threads and 0.57 s with one.
    """
    before = torch.get_num_threads()
    if threads is None:
        try:
            busy = os.getloadavg()[0]
        except (AttributeError, OSError):  # no load average on this platform
            busy = 0.0
        threads = max(1, min(before, int((os.cpu_count() or 1) - busy + 0.5)))
    if threads < 1:
        raise ValueError(f"threads must be at least 1, not {threads}")
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(before)
