"""The paper's cosine test (AdamP, Heo et al. ICLR 2021, Sec. 3), live and on a recorded run.

An invariant w has ⟨w, g⟩ = 0, so with δ = 0.1

    channel view passes if  max_k |cos(w_k, g_k)| < δ / sqrt(numel / rows)
    else layer view passes if         |cos(w, g)| < δ / sqrt(numel)
    else neither.

`paper_test` evaluates it vectorised (numpy or torch, no host sync); `recorded_test_views`,
`view_counts`, `pass_rates` and `classify_tensors` apply it to a recorded `Run`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from stepsize_lens.invariance.classes import (
    CLASS_OF_CODE,
    CLASSES,
    DEFAULT_DELTA,
    PROBE_VERDICT_COLUMN,
)
from stepsize_lens.run import VIEW_CHANNEL, VIEW_LAYER, VIEW_NONE, VIEW_UNTESTED

if TYPE_CHECKING:
    import pandas as pd

    from stepsize_lens.run import Run


def paper_test(
    cos_grad: Any,
    channel_cos_grad_max: Any,
    numel: Any,
    rows: Any,
    ndim: Any,
    delta: float = DEFAULT_DELTA,
) -> Any:
    """The paper's scale-invariance test, elementwise over broadcastable arrays or tensors.

    Returns int8 view codes: ``VIEW_CHANNEL`` (1) if channel_cos_grad_max < δ/sqrt(numel/rows),
    else ``VIEW_LAYER`` (2) if |cos_grad| < δ/sqrt(numel), else ``VIEW_NONE`` (0);
    ``VIEW_UNTESTED`` (-1) where ndim < 2 (never tested) or where both cosines are NaN (a zero
    weight or gradient: the test is undefined). A NaN cosine fails its own view.

    With torch tensors the result is a torch tensor on ``cos_grad``'s device, computed without
    any device-to-host synchronisation (pass numel/rows/ndim as tensors on that device to also
    avoid host-to-device copies). Otherwise the result is a numpy array.
    """
    if isinstance(cos_grad, torch.Tensor) or isinstance(channel_cos_grad_max, torch.Tensor):
        return _paper_test_torch(cos_grad, channel_cos_grad_max, numel, rows, ndim, delta)
    cos = np.asarray(cos_grad, dtype=np.float64)
    chan = np.asarray(channel_cos_grad_max, dtype=np.float64)
    numel_f = np.maximum(np.nan_to_num(np.asarray(numel, dtype=np.float64), nan=1.0), 1.0)
    rows_f = np.maximum(np.nan_to_num(np.asarray(rows, dtype=np.float64), nan=1.0), 1.0)
    ndim_f = np.nan_to_num(np.asarray(ndim, dtype=np.float64), nan=0.0)
    with np.errstate(invalid="ignore"):
        channel_pass = chan < delta * np.sqrt(rows_f / numel_f)
        layer_pass = np.abs(cos) < delta / np.sqrt(numel_f)
    codes = np.where(channel_pass, VIEW_CHANNEL, np.where(layer_pass, VIEW_LAYER, VIEW_NONE))
    untested = (ndim_f < 2) | (np.isnan(cos) & np.isnan(chan))
    return np.where(untested, VIEW_UNTESTED, codes).astype(np.int8)


def _paper_test_torch(
    cos_grad: Any, channel_cos: Any, numel: Any, rows: Any, ndim: Any, delta: float
) -> torch.Tensor:
    reference = cos_grad if isinstance(cos_grad, torch.Tensor) else channel_cos
    device = reference.device
    dtype = torch.promote_types(reference.dtype, torch.float32)
    cos = torch.as_tensor(cos_grad, device=device, dtype=dtype)
    chan = torch.as_tensor(channel_cos, device=device, dtype=dtype)
    numel_t = torch.as_tensor(numel, device=device, dtype=dtype).clamp(min=1)
    rows_t = torch.as_tensor(rows, device=device, dtype=dtype).clamp(min=1)
    ndim_t = torch.as_tensor(ndim, device=device)
    channel_pass = chan < delta * torch.sqrt(rows_t / numel_t)
    layer_pass = cos.abs() < delta * torch.rsqrt(numel_t)
    codes = torch.where(
        channel_pass,
        VIEW_CHANNEL,
        torch.where(layer_pass, VIEW_LAYER, VIEW_NONE),
    )
    untested = (ndim_t < 2) | (torch.isnan(cos) & torch.isnan(chan))
    return torch.where(untested, VIEW_UNTESTED, codes).to(torch.int8)


def run_delta(run: Run, delta: float | None = None) -> float:
    """δ to use for a run: the argument, else the run's ``meta["delta"]``, else 0.1."""
    if delta is not None:
        return float(delta)
    stored = run.meta.get("delta")
    return float(stored) if isinstance(stored, (int, float)) else DEFAULT_DELTA


