"""`Run`: a loaded, validated run with typed accessors. Nothing outside this package reads the
raw dict (docs/design.md, "Invariants").

Arrays come back as numpy, tables as pandas (imported on first use). `Run` only reads; it never
calls up into analysis, invariance or integrations.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stepsize_lens._schema import VIEWS
from stepsize_lens.run.chunks import remove_folder
from stepsize_lens.run.format import upgrade
from stepsize_lens.run.storage import save_run_dict

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd


class Run:
    """A loaded, validated run (see `stepsize_lens.run.format` for the layout).

    Records: ``steps`` [R], ``times`` [R], ``skipped`` [R]; per record and tensor ``metric(name)``
    and ``view(name)`` [R, T]; per record and param group ``group_field(name)`` [R, G]. The
    params table: ``tensor_names``, ``tensor_groups``, ``param_values(column)``,
    ``param_column(column)`` and the DataFrame ``params``. User scalars: ``scalar_names``,
    ``scalar(name)`` and the DataFrame ``scalars``. ``meta`` (dict) and ``events`` (list).
    """

    def __init__(self, data: dict[str, Any], path: str | os.PathLike[str] | None = None) -> None:
        self._data = data
        self.path = Path(path) if path is not None else None
        self.meta: dict[str, Any] = data["meta"]

    # -- records -------------------------------------------------------------------------------
    @property
    def label(self) -> str:
        label = self.meta.get("label")
        if label:
            return str(label)
        return self.path.stem if self.path is not None else "run"

    @property
    def format_version(self) -> int:
        """The format version the file was written with (`save` writes the current one)."""
        return int(self._data["version"])

    @property
    def num_records(self) -> int:
        return int(self._data["records"]["step"].shape[0])

    @property
    def steps(self) -> np.ndarray:
        return self._data["records"]["step"].numpy()

    @property
    def times(self) -> np.ndarray:
        return self._data["records"]["time"].numpy()

    @property
    def skipped(self) -> np.ndarray:
        return self._data["records"]["skipped"].numpy()

    @property
    def events(self) -> list[dict[str, Any]]:
        return list(self._data["events"])

    @property
    def metric_names(self) -> tuple[str, ...]:
        return tuple(self._data["metrics"])

    def metric(self, name: str) -> np.ndarray:
        """The float32 [records, tensors] array of one metric (docs/design.md §3)."""
        try:
            return self._data["metrics"][name].numpy()
        except KeyError:
            raise KeyError(
                f"unknown metric {name!r}; known: {', '.join(self.metric_names)}"
            ) from None

    def view(self, name: str) -> np.ndarray:
        """The int8 [records, tensors] `View` codes of ``test_view`` or ``applied_view``."""
        if name not in VIEWS:
            raise KeyError(f"unknown view {name!r}; known: {', '.join(VIEWS)}")
        return self._data["views"][name].numpy()

    # -- param groups --------------------------------------------------------------------------
    @property
    def group_field_names(self) -> tuple[str, ...]:
        return tuple(self._data["groups"])

    @property
    def num_groups(self) -> int:
        fields = self._data["groups"]
        return int(next(iter(fields.values())).shape[1]) if fields else 0

    def group_field(self, name: str) -> np.ndarray:
        """The float64 [records, groups] array of one param-group hyperparameter (NaN if absent)."""
        return self._data["groups"][name].numpy()

    @property
    def groups(self) -> pd.DataFrame:
        """One row per (record, group): step, group and every recorded hyperparameter."""
        import numpy as np
        import pandas as pd

        num_groups = self.num_groups
        steps = self.steps
        columns: dict[str, Any] = {
            "step": np.repeat(steps, num_groups),
            "group": np.tile(np.arange(num_groups), len(steps)),
        }
        for name, tensor in self._data["groups"].items():
            columns[name] = tensor.numpy().reshape(-1)
        return pd.DataFrame(columns)

    # -- the params table ----------------------------------------------------------------------
    @property
    def num_tensors(self) -> int:
        return len(self._data["params"]["name"])

    @property
    def tensor_names(self) -> list[str]:
        return list(self._data["params"]["name"])

    @property
    def param_columns(self) -> tuple[str, ...]:
        return tuple(self._data["params"])

    def param_column(self, column: str) -> list[Any] | None:
        """One column of the params table as a list (one value per tensor), None if absent."""
        values = self._data["params"].get(column)
        return list(values) if values is not None else None

    def param_values(self, column: str, default: float = float("nan")) -> np.ndarray:
        """A numeric params-table column as float64 [T]; missing cells (or column) → default."""
        import numpy as np

        values = self._data["params"].get(column) or [None] * self.num_tensors
        return np.array([default if v is None else v for v in values], dtype=np.float64)

    @property
    def tensor_groups(self) -> np.ndarray:
        """The param group of every tensor, int64 [T] (0 where the params table has none)."""
        import numpy as np

        groups = self._data["params"]["group"]
        return np.asarray([0 if g is None else g for g in groups], dtype=np.int64)

    @property
    def numel(self) -> np.ndarray:
        """Elements per tensor, float64 [T] (1 where unknown)."""
        return self.param_values("numel", 1.0)

    @property
    def params(self) -> pd.DataFrame:
        import pandas as pd

        frame = pd.DataFrame(self._data["params"])
        frame.index.name = "tensor"
        return frame

    # -- user scalars --------------------------------------------------------------------------
    @property
    def scalar_names(self) -> list[str]:
        return list(self._data["scalars"])

    def scalar(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps int64 [S], values float64 [S]) of one logged scalar; KeyError if never logged."""
        series = self._data["scalars"].get(name)
        if series is None:
            known = ", ".join(self._data["scalars"]) or "none"
            raise KeyError(f"no scalar {name!r} was logged (logged: {known})")
        return series["step"].numpy(), series["value"].numpy()

    @property
    def scalars(self) -> pd.DataFrame:
        """User-logged scalars in long form: step, name, value."""
        import numpy as np
        import pandas as pd

        parts = []
        for name in self.scalar_names:
            steps, values = self.scalar(name)
            parts.append(
                pd.DataFrame(
                    {
                        "step": steps,
                        "name": np.full(steps.shape[0], name, dtype=object),
                        "value": values,
                    }
                )
            )
        if not parts:
            return pd.DataFrame({"step": [], "name": [], "value": []})
        return pd.concat(parts, ignore_index=True)

    # -- frames --------------------------------------------------------------------------------
    def frame(self, form: str = "tidy", metrics: Sequence[str] | None = None) -> pd.DataFrame:
        """The recorded metrics as a DataFrame.

        ``form="tidy"``: one row per step x tensor x metric, columns step, tensor, group, metric,
        value. ``form="wide"``: one row per step x tensor, a column per metric plus step, tensor,
        group, skipped, test_view, applied_view.
        """
        import numpy as np
        import pandas as pd

        names = list(metrics) if metrics is not None else list(self.metric_names)
        if form == "wide":
            columns = self.record_columns()
            columns["skipped"] = np.repeat(self.skipped, self.num_tensors)
            for name in names:
                columns[name] = self.metric(name).reshape(-1)
            for name in VIEWS:
                columns[name] = self.view(name).reshape(-1)
            return pd.DataFrame(columns)
        if form != "tidy":
            raise ValueError(f"form must be 'tidy' or 'wide', not {form!r}")
        base = self.record_columns()
        cells = self.num_records * self.num_tensors
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

    def record_columns(self, records: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The index columns of a (record x tensor) frame, tensors varying fastest: ``step``,
        ``tensor``, ``group`` (optionally only for the records selected by ``records``)."""
        import numpy as np

        steps = self.steps if records is None else self.steps[records]
        num_tensors = self.num_tensors
        return {
            "step": np.repeat(steps, num_tensors),
            "tensor": np.tile(np.asarray(self.tensor_names, dtype=object), len(steps)),
            "group": np.tile(self.tensor_groups, len(steps)),
        }

    # -- writing a (possibly edited) copy ------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A deep copy of the run's data in the file layout (for `save` or for tools that
        rewrite runs); editing it never changes this `Run`."""
        return copy.deepcopy(self._data)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write this run to ``path`` atomically, in the current format: a run loaded from an
        older version is written as the current one (`format.upgrade`: the metrics it lacked
        stay NaN, ``meta["upgraded_from"]`` records its version); this `Run` is unchanged."""
        save_run_dict(upgrade(dict(self._data)), path)
        remove_folder(Path(path))  # the chunks of a run that was being appended there
        return Path(path)

    def __repr__(self) -> str:
        return (
            f"Run(label={self.label!r}, records={self.num_records}, tensors={self.num_tensors}, "
            f"optimizer={self.meta.get('optimizer', {}).get('class')!r})"
        )
