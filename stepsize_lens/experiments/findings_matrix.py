"""The findings matrix (docs/findings.md): small seeded runs over optimizers × lr schedules ×
weight-decay timescale × labels, each checked against rules derived from the run's own ground
truth — the recorded lr, weight decay and norms, and the recurrence (`theory.forecast`) — not
from what the findings said on some earlier day.

A cell trains `bn_cnn` (two conv + BatchNorm blocks and a BatchNorm'd linear layer: five
scale-invariant weights, a classifier) on a fixed set of random 3×6×6 images for ``steps``
steps, recording every other step. ``labels``: ``noise`` (random labels: nothing to learn, the
gradients are noise, the regime of the theory) or ``real`` (a fixed random linear teacher:
learnable). ``length``: ``short`` (Σ_t η_t·λ'_t ≈ 0.1 at the peak lr: the run is shorter than
the weight-decay timescale) or ``long`` (≈ 6: several timescales). Schedules: ``constant``,
``step`` (×0.1 at half, ×0.01 at three quarters), ``cosine`` (a twentieth warmup, then to 0),
``wsd`` (warmup, stable, linear to 0 over the last fifth) and ``linear`` (from the peak to 0).

`violations(run, data)` lists every rule a report (`report.report_data`) breaks; `CELLS` is the
fast matrix of the test suite, `all_cells` the full one of benchmarks/findings_matrix.py.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from stepsize_lens.run import Run

OPTIMIZERS: tuple[str, ...] = ("sgd", "sgd_momentum", "sgdp", "adamw", "adamp", "adamc", "lion")
SCHEDULES: tuple[str, ...] = ("constant", "step", "cosine", "wsd", "linear")
DECAYING: tuple[str, ...] = ("step", "cosine", "wsd", "linear")
LENGTHS: dict[str, float] = {"short": 0.1, "long": 6.0}
"""Weight-decay timescales a run covers at its peak lr, η·λ'·steps."""
LABELS: tuple[str, ...] = ("noise", "real")
PEAK_LR: dict[str, float] = {
    "sgd": 0.1,
    "sgd_momentum": 0.05,
    "sgdp": 0.05,
    "adamw": 3e-3,
    "adamp": 3e-3,
    "adamc": 3e-3,
    "lion": 3e-4,
}
MOMENTUM = 0.9


@dataclass(frozen=True)
class Cell:
    optimizer: str
    schedule: str
    length: str = "short"
    labels: str = "noise"
    steps: int = 200
    seed: int = 0
    weight_decay: float | None = None  # None: from ``length``

    @property
    def name(self) -> str:
        return f"{self.optimizer}-{self.schedule}-{self.length}-{self.labels}"

    def decay(self) -> float:
        """λ such that η_peak·λ'·steps = LENGTHS[length] (λ' = λ/(1−μ) with momentum)."""
        if self.weight_decay is not None:
            return self.weight_decay
        per_lr = LENGTHS[self.length] / (PEAK_LR[self.optimizer] * self.steps)
        if self.optimizer in ("sgd_momentum", "sgdp"):
            per_lr *= 1.0 - MOMENTUM
        if self.optimizer in ("sgdp", "adamp"):
            per_lr /= 0.1  # their wd_ratio on the projected tensors
        return per_lr


CELLS: tuple[Cell, ...] = tuple(
    Cell(
        optimizer,
        schedule,
        ("short", "long")[(i + j) % 2],
        LABELS[(i // 2 + j) % 2],
        steps=160,
    )
    for i, optimizer in enumerate(OPTIMIZERS)
    for j, schedule in enumerate(SCHEDULES)
) + (Cell("sgd_momentum", "constant", "short", "noise", steps=160, weight_decay=0.0),)
"""The test suite's matrix: every optimizer under every schedule, lengths and labels
alternating so that each optimizer and each schedule meets both, plus SGD momentum without
weight decay."""


def all_cells(steps: int = 300) -> list[Cell]:
    """The full matrix: every optimizer × schedule × length × labels."""
    return [
        Cell(o, s, length, labels, steps=steps)
        for o in OPTIMIZERS
        for s in SCHEDULES
        for length in LENGTHS
        for labels in LABELS
    ]


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def bn_cnn() -> torch.nn.Module:
    """Conv + BN, conv + BN, linear + BN1d (all scale-invariant) and a linear classifier."""
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 16, bias=False),
        nn.BatchNorm1d(16),
        nn.ReLU(),
        nn.Linear(16, 4),
    )


