"""Tidy and wide pandas frames of a run: per tensor (`tensor_frame`, `record_frame`), per set of
tensors (`reduce`: the sets and their figures are `analysis.sets`) and over several runs
(`stack`).

Frames always carry a ``run`` column (the run's label) so frames of several runs concatenate;
`stack` does that for a list of runs, with an ``x`` column holding the step or the user-logged
epoch (`axes.epochs`). Skipped records (a GradScaler skipped the step; every metric is NaN) are
left out unless ``include_skipped=True``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from stepsize_lens._schema import VIEWS
from stepsize_lens.analysis.axes import run_labels, x_of_steps
from stepsize_lens.analysis.sets import (
    REDUCERS,
    left_out_of_means,
    measured,
    record_mask,
    set_values,
    tensor_classes,
    tensor_sets,
)

if TYPE_CHECKING:
    import pandas as pd

    from stepsize_lens.run import Run


def tensor_frame(
    run: Run,
    metrics: Sequence[str] | None = None,
    form: str = "tidy",
    classes: pd.Series | Mapping[str, str] | None = None,
    include_skipped: bool = False,
) -> pd.DataFrame:
    """Every recorded metric per record and tensor, with the tensor's group, class and numel.

    ``form="tidy"``: columns run, step, tensor, group, class, numel, metric, value (for seaborn).
    ``form="wide"``: run, step, tensor, group, class, numel, skipped, a column per metric,
    test_view and applied_view.
    """
    import pandas as pd

    names = list(metrics) if metrics is not None else list(run.metric_names)
    keep = record_mask(run, include_skipped)
    num_records = int(keep.sum())
    cls = np.asarray(tensor_classes(run, classes), dtype=object)
    base = {
        "run": run.label,
        **run.record_columns(keep),
        "class": np.tile(cls, num_records),
        "numel": np.tile(run.numel.astype(np.int64), num_records),
    }
    if form == "wide":
        columns = dict(base)
        columns["skipped"] = np.repeat(run.skipped[keep], run.num_tensors)
        for name in names:
            columns[name] = run.metric(name)[keep].reshape(-1)
        for view in VIEWS:
            columns[view] = run.view(view)[keep].reshape(-1)
        return pd.DataFrame(columns)
    if form != "tidy":
        raise ValueError(f"form must be 'tidy' or 'wide', not {form!r}")
    cells = num_records * run.num_tensors
    tidy = {
        k: (np.tile(v, len(names)) if isinstance(v, np.ndarray) else v) for k, v in base.items()
    }
    tidy["metric"] = np.repeat(np.asarray(names, dtype=object), cells)
    tidy["value"] = (
        np.concatenate([run.metric(n)[keep].reshape(-1) for n in names])
        if names
        else np.array([], np.float32)
    )
    return pd.DataFrame(tidy)


def record_frame(run: Run, columns: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """A frame with one row per record and tensor (tensors varying fastest): the index columns
    step, tensor, group of `Run.record_columns`, then ``columns``, each [R, T] (flattened
    record-major) or [T] (repeated for every record)."""
    import pandas as pd

    frame: dict[str, np.ndarray] = run.record_columns()
    for name, values in columns.items():
        values = np.asarray(values)
        frame[name] = np.tile(values, run.num_records) if values.ndim == 1 else values.reshape(-1)
    return pd.DataFrame(frame)


def reduce(
    run: Run,
    by: str = "class",
    metrics: Sequence[str] | None = None,
    reducer: str = "mean",
    form: str = "tidy",
    classes: pd.Series | Mapping[str, str] | None = None,
    include_skipped: bool = False,
) -> pd.DataFrame:
    """Metrics reduced over the tensors of each set (``by``: tensor, group, class or all).

    ``form="tidy"``: columns run, step, <by>, metric, value, tensors (how many tensors had a
    finite value). ``form="wide"``: run, step, <by>, a column per metric.
    Values are float64 whatever the stored precision. Each set's figures are formed as
    `analysis.sets` says (as in `summary.summarize`): frozen tensors and tensors whose first
    recorded norm is 0 are left out unless every tensor of the set is one of them, and a set's
    ``effective_lr`` is reduce(η) / reduce(‖w‖²).
    """
    import pandas as pd

    if reducer not in REDUCERS:
        raise ValueError(f"reducer must be one of {REDUCERS}, not {reducer!r}")
    if form not in ("tidy", "wide"):
        raise ValueError(f"form must be 'tidy' or 'wide', not {form!r}")
    names = list(metrics) if metrics is not None else list(run.metric_names)
    keep = record_mask(run, include_skipped)
    steps = run.steps[keep]
    sets = tensor_sets(run, by, None if classes is None else tensor_classes(run, classes))
    arrays = {name: run.metric(name)[keep] for name in names}
    left_out = left_out_of_means(run, include_skipped)
    parts = []
    for key, index in sets.items():
        index = measured(index, left_out)
        columns: dict[str, object] = {"run": run.label, "step": steps, by: [key] * len(steps)}
        if form == "wide":
            for name in names:
                columns[name] = set_values(run, name, index, keep, reducer, arrays)[0]
            parts.append(pd.DataFrame(columns))
            continue
        for name in names:
            values, count = set_values(run, name, index, keep, reducer, arrays)
            part = dict(columns)
            part["metric"] = name
            part["value"] = values
            part["tensors"] = count
            parts.append(pd.DataFrame(part))
    if not parts:
        empty = ["run", "step", by] + (names if form == "wide" else ["metric", "value", "tensors"])
        return pd.DataFrame(columns=empty)
    return pd.concat(parts, ignore_index=True)


def stack(
    runs: Sequence[Run],
    by: str = "class",
    metrics: Sequence[str] | None = None,
    reducer: str = "mean",
    on: str = "step",
    classes: pd.Series | Mapping[str, str] | None = None,
    scalar: str = "epoch",
) -> pd.DataFrame:
    """Tidy `reduce` frames of several runs, concatenated, with an ``x`` column (step or epoch)
    and unique ``run`` labels: the input of overlaid plots. ``classes`` applies to every run;
    default: each run's own classification."""
    import pandas as pd

    parts = []
    for label, run in zip(run_labels(runs), runs):
        frame = reduce(run, by=by, metrics=metrics, reducer=reducer, classes=classes)
        frame["run"] = label
        frame["x"] = x_of_steps(run, frame["step"], on, scalar)
        parts.append(frame)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
