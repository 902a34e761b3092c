"""|cos(w, g)| per tensor against the paper's scale-invariance thresholds."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from stepsize_lens.paper_test import channel_threshold, layer_threshold
from stepsize_lens.plots._style import OKABE_ITO, WIDTH, quiet_nan, style

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from stepsize_lens.run import Run

FLOOR = 1e-8  # exact zeros on a log axis


def cos_threshold(
    run: Run,
    delta: float | None = None,
    max_tensors: int = 40,
    quantiles: tuple[float, float, float] = (0.1, 0.5, 0.9),
) -> Figure:
    """The paper's test per tested (≥2-D) tensor: the channel view's max_k |cos(w_k, g_k)|
    against δ/sqrt(numel/rows) and the layer view's |cos(w, g)| against δ/sqrt(numel).

    Dots: median over the non-skipped records; bars: 10–90% range; ticks of the same colour:
    the thresholds. A statistic left of its tick passes. δ: the argument, else the run's.
    At most ``max_tensors`` tensors, in model order.
    """
    from matplotlib.figure import Figure

    from stepsize_lens.invariance import run_delta

    d = run_delta(run, delta)
    tested = list(np.flatnonzero(run.param_values("ndim", 0.0) >= 2))
    shown = tested[:max_tensors]
    keep = ~run.skipped.astype(bool)
    layer = np.abs(run.metric("cos_grad")[keep][:, shown].astype(np.float64))
    channel = run.metric("channel_cos_grad_max")[keep][:, shown].astype(np.float64)
    numel = run.numel[shown].astype(np.int64)
    rows = run.param_values("rows", 1.0)[shown].astype(np.int64)
    channel_ticks = np.array([channel_threshold(n, r, d) for n, r in zip(numel, rows)])
    layer_ticks = np.array([layer_threshold(n, d) for n in numel])
    views = (
        ("channel view: max_k |cos(w_k, g_k)|", channel, channel_ticks, -0.18, 0),
        ("layer view: |cos(w, g)|", layer, layer_ticks, 0.18, 3),
    )
    with style():
        height = max(2.2, 1.1 + 0.24 * len(shown))
        fig = Figure(figsize=(WIDTH, height), layout="constrained")
        ax = fig.subplots()
        y = np.arange(len(shown))[::-1].astype(np.float64)
        for label, values, threshold, offset, color_index in views:
            color = OKABE_ITO[color_index]
            if values.shape[0]:
                with quiet_nan():
                    lo, mid, hi = (np.nanquantile(values, q, axis=0) for q in quantiles)
            else:
                lo = mid = hi = np.full(len(shown), np.nan)
            lo, mid, hi = (np.clip(v, FLOOR, None) for v in (lo, mid, hi))
            ax.hlines(y + offset, lo, hi, color=color, lw=1.2)
            ax.plot(mid, y + offset, "o", color=color, ms=3.5, label=label)
            ax.plot(threshold, y + offset, "|", color=color, ms=9, mew=2.0)
        ax.plot(
            [], [], "|", color="0.3", ms=9, mew=2.0, label=f"its threshold δ/sqrt(dim), δ={d:g}"
        )
        ax.set_xscale("log")
        ax.set_yticks(y, [run.tensor_names[i] for i in shown])
        ax.set_ylim(-0.7, max(len(shown), 1) - 0.3)
        ax.grid(axis="y", visible=False)
        ax.set_xlabel("|cosine| between weight and gradient (median and 10–90% of records)")
        more = f" (first {len(shown)} of {len(tested)})" if len(shown) < len(tested) else ""
        ax.set_title(f"Scale-invariance test per tensor{more}: left of the tick passes")
        if not shown:
            ax.text(
                0.5,
                0.5,
                "no tensors with ndim ≥ 2",
                ha="center",
                va="center",
                transform=ax.transAxes,
            )
        fig.legend(loc="outside lower center", ncols=3)
    return fig
