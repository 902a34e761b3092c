"""Compiled row kernels for the fused paths: `torch.compile` in a background thread.

A *row kernel* is a plain torch function that runs a whole optimizer step on one tensor seen as
[rows, K] (its `_rows.rows_view`, the gradient and the state tensors in the same order), with
the hyperparameters in a small float64 tensor (Python floats would cost a conversion each and
some would be specialised on). Compiled by inductor (C++ on CPU; only CPU kernels are compiled,
`COMPILER_DEVICES`) it becomes two loops over the tensor: one that updates the optimizer's
state and sums the row statistics of the test, and one that projects and writes the weight
(docs/design.md §4).

`RowKernel` compiles such a function with ``torch.compile(dynamic=True)`` in one background
thread per process, for the exact (device, dtype, shape, variant) keys it is asked for, using
freshly allocated example tensors, never the parameters. A step only calls the kernel for keys
that are ready, through ``torch._dynamo.run``, which never compiles: an unexpected guard miss
runs the plain function eagerly (same result, slower). So no step waits for the compiler;
until a key is ready its tensors take the multi-tensor path. Inductor caches what it compiles
on disk, so later processes are ready in a second or two. If compiling fails (no C++
compiler, an unsupported platform), the kernel warns once and reports the keys as failed;
those tensors keep the multi-tensor path.
"""

from __future__ import annotations

import queue
import threading
import types
import warnings
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

#: Devices whose row kernels are compiled, and what inductor needs there. CUDA (triton) is
#: left out until it has been measured and tested on a GPU: there ``fused=True`` runs the
#: multi-tensor path, which already computes the Adam direction with torch's fused kernel.
COMPILER_DEVICES: dict[str, str] = {"cpu": "a C++ compiler"}

#: Inductor options: compile in the background thread itself (a pool of compiler processes
#: costs more to start than these small kernels take to compile).
_OPTIONS = {"compile_threads": 1}

#: Tensors with more elements are never compiled for (the examples would be as large): they
#: keep the multi-tensor path.
MAX_EXAMPLE_NUMEL = 1 << 25


