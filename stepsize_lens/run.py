"""The run file (format v1): writing it (`RunWriter`), reading it (`load` -> `Run`).

This is the only module that reads or writes run files. A run file is a plain dict saved with
``torch.save`` that loads with ``torch.load(weights_only=True)``, so it can never execute code::

    {
      "format": "stepsize_lens/run", "version": 1,
      "meta":    {label, created, torch_version, stepsize_lens_version, optimizer: {class, module,
                  defaults}, schedule, delta, model_class, rank, world_size, closed, ...},
      "params":  {name: [str], group: [int], index: [int], shape: [[int]], numel: [int],
                  ndim: [int], rows: [int], module_type: [str], dtype: [str], aliases: [[str]],
                  ... optional extra columns such as probe verdicts},
      "records": {step: int64 [R], time: float64 [R], skipped: bool [R]},
      "metrics": {metric name: float32 [R, T]},             # DESIGN.md §3, NaN = undefined
      "views":   {"test_view": int8 [R, T], "applied_view": int8 [R, T]},
      "groups":  {field: float64 [R, G]},                  # lr, weight_decay, momentum, ...
      "scalars": {name: {"step": int64 [S], "value": float64 [S]}},
      "events":  [{"step": int, "kind": str, "detail": str}],
    }

R = records, T = parameter tensors, G = param groups. Columns that did not exist yet at a record
(a param group added later) are NaN (metrics, groups) or -1 (views).

Views are coded VIEW_NONE=0, VIEW_CHANNEL=1, VIEW_LAYER=2; VIEW_UNTESTED=-1 means "not tested"
(1-D tensor) for ``test_view`` and "unknown" (optimizer exposes no projection state) for
``applied_view``.
"""

from __future__ import annotations

import datetime
import math
import os
import pickle
import re
import tempfile
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from stepsize_lens.errors import RunFileError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

FORMAT = "stepsize_lens/run"
VERSION = 1

LAYER_METRICS: tuple[str, ...] = (
    "weight_norm",
    "grad_norm",
    "update_norm",
    "relative_update",
    "angular_update",
    "effective_lr",
    "cos_grad",
    "cos_update",
    "norm_growth",
)
CHANNEL_METRICS: tuple[str, ...] = (
    "channel_cos_grad_max",
    "channel_weight_norm",
    "channel_angular_update",
)
METRICS: tuple[str, ...] = LAYER_METRICS + CHANNEL_METRICS
VIEWS: tuple[str, ...] = ("test_view", "applied_view")

VIEW_UNTESTED = -1
VIEW_NONE = 0
VIEW_CHANNEL = 1
VIEW_LAYER = 2
VIEW_NAMES = {
    VIEW_UNTESTED: "untested",
    VIEW_NONE: "none",
    VIEW_CHANNEL: "channel",
    VIEW_LAYER: "layer",
}

GROUP_FIELDS: tuple[str, ...] = (
    "lr",
    "weight_decay",
    "momentum",
    "dampening",
    "beta1",
    "beta2",
    "eps",
    "wd_ratio",
    "delta",
    "nesterov",
)

PARAM_COLUMNS: tuple[str, ...] = (
    "name",
    "group",
    "index",
    "shape",
    "numel",
    "ndim",
    "rows",
    "module_type",
    "dtype",
    "aliases",
)

_REQUIRED_KEYS = ("format", "version", "meta", "params", "records", "metrics", "views", "groups")


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


class _GrowingMatrix:
    """A [rows, cols] tensor that grows by doubling its row capacity; columns can be appended."""

    def __init__(self, cols: int, dtype: torch.dtype, fill: float, capacity: int = 64) -> None:
        self.fill = fill
        self.data = torch.full((capacity, cols), fill, dtype=dtype)
        self.rows = 0

    def append(self, row: torch.Tensor) -> None:
        if self.rows == self.data.shape[0]:
            grown = torch.full(
                (2 * self.data.shape[0], self.data.shape[1]), self.fill, dtype=self.data.dtype
            )
            grown[: self.rows] = self.data[: self.rows]
            self.data = grown
        self.data[self.rows, : row.numel()] = row
        self.rows += 1

    def widen(self, cols: int) -> None:
        extra = cols - self.data.shape[1]
        if extra > 0:
            pad = torch.full((self.data.shape[0], extra), self.fill, dtype=self.data.dtype)
            self.data = torch.cat([self.data, pad], dim=1)

    def filled(self) -> torch.Tensor:
        # clone: saving a view would write the whole preallocated storage
        return self.data[: self.rows].clone()


