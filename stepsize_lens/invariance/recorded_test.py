"""The paper's cosine test (AdamP, Heo et al. ICLR 2021, Sec. 3) on a recorded run.

An invariant w has ⟨w, g⟩ = 0, so with δ = 0.1

    channel view passes if  max_k |cos(w_k, g_k)| < δ / sqrt(numel / rows)
    else layer view passes if         |cos(w, g)| < δ / sqrt(numel)
    else neither.

`stepsize_lens.paper_test.paper_test` evaluates it as `View` codes; here
`recorded_test_views` recomputes it from a `Run`'s stored cosines with any δ, `view_counts`
counts the codes per tensor, `pass_rates` follows them over time, and `classify_tensors` turns
them into one class word per tensor.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from stepsize_lens._schema import (
    CLASSES,
    DEFAULT_DELTA,
    INVARIANT_CLASSES,
    PROBE_VERDICT_COLUMN,
    VIEW_OF_CLASS,
    View,
)
from stepsize_lens.paper_test import paper_test

if TYPE_CHECKING:
    import pandas as pd

    from stepsize_lens.run import Run


def run_delta(run: Run, delta: float | None = None) -> float:
    """δ to use for a run: the argument, else the run's ``meta["delta"]``, else 0.1."""
    if delta is not None:
        return float(delta)
    stored = run.meta.get("delta")
    return float(stored) if isinstance(stored, (int, float)) else DEFAULT_DELTA


def recorded_test_views(run: Run, delta: float | None = None) -> np.ndarray:
    """The paper's test per record and tensor, int8 [records, tensors], from the stored cosines.

    Recomputed with `paper_test` from ``cos_grad`` and ``channel_cos_grad_max`` so any δ can be
    used (default: the δ the run was recorded with). Skipped records keep their codes; callers
    that count passes leave them out.
    """
    return paper_test(
        run.metric("cos_grad"),
        run.metric("channel_cos_grad_max"),
        run.numel,
        run.param_values("rows", 1.0),
        run.param_values("ndim", 0.0),
        delta=run_delta(run, delta),
    )


def view_counts(run: Run, delta: float | None = None, which: str = "test_view") -> pd.DataFrame:
    """Per tensor, how often each view was seen over the non-skipped records.

    ``which="test_view"`` recomputes the paper's test with δ (`recorded_test_views`);
    ``which="applied_view"`` reads what AdamP/SGDP applied. Columns: ``channel``, ``layer``,
    ``none`` (fractions of the known records), ``known`` (how many records were tested: a code of
    `View.NONE` or above).
    Index: tensor names.
    """
    import pandas as pd

    if which == "test_view":
        views = recorded_test_views(run, delta)
    elif which == "applied_view":
        views = run.view("applied_view")
    else:
        raise ValueError(f"which must be 'test_view' or 'applied_view', not {which!r}")
    views = views[~run.skipped.astype(bool)]
    known = (views >= View.NONE).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        columns = {cls: (views == VIEW_OF_CLASS[cls]).sum(axis=0) / known for cls in CLASSES}
    return pd.DataFrame(
        {**columns, "known": known}, index=pd.Index(run.tensor_names, name="tensor")
    )


def majority_class(counts: pd.DataFrame) -> np.ndarray:
    """The most frequent class per tensor from `view_counts`; ties go to the weaker claim
    (none before layer before channel), tensors never tested are ``"none"``."""
    weakest_first = list(reversed(CLASSES))  # argmax picks the first of equal counts
    ordered = counts[weakest_first].fillna(0.0).to_numpy()
    result = np.array(weakest_first, dtype=object)[ordered.argmax(axis=1)]
    result[counts["known"].to_numpy() == 0] = "none"
    return result


def classify_tensors(run: Run, delta: float | None = None) -> pd.Series:
    """One class per tensor: ``"channel"``, ``"layer"`` or ``"none"`` (Series indexed by name).

    Uses the probe verdict stored in the params table (column ``probe_verdict``) where the run
    has one; otherwise the most frequent outcome of the paper's test (recomputed with δ) over
    the non-skipped records, ties going to the weaker class. 1-D tensors are ``"none"``.
    """
    import pandas as pd

    counts = view_counts(run, delta)
    classes = majority_class(counts)
    ndim = run.param_values("ndim", 0.0)
    classes[ndim < 2] = "none"
    probe_column = run.param_column(PROBE_VERDICT_COLUMN)
    if probe_column is not None:
        for index, verdict in enumerate(probe_column):
            if verdict in CLASSES:
                classes[index] = verdict
    return pd.Series(classes, index=pd.Index(run.tensor_names, name="tensor"), name="class")


def _pass_mask(views: np.ndarray, view: str) -> np.ndarray:
    """Where ``views`` (codes) show the class ``view``, or any invariant class for ``"any"``."""
    if view == "any":
        return np.isin(views, [VIEW_OF_CLASS[cls] for cls in INVARIANT_CLASSES])
    if view in VIEW_OF_CLASS:
        return views == VIEW_OF_CLASS[view]
    raise ValueError(f"view must be 'any', 'channel', 'layer' or 'none', not {view!r}")


def pass_rates(
    run: Run, delta: float | None = None, view: str = "any", window: int | None = None
) -> pd.DataFrame:
    """Per-tensor pass rate of the paper's test over time: DataFrame [records x tensors].

    At record r the value is (records passing) / (records tested) over the non-skipped records
    among the last ``window`` records up to r (``window=None``: all records so far, a running
    rate). ``view``: ``"any"`` (channel or layer view passed), ``"channel"``, ``"layer"`` (the
    layer view passed after the channel view failed) or ``"none"`` (neither passed). The test is
    recomputed from the stored cosines with δ (default: the run's δ). Untested tensors (1-D) and
    windows without a tested record are NaN. Index: ``step``; columns: tensor names.
    """
    import pandas as pd

    if window is not None and window < 1:
        raise ValueError(f"window must be a positive number of records, not {window}")
    views = recorded_test_views(run, delta)
    valid = (views >= View.NONE) & ~run.skipped.astype(bool)[:, None]
    passed = _pass_mask(views, view) & valid
    cum_pass = np.cumsum(passed, axis=0, dtype=np.float64)
    cum_valid = np.cumsum(valid, axis=0, dtype=np.float64)
    if window is not None and window < len(views):
        cum_pass[window:] -= cum_pass[:-window].copy()
        cum_valid[window:] -= cum_valid[:-window].copy()
    with np.errstate(invalid="ignore", divide="ignore"):
        rates = np.where(cum_valid > 0, cum_pass / np.maximum(cum_valid, 1), np.nan)
    frame = pd.DataFrame(rates, index=pd.Index(run.steps, name="step"), columns=run.tensor_names)
    frame.columns.name = "tensor"
    return frame
