"""A tiny GPT on the standard library's source: AdamW, AdamP, AdamC and Muon under warmup + cosine.

The setup (`TransformerConfig`): `models.tiny_gpt` (pre-LN, 2 blocks, width 64, 4 heads,
separate q/k/v/o projections, QK-norm on by default) learns character-level text gathered from
the Python standard library's own modules (`datasets.stdlib_text`: 1M characters, no download),
batch 32 × 64 characters, linear warmup then cosine to zero (`lr_schedules`). Weight decay on
every tensor with ndim >= 2 (embeddings, projections, head), none on the norms' gains. Every
optimizer starts from the same weights and sees the same batches:

=========  ==================================================================================
``adamw``  torch AdamW
``adamp``  AdamP (projects the updates of the tensors the paper's test finds invariant)
``adamc``  AdamC (the decay of those tensors follows the schedule: η_t² λ / η_max)
``muon``   torch Muon on the blocks' 2-D weights (``adjust_lr_fn="match_rms_adamw"``: the same
           lr and weight decay as AdamW) and torch AdamW on embeddings, head and gains
=========  ==================================================================================

**Muon is two optimizers**, stepping together; a lens attaches to each, so a Muon run is two
run files: ``muon_seed<S>.pt`` (Muon's tensors) and ``muon_adamw_seed<S>.pt`` (AdamW's). A
wrapper optimizer would give one file, but a run file names one optimizer class, and the
theory (`stepsize_lens.analysis`) reads a run's family from that class: two honest runs keep
Muon's tensors under Muon's theory and the rest under AdamW's. The scale-invariant tensors
(q and k with QK-norm) are 2-D, so they are in Muon's file.

Each lens records every ``record_every`` steps and carries the functional probe's verdicts
(`invariance.probe` on a batch of text), which decide the scale-invariant set here; the loss is
logged every step and the validation loss every ``eval_every`` steps and at the end.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from stepsize_lens.errors import UserInputError
from stepsize_lens.experiments.specs import select as select_specs


@dataclass(frozen=True)
class TransformerConfig:
    """Everything one run depends on (defaults: the experiment of docs/experiments.md)."""

    steps: int = 1500
    warmup: int = 100
    batch_size: int = 32
    context: int = 64
    dim: int = 64
    depth: int = 2
    heads: int = 4
    qk_norm: bool = True
    lr: float = 1e-2
    weight_decay: float = 0.3
    max_chars: int = 1_000_000
    record_every: int = 10
    eval_every: int = 100
    eval_batches: int = 8
    seed: int = 0

    def checked(self) -> TransformerConfig:
        if self.steps < 1:
            raise UserInputError(f"--steps must be at least 1, not {self.steps}")
        if not 0 <= self.warmup < self.steps:
            return replace(self, warmup=min(max(self.warmup, 0), self.steps // 10))
        return self


def param_groups(named: Sequence[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict]:
    """Two groups: tensors with ndim >= 2 with ``weight_decay``, the rest (gains) without."""
    decay = [p for _, p in named if p.ndim >= 2]
    rest = [p for _, p in named if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if rest:
        groups.append({"params": rest, "weight_decay": 0.0})
    return groups


def muon_tensor(name: str, p: nn.Parameter) -> bool:
    """Whether Muon optimises this tensor: a 2-D weight inside the blocks (not the embeddings,
    the head or any gain), as Muon's authors and torch's documentation recommend."""
    return p.ndim == 2 and name.startswith("blocks.")


Parts = list[tuple[str, torch.optim.Optimizer]]


def _adamw(model: nn.Module, config: TransformerConfig) -> Parts:
    groups = param_groups(list(model.named_parameters()), config.weight_decay)
    return [("", torch.optim.AdamW(groups, lr=config.lr))]


def _adamp(model: nn.Module, config: TransformerConfig) -> Parts:
    from stepsize_lens.optim import AdamP

    groups = param_groups(list(model.named_parameters()), config.weight_decay)
    return [("", AdamP(groups, lr=config.lr))]


def _adamc(model: nn.Module, config: TransformerConfig) -> Parts:
    from stepsize_lens.optim import AdamC

    groups = param_groups(list(model.named_parameters()), config.weight_decay)
    return [("", AdamC(groups, lr=config.lr))]


def _muon(model: nn.Module, config: TransformerConfig) -> Parts:
    named = list(model.named_parameters())
    hidden = [p for name, p in named if muon_tensor(name, p)]
    rest = [(name, p) for name, p in named if not muon_tensor(name, p)]
    muon = torch.optim.Muon(
        hidden, lr=config.lr, weight_decay=config.weight_decay, adjust_lr_fn="match_rms_adamw"
    )
    adamw = torch.optim.AdamW(param_groups(rest, config.weight_decay), lr=config.lr)
    return [("", muon), ("_adamw", adamw)]


@dataclass(frozen=True)
class TransformerSpec:
    """One optimizer of the comparison: ``name`` (file stem), ``label``, ``build(model, config)
    -> [(file suffix, optimizer), ...]`` (Muon: two)."""

    name: str
    label: str
    build: Callable[[nn.Module, TransformerConfig], Parts]


OPTIMIZERS: tuple[TransformerSpec, ...] = (
    TransformerSpec("adamw", "AdamW", _adamw),
    TransformerSpec("adamp", "AdamP", _adamp),
    TransformerSpec("adamc", "AdamC", _adamc),
    TransformerSpec("muon", "Muon", _muon),
)


def select(names: Sequence[str] | None = None) -> list[TransformerSpec]:
    """The specs for ``names`` (default: all of `OPTIMIZERS`, in their order)."""
    return select_specs(OPTIMIZERS, names)


@dataclass(frozen=True)
class TransformerRun:
    """One trained optimizer: name, label, and its run files (the first holds the invariant
    tensors; Muon has a second, its AdamW part)."""

    optimizer: str
    label: str
    paths: tuple[Path, ...]


def build_model(config: TransformerConfig) -> nn.Module:
    from stepsize_lens.experiments.datasets import TEXT_TOKENS
    from stepsize_lens.experiments.models import tiny_gpt

    torch.manual_seed(config.seed)
    return tiny_gpt(
        TEXT_TOKENS,
        context=config.context,
        dim=config.dim,
        depth=config.depth,
        heads=config.heads,
        qk_norm=config.qk_norm,
    )


def probe_batch(tokens: torch.Tensor, config: TransformerConfig, size: int = 8) -> torch.Tensor:
    """A fixed batch of ``size`` text windows for the functional probe."""
    from stepsize_lens.experiments.datasets import text_batches

    inputs, _ = next(iter(text_batches(tokens, size, config.context, 1, seed=12345)))
    return inputs


def _loss(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = model(inputs)
    return nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())


def validation_loss(model: nn.Module, tokens: torch.Tensor, config: TransformerConfig) -> float:
    """Mean loss over ``eval_batches`` fixed batches of the validation text."""
    from stepsize_lens.experiments.datasets import text_batches

    model.eval()
    with torch.no_grad():
        batches = text_batches(tokens, config.batch_size, config.context, config.eval_batches, 7)
        losses = [float(_loss(model, x, y)) for x, y in batches]
    model.train()
    return sum(losses) / len(losses)


def train_transformer_run(
    folder: str | Path,
    spec: TransformerSpec,
    config: TransformerConfig = TransformerConfig(),
    data: Any = None,
    progress: Callable[[], None] | None = None,
) -> TransformerRun:
    """Train the tiny GPT with ``spec``'s optimizer(s), a lens on each; return the run files
    ``folder/<name>[<suffix>]_seed<seed>.pt``. ``data``: a `datasets.TextSplit` (default:
    `datasets.stdlib_text` with the config's ``max_chars`` and seed 0)."""
    import stepsize_lens
    from stepsize_lens.experiments.datasets import stdlib_text, text_batches
    from stepsize_lens.experiments.lr_schedules import lr_scheduler

    config = config.checked()
    data = data if data is not None else stdlib_text(config.max_chars)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = build_model(config)
    parts = spec.build(model, config)
    schedulers = [lr_scheduler(opt, "cosine", config.steps, config.warmup) for _, opt in parts]
    probe_inputs = probe_batch(data.train, config)
    lenses, paths = [], []
    for suffix, optimizer in parts:
        path = folder / f"{spec.name}{suffix}_seed{config.seed}.pt"
        label = spec.label if not suffix else f"{spec.label} ({suffix.strip('_')} part)"
        lens = stepsize_lens.attach(
            model,
            optimizer,
            path=path,
            schedule=config.record_every,
            label=label,
            probe_inputs=probe_inputs,
            overwrite=True,  # the experiment's own output: running it again regenerates it
        )
        lenses.append(lens)
        paths.append(path)
    try:
        batches = text_batches(
            data.train, config.batch_size, config.context, config.steps, config.seed
        )
        for step, (inputs, targets) in enumerate(batches, 1):
            loss = _loss(model, inputs, targets)
            for _, optimizer in parts:
                optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for (_, optimizer), scheduler in zip(parts, schedulers):
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
            for lens in lenses:
                lens.log(loss=loss)
            if step % config.eval_every == 0 or step == config.steps:
                val = validation_loss(model, data.val, config)
                for lens in lenses:
                    lens.log(val_loss=val)
            if progress is not None:
                progress()
    finally:
        for lens in lenses:
            lens.close()
    return TransformerRun(spec.name, spec.label, tuple(paths))


def train_all(
    folder: str | Path,
    config: TransformerConfig = TransformerConfig(),
    optimizers: Sequence[str] | None = None,
    threads: int | None = 1,
    on_run: Callable[[str], None] | None = None,
    on_step: Callable[[], None] | None = None,
) -> list[TransformerRun]:
    """Train every optimizer (`OPTIMIZERS`, or the ``optimizers`` named) one after the other
    into ``folder``, all from the same weights on the same batches of the same text."""
    from stepsize_lens.experiments.datasets import stdlib_text
    from stepsize_lens.experiments.digits import torch_threads

    config = config.checked()
    specs = select(optimizers)
    data = stdlib_text(config.max_chars)
    done = []
    with torch_threads(threads):
        for spec in specs:
            if on_run is not None:
                on_run(spec.label)
            done.append(train_transformer_run(folder, spec, config, data, on_step))
    return done


# --------------------------------------------------------------------------------------------
# Which tensors are scale-invariant: the probe with and without QK-norm
# --------------------------------------------------------------------------------------------


def probe_census(config: TransformerConfig = TransformerConfig()) -> Any:
    """The functional probe's verdict per 2-D tensor of the tiny GPT without and with QK-norm.

    A DataFrame with columns tensor (names of tensors that agree in every block collapsed to
    ``blocks.*.``), shape (as text, ``64×64``), ``without`` and ``with`` (channel, layer or
    none)."""
    import pandas as pd

    from stepsize_lens.experiments.datasets import stdlib_text
    from stepsize_lens.invariance import probe

    data = stdlib_text(min(config.max_chars, 100_000))
    inputs = probe_batch(data.train, config)
    verdicts = {}
    shapes = {}
    for qk_norm in (False, True):
        model = build_model(replace(config, qk_norm=qk_norm))
        result = probe(model, inputs)
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                verdicts.setdefault(name, {})["with" if qk_norm else "without"] = result.verdict(
                    name
                )
                shapes[name] = "×".join(str(n) for n in p.shape)
    rows: dict[str, dict[str, Any]] = {}
    for name, pair in verdicts.items():
        key = _collapsed(name)
        row = rows.setdefault(key, {"tensor": key, "shape": shapes[name], **pair, "names": []})
        row["names"].append(name)
        if (row["without"], row["with"]) != (pair["without"], pair["with"]):
            rows.pop(key)
            for member in row["names"]:
                rows[member] = {
                    "tensor": member,
                    "shape": shapes[member],
                    **verdicts[member],
                    "names": [member],
                }
    table = pd.DataFrame(list(rows.values()))
    return table.drop(columns="names")[["tensor", "shape", "without", "with"]]


def _collapsed(name: str) -> str:
    parts = name.split(".")
    if len(parts) > 2 and parts[0] == "blocks" and parts[1].isdigit():
        parts[1] = "*"
    return ".".join(parts)


PROBE_HEADER = ("tensor", "shape", "without QK-norm", "with QK-norm")


def probe_rows(table: Any) -> list[list[str]]:
    """Formatted cells of `probe_census` (`PROBE_HEADER`)."""
    return [
        [f"`{row['tensor']}`", str(row["shape"]), row["without"], row["with"]]
        for _, row in table.iterrows()
    ]


# --------------------------------------------------------------------------------------------
# Numbers per run: the late gradient-norm rise and what it is made of
# --------------------------------------------------------------------------------------------

MID = (0.4, 0.6)
"""The middle of the run: records with step in [0.4, 0.6] × the last step."""
END = (0.9, 1.0)
"""The end of the run: records with step in [0.9, 1.0] × the last step."""


def probe_classes(run: Any) -> Any:
    """The probe's verdicts stored in the run (a Series of class words by tensor name)."""
    import pandas as pd

    from stepsize_lens._schema import PROBE_VERDICT_COLUMN

    verdicts = run.param_column(PROBE_VERDICT_COLUMN)
    if verdicts is None:
        raise ValueError(f"run {run.label!r} has no probe verdicts")
    return pd.Series(list(verdicts), index=run.tensor_names, name="class")


def invariant_series(run: Any) -> dict[str, Any]:
    """Per record, means over the run's scale-invariant tensors (by the probe): ``steps``,
    ``weight_norm`` ‖w‖, ``grad_norm`` ‖g‖, ``scale_free`` ‖g‖·‖w‖, ``angular_update``, and
    ``lr`` (the first invariant tensor's group)."""
    import numpy as np

    from stepsize_lens.analysis.sets import is_invariant, tensor_group_field

    mask = is_invariant(probe_classes(run))
    if not mask.any():
        raise ValueError(f"run {run.label!r} has no scale-invariant tensor")
    keep = ~run.skipped.astype(bool)
    w = run.metric("weight_norm")[keep][:, mask].astype(np.float64)
    g = run.metric("grad_norm")[keep][:, mask].astype(np.float64)
    return {
        "steps": run.steps[keep],
        "weight_norm": w.mean(axis=1),
        "grad_norm": g.mean(axis=1),
        "scale_free": (w * g).mean(axis=1),
        "angular_update": run.metric("angular_update")[keep][:, mask].astype(np.float64).mean(1),
        "lr": tensor_group_field(run, "lr")[keep][:, mask][:, 0],
    }


METRICS = (
    "val_loss",
    "grad_rise",
    "norm_change",
    "scale_free_change",
    "angle_agreement",
    "norm_agreement",
)


def predicted_series(run: Any) -> dict[str, tuple[Any, Any, Any]]:
    """`predicted.predicted_series` over the probe's scale-invariant tensors."""
    from stepsize_lens.experiments.predicted import predicted_series as series

    return series(run, probe_classes(run))


def run_metrics(item: TransformerRun) -> dict[str, float]:
    """One optimizer's numbers over the scale-invariant tensors: ``val_loss`` (last logged),
    ``grad_rise`` = ‖g‖ end ÷ mid, ``norm_change`` = ‖w‖ end ÷ mid, ``scale_free_change`` =
    ‖g‖·‖w‖ end ÷ mid (`MID`, `END`). ‖g‖ = (‖g‖·‖w‖)/‖w‖, so grad_rise ≈ scale_free_change ÷
    norm_change: the part of the rise that comes from weight decay shrinking ‖w‖ is
    1/norm_change. ``angle_agreement`` and ``norm_agreement``: the theory's angular update and
    ‖w‖ predicted ÷ measured over the second half (`agreement`; NaN without a prediction)."""
    from stepsize_lens.analysis import last_logged
    from stepsize_lens.experiments.predicted import agreement, window_mean
    from stepsize_lens.run import load

    run = load(item.paths[0])
    series = invariant_series(run)
    steps = series["steps"]
    predicted = predicted_series(run)

    def change(name: str) -> float:
        return window_mean(steps, series[name], END) / window_mean(steps, series[name], MID)

    def agrees(metric: str) -> float:
        return agreement(predicted[metric]) if metric in predicted else float("nan")

    return {
        "val_loss": last_logged(run, "val_loss"),
        "grad_rise": change("grad_norm"),
        "norm_change": change("weight_norm"),
        "scale_free_change": change("scale_free"),
        "angle_agreement": agrees("angular_update"),
        "norm_agreement": agrees("weight_norm"),
    }


def runs_table(runs: Sequence[TransformerRun]) -> Any:
    """One row per optimizer: optimizer, label, steps, then `METRICS`."""
    import pandas as pd

    from stepsize_lens.run import load

    rows = []
    for item in runs:
        run = load(item.paths[0])
        rows.append(
            {
                "optimizer": item.optimizer,
                "label": item.label,
                "steps": int(run.steps[-1]) if run.num_records else 0,
                **run_metrics(item),
            }
        )
    return pd.DataFrame(rows)


TABLE_COLUMNS = (
    ("val_loss", "val loss", "{:.3f}"),
    ("grad_rise", "‖g‖ end ÷ mid", "{:.2f}×"),
    ("scale_free_change", "‖g‖·‖w‖ end ÷ mid", "{:.2f}×"),
    ("norm_change", "‖w‖ end ÷ mid", "{:.2f}×"),
    ("angle_agreement", "Δθ predicted ÷ measured", "{:.2f}"),
    ("norm_agreement", "‖w‖ predicted ÷ measured", "{:.2f}"),
)


def table_header() -> list[str]:
    return ["optimizer", *(title for _, title, _ in TABLE_COLUMNS)]


def table_rows(table: Any) -> list[list[str]]:
    """Formatted cells of `runs_table` (`table_header`)."""
    rows = []
    for _, row in table.iterrows():
        cells = [str(row["label"])]
        for column, _, fmt in TABLE_COLUMNS:
            value = row[column]
            cells.append("–" if value != value else fmt.format(value))
        rows.append(cells)
    return rows


CAPTION = (
    "Over the scale-invariant tensors (the probe's: q and k with QK-norm): end ÷ mid = mean over "
    "the last tenth of the run ÷ mean over its middle fifth. ‖g‖ = (‖g‖·‖w‖) / ‖w‖: the rise "
    "the weight decay causes is the ‖w‖ column's inverse. Predicted ÷ measured: "
    "stepsize_lens.analysis.predict (the per-step recurrence along the recorded schedule), "
    "means over the second half of the run."
)
