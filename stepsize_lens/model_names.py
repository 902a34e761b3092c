"""Tensor names and the model class as the user wrote them, through framework wrappers.

`torch.compile(model)` wraps the model in an ``OptimizedModule`` whose parameters are named
``_orig_mod.<name>``; ``DistributedDataParallel`` and ``DataParallel`` prefix ``module.``;
FSDP1 (``FullyShardedDataParallel``) inserts ``_fsdp_wrapped_module.`` at every wrapped unit and
activation checkpointing ``_checkpoint_wrapped_module.``; FSDP2 (`fully_shard`) swaps each
module's class for a generated ``FSDP<Class>``. A run recorded through any of them names its
tensors and its model class as the plain model would, so it lines up with runs and probes of
the plain model (`invariance.agreement`); the probe unwraps the same way. A leaf: torch only.

The wrappers are recognised without importing anything: a wrapper class can only exist once
its module has been imported.
"""

from __future__ import annotations

import sys
from typing import NamedTuple

import torch

# dotted-name components that wrappers insert and that never name a user's module
WRAPPER_COMPONENTS = frozenset(
    {"_orig_mod", "_fsdp_wrapped_module", "_checkpoint_wrapped_module", "_dp_wrapped_module"}
)


def _loaded_class(module: str, name: str) -> type | None:
    loaded = sys.modules.get(module)
    value = getattr(loaded, name, None) if loaded is not None else None
    return value if isinstance(value, type) else None


def _inner_module(model: torch.nn.Module) -> torch.nn.Module | None:
    """The module a wrapper holds, or None when ``model`` is not a known wrapper."""
    compiled = _loaded_class("torch._dynamo.eval_frame", "OptimizedModule")
    if compiled is not None and isinstance(model, compiled):
        return model._orig_mod
    parallel = (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)
    fsdp1 = _loaded_class(
        "torch.distributed.fsdp.fully_sharded_data_parallel", "FullyShardedDataParallel"
    )
    if isinstance(model, parallel) or (fsdp1 is not None and isinstance(model, fsdp1)):
        inner = model.module
        return inner if isinstance(inner, torch.nn.Module) else None
    return None


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The user's model inside compile / DDP / DataParallel / FSDP1 wrappers (any nesting)."""
    for _ in range(16):  # wrappers nest a few times at most; never loop forever
        inner = _inner_module(model)
        if inner is None or inner is model:
            return model
        model = inner
    return model


def module_class_name(module: torch.nn.Module) -> str:
    """``type(module).__name__``, with FSDP2's generated ``FSDP<Class>`` read as ``<Class>``."""
    fsdp2 = _loaded_class("torch.distributed.fsdp", "FSDPModule")
    cls = type(module)
    if fsdp2 is not None and isinstance(module, fsdp2):
        for base in cls.__mro__:
            if not issubclass(base, fsdp2) and issubclass(base, torch.nn.Module):
                return base.__name__
    return cls.__name__


def model_class_name(model: torch.nn.Module | None) -> str | None:
    """The class name of the user's model (wrappers removed); None without a model."""
    return None if model is None else module_class_name(unwrap_model(model))


def clean_name(name: str) -> str:
    """``name`` without the components wrappers insert (``a._orig_mod.b`` -> ``a.b``)."""
    parts = [part for part in name.split(".") if part not in WRAPPER_COMPONENTS]
    return ".".join(parts)


class Naming(NamedTuple):
    """How the model names one parameter."""

    names: list[str]  # every name it has in the plain model (tied weights have several)
    module_type: str  # class name of the module that owns it
    owner: type | None  # that class


def parameter_names(model: torch.nn.Module | None) -> dict[int, Naming]:
    """id(param) -> its `Naming` in the plain model (wrappers looked through)."""
    if model is None:
        return {}
    model = unwrap_model(model)
    names: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        cleaned = clean_name(name)
        known = names.setdefault(id(param), [])
        if cleaned not in known:
            known.append(cleaned)
    owners: dict[int, torch.nn.Module] = {}
    for _, module in model.named_modules(remove_duplicate=False):
        if _inner_module(module) is not None:
            continue  # a nested wrapper owns nothing itself
        for param in module.parameters(recurse=False):
            owners.setdefault(id(param), module)
    out = {}
    for key, value in names.items():
        owner = owners.get(key)
        out[key] = Naming(
            value,
            module_class_name(owner) if owner is not None else "",
            type(owner) if owner is not None else None,
        )
    return out
