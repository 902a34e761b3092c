"""Model specs of ``stepsize-lens inspect``: a spec and input options become a model and inputs.

A spec is a built-in model name (`stepsize_lens.experiments.models.BUILTIN_MODELS`) or
``package.module:factory`` (a module in the current folder is found, like ``python -m``). The
inputs are a random batch of a given shape, dtype (`INPUT_DTYPES`: floats are standard normal,
integers such as token ids are uniform in a range) or whatever an ``--example module:function``
returns. Every bad spec, input option or batch size raises `UserInputError` with one line; so
does a model that rejects its inputs, with the likely fix named.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch

from stepsize_lens.errors import UserInputError

# names as torch's tensor methods spell them (``x.long()``), the way people say them
INPUT_DTYPES: dict[str, torch.dtype] = {
    "float": torch.float32,
    "double": torch.float64,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "long": torch.int64,
    "int": torch.int32,
}


def _first_line(exc: BaseException, limit: int = 200) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0].strip() if text else ""
    if len(line) > limit:  # whole words only
        line = line[: limit + 1].rsplit(" ", 1)[0].rstrip(" ,;:") + "…"
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


def _call_named(spec: str, what: str) -> Any:
    """Import ``package.module:function`` and call it with no arguments; ``what`` names it in
    errors ("factory", "example")."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise UserInputError(f"{what} {spec!r} must look like package.module:function")
    target: Any = _import_module(module_name, spec)
    for part in attr.split("."):
        if not hasattr(target, part):
            raise UserInputError(f"module {module_name!r} has no attribute {attr!r}")
        target = getattr(target, part)
    if not callable(target):
        raise UserInputError(
            f"{spec!r} is not callable (it is a {type(target).__name__}); name a {what} function"
        )
    try:
        return target()
    except Exception as exc:
        raise UserInputError(f"{what} {spec!r} raised {_first_line(exc)}") from None


def resolve_model(spec: str) -> tuple[torch.nn.Module, tuple[int, ...] | None]:
    """Build the model named by ``spec``: a built-in name or ``package.module:factory``.

    The factory is called with no arguments. Returns the model and the built-in default input
    shape (None for a factory). Every failure raises `UserInputError` with one line.
    """
    from stepsize_lens.experiments.models import BUILTIN_MODELS

    if spec in BUILTIN_MODELS:
        factory, shape = BUILTIN_MODELS[spec]
        return factory(), shape
    if ":" not in spec:
        raise UserInputError(
            f"unknown model {spec!r}: use a built-in name ({', '.join(BUILTIN_MODELS)}) "
            "or package.module:factory"
        )
    model = _call_named(spec, "factory")
    if not isinstance(model, torch.nn.Module):
        raise UserInputError(
            f"factory {spec!r} returned a {type(model).__name__}, not a torch.nn.Module"
        )
    return model, None


def parse_input_dtype(name: str | torch.dtype | None) -> torch.dtype:
    """``"long"`` -> torch.int64 (see `INPUT_DTYPES`); None -> float32; a dtype passes through."""
    if name is None:
        return torch.float32
    if isinstance(name, torch.dtype):
        return name
    if name not in INPUT_DTYPES:
        raise UserInputError(
            f"input dtype {name!r} is not one of {', '.join(INPUT_DTYPES)} (long for token ids)"
        )
    return INPUT_DTYPES[name]


def parse_input_range(
    text: str | Sequence[float], dtype: torch.dtype = torch.float32
) -> tuple[float, float]:
    """``"0,1000"`` -> (0, 1000): inputs are drawn uniformly in [low, high). Integer dtypes
    need integer bounds (high is excluded, like an embedding's size)."""
    if isinstance(text, str):
        parts = [part for part in text.strip().strip("()[]").replace(" ", ",").split(",") if part]
        try:
            bounds = tuple(float(part) for part in parts)
        except ValueError:
            bounds = ()
    else:
        bounds = tuple(float(value) for value in text)
    if len(bounds) != 2 or not all(b == b and abs(b) != float("inf") for b in bounds):
        raise UserInputError(f"input range {text!r} must be two numbers LOW,HIGH like 0,1000")
    low, high = bounds
    if not low < high:
        raise UserInputError(f"input range {text!r} is empty: LOW must be below HIGH")
    if not dtype.is_floating_point and not (low.is_integer() and high.is_integer()):
        raise UserInputError(f"input range {text!r} must be integers for {dtype} inputs")
    return low, high


def _embedding_sizes(model: torch.nn.Module) -> list[int]:
    """Sizes (num_embeddings) of the model's embedding tables, smallest first."""
    kinds = (torch.nn.Embedding, torch.nn.EmbeddingBag)
    return sorted({m.num_embeddings for m in model.modules() if isinstance(m, kinds)})


def _random_batch(
    model: torch.nn.Module,
    shape: tuple[int, ...],
    batch_size: int,
    dtype: torch.dtype,
    value_range: str | Sequence[float] | None,
    seed: int,
) -> torch.Tensor:
    """Floats: standard normal, or uniform in the range. Integers: uniform in the range,
    by default [0, the smallest embedding's size)."""
    generator = torch.Generator().manual_seed(seed)
    size = (batch_size, *shape)
    bounds = None if value_range is None else parse_input_range(value_range, dtype)
    if dtype.is_floating_point:
        if bounds is None:
            return torch.randn(size, generator=generator).to(dtype)
        low, high = bounds
        return (low + (high - low) * torch.rand(size, generator=generator)).to(dtype)
    if bounds is None:
        sizes = _embedding_sizes(model)
        if not sizes:
            raise UserInputError(
                f"{str(dtype).replace('torch.', '')} inputs need a value range: pass "
                "--input-range LOW,HIGH (e.g. 0,1000 for token ids below 1000)"
            )
        bounds = (0.0, float(sizes[0]))
    low, high = (int(bound) for bound in bounds)
    return torch.randint(low, high, size, generator=generator, dtype=dtype)