@dataclass(frozen=True)
class Key:
    """What a compiled kernel is specialised on: where, what dtype, which shape, which variant.

    ``rows`` and ``cols``: the tensor as [rows, K]; a row kernel sees it as ``piece_shape``
    (each row in ``pieces`` consecutive pieces) with ones of ``unit_shape``.
    """

    device: torch.device
    dtype: torch.dtype
    rows: int
    cols: int
    variant: Hashable = None
    pieces: int = 1

    @property
    def piece_shape(self) -> tuple[int, int]:
        return (self.rows * self.pieces, self.cols // self.pieces)

    @property
    def unit_shape(self) -> tuple[int, int]:
        return (self.rows, self.pieces)

    @property
    def family(self) -> tuple[str, torch.dtype, Hashable]:
        """Keys of one family share a code object, hence dynamo's cache and recompile limit."""
        return (self.device.type, self.dtype, self.variant)


def compiler_available(device: torch.device) -> bool:
    """Whether row kernels are compiled for ``device`` here (a failed compile still falls back)."""
    if device.type not in COMPILER_DEVICES:
        return False
    try:
        return bool(torch._dynamo.is_dynamo_supported())
    except Exception:  # an unusual build: let the background compile decide
        return True


class RowKernel:
    """A row kernel, compiled in the background for the keys requested, callable once ready.

    ``fn(*tensors, **variant)`` is the plain function; ``example(key)`` builds the arguments
    of a call for ``key`` (fresh tensors of that shape, dtype and device) and
    ``variant_kwargs(key)`` its keyword arguments. ``name`` appears in warnings.
    """

    def __init__(
        self,
        name: str,
        fn: Callable[..., Any],
        example: Callable[[Key], tuple[torch.Tensor, ...]],
        variant_kwargs: Callable[[Key], dict[str, Any]],
    ) -> None:
        self.name = name
        self.fn = fn
        self.example = example
        self.variant_kwargs = variant_kwargs
        self._lock = threading.Condition()
        self._ready: set[Key] = set()
        self._pending: set[Key] = set()
        self._failed: dict[tuple, str] = {}
        self._families: dict[tuple, tuple[Callable, Callable]] = {}

    # --- asking and waiting --------------------------------------------------------------------

    def request(self, keys: Iterable[Key]) -> None:
        """Queue the keys not yet ready, pending or failed for compilation in the background."""
        new = []
        with self._lock:
            for key in keys:
                if key in self._ready or key in self._pending or key.family in self._failed:
                    continue
                if not self.compilable(key):
                    continue
                self._pending.add(key)
                new.append(key)
        for key in new:
            _worker().submit(self, key)

    def compilable(self, key: Key) -> bool:
        """Keys this kernel would ever compile for (supported device, example size)."""
        return key.rows * key.cols <= MAX_EXAMPLE_NUMEL and compiler_available(key.device)

    def ready(self, key: Key) -> bool:
        return key in self._ready

    def settled(self, keys: Iterable[Key]) -> bool:
        """Whether every key is ready, failed or never compilable (nothing left to wait for)."""
        return all(
            k in self._ready or k.family in self._failed or not self.compilable(k) for k in keys
        )

    def wait(self, keys: Iterable[Key], timeout: float | None) -> bool:
        """Wait until every key is settled (or ``timeout`` seconds).

        True if every key that can be compiled here is ready (so True for keys on devices
        without compiled kernels, which always take the multi-tensor path).
        """
        keys = list(keys)
        with self._lock:
            self._lock.wait_for(lambda: self.settled(keys), timeout=timeout)
            return all(k in self._ready for k in keys if self.compilable(k))

    # --- calling -------------------------------------------------------------------------------

    def __call__(self, key: Key, *args: Any) -> Any:
        """Run the compiled kernel for a ready ``key`` (never compiles; see the module doc)."""
        return self._family(key.family)[1](*args, **self.variant_kwargs(key))

    def traced(self, key: Key, *args: Any) -> Any:
        """The plain function, for a step being traced by an outer ``torch.compile``."""
        return self.fn(*args, **self.variant_kwargs(key))

    def _family(self, family: tuple) -> tuple[Callable, Callable]:
        """(compiling, run-only) wrappers of a private copy of ``fn`` for one key family.

        A copy of the code object per family gives each dtype/device/variant its own dynamo
        cache, so the shape classes of one family never count against another's limit.
        """
        with self._lock:
            if family not in self._families:
                code = self.fn.__code__.replace()
                fn = types.FunctionType(
                    code, self.fn.__globals__, self.fn.__name__, self.fn.__defaults__
                )
                compiling = torch.compile(fn, dynamic=True, fullgraph=True, options=_OPTIONS)
                self._families[family] = (compiling, torch._dynamo.run(fn))
            return self._families[family]

    # --- the background side -------------------------------------------------------------------

    def _compile(self, key: Key) -> None:
        if key.family in self._failed:
            return self._settle(key, ok=False)
        try:
            args = self.example(key)
            compiling = self._family(key.family)[0]
            with torch.no_grad(), torch._dynamo.config.patch(recompile_limit=64):
                compiling(*args, **self.variant_kwargs(key))
        except Exception as exc:  # no compiler, an inductor limitation, memory
            first_line = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
            with self._lock:
                self._failed[key.family] = f"{type(exc).__name__}: {first_line}"
            warnings.warn(
                f"stepsize_lens: the fused {self.name} kernel is unavailable for "
                f"{key.device.type} {key.dtype} ({self._failed[key.family]}); those tensors "
                "use the multi-tensor path",
                RuntimeWarning,
                stacklevel=2,
            )
            return self._settle(key, ok=False)
        self._settle(key, ok=True)

    def _settle(self, key: Key, ok: bool) -> None:
        with self._lock:
            self._pending.discard(key)
            if ok:
                self._ready.add(key)
            self._lock.notify_all()


class _Worker:
    """One daemon thread per process that compiles queued (kernel, key) jobs in order.

    Inductor sizes its loops for ``torch.get_num_threads()``, a process-wide setting the
    thread reads as the training loop left it.
    """

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue[tuple[RowKernel, Key]] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="stepsize_lens-compile", daemon=True)
        self.thread.start()

    def submit(self, kernel: RowKernel, key: Key) -> None:
        self.jobs.put((kernel, key))

    def _run(self) -> None:
        while True:
            kernel, key = self.jobs.get()
            kernel._compile(key)


_WORKER: _Worker | None = None
_WORKER_LOCK = threading.Lock()


def _worker() -> _Worker:
    global _WORKER
    with _WORKER_LOCK:
        if _WORKER is None:
            _WORKER = _Worker()
        return _WORKER
