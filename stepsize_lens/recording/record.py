"""`Record`: one record of the lens as a small typed object, for live loggers.

``attach(..., on_record=callback)`` calls ``callback(record)`` after each record, and
``lens.latest()`` returns the last one. A `Record` holds the step, its wall time, whether a
GradScaler skipped it, every metric and both views per tracked tensor (copies of [T] tensors:
nothing of the run is rebuilt, and a record stays valid while the lens records on), the
tensors' names, param groups and invariance classes as known at this record, and
``key_scalars``: a small dict of figures per set of tensors, what the framework callbacks, the
W&B and the live TensorBoard writers log (`key_scalars`).

**Sets and their figures** are those of the analysis (`analysis.frames.reduce` over the run so
far, last row), so a live chart and the report agree:

- sets: the scale-invariant tensors together (``invariant``), each invariance class
  (``class_channel``, ``class_layer``, ``class_none``) and each param group (``group_<g>``);
- a tensor's class: the functional probe's verdict where the params table has one, else the
  most frequent outcome of the paper's test over the non-skipped records so far, ties going to
  the weaker class; 1-D tensors are ``none`` (`invariance.classify_tensors` of the run so far);
- left out of a set's figures, unless every tensor of the set is: tensors that have had no
  gradient at any record so far (frozen, ``requires_grad=False``, or unused) and tensors whose
  first recorded ‖w‖ was 0 (zero-initialised biases);
- figures per set: the mean ``angular_update`` (radians per step), the mean ``weight_norm``, and
  ``effective_lr`` = mean η / mean ‖w‖² (for one tensor its own η/‖w‖²: the set's weights taken
  as one vector, so a vanishing tensor drops out instead of dominating), formed by
  `stepsize_lens.set_figures.set_figure`, the function the analysis forms them with; plus
  ``invariant_fraction``, the share of the tensors tested at this record that passed.

Keys read ``<metric>/<set>`` (``angular_update/invariant``, ``weight_norm/group_0``...) and
``invariant_fraction``; a figure that is undefined at this record (an empty set, no finite
value) is left out, so every value is finite. A skipped record has none.

The running facts behind classes and left-out tensors (`SetTally`) fold in each record once, on
the first `Record` asked for after it: a lens nobody asks costs nothing here.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import torch

from stepsize_lens._schema import (
    CLASSES,
    INVARIANT_CLASSES,
    PROBE_VERDICT_COLUMN,
    VIEW_OF_CLASS,
    View,
)
from stepsize_lens.paper_test import paper_test
from stepsize_lens.set_figures import set_figure

if TYPE_CHECKING:
    from stepsize_lens.run import RunWriter

KEY_METRICS: tuple[str, ...] = ("angular_update", "weight_norm", "effective_lr")

# class words in the order ties are broken: the weaker claim first (argmax keeps the first)
_WEAKEST_FIRST: tuple[str, ...] = tuple(reversed(CLASSES))


@dataclass(frozen=True)
class Record:
    """One record. ``metrics``: metric name -> float32 [T]; ``views``: ``test_view`` and
    ``applied_view`` -> int8 [T] (`View` codes); ``tensor_names``, ``tensor_groups`` and
    ``classes`` [T]; ``lr``: float64 [G], each param group's learning rate; ``left_out``: bool
    [T], the tensors left out of the set figures (module docstring). Copies: a `Record` stays
    valid while the lens records on."""

    step: int
    time: float
    skipped: bool
    tensor_names: tuple[str, ...]
    tensor_groups: tuple[int, ...]
    classes: tuple[str, ...]
    metrics: Mapping[str, torch.Tensor]
    views: Mapping[str, torch.Tensor]
    lr: torch.Tensor
    left_out: torch.Tensor

    @property
    def test_view(self) -> torch.Tensor:
        """The paper's test at this record: int8 [T] `View` codes."""
        return self.views["test_view"]

    @property
    def applied_view(self) -> torch.Tensor:
        """The view AdamP/SGDP applied at this record: int8 [T] `View` codes (-1 unknown)."""
        return self.views["applied_view"]

    def per_tensor(self, metric: str) -> dict[str, float]:
        """``{tensor name: value}`` of one metric at this record (NaN where undefined)."""
        try:
            values = self.metrics[metric]
        except KeyError:
            raise KeyError(f"unknown metric {metric!r}; known: {', '.join(self.metrics)}") from None
        return dict(zip(self.tensor_names, values.tolist()))

    @cached_property
    def key_scalars(self) -> dict[str, float]:
        """The figures per set of tensors (module docstring); computed once, on first use."""
        return key_scalars(self)


