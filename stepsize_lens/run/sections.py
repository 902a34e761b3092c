"""The checks `format.validate` runs on each section of a run dict: every field a reader of
`Run` uses, by type, dtype, shape and range, so a malformed file fails at `load` with one
`RunFileError` line and never later inside an analysis.

What each section must hold (docs/design.md §8): ``meta`` plain values (dict, list, str, int,
float, bool, None; str keys), with its known keys of their types; ``params`` columns of length
T, the required ones (`PARAM_COLUMNS`) of their types, names distinct, groups in range;
``records`` int64/float64/bool [R], steps non-negative and non-decreasing; metrics float32
[R, T]; views int8 [R, T] holding `View` codes; groups float64 [R, G], every `GROUP_FIELDS`
name; scalars int64/float64 [S] pairs; events {step: int, kind: str, detail: str}.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from stepsize_lens._schema import GROUP_FIELDS, View

MAX_INT = 2**62  # counts, steps and sizes beyond this are not a real run's
MAX_DEPTH = 16  # meta nests 3 deep (optimizer.defaults.betas)
_VIEW_CODES = torch.tensor([int(code) for code in View], dtype=torch.int8)


class Malformed(ValueError):
    """One section breaks its rule; the message names the field (the caller adds the path)."""


def is_int(value: Any) -> bool:
    return type(value) is int and -MAX_INT <= value <= MAX_INT


def is_number(value: Any) -> bool:
    return type(value) in (int, float) and (type(value) is float or is_int(value))


def _count(value: Any) -> bool:
    return is_int(value) and value >= 0


def check_plain(value: Any, where: str, depth: int = 0) -> None:
    """dict (str keys), list, str, int, float, bool or None all the way down."""
    if depth > MAX_DEPTH:
        raise Malformed(f"{where} is nested too deep")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise Malformed(f"{where} has a non-text key")
            check_plain(item, f"{where}.{key}", depth + 1)
    elif isinstance(value, list):
        for item in value:
            check_plain(item, where, depth + 1)
    elif value is not None and type(value) not in (str, bool, float) and not is_int(value):
        raise Malformed(f"{where} holds a {type(value).__name__}, not a plain value")


_META_TYPES: dict[str, tuple[type, ...]] = {
    "label": (str,),
    "created": (str,),
    "torch_version": (str,),
    "stepsize_lens_version": (str,),
    "model_class": (str,),
    "schedule": (str,),
    "closed": (bool,),
    "optimizer": (dict,),
    "probe": (dict,),
    "metrics": (list,),
}
_COUNT_META = ("last_step", "rank", "world_size", "upgraded_from")


def check_meta(meta: Any) -> None:
    if not isinstance(meta, dict):
        raise Malformed("meta is not a dict")
    check_plain(meta, "meta")
    for key, kinds in _META_TYPES.items():
        value = meta.get(key)
        if value is not None and type(value) not in kinds:
            raise Malformed(f"meta.{key} is a {type(value).__name__}")
    for key in _COUNT_META:
        value = meta.get(key)
        if value is not None and not _count(value):
            raise Malformed(f"meta.{key} is not a count")
    delta = meta.get("delta")
    if delta is not None and not (is_number(delta) and 0 <= delta < math.inf):
        raise Malformed("meta.delta is not a non-negative number")
    for name in meta.get("metrics") or []:
        if not isinstance(name, str):
            raise Malformed("meta.metrics holds a non-text name")
    optimizer = meta.get("optimizer")
    if optimizer is not None:
        for key in ("class", "module"):
            if optimizer.get(key) is not None and not isinstance(optimizer[key], str):
                raise Malformed(f"meta.optimizer.{key} is not text")
        defaults = optimizer.get("defaults")
        if defaults is not None:
            if not isinstance(defaults, dict):
                raise Malformed("meta.optimizer.defaults is not a dict")
            _check_defaults(defaults)


def _check_defaults(defaults: dict[str, Any]) -> None:
    """Only what the theory parses: optimizers' defaults vary (Adafactor's eps is a pair, Adan
    has three betas), and the rest is shown as it is."""
    steps = defaults.get("ns_steps")
    if steps is not None and not is_number(steps):
        raise Malformed("meta.optimizer.defaults.ns_steps is not a number")
    coefficients = defaults.get("ns_coefficients")
    if coefficients is not None and not (
        isinstance(coefficients, list) and all(is_number(c) for c in coefficients)
    ):
        raise Malformed("meta.optimizer.defaults.ns_coefficients is not a list of numbers")


# required columns: (check of one cell, whether None is allowed)
_COLUMNS: dict[str, tuple[Any, bool]] = {
    "name": (lambda v: isinstance(v, str), False),
    "group": (_count, True),  # None: read as group 0 (`Run.tensor_groups`)
    "index": (_count, True),
    "shape": (lambda v: isinstance(v, list) and all(_count(n) for n in v), True),
    "numel": (_count, True),
    "ndim": (_count, True),
    "rows": (_count, True),
    "module_type": (lambda v: isinstance(v, str), True),
    "dtype": (lambda v: isinstance(v, str), True),
    "aliases": (lambda v: isinstance(v, list) and all(isinstance(a, str) for a in v), True),
}
_OPTIONAL_COLUMNS: dict[str, Any] = {
    "requires_grad": lambda v: type(v) is bool,
    "probe_verdict": lambda v: isinstance(v, str),
}


def check_params(params: Any, num_groups: int) -> int:
    """The params table; returns T."""
    if not isinstance(params, dict) or not isinstance(params.get("name"), list):
        raise Malformed("its params table is not a dict of equal-length lists")
    num_tensors = len(params["name"])
    for column, values in params.items():
        if not isinstance(column, str) or not isinstance(values, list):
            raise Malformed("its params table is not a dict of equal-length lists")
        if len(values) != num_tensors:
            raise Malformed("params table columns differ in length")
    for column, (valid, optional) in _COLUMNS.items():
        values = params.get(column)
        if values is None:
            if column in ("name", "group"):
                raise Malformed(f"params table lacks its {column!r} column")
            continue
        for value in values:
            if not ((value is None and optional) or valid(value)):
                raise Malformed(f"params table column {column!r} holds {_kind(value)}")
    for column, values in params.items():
        valid = _OPTIONAL_COLUMNS.get(column)
        if column in _COLUMNS:
            continue
        for value in values:
            if value is None:
                continue
            if valid is not None and not valid(value):
                raise Malformed(f"params table column {column!r} holds {_kind(value)}")
            if column.startswith("probe_") and column != "probe_verdict" and not is_number(value):
                raise Malformed(f"params table column {column!r} holds {_kind(value)}")
            check_plain(value, f"params.{column}")
    if len(set(params["name"])) != num_tensors:
        raise Malformed("params table names a tensor twice")
    if max((g for g in params["group"] if g is not None), default=0) >= max(num_groups, 1):
        raise Malformed("params table names a param group the groups section lacks")
    return num_tensors


def _kind(value: Any) -> str:
    return "None" if value is None else f"a {type(value).__name__}"


def check_tensor(value: Any, where: str, dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    """A dense CPU tensor of this dtype and shape (-1: any size)."""
    if not isinstance(value, torch.Tensor) or value.layout != torch.strided:
        raise Malformed(f"{where} is missing or not a tensor")
    if value.dtype != dtype:
        raise Malformed(f"{where} has dtype {value.dtype}, not {dtype}")
    if value.ndim != len(shape) or any(
        want >= 0 and have != want for have, want in zip(value.shape, shape)
    ):
        raise Malformed(f"{where} is missing or has the wrong shape {tuple(value.shape)}")


def check_records(records: Any) -> int:
    """The records section; returns R."""
    step = records.get("step") if isinstance(records, dict) else None
    if not isinstance(step, torch.Tensor) or step.ndim != 1:
        raise Malformed("its records section has no 1-D step tensor")
    num_records = int(step.shape[0])
    check_tensor(step, "records.step", torch.int64, (num_records,))
    check_tensor(records.get("time"), "records.time", torch.float64, (num_records,))
    check_tensor(records.get("skipped"), "records.skipped", torch.bool, (num_records,))
    if num_records:
        if int(step.min()) < 0 or int(step.max()) > MAX_INT:
            raise Malformed("records.step holds a step out of range")
        if bool((step[1:] < step[:-1]).any()):
            raise Malformed("records.step goes backwards")
    return num_records


def check_views(views: torch.Tensor, where: str) -> None:
    if views.numel() and not bool(torch.isin(views, _VIEW_CODES).all()):
        raise Malformed(f"{where} holds a code that is not a View")


def check_groups(groups: Any, num_records: int) -> int:
    """The groups section; returns G."""
    if not isinstance(groups, dict):
        raise Malformed("its groups section is not a dict of [R, G] tensors")
    missing = [name for name in GROUP_FIELDS if name not in groups]
    if missing:
        raise Malformed(f"its groups section lacks {', '.join(missing)}")
    num_groups = -1
    for name, tensor in groups.items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor) or tensor.ndim != 2:
            raise Malformed("its groups section is not a dict of [R, G] tensors")
        num_groups = int(tensor.shape[1]) if num_groups < 0 else num_groups
        check_tensor(tensor, f"groups[{name!r}]", torch.float64, (num_records, num_groups))
    return max(num_groups, 0)


def check_scalars(scalars: Any) -> None:
    if not isinstance(scalars, dict):
        raise Malformed("its scalars section is not a dict of step/value pairs")
    for name, series in scalars.items():
        if not isinstance(name, str) or not isinstance(series, dict):
            raise Malformed("its scalars section is not a dict of step/value pairs")
        step = series.get("step")
        length = int(step.shape[0]) if isinstance(step, torch.Tensor) and step.ndim == 1 else -2
        check_tensor(step, f"scalars[{name!r}].step", torch.int64, (length,))
        check_tensor(series.get("value"), f"scalars[{name!r}].value", torch.float64, (length,))


def check_events(events: Any) -> None:
    if not isinstance(events, list):
        raise Malformed("its events section is not a list")
    for event in events:
        if (
            not isinstance(event, dict)
            or not is_int(event.get("step"))
            or not isinstance(event.get("kind"), str)
            or not isinstance(event.get("detail", ""), str)
        ):
            raise Malformed("its events section holds a malformed event")
