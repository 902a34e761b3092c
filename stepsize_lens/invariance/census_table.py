"""The census: fractions of tensors and of parameters per scale-invariance class.

`census` counts overall (row ``"all"``) and per module type, from a probe, a run or a table.
It sits above the probe and the recorded test: it reads their results, they never call it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from stepsize_lens._schema import CLASSES, INVARIANT_CLASSES
from stepsize_lens.invariance.functional_probe import ProbeResult
from stepsize_lens.invariance.recorded_test import classify_tensors

if TYPE_CHECKING:
    import pandas as pd

    from stepsize_lens.run import Run

CENSUS_COLUMNS: tuple[str, ...] = (
    "tensors",
    "parameters",
    *(f"tensors_{cls}" for cls in CLASSES),
    *(f"params_{cls}" for cls in CLASSES),
    "params_invariant",
)


def _class_table(source: ProbeResult | Run | pd.DataFrame, delta: float | None) -> pd.DataFrame:
    """(class, numel, module_type) per tensor from a probe result, a run or a ready table."""
    import pandas as pd

    if isinstance(source, ProbeResult):
        table = source.table
        return pd.DataFrame(
            {
                "class": table["verdict"],
                "numel": table["numel"],
                "module_type": table["module_type"],
            }
        )
    if isinstance(source, pd.DataFrame):
        missing = {"class", "numel"} - set(source.columns)
        if missing:
            raise ValueError(f"census table lacks column(s) {', '.join(sorted(missing))}")
        frame = source.copy()
        if "module_type" not in frame.columns:
            frame["module_type"] = ""
        return frame[["class", "numel", "module_type"]]
    classes = classify_tensors(source, delta)
    module_types = source.param_column("module_type") or [""] * source.num_tensors
    return pd.DataFrame(
        {
            "class": classes.to_numpy(),
            "numel": source.param_values("numel", 0.0),
            "module_type": [str(value or "") for value in module_types],
        },
        index=classes.index,
    )


def census(
    source: ProbeResult | Run | pd.DataFrame, by: str = "module_type", delta: float | None = None
) -> pd.DataFrame:
    """Fractions of tensors and of parameters per class, overall (row ``"all"``) and per ``by``.

    ``source``: a `ProbeResult`, a `Run` (classes from `classify_tensors`) or a DataFrame with
    columns ``class``, ``numel`` (and ``module_type``). Columns: ``tensors``, ``parameters``
    (counts), ``tensors_<class>`` (fraction of the scope's tensors in each class),
    ``params_<class>`` (fraction of its parameter count) and ``params_invariant`` (the
    invariant classes, channel + layer). Rows after ``"all"`` are sorted by parameter count,
    largest first.
    """
    import pandas as pd

    table = _class_table(source, delta)
    if by not in table.columns:
        raise ValueError(f"cannot group a census by {by!r}")

    def summarise(part: pd.DataFrame) -> dict[str, float]:
        numel = part["numel"].astype(np.float64)
        total = float(numel.sum())
        row: dict[str, float] = {"tensors": len(part), "parameters": total}
        for cls in CLASSES:
            mask = part["class"] == cls
            row[f"tensors_{cls}"] = float(mask.mean()) if len(part) else float("nan")
        for cls in CLASSES:
            mask = part["class"] == cls
            row[f"params_{cls}"] = float(numel[mask].sum()) / total if total else float("nan")
        row["params_invariant"] = sum(row[f"params_{cls}"] for cls in INVARIANT_CLASSES)
        return row

    rows = {"all": summarise(table)}
    grouped = sorted(table.groupby(by, sort=False), key=lambda item: -float(item[1]["numel"].sum()))
    for key, part in grouped:
        rows[str(key) or "(unknown)"] = summarise(part)
    frame = pd.DataFrame.from_dict(rows, orient="index")[list(CENSUS_COLUMNS)]
    frame["tensors"] = frame["tensors"].astype(np.int64)
    frame["parameters"] = frame["parameters"].astype(np.int64)
    frame.index.name = "scope" if by == "module_type" else by
    return frame
