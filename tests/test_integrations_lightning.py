"""The Lightning callback: a real ``Trainer.fit`` on CPU records the same run as a plain loop."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import stepsize_lens
from stepsize_lens._schema import METRICS
from stepsize_lens.recording.schedules import default_schedule, every

pl = pytest.importorskip("lightning.pytorch")

from stepsize_lens.integrations.lightning import (  # noqa: E402
    StepSizeLensCallback,
    optimizer_path,
)

STEPS = 6
BATCH = 8


def _network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(STEPS * BATCH, 5, generator=generator)
    y = torch.randint(0, 3, (STEPS * BATCH,), generator=generator)
    return [(x[i : i + BATCH], y[i : i + BATCH]) for i in range(0, STEPS * BATCH, BATCH)]


def _optimizer(params) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-3)


class _Module(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = _network()

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return _optimizer(self.parameters())

    def train_dataloader(self):
        x = torch.cat([x for x, _ in _batches()])
        y = torch.cat([y for _, y in _batches()])
        dataset = torch.utils.data.TensorDataset(x, y)
        return torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=False)


def _fit(tmp_path: Path, callback: StepSizeLensCallback) -> Path:
    logger = pl.loggers.CSVLogger(tmp_path, name="logs", version=0)
    trainer = pl.Trainer(
        max_steps=STEPS,
        accelerator="cpu",
        devices=1,
        callbacks=[callback],
        logger=logger,
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(_Module())
    return Path(logger.log_dir) / "metrics.csv"


def _plain_loop(path: Path) -> stepsize_lens.Run:
    """The same training without Lightning: zero_grad, forward, backward, step."""
    net = _network()
    optimizer = _optimizer(net.parameters())
    lens = stepsize_lens.attach(net, optimizer, path=path, schedule=every(1))
    for x, y in _batches():
        optimizer.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()
    lens.close()
    return stepsize_lens.load(path)


def test_fit_records_the_same_run_as_a_plain_loop(tmp_path: Path) -> None:
    callback = StepSizeLensCallback(tmp_path / "run.pt", schedule=every(1), label="lightning")
    metrics_csv = _fit(tmp_path, callback)

    run = stepsize_lens.load(tmp_path / "run.pt")
    assert run.meta["closed"] and run.label == "lightning"
    assert list(run.steps) == list(range(1, STEPS + 1))
    reference = _plain_loop(tmp_path / "plain.pt")
    # names come from the LightningModule ("net.0.weight"...), tensors in the same order
    assert run.tensor_names == ["net." + name for name in reference.tensor_names]
    # the gradients are those of the current step (captured after Lightning's closure ran)
    for name in METRICS:
        np.testing.assert_allclose(
            run.metric(name), reference.metric(name), rtol=1e-5, atol=1e-7, err_msg=name
        )
    assert (run.view("test_view") == reference.view("test_view")).all()
    # the training loss of each recorded step is in the run
    losses = run.scalars[run.scalars["name"] == "loss"]
    assert list(losses["step"]) == list(range(1, STEPS + 1))
    assert np.isfinite(losses["value"]).all()

    # key scalars reached the trainer's logger, at the recorded steps
    with open(metrics_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    column = "stepsize_lens/invariant_fraction"
    logged = {int(row["step"]): float(row[column]) for row in rows if row.get(column)}
    assert sorted(logged) == list(range(1, STEPS + 1))
    assert all(0.0 <= value <= 1.0 for value in logged.values())
    angles = [float(row["stepsize_lens/angular_update/group_0"]) for row in rows if row.get(column)]
    assert any(math.isfinite(a) and a > 0 for a in angles)


def test_no_logging_and_every_other_step(tmp_path: Path) -> None:
    callback = StepSizeLensCallback(tmp_path / "run.pt", schedule=every(2), log_scalars=False)
    metrics_csv = _fit(tmp_path, callback)
    run = stepsize_lens.load(tmp_path / "run.pt")
    assert list(run.steps) == [2, 4, 6]
    assert not callback.lenses[0]._handles  # closed: no hook left on the optimizer
    header = metrics_csv.read_text().splitlines()[0] if metrics_csv.exists() else ""
    assert "stepsize_lens/" not in header


def test_optimizer_path() -> None:
    assert optimizer_path("out/run.pt", 0) == "out/run.pt"
    assert optimizer_path("out/run.pt", 2) == str(Path("out/run.opt2.pt"))
    assert optimizer_path(None, 1) is None


class _LongModule(_Module):
    """Ten batches an epoch of a fixed stream, for a fit of hundreds of steps."""

    def train_dataloader(self):
        generator = torch.Generator().manual_seed(2)
        x = torch.randn(10 * BATCH, 5, generator=generator)
        y = torch.randint(0, 3, (10 * BATCH,), generator=generator)
        dataset = torch.utils.data.TensorDataset(x, y)
        return torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=False)


def _long_fit(tmp_path: Path, max_steps: int, ckpt_path: Path | None, **options) -> pl.Trainer:
    trainer = pl.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        devices=1,
        callbacks=[StepSizeLensCallback(tmp_path / "run.pt", label="long", **options)],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(_LongModule(), ckpt_path=ckpt_path)
    return trainer


@pytest.mark.usefixtures("one_thread")
def test_a_fit_resumed_from_a_checkpoint_continues_the_run(tmp_path: Path) -> None:
    """Stopped at step 300 and resumed from its checkpoint: one run of steps 1..600, the
    default schedule keeping its place (every 10th step after 100: no dense stretch at 301)."""
    first = _long_fit(tmp_path, 300, None)
    assert first.global_step == 300
    first.save_checkpoint(tmp_path / "step300.ckpt")
    assert list(stepsize_lens.load(tmp_path / "run.pt").steps)[-1] == 300

    second = _long_fit(tmp_path, 600, tmp_path / "step300.ckpt")  # a new process
    assert second.global_step == 600
    run = stepsize_lens.load(tmp_path / "run.pt")
    assert list(run.steps) == [step for step in range(1, 601) if default_schedule()(step)]
    assert [int(step) for step in run.steps if step > 300] == list(range(310, 601, 10))
    assert [event["step"] for event in run.events if event["kind"] == "resumed"] == [300]
    assert run.meta["closed"] and run.label == "long"
    assert np.isfinite(run.metric("weight_norm")).all()

    # resume=False: a new run in the file only with overwrite=True (never replaced silently),
    # still counting from the trainer's global step
    before = (tmp_path / "run.pt").read_bytes()
    with pytest.raises(ValueError, match="run.pt already exists: pass resume=True"):
        _long_fit(tmp_path, 620, tmp_path / "step300.ckpt", resume=False, schedule=every(5))
    assert (tmp_path / "run.pt").read_bytes() == before
    _long_fit(
        tmp_path, 620, tmp_path / "step300.ckpt", resume=False, overwrite=True, schedule=every(5)
    )
    fresh = stepsize_lens.load(tmp_path / "run.pt")
    assert list(fresh.steps) == list(range(305, 621, 5))
    assert not [event for event in fresh.events if event["kind"] == "resumed"]