class RunWriter:
    """Accumulates records in preallocated, growing tensors and saves them atomically.

    Memory is O(records x tensors) numbers, never Python floats. ``save()`` writes the whole run
    to a temporary file in the target folder, fsyncs it and renames it over ``path``, so a
    reader (or a process killed at any moment) always sees the last complete run.
    """

    def __init__(self, path: str | os.PathLike[str] | None, meta: Mapping[str, Any]) -> None:
        self.path = Path(path) if path is not None else None
        self.meta: dict[str, Any] = dict(meta)
        self.meta.setdefault("created", datetime.datetime.now(datetime.timezone.utc).isoformat())
        self.meta.setdefault("torch_version", torch.__version__)
        self.meta.setdefault("stepsize_lens_version", _package_version())
        self.meta.setdefault("closed", False)
        self.params: dict[str, list[Any]] = {column: [] for column in PARAM_COLUMNS}
        self.num_groups = 0
        self._steps: list[int] = []
        self._times: list[float] = []
        self._skipped: list[bool] = []
        self._views = [_GrowingMatrix(0, torch.int8, VIEW_UNTESTED) for _ in VIEWS]
        self._groups = [_GrowingMatrix(0, torch.float64, math.nan) for _ in GROUP_FIELDS]
        self._metric_mats = [_GrowingMatrix(0, torch.float32, math.nan) for _ in METRICS]
        self.scalars: dict[str, tuple[list[int], list[float]]] = {}
        self.events: list[dict[str, Any]] = []
        self.saves = 0

    # -- layout --------------------------------------------------------------------------------
    @property
    def num_tensors(self) -> int:
        return len(self.params["name"])

    @property
    def num_records(self) -> int:
        return len(self._steps)

    def add_params(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Append parameter-table rows (one per tensor); later records get their columns."""
        for row in rows:
            for column in set(self.params) | set(row):
                if column not in self.params:
                    self.params[column] = [None] * self.num_tensors
            for column, values in self.params.items():
                values.append(row.get(column))
        for mat in self._metric_mats:
            mat.widen(self.num_tensors)
        for mat in self._views:
            mat.widen(self.num_tensors)

    def set_param_column(self, column: str, values: Sequence[Any]) -> None:
        """Set (or add) one parameter-table column, e.g. probe verdicts."""
        if len(values) != self.num_tensors:
            raise ValueError(
                f"column {column!r} has {len(values)} values for {self.num_tensors} tensors"
            )
        self.params[column] = list(values)

    def set_num_groups(self, num_groups: int) -> None:
        self.num_groups = max(self.num_groups, num_groups)
        for mat in self._groups:
            mat.widen(self.num_groups)

    # -- records -------------------------------------------------------------------------------
    def append(
        self,
        step: int,
        time: float,
        skipped: bool,
        metrics: torch.Tensor,
        views: torch.Tensor,
        groups: torch.Tensor,
    ) -> None:
        """Add one record.

        metrics: float32 [len(METRICS), T'] with T' <= T (tensors beyond T' stay NaN);
        views: int8 [len(VIEWS), T']; groups: float64 [len(GROUP_FIELDS), G'].
        """
        self._steps.append(int(step))
        self._times.append(float(time))
        self._skipped.append(bool(skipped))
        for mat, row in zip(self._metric_mats, metrics, strict=True):
            mat.append(row)
        for mat, row in zip(self._views, views, strict=True):
            mat.append(row)
        for mat, row in zip(self._groups, groups, strict=True):
            mat.append(row)

    def last_record(self) -> dict[str, Any] | None:
        """The latest record without copying the run: step, skipped, metrics and views as [T]
        tensors (views of the writer's buffers: read, don't keep). None before the first."""
        last = self.num_records - 1
        if last < 0:
            return None
        return {
            "step": self._steps[last],
            "skipped": self._skipped[last],
            "metrics": {name: mat.data[last] for name, mat in zip(METRICS, self._metric_mats)},
            "views": {name: mat.data[last] for name, mat in zip(VIEWS, self._views)},
        }

    def log_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        for name, value in scalars.items():
            steps, values = self.scalars.setdefault(str(name), ([], []))
            steps.append(int(step))
            values.append(float(value))

    def add_event(self, step: int, kind: str, detail: str = "") -> None:
        self.events.append({"step": int(step), "kind": str(kind), "detail": str(detail)})

    # -- output --------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "meta": _plain(self.meta),
            "params": {column: _plain(values) for column, values in self.params.items()},
            "records": {
                "step": torch.tensor(self._steps, dtype=torch.int64),
                "time": torch.tensor(self._times, dtype=torch.float64),
                "skipped": torch.tensor(self._skipped, dtype=torch.bool),
            },
            "metrics": {name: mat.filled() for name, mat in zip(METRICS, self._metric_mats)},
            "views": {name: mat.filled() for name, mat in zip(VIEWS, self._views)},
            "groups": {name: mat.filled() for name, mat in zip(GROUP_FIELDS, self._groups)},
            "scalars": {
                name: {
                    "step": torch.tensor(steps, dtype=torch.int64),
                    "value": torch.tensor(values, dtype=torch.float64),
                }
                for name, (steps, values) in self.scalars.items()
            },
            "events": list(self.events),
        }

    def save(self, path: str | os.PathLike[str] | None = None) -> Path:
        target = Path(path) if path is not None else self.path
        if target is None:
            raise ValueError("RunWriter has no path to save to")
        save_run_dict(self.to_dict(), target)
        self.saves += 1
        return target


def save_run_dict(data: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Atomically write a run dict: temporary file in the same folder, fsync, rename, fsync dir."""
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(dict(data), handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _plain(value: Any) -> Any:
    """Convert to what `torch.load(weights_only=True)` accepts: dict, list, str, numbers, None."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
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


def _package_version() -> str:
    from stepsize_lens import __version__

    return __version__


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def load(path: str | os.PathLike[str]) -> Run:
    """Load and validate a run file. Every problem raises `RunFileError` with a one-line message.

    Uses ``torch.load(weights_only=True)``: a file that would run code on load is refused, and
    its payload never runs.
    """
    path = Path(path)
    if not path.exists():
        raise RunFileError(f"{path}: no such file")
    if path.is_dir():
        raise RunFileError(f"{path}: is a directory, not a run file")
    if path.stat().st_size == 0:
        raise RunFileError(f"{path}: empty file, not a run file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about foreign pickle protocols
            data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        if "weights_only" in text or "Unsupported global" in text:
            found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
            what = f"it names {found.group(1)}" if found else "unsupported pickle content"
            raise RunFileError(
                f"{path}: refused to load: the file holds objects that could run code ({what})"
            ) from None
        raise RunFileError(f"{path}: not a run file (unreadable pickle: {first[:120]})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = "truncated or corrupt" if _looks_like_zip(path) else "not a run file"
        raise RunFileError(f"{path}: {hint} ({message[:120]})") from None
    except Exception as exc:  # anything else torch.load may raise on foreign bytes
        raise RunFileError(f"{path}: not a run file ({type(exc).__name__})") from None
    return Run(validate(data, source=str(path)), path=path)


def _looks_like_zip(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(4) == b"PK\x03\x04"


def validate(data: Any, source: str = "run") -> dict[str, Any]:
    """Check that a loaded object is a well-formed run of a version this package reads."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise RunFileError(f"{source}: not a stepsize_lens run file")
    version = data.get("version")
    if not isinstance(version, int):
        raise RunFileError(f"{source}: run file has no valid format version")
    if version > VERSION:
        raise RunFileError(
            f"{source}: run file format version {version} is newer than this stepsize_lens "
            f"reads ({VERSION}); upgrade stepsize_lens"
        )
    if version < 1:
        raise RunFileError(f"{source}: unknown run file format version {version}")
    missing = [key for key in _REQUIRED_KEYS if key not in data]
    if missing:
        raise RunFileError(f"{source}: run file lacks {', '.join(missing)}")
    params = data["params"]
    if not isinstance(params, dict) or not isinstance(params.get("name"), list):
        raise RunFileError(f"{source}: run file has a malformed params table")
    num_tensors = len(params["name"])
    if any(not isinstance(v, list) or len(v) != num_tensors for v in params.values()):
        raise RunFileError(f"{source}: run file params table columns differ in length")
    records = data["records"]
    step = records.get("step") if isinstance(records, dict) else None
    if not isinstance(step, torch.Tensor) or step.ndim != 1:
        raise RunFileError(f"{source}: run file has malformed records")
    num_records = step.shape[0]
    for section, names in (("metrics", METRICS), ("views", VIEWS)):
        block = data[section]
        if not isinstance(block, dict):
            raise RunFileError(f"{source}: run file section {section!r} is malformed")
        for name in names:
            tensor = block.get(name)
            if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != (
                num_records,
                num_tensors,
            ):
                raise RunFileError(
                    f"{source}: run file {section}[{name!r}] is missing or has the wrong shape"
                )
    groups = data["groups"]
    if not isinstance(groups, dict) or any(
        not isinstance(t, torch.Tensor) or t.ndim != 2 or t.shape[0] != num_records
        for t in groups.values()
    ):
        raise RunFileError(f"{source}: run file groups section is malformed")
    data.setdefault("scalars", {})
    data.setdefault("events", [])
    return data


class Run:
    """A loaded, validated run. Arrays are numpy; tables are pandas (imported on first use).

    Attributes: ``meta`` (dict), ``label``, ``steps`` [R], ``skipped`` [R], ``times`` [R],
    ``params`` (DataFrame, one row per tensor), ``groups`` (DataFrame, one row per record x group),
    ``scalars`` (DataFrame: step, name, value), ``events`` (list of dicts).
    """

    def __init__(self, data: dict[str, Any], path: str | os.PathLike[str] | None = None) -> None:
        self.data = data
        self.path = Path(path) if path is not None else None
        self.meta: dict[str, Any] = data["meta"]

    # -- basic shape ---------------------------------------------------------------------------
    @property
    def label(self) -> str:
        label = self.meta.get("label")
        if label:
            return str(label)
        return self.path.stem if self.path is not None else "run"

    @property
    def num_records(self) -> int:
        return int(self.data["records"]["step"].shape[0])

    @property
    def num_tensors(self) -> int:
        return len(self.data["params"]["name"])

    @property
    def tensor_names(self) -> list[str]:
        return list(self.data["params"]["name"])

    @property
    def steps(self) -> np.ndarray:
        return self.data["records"]["step"].numpy()

    @property
    def times(self) -> np.ndarray:
        return self.data["records"]["time"].numpy()

    @property
    def skipped(self) -> np.ndarray:
        return self.data["records"]["skipped"].numpy()

    @property
    def events(self) -> list[dict[str, Any]]:
        return list(self.data["events"])

    @property
    def metric_names(self) -> tuple[str, ...]:
        return tuple(self.data["metrics"])

    def metric(self, name: str) -> np.ndarray:
        """The float32 [records, tensors] array of one metric (DESIGN.md §3)."""
        try:
            return self.data["metrics"][name].numpy()
        except KeyError:
            raise KeyError(
                f"unknown metric {name!r}; known: {', '.join(self.metric_names)}"
            ) from None

    def view(self, name: str) -> np.ndarray:
        """The int8 [records, tensors] array of ``test_view`` or ``applied_view``."""
        return self.data["views"][name].numpy()

    def group_field(self, name: str) -> np.ndarray:
        """The float64 [records, groups] array of one param-group hyperparameter (NaN if absent)."""
        return self.data["groups"][name].numpy()

    # -- tables --------------------------------------------------------------------------------
    @property
    def params(self) -> pd.DataFrame:
        import pandas as pd

        frame = pd.DataFrame(self.data["params"])
        frame.index.name = "tensor"
        return frame

    @property
    def groups(self) -> pd.DataFrame:
        """One row per (record, group): step, group and every recorded hyperparameter."""
        import numpy as np
        import pandas as pd

        fields = self.data["groups"]
        num_groups = next(iter(fields.values())).shape[1] if fields else 0
        steps = self.steps
        columns: dict[str, Any] = {
            "step": np.repeat(steps, num_groups),
            "group": np.tile(np.arange(num_groups), len(steps)),
        }
        for name, tensor in fields.items():
            columns[name] = tensor.numpy().reshape(-1)
        return pd.DataFrame(columns)

    @property
    def scalars(self) -> pd.DataFrame:
        """User-logged scalars in long form: step, name, value."""
        import numpy as np
        import pandas as pd

        parts = [
            pd.DataFrame(
                {
                    "step": series["step"].numpy(),
                    "name": np.full(series["step"].shape[0], name, dtype=object),
                    "value": series["value"].numpy(),
                }
            )
            for name, series in self.data["scalars"].items()
        ]
        if not parts:
            return pd.DataFrame({"step": [], "name": [], "value": []})
        return pd.concat(parts, ignore_index=True)

    def frame(self, form: str = "tidy", metrics: Sequence[str] | None = None) -> pd.DataFrame:
        """The recorded metrics as a DataFrame.

        ``form="tidy"``: one row per step x tensor x metric, columns step, tensor, group, metric,
        value. ``form="wide"``: one row per step x tensor, a column per metric plus step, tensor,
        group, skipped, test_view, applied_view.
        """
        import numpy as np
        import pandas as pd

        names = list(metrics) if metrics is not None else list(self.metric_names)
        num_records, num_tensors = self.num_records, self.num_tensors
        tensor_names = np.asarray(self.tensor_names, dtype=object)
        groups = np.asarray(self.data["params"]["group"])
        base = {
            "step": np.repeat(self.steps, num_tensors),
            "tensor": np.tile(tensor_names, num_records),
            "group": np.tile(groups, num_records),
        }
        if form == "wide":
            columns = dict(base)
            columns["skipped"] = np.repeat(self.skipped, num_tensors)
            for name in names:
                columns[name] = self.metric(name).reshape(-1)
            for name in VIEWS:
                columns[name] = self.view(name).reshape(-1)
            return pd.DataFrame(columns)
        if form != "tidy":
            raise ValueError(f"form must be 'tidy' or 'wide', not {form!r}")
        cells = num_records * num_tensors
        return pd.DataFrame(
            {
                "step": np.tile(base["step"], len(names)),
                "tensor": np.tile(base["tensor"], len(names)),
                "group": np.tile(base["group"], len(names)),
                "metric": np.repeat(np.asarray(names, dtype=object), cells),
                "value": np.concatenate([self.metric(n).reshape(-1) for n in names])
                if names
                else np.array([], dtype=np.float32),
            }
        )

    def __repr__(self) -> str:
        return (
            f"Run(label={self.label!r}, records={self.num_records}, tensors={self.num_tensors}, "
            f"optimizer={self.meta.get('optimizer', {}).get('class')!r})"
        )

    # -- scale invariance (delegates to stepsize_lens.invariance) -------------------------------
    def test_views(self, delta: float | None = None) -> np.ndarray:
        """The paper's test per record and tensor (int8 [R, T] view codes), recomputed with δ."""
        from stepsize_lens.invariance import recorded_test_views

        return recorded_test_views(self, delta)

    def pass_rates(
        self, delta: float | None = None, view: str = "any", window: int | None = None
    ) -> pd.DataFrame:
        """Per-tensor pass rate of the paper's test over time ([steps x tensors], running or
        over a trailing ``window`` of records); see `stepsize_lens.invariance.pass_rates`."""
        from stepsize_lens.invariance import pass_rates

        return pass_rates(self, delta=delta, view=view, window=window)

    def tensor_classes(self, delta: float | None = None) -> pd.Series:
        """One scale-invariance class per tensor ("channel" / "layer" / "none"): the probe
        verdict if recorded, else the test's majority; see `invariance.classify_tensors`."""
        from stepsize_lens.invariance import classify_tensors

        return classify_tensors(self, delta)

    # -- export (delegates to stepsize_lens.integrations.tensorboard) -------------------------
    def to_tensorboard(self, logdir: str | os.PathLike[str], **options: Any) -> Path:
        """Write the run as TensorBoard scalars, per param group and per invariance class
        (needs the ``tensorboard`` package); see `integrations.tensorboard.to_tensorboard`."""
        from stepsize_lens.integrations.tensorboard import to_tensorboard

        return to_tensorboard(self, logdir, **options)
