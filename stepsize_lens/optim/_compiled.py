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
freshly allocated example tensors, never the parameters. Each key gets its own graph, and a step
calls inductor's compiled function of that graph directly (`compile_direct`), past dynamo's
frame evaluation and guards, which cost tens of microseconds per call, as much as the kernel
itself on small tensors; inductor still checks the sizes and strides of every tensor. A step
only calls the kernel for keys that are ready, so no step waits for the compiler; until a key
is ready its tensors take the multi-tensor path. Inductor caches what it compiles on disk, so
later processes are ready after a short trace per key. If compiling fails (no C++ compiler, an
unsupported platform), the kernel warns once and reports the keys of that device, dtype and
variant (a `Key.family`) as failed; those tensors keep the multi-tensor path.
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

#: Kernels of keys with at most this many elements run in the calling thread: on tensors this
#: small, the barriers between the kernel's parallel loops cost more than the second thread
#: saves (and much more when another process holds the other core).
SERIAL_NUMEL = 1 << 16

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
        """Keys that compile alike: one failed compilation settles the whole family."""
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
        self._compiled: dict[Key, Callable[..., Any]] = {}

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
        """Run the compiled kernel of a ready ``key`` (never compiles; see the module doc)."""
        return self._compiled[key](*args)

    def traced(self, key: Key, *args: Any) -> Any:
        """The plain function, for a step being traced by an outer ``torch.compile``."""
        return self.fn(*args, **self.variant_kwargs(key))

    # --- the background side -------------------------------------------------------------------

    def _compile(self, key: Key) -> None:
        if key.family in self._failed:
            return self._settle(key, ok=False)
        try:
            options = dict(_OPTIONS)
            if key.rows * key.cols <= SERIAL_NUMEL:
                options["cpp.threads"] = 1
            compiled = compile_direct(self.fn, self.example(key), self.variant_kwargs(key), options)
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
        with self._lock:
            self._compiled[key] = compiled
        self._settle(key, ok=True)

    def _settle(self, key: Key, ok: bool) -> None:
        with self._lock:
            self._pending.discard(key)
            if ok:
                self._ready.add(key)
            self._lock.notify_all()


def compile_direct(
    fn: Callable[..., Any],
    args: tuple[torch.Tensor, ...],
    kwargs: dict[str, Any],
    options: dict[str, Any] | None = None,
) -> Callable[..., Any]:
    """Compile ``fn(*args, **kwargs)`` with inductor; return a caller of the compiled graph alone.

    ``options``: inductor's config for this graph. Dynamo traces a private copy of ``fn`` (its
    cache lives on the code object, so a shared one would hand this shape's call to a graph
    compiled for another) and gives the graph to inductor, whose compiled function is kept. It
    takes the graph's inputs: tensors that are ``args`` (found by identity) and size symbols,
    whose values are those of ``args`` (the caller only ever passes arguments of these shapes,
    dtypes and layouts). Calling it skips dynamo's frame evaluation and guards, tens of
    microseconds per call; inductor still checks every tensor's sizes and strides.
    """
    from torch._inductor.compile_fx import compile_fx

    graphs: list[tuple[Callable[..., Any], list[Any]]] = []

    def backend(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable[..., Any]:
        compiled = compile_fx(gm, example_inputs, config_patches=options or {})
        graphs.append((compiled, list(example_inputs)))
        return compiled

    copy = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__)
    with torch.no_grad():
        torch.compile(copy, backend=backend, dynamic=True, fullgraph=True)(*args, **kwargs)
    if len(graphs) != 1:
        raise RuntimeError(f"dynamo made {len(graphs)} graphs of {fn.__name__}, not one")
    compiled, inputs = graphs[0]
    plan: list[tuple[bool, Any]] = []  # (from args, index or value)
    for x in inputs:
        if isinstance(x, torch.Tensor):
            index = next((i for i, a in enumerate(args) if a is x), None)
            if index is None:
                raise RuntimeError(f"an input of the {fn.__name__} graph is not an argument")
            plan.append((True, index))
        elif isinstance(x, torch.SymInt):
            plan.append((False, int(x.node.hint)))
        elif isinstance(x, int):
            plan.append((False, x))
        else:
            raise RuntimeError(f"an input of the {fn.__name__} graph is a {type(x).__name__}")
    if all(from_args for from_args, _ in plan):
        order = [i for _, i in plan]
        return lambda *a: compiled(*[a[i] for i in order])
    return lambda *a: compiled(*[a[v] if from_args else v for from_args, v in plan])


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
