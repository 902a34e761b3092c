"""Counting the kernels an accelerator would launch, on any device. A leaf (torch only).

On a GPU every dispatched torch op that is not a view is a kernel launch, about 5-10 µs of host
time each. `count_launches` counts them with a ``TorchDispatchMode`` (so it works on the CPU,
with the accelerator code paths forced: ``STEPSIZE_LENS_DEVICE_PATHS=accelerator``), leaving
out views, metadata queries and allocations of empty tensors, and notes every op that makes a
GPU host wait for the device (`WAITING_OPS`): `.item()`, ``nonzero``, boolean-mask indexing,
``repeat_interleave`` without ``output_size``, ``torch.equal``, ``is_nonzero``.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# ops that copy a device value to the host, or whose output size depends on device data
WAITING_OPS = frozenset(
    {
        "_local_scalar_dense",  # .item(), float(t), bool(t), int(t)
        "nonzero",
        "nonzero_static",
        "masked_select",
        "equal",
        "is_nonzero",
        "unique",
        "_unique",
        "_unique2",
        "unique_consecutive",
        "unique_dim",
    }
)
# ops that launch nothing: shape/stride bookkeeping and uninitialised allocations
_FREE = frozenset({"empty", "empty_strided", "empty_like", "detach", "lift_fresh", "alias"})


@dataclass
class Launches:
    """What ran inside `count_launches`: ``ops`` (op name -> launches) and ``waiting`` (the
    ops that make a GPU host wait, with their counts)."""

    ops: Counter[str] = field(default_factory=Counter)
    waiting: Counter[str] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        """Kernel launches counted."""
        return sum(self.ops.values())

    def __add__(self, other: Launches) -> Launches:
        return Launches(self.ops + other.ops, self.waiting + other.waiting)


def _name(func: torch._ops.OpOverload) -> str:
    return func._schema.name.split("::", 1)[-1]


def _waits(name: str, func: torch._ops.OpOverload, args: tuple, kwargs: dict) -> bool:
    if name in WAITING_OPS:
        return True
    if name == "repeat_interleave":
        # with a tensor of repeats and no output_size, the result's length is read from the
        # device (the int-repeats overload knows it on the host)
        return func._overloadname != "self_int" and kwargs.get("output_size") is None
    if name in ("index", "index_put", "index_put_", "_index_put_impl_"):
        indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
        return any(
            isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices
        )
    return False


class _Counter(TorchDispatchMode):
    def __init__(self, launches: Launches) -> None:
        super().__init__()
        self.launches = launches

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = _name(func)
        if _waits(name, func, args, kwargs):
            self.launches.waiting[name] += 1
        is_view = bool(func._schema.returns) and any(
            r.alias_info is not None and not r.alias_info.is_write for r in func._schema.returns
        )
        if not is_view and name not in _FREE and not name.startswith("sym_"):
            self.launches.ops[name] += 1
        return func(*args, **kwargs)


@contextlib.contextmanager
def count_launches() -> Iterator[Launches]:
    """Count the kernel launches and waiting ops of the code inside the block."""
    launches = Launches()
    with _Counter(launches):
        yield launches