def _example_inputs(spec: str) -> Any:
    """What ``package.module:function`` returns: a tensor, a tuple or list of positional
    arguments, or a dict of keyword arguments, holding at least one tensor."""
    if ":" not in spec:
        raise UserInputError(f"example {spec!r} must look like package.module:function")
    inputs = _call_named(spec, "example")
    leaves = inputs.values() if isinstance(inputs, dict) else inputs
    if isinstance(inputs, torch.Tensor):
        return inputs
    if isinstance(inputs, (tuple, list, dict)) and any(
        isinstance(leaf, torch.Tensor) for leaf in leaves
    ):
        return inputs
    raise UserInputError(
        f"example {spec!r} returned a {type(inputs).__name__}: return a tensor, a tuple of "
        "positional arguments or a dict of keyword arguments holding tensors"
    )


_WANTS_INTEGERS = re.compile(r"indices|Long, Int|scalar type Long|IntTensor|LongTensor")
_WANTS_FLOATS = re.compile(
    r"same dtype|scalar type (Float|Double|Half|BFloat16)|not implemented for '(Long|Int)'|"
    r"type \((long|int)"
)


def _rejection(
    model: torch.nn.Module, spec: str, inputs: Any, described: str, exc: Exception
) -> UserInputError:
    """One line for a model that rejects random probe inputs, naming the likely fix."""
    text = str(exc)
    leaves = [inputs] if isinstance(inputs, torch.Tensor) else []
    floats = bool(leaves) and leaves[0].is_floating_point()
    integers = bool(leaves) and not floats
    sizes = _embedding_sizes(model)
    if floats and (_WANTS_INTEGERS.search(text) or (sizes and "Embedding" in text)):
        top = sizes[0] if sizes else "VOCAB"
        return UserInputError(
            f"model {spec!r} wants integer inputs (token ids), not floats: pass --input-dtype "
            f"long --input-range 0,{top} (or --example module:function); {_first_line(exc)}"
        )
    if integers and "index out of range" in text:
        low, high = int(leaves[0].min()), int(leaves[0].max())
        return UserInputError(
            f"input values {low}..{high} are out of range for model {spec!r}"
            + (f" (embedding sizes: {', '.join(map(str, sizes))})" if sizes else "")
            + f": pass a smaller --input-range; {_first_line(exc)}"
        )
    if integers and _WANTS_FLOATS.search(text):
        return UserInputError(
            f"model {spec!r} wants floating-point inputs: drop --input-dtype (or pass "
            f"--input-dtype float); {_first_line(exc)}"
        )
    return UserInputError(
        f"{described} does not fit model {spec!r}: {_first_line(exc)} (check --input-shape "
        "and --input-dtype, or pass --example module:function)"
    )


def model_and_inputs(
    spec: str,
    input_shape: str | Sequence[int] | None = None,
    *,
    batch_size: int = 4,
    seed: int = 0,
    input_dtype: str | torch.dtype | None = None,
    input_range: str | Sequence[float] | None = None,
    example: str | None = None,
) -> tuple[torch.nn.Module, Any]:
    """The model ``spec`` (see `resolve_model`) and inputs that its forward accepts.

    The inputs are ``batch_size`` random examples of ``input_shape`` (default: the built-in
    model's) in ``input_dtype`` (`INPUT_DTYPES`, default float): floats standard normal or
    uniform in ``input_range`` [low, high); integers uniform in ``input_range``, by default
    [0, the smallest nn.Embedding's size). Or ``example`` (``package.module:function``, called
    with no arguments) returns them: a tensor, a tuple of positional arguments or a dict of
    keyword arguments; then shape, dtype and range must not be given.

    The model is built and the inputs drawn under a fixed seed without touching the global
    RNG; one training-mode forward checks that the inputs fit, and leaves the model as it
    was. Bad specs and inputs, and inputs the model rejects, raise `UserInputError`.
    """
    from stepsize_lens.invariance import trial_forward

    if batch_size < 2:
        raise UserInputError(f"batch size must be at least 2, not {batch_size}")
    if example is not None:
        given = [
            option
            for option, value in (
                ("--input-shape", input_shape),
                ("--input-dtype", input_dtype),
                ("--input-range", input_range),
            )
            if value is not None
        ]
        if given:
            raise UserInputError(
                f"--example gives the inputs: drop {' and '.join(given)} (or drop --example)"
            )
    dtype = parse_input_dtype(input_dtype)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, default_shape = resolve_model(spec)
        if example is not None:
            inputs = _example_inputs(example)
            described = f"the batch from example {example!r}"
    if example is None:
        if input_shape is None:
            if default_shape is None:
                raise UserInputError(
                    f"model {spec!r} is not built in: pass --input-shape like 3,32,32 "
                    "(or --example module:function)"
                )
            shape = default_shape
        else:
            shape = parse_input_shape(input_shape)
        inputs = _random_batch(model, shape, batch_size, dtype, input_range, seed)
        kind = str(dtype).replace("torch.", "")
        if not dtype.is_floating_point:
            kind += f", values {int(inputs.min())}..{int(inputs.max())}"
        described = f"input shape {shape} ({kind}, batch {batch_size})"
    try:
        trial_forward(model, inputs)
    except Exception as exc:
        if example is not None:
            raise UserInputError(
                f"{described} does not fit model {spec!r}: {_first_line(exc)}"
            ) from None
        raise _rejection(model, spec, inputs, described, exc) from None
    return model, inputs
