"""``fused=True``: the multi-tensor step compiled by ``torch.compile``, in the background.

The compiled function is the multi-tensor path's own code (`_base.Kernels.multi_tensor`,
traced: `_blocked.TRACED`), so inductor emits C++ on the CPU and Triton on a GPU from the same
Python, fusing each tensor's update and row sums into a few loops. The values that change from
step to step (lr, bias corrections: `_base.Kernels.scalars`) go in as one float64 tensor, so a
learning-rate schedule never triggers a recompilation.

A group's first fused step starts one background thread that compiles the function on
uninitialised stand-ins of the group's tensors (same shapes, strides, dtypes, devices: the
compiled guards then hold for the real ones; the stand-ins, about the size of the parameters,
gradients and optimizer state, are freed once compiled). Until it is ready the step runs the
multi-tensor path, so no step waits; where compilation fails, that is said once, in one line,
and the multi-tensor path stays. ``STEPSIZE_LENS_COMPILE=0`` turns compilation off (the test
suite does, outside the tests of this path). Nothing is compiled, and no process started,
before a fused group's first step.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

ENV_VAR = "STEPSIZE_LENS_COMPILE"

READY, FAILED, COMPILING = "ready", "failed", "compiling"

#: Compilations one optimizer family starts at most (torch.compile's own recompile limit): a
#: model whose set of tensors with a gradient keeps changing steps on the multi-tensor path.
MAX_COMPILES = 8


def compile_enabled() -> bool:
    """False where ``STEPSIZE_LENS_COMPILE=0`` (read at each step)."""
    return os.environ.get(ENV_VAR, "1").strip().lower() not in ("0", "false", "no", "off")


def _stand_in(t: Tensor) -> Tensor:
    """An uninitialised tensor with ``t``'s metadata (a Parameter for a Parameter)."""
    out = torch.empty_strided(t.size(), t.stride(), dtype=t.dtype, device=t.device)
    if isinstance(t, torch.nn.Parameter):
        return torch.nn.Parameter(out, requires_grad=t.requires_grad)
    return out


def _meta(t: Tensor) -> tuple:
    return (type(t), tuple(t.shape), t.stride(), t.dtype, t.device, t.requires_grad)