def key_scalars(record: Record) -> dict[str, float]:
    """``<metric>/<set>`` and ``invariant_fraction`` of one record, every value finite (see the
    module docstring for the sets and how each figure is formed). Empty for a skipped record.
    The one computation behind every live logger: `Record.key_scalars`,
    `stepsize_lens.integrations.key_scalars` and the framework callbacks."""
    if record.skipped or not record.tensor_names:
        return {}
    test_view = record.test_view
    tested = int((test_view >= View.NONE).sum())
    passed = int((test_view > View.NONE).sum())
    groups = torch.tensor(record.tensor_groups, dtype=torch.long)
    lr = (
        record.lr[groups.clamp(max=record.lr.numel() - 1)].to(torch.float64)
        if record.lr.numel()
        else torch.full(groups.shape, math.nan, dtype=torch.float64)
    )
    classes = record.classes
    invariant = torch.tensor([c in INVARIANT_CLASSES for c in classes], dtype=torch.bool)
    sets: list[tuple[str, torch.Tensor]] = [("invariant", invariant)]
    for name in CLASSES:
        sets.append((f"class_{name}", torch.tensor([c == name for c in classes])))
    for group in sorted(set(record.tensor_groups)):
        sets.append((f"group_{group}", groups == group))
    values: dict[str, dict[str, float]] = {metric: {} for metric in KEY_METRICS}
    for name, members in sets:
        if not bool(members.any()):
            continue
        measured = members & ~record.left_out
        if not bool(measured.any()):
            measured = members
        for metric in KEY_METRICS:
            figure, _ = set_figure(
                metric,
                record.metrics[metric][measured],
                lr[measured],
                record.metrics["weight_norm"][measured],
            )
            values[metric][name] = float(figure)
    out = {
        f"{metric}/{name}": value
        for metric, by_set in values.items()
        for name, value in by_set.items()
        if math.isfinite(value)
    }
    if tested:
        out["invariant_fraction"] = passed / tested
    return out


class SetTally:
    """Running per-tensor facts that decide a record's sets, folded in record by record:

    - ``counts`` int64 [T, 3]: non-skipped records at which the paper's test (recomputed with δ
      from the stored cosines, as `invariance.recorded_test_views` does) gave none, layer,
      channel;
    - ``first_norm`` float64 [T]: the first finite ‖w‖ at a non-skipped record (NaN: none yet);
    - ``alive`` / ``stepped`` bool [T]: seen with a finite ‖w‖ / with a gradient (a tensor
      without one has NaN ‖g‖ and Δ = 0) at a non-skipped record.

    It reads the writer's buffers, never the training objects."""

    def __init__(self, delta: float) -> None:
        self.delta = float(delta)
        self.records = 0  # records of the writer folded in
        self.counts = torch.zeros((0, 3), dtype=torch.int64)
        self.first_norm = torch.zeros(0, dtype=torch.float64)
        self.alive = torch.zeros(0, dtype=torch.bool)
        self.stepped = torch.zeros(0, dtype=torch.bool)

    def _widen(self, tensors: int) -> None:
        extra = tensors - self.first_norm.numel()
        if extra <= 0:
            return
        self.counts = torch.cat([self.counts, torch.zeros((extra, 3), dtype=torch.int64)])
        self.first_norm = torch.cat(
            [self.first_norm, torch.full((extra,), math.nan, dtype=torch.float64)]
        )
        self.alive = torch.cat([self.alive, torch.zeros(extra, dtype=torch.bool)])
        self.stepped = torch.cat([self.stepped, torch.zeros(extra, dtype=torch.bool)])

    def catch_up(self, writer: RunWriter) -> None:
        """Fold in the writer's records not seen yet (one vectorised pass over them)."""
        self._widen(writer.num_tensors)
        if writer.num_records == self.records:
            return
        rows = writer.record_rows(self.records)
        self.records = writer.num_records
        keep = ~rows["skipped"]
        if not bool(keep.any()):
            return
        metrics = {name: values[keep] for name, values in rows["metrics"].items()}
        params = writer.params
        codes = paper_test(
            metrics["cos_grad"].to(torch.float64),
            metrics["channel_cos_grad_max"].to(torch.float64),
            torch.tensor(_numbers(params["numel"], 1.0), dtype=torch.float64),
            torch.tensor(_numbers(params["rows"], 1.0), dtype=torch.float64),
            torch.tensor(_numbers(params["ndim"], 0.0), dtype=torch.float64),
            delta=self.delta,
        )
        for column, name in enumerate(_WEAKEST_FIRST):
            self.counts[:, column] += (codes == VIEW_OF_CLASS[name]).sum(dim=0)
        weight = metrics["weight_norm"].to(torch.float64)
        finite = torch.isfinite(weight)
        first = finite.to(torch.int8).argmax(dim=0)
        found = finite.any(dim=0) & torch.isnan(self.first_norm)
        self.first_norm[found] = weight[first, torch.arange(weight.shape[1])][found]
        # no gradient: NaN ‖g‖ with Δ = 0, or with any Δ where requires_grad was False (an
        # optimizer that decays every tensor moves frozen ones too), as `sets.frozen_tensors`
        frozen = torch.tensor(
            [value is False for value in params.get("requires_grad") or []]
            or [False] * writer.num_tensors,
            dtype=torch.bool,
        )
        no_gradient = torch.isnan(metrics["grad_norm"]) & (
            (metrics["update_norm"] == 0) | frozen[: weight.shape[1]]
        )
        self.alive |= finite.any(dim=0)
        self.stepped |= (finite & ~no_gradient).any(dim=0)

    def classes(self, writer: RunWriter) -> tuple[str, ...]:
        """Each tensor's class (module docstring): probe verdict, else the majority so far."""
        names = [_WEAKEST_FIRST[int(i)] for i in self.counts.argmax(dim=1)]
        ndim = _numbers(writer.params["ndim"], 0.0)
        verdicts = writer.params.get(PROBE_VERDICT_COLUMN) or [None] * len(names)
        return tuple(
            verdict if verdict in CLASSES else ("none" if dims < 2 else name)
            for name, dims, verdict in zip(names, ndim, verdicts)
        )

    def left_out(self) -> torch.Tensor:
        """bool [T]: frozen so far (alive, never stepped) or starting at ‖w‖ = 0."""
        return (self.alive & ~self.stepped) | (self.first_norm == 0)


