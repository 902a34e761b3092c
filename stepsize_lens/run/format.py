"""The run file format: its layout, its version, and the check every loaded run passes.

A run file is a plain dict saved with ``torch.save`` that loads with
``torch.load(weights_only=True)``, so opening one can never execute code::

    {
      "format": "stepsize_lens/run", "version": 3,
      "meta":    {label, created, torch_version, stepsize_lens_version, optimizer: {class, module,
                  defaults}, schedule, delta, model_class, rank, world_size, closed,
                  last_step (the lens's step counter: where a resumed run continues),
                  upgraded_from (a file saved from an older version), ...},
      "params":  {name: [str], group: [int], index: [int], shape: [[int]], numel: [int],
                  ndim: [int], rows: [int], module_type: [str], dtype: [str], aliases: [[str]],
                  requires_grad: [bool], ... optional extra columns such as probe verdicts},
      "records": {step: int64 [R], time: float64 [R], skipped: bool [R]},
      "metrics": {metric name: float32 [R, T]},             # docs/design.md §3, NaN = undefined
      "views":   {"test_view": int8 [R, T], "applied_view": int8 [R, T]},
      "groups":  {field: float64 [R, G]},                  # lr, weight_decay, momentum, ...
      "scalars": {name: {"step": int64 [S], "value": float64 [S]}},
      "events":  [{"step": int, "kind": str, "detail": str}],  # params_added, skipped_step, resumed
      "checksum": "sha256:<hex>",       # over everything else (`checksum`); since version 3
    }

R = records, T = parameter tensors, G = param groups. Columns that did not exist yet at a record
(a param group added later) are NaN (metrics, groups) or -1 (views). View codes are
`stepsize_lens._schema.View`. Metrics of the catalog that an older file lacks read as NaN.

Versions: 1 (12 metrics); 2 adds ``channel_angular_update_cv`` (docs/design.md §3.2); 3 adds the
``checksum`` and the appending layout of a run still being written (an index at the path and
chunk files beside it, `chunks`). A version-1 file is read as it is, its missing metric all NaN;
`upgrade` turns a loaded older run into the current version (what `Run.save` writes). `load`
checks sizes before reading (`archive`), verifies the checksum, joins chunks, then `validate`
checks every field (`sections`).

This package (`stepsize_lens.run`) is the only code that reads or writes the raw dict.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from stepsize_lens._schema import METRICS, VIEWS
from stepsize_lens.errors import RunFileError
from stepsize_lens.run import sections

FORMAT = "stepsize_lens/run"
VERSION = 3

# The metrics every file of a version has (the catalog as it was then); metrics added to the
# catalog later are optional on read and filled with NaN.
METRICS_OF_VERSION: dict[int, tuple[str, ...]] = {1: METRICS[:12], 2: METRICS[:13], 3: METRICS[:13]}

REQUIRED_KEYS = ("format", "version", "meta", "params", "records", "metrics", "views", "groups")


def validate(data: Any, source: str = "run") -> dict[str, Any]:
    """Check that a loaded object is a well-formed run of a version this package reads: every
    field any reader of `Run` uses, by type, dtype, shape and range (`sections`).

    Returns the dict, with the optional sections (scalars, events) filled in and every catalog
    metric an older file lacks added as NaN. Every problem raises `RunFileError`.
    """
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise RunFileError(f"{source}: not a stepsize_lens run file")
    version = data.get("version")
    if type(version) is not int:
        raise RunFileError(f"{source}: run file has no valid format version")
    if version > VERSION:
        raise RunFileError(
            f"{source}: run file format version {version} is newer than this stepsize_lens "
            f"reads ({VERSION}); upgrade stepsize_lens"
        )
    if version < 1:
        raise RunFileError(f"{source}: unknown run file format version {version}")
    missing = [key for key in REQUIRED_KEYS if key not in data]
    if missing:
        raise RunFileError(f"{source}: run file lacks {', '.join(missing)}")
    try:
        _check_sections(data, version)
    except sections.Malformed as problem:
        raise RunFileError(f"{source}: malformed run file: {problem}") from None
    return data


def _check_sections(data: dict[str, Any], version: int) -> None:
    sections.check_meta(data["meta"])
    num_records = sections.check_records(data["records"])
    num_groups = sections.check_groups(data["groups"], num_records)
    num_tensors = sections.check_params(data["params"], num_groups)
    shape = (num_records, num_tensors)
    required = frozenset(METRICS_OF_VERSION[version])
    for section, names, dtype in (
        ("metrics", METRICS, torch.float32),
        ("views", VIEWS, torch.int8),
    ):
        block = data[section]
        if not isinstance(block, dict) or not all(isinstance(k, str) for k in block):
            raise sections.Malformed(f"its {section} section is not a dict")
        for name in names:
            if name not in block and section == "metrics" and name not in required:
                block[name] = torch.full(shape, math.nan, dtype=dtype)
            elif name not in block:
                raise sections.Malformed(f"{section}[{name!r}] missing or of the wrong shape")
        for name, tensor in block.items():
            sections.check_tensor(tensor, f"{section}[{name!r}]", dtype, shape)
            if section == "views":
                sections.check_views(tensor, f"{section}[{name!r}]")
    data.setdefault("scalars", {})
    data.setdefault("events", [])
    sections.check_scalars(data["scalars"])
    sections.check_events(data["events"])


def upgrade(data: dict[str, Any]) -> dict[str, Any]:
    """A validated run dict of any version this package reads, as the current version: the
    version number set to `VERSION` (``validate`` has already added the metrics an older file
    lacks, as NaN) and ``meta["upgraded_from"]`` the version it was written with. A current
    run comes back unchanged. Works on (and returns) the dict it is given."""
    version = int(data["version"])
    if version < VERSION:
        data["meta"] = {**data["meta"], "upgraded_from": version}
        data["version"] = VERSION
    return data


def plain(value: Any) -> Any:
    """Convert to what `torch.load(weights_only=True)` accepts: dict, list, str, numbers, None."""
    kind = type(value)
    if value is None or kind in (str, int, float, bool):
        return value
    if kind is list:
        return [plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, bool):
        return bool(value)
    for kind in (str, int, float):  # subclasses (TorchVersion, numpy scalars...) pickle as globals
        if isinstance(value, kind):
            return kind(value)
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, torch.dtype):
        return str(value)
    return repr(value)