def lr_factor(schedule: str, step: int, steps: int) -> float:
    """The factor on the peak lr at the 0-based step index (module docstring)."""
    warmup = max(1, steps // 20)
    if schedule == "constant":
        return 1.0
    if schedule == "step":
        return 1.0 if step < steps // 2 else 0.1 if step < 3 * steps // 4 else 0.01
    if schedule == "linear":
        return max(steps - step, 1) / steps
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(steps - warmup, 1)))
    decay = max(1, steps // 5)
    return 1.0 if step < steps - decay else max(steps - step, 1) / decay


def make_optimizer(cell: Cell, params: Any) -> torch.optim.Optimizer:
    from stepsize_lens.optim import SGDP, AdamC, AdamP

    lr, wd = PEAK_LR[cell.optimizer], cell.decay()
    builders: dict[str, Callable[[], torch.optim.Optimizer]] = {
        "sgd": lambda: torch.optim.SGD(params, lr=lr, weight_decay=wd),
        "sgd_momentum": lambda: torch.optim.SGD(params, lr=lr, momentum=MOMENTUM, weight_decay=wd),
        "sgdp": lambda: SGDP(params, lr=lr, momentum=MOMENTUM, weight_decay=wd),
        "adamw": lambda: torch.optim.AdamW(params, lr=lr, weight_decay=wd),
        "adamp": lambda: AdamP(params, lr=lr, weight_decay=wd),
        "adamc": lambda: AdamC(params, lr=lr, weight_decay=wd),
        "lion": lambda: _lion(params, lr, wd),
    }
    return builders[cell.optimizer]()


def _lion(params: Any, lr: float, wd: float) -> torch.optim.Optimizer:
    from lion_pytorch import Lion

    return Lion(params, lr=lr, weight_decay=wd)


def train_cell(cell: Cell, path: Path, record_every: int = 2) -> Run:
    """Train one cell (one torch thread) with the lens recording every ``record_every``-th
    step; the loaded run."""
    from stepsize_lens.experiments.digits import torch_threads

    with torch_threads(1):
        return _train(cell, path, record_every)


def _train(cell: Cell, path: Path, record_every: int) -> Run:
    import stepsize_lens
    from stepsize_lens.recording.schedules import every

    torch.manual_seed(cell.seed)
    model = bn_cnn()
    gen = torch.Generator().manual_seed(cell.seed + 1)
    images = torch.randn(512, 3, 6, 6, generator=gen)
    if cell.labels == "real":
        teacher = torch.randn(3 * 6 * 6, 4, generator=torch.Generator().manual_seed(7))
        labels = (images.flatten(1) @ teacher).argmax(1)
    else:
        labels = torch.randint(0, 4, (512,), generator=gen)
    optimizer = make_optimizer(cell, model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(cell.schedule, s, cell.steps)
    )
    lens = stepsize_lens.attach(
        model, optimizer, path=path, schedule=every(record_every, start=1), label=cell.name
    )
    for _ in range(cell.steps):
        pick = torch.randint(0, 512, (32,), generator=gen)
        loss = torch.nn.functional.cross_entropy(model(images[pick]), labels[pick])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        lens.log(loss=loss)
    lens.close()
    return stepsize_lens.load(path)


# --------------------------------------------------------------------------------------------
# Ground truth and the rules
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Truth:
    """What the run itself says, from its recorded arrays and the recurrence."""

    decaying: bool  # recorded lr ends below 0.9 x its peak
    covered: float  # Σ_t η_t·λ'_t (the recurrence's λ'), median over invariant tensors
    relaxed: float  # Σ_t rate_t: relaxation times elapsed (the recurrence's rate)
    norm_ratio: float  # median ‖w‖_last/‖w‖_first (invariant tensors)
    norm_part: float  # largest (‖w‖_late/‖w‖_early)^k over invariant tensors (window means)
    first_step: int
    last_step: int
    has_decay: bool  # every invariant tensor has weight decay


def truth(run: Run) -> Truth:
    from stepsize_lens.analysis import forecast, is_invariant, tensor_classes
    from stepsize_lens.analysis.sets import tensor_group_field
    from stepsize_lens.analysis.smoothing import default_window
    from stepsize_lens.analysis.split import norm_power
    from stepsize_lens.analysis.theory import optimizer_family

    classes = tensor_classes(run)
    invariant = is_invariant(classes)
    steps = run.steps.astype(np.float64)
    lr = tensor_group_field(run, "lr")[:, invariant]
    wd = tensor_group_field(run, "weight_decay", 0.0)[:, invariant]
    peak = np.nanmax(lr, axis=0)
    decaying = bool(np.median(lr[-1] / peak) < 0.9)
    fc = forecast(run, classes)
    if fc.empty:
        covered = relaxed = 0.0
    else:
        gap = np.diff(fc.steps.astype(np.float64), prepend=fc.steps[0] - 1.0)[:, None]
        covered = float(np.median(np.nansum(fc.lr * fc.decay * gap, axis=0)))
        relaxed = float(np.median(np.nansum(fc.rate * gap, axis=0)))
    weight = run.metric("weight_norm")[:, invariant].astype(np.float64)
    window = default_window(weight.shape[0])
    k = norm_power(run, optimizer_family(run))
    early, late = weight[:window].mean(axis=0), weight[-window:].mean(axis=0)
    return Truth(
        decaying=decaying,
        covered=covered,
        relaxed=relaxed,
        norm_ratio=float(np.median(weight[-1] / weight[0])),
        norm_part=float(np.max((late / early) ** k)),
        first_step=int(steps[0]),
        last_step=int(steps[-1]),
        has_decay=bool((wd[-1] > 0).all()),
    )


_NUMBER = re.compile(r"(?<![\w.^/])(\d[\d,]*(?:\.\d+)?(?:e[+-]?\d+)?)(%?)(?=$|x(?:\W|$)|[^\w/(])")
_STEP_TEXT = re.compile(r"\bstep (\d[\d,]*)")


def title_numbers(title: str) -> list[tuple[float, float]]:
    """(value, tolerance) of every number quoted in a title: half a unit of its last digit
    (``%`` numbers as fractions); formula constants such as the 1 of ``1/(ηλ')`` are not
    quotes and are skipped."""
    out = []
    for match in _NUMBER.finditer(title):
        token, percent = match.group(1).replace(",", ""), match.group(2)
        value = float(token)
        mantissa, _, exponent = token.partition("e")
        decimals = len(mantissa.partition(".")[2])
        tolerance = 0.5 * 10.0 ** (-decimals) * 10.0 ** (int(exponent) if exponent else 0)
        if percent:
            value, tolerance = value / 100, tolerance / 100
        out.append((value, tolerance * (1 + 1e-9)))
    return out


def _scalars(evidence: dict[str, Any]) -> list[float]:
    return [
        float(v)
        for v in evidence.values()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    ]


def _step_keys(evidence: dict[str, Any]) -> dict[str, Any]:
    """Evidence entries that name a step of the run (``*_step``, ``window_start``), not a
    number of steps (``*_steps``)."""
    return {
        k: v
        for k, v in evidence.items()
        if (k.endswith("_step") or k in ("step", "window_start"))
        and isinstance(v, (int, float))
        and not isinstance(v, bool)
    }


def _texts(finding: dict[str, Any]) -> list[str]:
    return [finding["title"], finding["suggestion"], *[a["text"] for a in finding["advice"]]]


def advice_problems(run: Run, finding: dict[str, Any], last_step: int) -> list[str]:
    """Every advice line names a real argument of the run's optimizer (its signature), with a
    value inside `advice.PLAUSIBLE_WEIGHT_DECAY`; a switch keeps only arguments the new class
    takes; the effect is material and its step within the run."""
    from stepsize_lens import optim
    from stepsize_lens.analysis.advice import PLAUSIBLE_WEIGHT_DECAY, optimizer_class
    from stepsize_lens.analysis.theory import optimizer_family

    out = []
    cls = optimizer_class(run)
    params = inspect.signature(cls).parameters if cls is not None else {}
    family = optimizer_family(run)
    for advice in finding["advice"]:
        where = f"{finding['kind']}: {advice['text']}"
        if cls is None or advice["optimizer"] != cls.__name__:
            out.append(f"{where}: names {advice['optimizer']}, not the run's optimizer")
        if advice["argument"] is not None:
            if advice["argument"] not in params:
                out.append(f"{where}: {advice['argument']} is no argument of {cls}")
            low, high = PLAUSIBLE_WEIGHT_DECAY.get(family, (math.nan, math.nan))
            if not low <= advice["new"] <= high:
                out.append(f"{where}: {advice['new']} outside [{low}, {high}]")
            if f"{advice['argument']}=" not in advice["text"]:
                out.append(f"{where}: the line does not name the argument")
        else:
            target = getattr(optim, advice["switch_to"].rsplit(".", 1)[-1])
            taken = inspect.signature(target).parameters
            for name in advice["arguments"]:
                if name not in params or name not in taken:
                    out.append(f"{where}: {name} is not an argument of both optimizers")
        effect = advice["effect"]
        step = effect.get("equilibrium_step")
        if step is not None and step > last_step:
            out.append(f"{where}: equilibrium step {step} beyond the run")
        ratio = effect["angle_ratio"]
        if abs(math.log(ratio)) < math.log(1.25) and step is None:
            out.append(f"{where}: effect {ratio:.3g}x is not material")
    return out


def violations(run: Run, data: dict[str, Any], cell: Cell | None = None) -> list[str]:
    """Every rule of docs/findings.md's matrix the report ``data`` breaks for this run."""
    t = truth(run)
    findings = data["findings"]
    kinds = {f["kind"]: f for f in findings}
    out: list[str] = []
    for f in findings:
        # titles quote the evidence's own numbers
        values = _scalars(f["evidence"])
        for value, tolerance in title_numbers(f["title"]):
            if not any(abs(value - v) <= tolerance for v in values):
                out.append(f"{f['kind']}: title number {value:g} is in no evidence field")
        out += advice_problems(run, f, t.last_step)
        if t.decaying:  # nothing speaks of a step beyond the run
            for key, value in _step_keys(f["evidence"]).items():
                if not t.first_step - 1 <= value <= t.last_step:
                    out.append(f"{f['kind']}: evidence {key}={value} outside the run")
            for text in _texts(f):
                for match in _STEP_TEXT.finditer(text):
                    if int(match.group(1).replace(",", "")) > t.last_step:
                        out.append(f"{f['kind']}: '{match.group(0)}' beyond the run")
    # the equilibrium statement fits the schedule
    if t.decaying and "equilibrium_time" in kinds:
        out.append("equilibrium_time (a constant-lr statement) on a decaying schedule")
    if not t.decaying and "equilibrium_tracking" in kinds:
        out.append("equilibrium_tracking on a constant schedule")
    if (
        t.has_decay
        and t.covered > 0
        and not ({"equilibrium_time", "equilibrium_tracking"} & set(kinds))
    ):
        out.append("no equilibrium statement although the theory predicts this run")
    # the weight-decay timescale
    if t.has_decay and 0 < t.covered < 0.8 and "wd_timescale" not in kinds:
        out.append(f"wd_timescale silent with {t.covered:.2g} timescales covered")
    if (
        t.covered > 1.2
        and "wd_timescale" in kinds
        and "shorter" not in kinds["wd_timescale"]["title"]
    ):
        out.append(f"wd_timescale 'exceeds the run' with {t.covered:.2g} timescales covered")
    warned = "wd_timescale" in kinds and kinds["wd_timescale"]["severity"] == "warning"
    if warned and t.norm_ratio < 1.0:
        out.append(f"wd_timescale warning while the norms shrank to {t.norm_ratio:.3g}x")
    # premature decay: the norm-growth part of the recorded norms
    if t.norm_part < 1.3 and "premature_decay" in kinds:
        out.append(f"premature_decay with a norm-growth part of at most {t.norm_part:.3g}")
    if t.norm_part >= 2.0 and t.relaxed < 0.5 and "premature_decay" not in kinds:
        out.append(f"premature_decay silent with a norm-growth part of {t.norm_part:.3g}")
    # equilibrium judged only after a relaxation time
    if t.relaxed < 0.8 and {"equilibrium_reached", "equilibrium_missed"} & set(kinds):
        out.append(f"equilibrium judged after {t.relaxed:.2g} relaxation times")
    # no weight decay, non-finite values, the late gradient-norm rise
    if t.has_decay == ("no_weight_decay" in kinds):
        out.append("no_weight_decay does not match the recorded weight decay")
    if "nonfinite" in kinds:
        out.append("nonfinite on a finite run")
    if not t.decaying and "gradient_norm_rise" in kinds:
        out.append("gradient_norm_rise at a constant lr")
    # the verdict
    verdict = data.get("verdict") or {}
    problems = any(f["severity"] in ("critical", "warning") for f in findings)
    if verdict.get("healthy") is not (not problems):
        out.append("the verdict's health does not follow the findings' severities")
    if not 2 <= len(verdict.get("sentences", [])) <= 3:
        out.append("the verdict is not two or three sentences")
    return [f"{cell.name if cell else run.label}: {v}" for v in out]


def cell_row(cell: Cell, run: Run, data: dict[str, Any]) -> dict[str, Any]:
    """One line of the benchmark's table."""
    t = truth(run)
    return {
        "cell": cell.name,
        "covered": t.covered,
        "norm_ratio": t.norm_ratio,
        "norm_part": t.norm_part,
        "kinds": sorted({f["kind"] for f in data["findings"]}),
        "advice": sum(len(f["advice"]) for f in data["findings"]),
        "healthy": data["verdict"]["healthy"],
    }