def _param_array(run: Run, column: str, default: float) -> np.ndarray:
    values = run.data["params"].get(column) or [None] * run.num_tensors
    return np.array([default if v is None else v for v in values], dtype=np.float64)


def recorded_test_views(run: Run, delta: float | None = None) -> np.ndarray:
    """The paper's test per record and tensor, int8 [records, tensors], from the stored cosines.

    Recomputed with `paper_test` from ``cos_grad`` and ``channel_cos_grad_max`` so any δ can be
    used (default: the δ the run was recorded with). Skipped records keep their codes; callers
    that count passes leave them out.
    """
    return paper_test(
        run.metric("cos_grad"),
        run.metric("channel_cos_grad_max"),
        _param_array(run, "numel", 1.0),
        _param_array(run, "rows", 1.0),
        _param_array(run, "ndim", 0.0),
        delta=run_delta(run, delta),
    )


def view_counts(run: Run, delta: float | None = None, which: str = "test_view") -> pd.DataFrame:
    """Per tensor, how often each view was seen over the non-skipped records.

    ``which="test_view"`` recomputes the paper's test with δ (`recorded_test_views`);
    ``which="applied_view"`` reads what AdamP/SGDP applied. Columns: ``channel``, ``layer``,
    ``none`` (fractions of the known records), ``known`` (how many records had a code >= 0).
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
    known = (views >= 0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        columns = {
            name: (views == code).sum(axis=0) / known for code, name in CLASS_OF_CODE.items()
        }
    frame = pd.DataFrame(
        {
            "channel": columns["channel"],
            "layer": columns["layer"],
            "none": columns["none"],
            "known": known,
        },
        index=pd.Index(run.tensor_names, name="tensor"),
    )
    return frame


def _majority(counts: pd.DataFrame) -> np.ndarray:
    # ties go to the weaker claim: none before layer before channel
    ordered = counts[["none", "layer", "channel"]].fillna(0.0).to_numpy()
    names = np.array(["none", "layer", "channel"], dtype=object)
    result = names[ordered.argmax(axis=1)]
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
    classes = _majority(counts)
    ndim = _param_array(run, "ndim", 0.0)
    classes[ndim < 2] = "none"
    probe_column = run.data["params"].get(PROBE_VERDICT_COLUMN)
    if probe_column is not None:
        for index, verdict in enumerate(probe_column):
            if verdict in CLASSES:
                classes[index] = verdict
    return pd.Series(classes, index=pd.Index(run.tensor_names, name="tensor"), name="class")


def _pass_mask(views: np.ndarray, view: str) -> np.ndarray:
    if view == "any":
        return (views == VIEW_CHANNEL) | (views == VIEW_LAYER)
    if view == "channel":
        return views == VIEW_CHANNEL
    if view == "layer":
        return views == VIEW_LAYER
    if view == "none":
        return views == VIEW_NONE
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
    valid = (views >= 0) & ~run.skipped.astype(bool)[:, None]
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
