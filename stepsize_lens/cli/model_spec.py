"""Model specs of ``stepsize-lens inspect``: a spec and an input shape become a model and inputs.

A spec is a built-in model name (`stepsize_lens.models.BUILTIN_MODELS`) or
``package.module:factory`` (a module in the current folder is found, like ``python -m``). Every
bad spec, input shape or batch size raises `UserInputError` with one line.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from stepsize_lens.errors import UserInputError


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else ""
    line = line[:200]
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


def parse_input_shape(text: str | Sequence[int]) -> tuple[int, ...]:
    """``"3,32,32"``, ``"3x32x32"`` or ``(3, 32, 32)`` -> (3, 32, 32): one example, no batch dim."""
    if isinstance(text, str):
        cleaned = text.strip().strip("()[]").replace("x", ",").replace(" ", ",")
        parts = [part for part in cleaned.split(",") if part]
        try:
            shape = tuple(int(part) for part in parts)
        except ValueError:
            raise UserInputError(
                f"input shape {text!r} is not a list of integers like 3,32,32"
            ) from None
    else:
        shape = tuple(int(size) for size in text)
    if not shape or any(size < 1 for size in shape):
        raise UserInputError(f"input shape {text!r} must be one or more positive integers")
    return shape


def _import_module(module_name: str, spec: str) -> Any:
    """Import ``module_name`` with the current folder on ``sys.path`` (removed again after)."""
    import importlib
    import os
    import sys

    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:  # like `python -m`, let a module in the current folder be found
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise UserInputError(
            f"cannot import module {module_name!r} for model {spec!r}: {_first_line(exc)}"
        ) from None
    except Exception as exc:
        raise UserInputError(
            f"importing module {module_name!r} for model {spec!r} failed: {_first_line(exc)}"
        ) from None
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def resolve_model(spec: str) -> tuple[torch.nn.Module, tuple[int, ...] | None]:
    """Build the model named by ``spec``: a built-in name or ``package.module:factory``.

    The factory is called with no arguments. Returns the model and the built-in default input
    shape (None for a factory). Every failure raises `UserInputError` with one line.
    """
    from stepsize_lens.models import BUILTIN_MODELS

    if spec in BUILTIN_MODELS:
        factory, shape = BUILTIN_MODELS[spec]
        return factory(), shape
    if ":" not in spec:
        raise UserInputError(
            f"unknown model {spec!r}: use a built-in name ({', '.join(BUILTIN_MODELS)}) "
            "or package.module:factory"
        )
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise UserInputError(f"model spec {spec!r} must look like package.module:factory")
    target: Any = _import_module(module_name, spec)
    for part in attr.split("."):
        if not hasattr(target, part):
            raise UserInputError(f"module {module_name!r} has no attribute {attr!r}")
        target = getattr(target, part)
    if not callable(target):
        raise UserInputError(
            f"{spec!r} is not callable (it is a {type(target).__name__}); name a factory function"
        )
    try:
        model = target()
    except Exception as exc:
        raise UserInputError(f"factory {spec!r} raised {_first_line(exc)}") from None
    if not isinstance(model, torch.nn.Module):
        raise UserInputError(
            f"factory {spec!r} returned a {type(model).__name__}, not a torch.nn.Module"
        )
    return model, None


def model_and_inputs(
    spec: str,
    input_shape: str | Sequence[int] | None = None,
    *,
    batch_size: int = 4,
    seed: int = 0,
) -> tuple[torch.nn.Module, torch.Tensor]:
    """The model ``spec`` (see `resolve_model`) and a random batch that its forward accepts.

    The batch is ``batch_size`` standard-normal examples of ``input_shape`` (default: the
    built-in model's). The model is built and the batch drawn under a fixed seed without
    touching the global RNG; one training-mode forward checks that the batch fits, and leaves
    the model as it was. Bad specs and shapes that do not fit raise `UserInputError`.
    """
    from stepsize_lens.invariance import trial_forward

    if batch_size < 2:
        raise UserInputError(f"batch size must be at least 2, not {batch_size}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, default_shape = resolve_model(spec)
    if input_shape is None:
        if default_shape is None:
            raise UserInputError(f"model {spec!r} is not built in: pass --input-shape like 3,32,32")
        shape = default_shape
    else:
        shape = parse_input_shape(input_shape)
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn((batch_size, *shape), generator=generator)
    try:
        trial_forward(model, inputs)
    except Exception as exc:
        raise UserInputError(
            f"input shape {shape} (batch {batch_size}) does not fit model {spec!r}: "
            f"{_first_line(exc)}"
        ) from None
    return model, inputs