class CompiledSteps:
    """The compiled steps of one optimizer family, one compilation per tensor signature."""

    def __init__(self, kernels: Any) -> None:
        """``kernels``: the `_base.Kernels` whose ``multi_tensor`` step is compiled (typed Any:
        `_base` imports this module)."""
        self.kernels = kernels
        self._fn: Any = None
        self._status: dict[tuple, str] = {}
        self._threads: dict[tuple, threading.Thread] = {}
        self._lock = threading.Lock()
        self._said = False

    def _entry(
        self,
        params: list[Tensor],
        grads: list[Tensor],
        state_tensors: list[list[Tensor]],
        projections: list[Tensor],
        scalars: Tensor,
        hyper: Any,
    ) -> None:
        keys = self.kernels.state_keys
        states = [
            {**dict(zip(keys, tensors)), "projection": proj}
            for tensors, proj in zip(zip(*state_tensors), projections)
        ]
        self.kernels.multi_tensor(params, grads, states, hyper, scalars)

    def _prepare(
        self, params: list[Tensor], grads: list[Tensor], states: list[dict], hyper: Any
    ) -> tuple[tuple, tuple] | None:
        """(signature, arguments but the tensors) of a compiled call, or None when this step
        cannot run compiled (off, unequal step counts, tensors of other types or devices)."""
        if not compile_enabled():
            return None
        steps = {state.get("step") for state in states}
        if len(steps) > 1:
            return None
        if any(type(p) not in (Tensor, torch.nn.Parameter) for p in params):
            return None
        for p, state in zip(params, states):  # state in the parameter's layout, once
            for key in self.kernels.state_keys:
                if state[key].stride() != p.stride():
                    state[key] = torch.empty_like(p).copy_(state[key])
        # the hyperparameters the traced code reads as constants (lr goes in `scalars`)
        constants = dataclasses.replace(hyper, lr=0.0)
        signature = (
            tuple(_meta(p) for p in params),
            tuple(_meta(g) for g in grads),
            tuple(_meta(state[k]) for state in states for k in self.kernels.state_keys),
            constants,
        )
        return signature, (steps.pop(), constants)

    def _arguments(
        self, params: list[Tensor], grads: list[Tensor], states: list[dict], hyper: Any, step: Any
    ) -> tuple:
        scalars = torch.tensor(self.kernels.scalars(hyper, step), dtype=torch.float64)
        return (
            list(params),
            list(grads),
            [[state[k] for state in states] for k in self.kernels.state_keys],
            [state["projection"] for state in states],
            scalars,
        )

    def _start(self, signature: tuple, args: tuple, constants: Any) -> None:
        if self._fn is None:
            self._fn = torch.compile(self._entry, dynamic=False)
        stand_ins = (
            [_stand_in(p) for p in args[0]],
            [_stand_in(g) for g in args[1]],
            [[_stand_in(t) for t in column] for column in args[2]],
            [_stand_in(t) for t in args[3]],
            args[4].clone(),
        )
        self._status[signature] = COMPILING
        thread = threading.Thread(
            target=self._compile,
            args=(signature, stand_ins, constants),
            name="stepsize_lens-compile",
            daemon=True,
        )
        self._threads[signature] = thread
        thread.start()

    def _compile(self, signature: tuple, stand_ins: tuple, constants: Any) -> None:
        try:
            with torch.no_grad():
                self._fn(*stand_ins, constants)
            status = READY
        except Exception as error:  # noqa: BLE001 - any compiler failure means: stay eager
            status = FAILED
            self._say(error)
        with self._lock:
            self._status[signature] = status

    def _say(self, error: BaseException) -> None:
        first = (str(error).strip().splitlines() or [""])[0][:160]
        self._say_once(
            f"stepsize_lens: the fused step could not be compiled ({type(error).__name__}: "
            f"{first}); fused=True steps take the multi-tensor path"
        )

    def _say_once(self, line: str) -> None:
        if not self._said:
            self._said = True
            print(line, file=sys.stderr)

    def run(
        self, params: list[Tensor], grads: list[Tensor], states: list[dict], hyper: Any
    ) -> bool:
        """Run the compiled step if it is ready for these tensors and return True; otherwise
        start its compilation (once) and return False (the caller runs the multi-tensor step)."""
        prepared = self._prepare(params, grads, states, hyper)
        if prepared is None:
            return False
        signature, (step, constants) = prepared
        with self._lock:
            status = self._status.get(signature)
        if status == READY:
            with torch.no_grad():
                self._fn(*self._arguments(params, grads, states, hyper, step), constants)
            return True
        if status is None and self._may_start():
            self._start(signature, self._arguments(params, grads, states, hyper, step), constants)
        return False

    def _may_start(self) -> bool:
        if len(self._status) < MAX_COMPILES:
            return True
        self._say_once(
            f"stepsize_lens: the fused step met more than {MAX_COMPILES} different sets of "
            "tensors; it compiles no more of them, they take the multi-tensor path"
        )
        return False

    def wait(
        self,
        params: list[Tensor],
        grads: list[Tensor],
        states: list[dict],
        hyper: Any,
        timeout: float | None,
    ) -> bool:
        """Start the compilation for these tensors if needed, wait up to ``timeout`` seconds
        (None: until done) and say whether the compiled step is ready."""
        prepared = self._prepare(params, grads, states, hyper)
        if prepared is None:
            return False
        signature, (step, constants) = prepared
        if signature not in self._status and self._may_start():
            self._start(signature, self._arguments(params, grads, states, hyper, step), constants)
        thread = self._threads.get(signature)
        if thread is not None:
            thread.join(timeout)
        with self._lock:
            return self._status.get(signature) == READY

    def statuses(self) -> Sequence[str]:
        """The status of every compilation started (ready, failed, compiling)."""
        with self._lock:
            return list(self._status.values())