def _numbers(values: list[Any], default: float) -> list[float]:
    return [default if value is None else float(value) for value in values]


def latest_record(writer: RunWriter, tally: SetTally) -> Record | None:
    """The writer's last record as a `Record` (None before the first), the tally caught up."""
    last = writer.last_record()
    if last is None:
        return None
    tally.catch_up(writer)
    return Record(
        step=int(last["step"]),
        time=float(last["time"]),
        skipped=bool(last["skipped"]),
        tensor_names=tuple(writer.params["name"]),
        tensor_groups=tuple(int(g) for g in writer.params["group"]),
        classes=tally.classes(writer),
        metrics={name: values.clone() for name, values in last["metrics"].items()},
        views={name: values.clone() for name, values in last["views"].items()},
        lr=last["groups"]["lr"].clone(),
        left_out=tally.left_out(),
    )


class Feed:
    """Calls ``callback(record)`` for a lens's records and ``callback.on_close(lens)`` (when the
    callback has one) at close.

    A logger must never take down the run it watches: an exception of the callback is caught,
    the first is reported as one line on stderr naming the lens and the exception, and the
    callback keeps being called for later records (a logger that failed once, say on a network
    hiccup, usually works again); later exceptions are only counted (``errors``,
    `Lens.callback_errors`)."""

    def __init__(self, callback: Callable[[Record], Any], describe: str) -> None:
        if not callable(callback):
            raise TypeError(f"on_record must be callable, got {type(callback).__name__}")
        self.callback = callback
        self.describe = describe
        self.errors = 0

    def _failed(self, what: str, exc: Exception) -> None:
        self.errors += 1
        if self.errors == 1:
            message = " ".join(str(exc).split())  # one line, whatever the exception says
            print(
                f"stepsize_lens: the on_record {what} of {self.describe} raised "
                f"{type(exc).__name__}: {message}; training goes on, the callback is still "
                "called for later records, and its later errors are counted in "
                "lens.callback_errors, not reported",
                file=sys.stderr,
            )

    def __call__(self, record: Record) -> None:
        try:
            self.callback(record)
        except Exception as exc:  # a logger must never take down the run it watches
            self._failed("callback", exc)

    def close(self, lens: Any) -> None:
        on_close = getattr(self.callback, "on_close", None)
        if not callable(on_close):
            return
        try:
            on_close(lens)
        except Exception as exc:
            self._failed("callback's on_close", exc)
