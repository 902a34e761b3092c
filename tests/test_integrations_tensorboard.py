"""TensorBoard live writer and export, read back with tensorboard's own EventAccumulator;
import hygiene."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _lens_models import Tee, batches, small_model
from _runs import crafted_run
from torch import nn
from typer.testing import CliRunner

import stepsize_lens
from stepsize_lens.errors import UserInputError
from stepsize_lens.integrations.tensorboard import (
    TensorBoardWriter,
    exported_event_files,
    live_writer,
    other_event_files,
    to_tensorboard,
)

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    EventAccumulator,
)

ROOT = Path(__file__).resolve().parents[1]
RECORDS = 6
SKIPPED = 2  # record index 2 (step 3) was skipped by a GradScaler


def _run():
    # DEFAULT_TENSORS: conv1, conv2 (channel), proj (layer), fc (none) in group 0;
    # bn.weight, fc.bias (1-D, "none") in group 1
    weight = 1.0 + np.arange(RECORDS)[:, None] * 0.1 + np.arange(6)[None, :]
    return crafted_run(
        records=RECORDS,
        weight_norm=weight,
        angular_update=0.02,
        skipped=[i == SKIPPED for i in range(RECORDS)],
        groups={"lr": [0.1, 0.01]},
        scalars={"loss": ([1, 2, 3], [2.0, 1.5, 1.25])},
    )


def _read(logdir: Path) -> EventAccumulator:
    events = EventAccumulator(str(logdir), size_guidance={"histograms": 0})  # 0: keep all
    events.Reload()
    return events


def _series(events: EventAccumulator, tag: str) -> tuple[list[int], list[float]]:
    points = events.Scalars(tag)
    return [p.step for p in points], [p.value for p in points]


def test_scalars_per_group_and_class(tmp_path: Path) -> None:
    run = _run()
    logdir = to_tensorboard(run, tmp_path / "tb")
    events = _read(logdir)
    tags = set(events.Tags()["scalars"])
    weight = run.metric("weight_norm")
    kept = [i for i in range(RECORDS) if i != SKIPPED]
    steps = [int(run.steps[i]) for i in kept]

    expected = {
        "weight_norm/group_0": weight[kept][:, :4].mean(axis=1),
        "weight_norm/group_1": weight[kept][:, 4:].mean(axis=1),
        "weight_norm/class_channel": weight[kept][:, :2].mean(axis=1),
        "weight_norm/class_layer": weight[kept][:, 2],
        "weight_norm/class_none": weight[kept][:, 3:].mean(axis=1),
    }
    for tag, values in expected.items():
        got_steps, got = _series(events, tag)
        assert got_steps == steps, tag  # the skipped record is not exported
        np.testing.assert_allclose(got, values, rtol=1e-6, err_msg=tag)
    # every metric has a section with a curve per group and per class
    for name in run.metric_names:
        assert {f"{name}/group_0", f"{name}/class_channel"} <= tags, name
    assert _series(events, "lr/group_1") == (steps, pytest.approx([0.01] * len(steps)))
    assert _series(events, "scalars/loss") == ([1, 2, 3], [2.0, 1.5, 1.25])
    # channel metrics are undefined for group 1 (1-D tensors only): nothing written
    assert "channel_weight_norm/group_1" not in tags
    # wall times are the run's
    first = events.Scalars("weight_norm/group_0")[0]
    assert first.wall_time == pytest.approx(float(run.times[0]))


def test_weighted_reducer_and_metric_subset(tmp_path: Path) -> None:
    run = _run()
    to_tensorboard(run, tmp_path / "tb", reducer="weighted", metrics=["weight_norm"])
    events = _read(tmp_path / "tb")
    tags = set(events.Tags()["scalars"])
    assert not any(tag.startswith("angular_update/") for tag in tags)
    numel = np.array([8 * 27, 16 * 72, 256, 160], dtype=np.float64)  # group 0 tensors
    weight = run.metric("weight_norm")[0, :4].astype(np.float64)
    _, got = _series(events, "weight_norm/group_0")
    assert got[0] == pytest.approx(float((weight * numel).sum() / numel.sum()), rel=1e-6)


def _foreign_log(logdir: Path) -> None:
    """An event file of someone else's (a training log) in the export's folder."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(logdir))
    writer.add_scalar("train/loss", 0.5, global_step=1)
    writer.close()


def test_exporting_again_replaces_the_export_and_nothing_else(tmp_path: Path) -> None:
    run = _run()
    logdir = tmp_path / "tb"
    logdir.mkdir()
    (logdir / "notes.txt").write_text("mine")
    _foreign_log(logdir)
    foreign = sorted(logdir.glob("events.out.tfevents.*"))
    to_tensorboard(run, logdir)
    to_tensorboard(run, logdir)  # e.g. after the run grew, or by habit
    to_tensorboard(run, logdir, metrics=["weight_norm"])
    events = _read(logdir)
    steps = [int(run.steps[i]) for i in range(RECORDS) if i != SKIPPED]
    got_steps, got = _series(events, "weight_norm/class_channel")
    assert got_steps == steps  # each point once, not three times
    assert _series(events, "scalars/loss")[0] == [1, 2, 3]
    assert not any(tag.startswith("angular_update/") for tag in events.Tags()["scalars"])
    assert _series(events, "train/loss") == ([1], [0.5])  # the foreign log is untouched
    assert (logdir / "notes.txt").read_text() == "mine"
    assert len(exported_event_files(logdir)) == 1
    assert other_event_files(logdir) == foreign and all(path.exists() for path in foreign)


def test_a_failed_export_keeps_the_earlier_one(tmp_path: Path, monkeypatch) -> None:
    import stepsize_lens.integrations.tensorboard as tensorboard

    run = _run()
    to_tensorboard(run, tmp_path / "tb")
    before = exported_event_files(tmp_path / "tb")

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(tensorboard, "_add", broken)
    with pytest.raises(OSError, match="disk full"):
        to_tensorboard(run, tmp_path / "tb")
    assert exported_event_files(tmp_path / "tb") == before
    assert len(_series(_read(tmp_path / "tb"), "weight_norm/class_channel")[0]) == RECORDS - 1


def test_bad_arguments(tmp_path: Path) -> None:
    run = _run()
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(UserInputError, match="not a folder"):
        to_tensorboard(run, afile)
    with pytest.raises(UserInputError, match="unknown metric"):
        to_tensorboard(run, tmp_path / "tb", metrics=["nope"])
    with pytest.raises(UserInputError, match="reducer"):
        to_tensorboard(run, tmp_path / "tb", reducer="max")


def test_cli_export(tmp_path: Path) -> None:
    from stepsize_lens.cli import app

    path = tmp_path / "run.pt"
    _run().save(path)
    result = CliRunner().invoke(app, ["export", str(path), "--tensorboard", str(tmp_path / "tb")])
    assert result.exit_code == 0, result.output
    assert "tensorboard --logdir" in result.stdout
    assert "weight_norm/class_channel" in _read(tmp_path / "tb").Tags()["scalars"]
    assert "replacing" not in result.stdout and "note:" not in result.stdout
    _foreign_log(tmp_path / "tb")
    again = CliRunner().invoke(app, ["export", str(path), "--tensorboard", str(tmp_path / "tb")])
    assert again.exit_code == 0, again.output
    assert "replacing the earlier export there" in again.stdout
    assert "also holds 1 event file(s) that this export did not write" in again.stdout
    steps, _ = _series(_read(tmp_path / "tb"), "weight_norm/class_channel")
    assert len(steps) == RECORDS - 1
    missing = CliRunner().invoke(
        app, ["export", str(tmp_path / "nope.pt"), "--tensorboard", str(tmp_path / "tb2")]
    )
    assert missing.exit_code == 2
    assert "no such file" in missing.output


def test_importing_never_imports_the_frameworks() -> None:
    code = (
        "import sys, stepsize_lens, stepsize_lens.integrations; "
        "stepsize_lens.attach; stepsize_lens.load; "
        "heavy = [m for m in ('lightning', 'pytorch_lightning', 'transformers', 'tensorboard', "
        "'torch.utils.tensorboard', 'accelerate', 'wandb') if m in sys.modules]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- live writer ------------------------------------------------------------------------------
LIVE_STEPS = 7
PREFIX = "stepsize_lens/"


def _train_live(path, writer: TensorBoardWriter, close: bool = True):
    """LIVE_STEPS seeded steps recorded at every step; a GradScaler skips step 3."""
    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**4)
    tee = Tee(writer)
    lens = stepsize_lens.attach(
        model, optimizer, path=path, schedule=1, scaler=scaler, on_record=tee
    )
    for i, (x, y) in enumerate(batches(LIVE_STEPS)):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        if i == 2:
            loss = loss * float("inf")
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    if close:
        lens.close()
        assert lens.callback_errors == 0
    return tee.records, lens


def test_live_writer_key_scalars_and_histograms(tmp_path: Path) -> None:
    writer = live_writer(tmp_path / "tb", per_tensor="histogram", every=2, flush_secs=3600)
    flushes = []
    flush = writer.writer.flush
    writer.writer.flush = lambda: (flushes.append(1), flush())[1]
    records, lens = _train_live(tmp_path / "run.pt", writer)
    assert flushes == []  # not due within the hour: close wrote everything
    assert writer.closed  # Lens.close closed it (on_close)
    kept = [r for r in records if not r.skipped]
    assert [r.step for r in kept] == [1, 2, 4, 5, 6, 7]
    events = _read(tmp_path / "tb")
    tags = set(events.Tags()["scalars"])
    names = set().union(*(r.key_scalars for r in kept))
    assert {"angular_update/invariant", "weight_norm/class_channel", "invariant_fraction"} <= names
    assert tags == {PREFIX + name for name in names}
    for name in names:
        steps, values = _series(events, PREFIX + name)
        having = [r for r in kept if name in r.key_scalars]
        assert steps == [r.step for r in having], name  # nothing at the skipped step 3
        expected = [r.key_scalars[name] for r in having]
        np.testing.assert_allclose(values, expected, rtol=1e-6, err_msg=name)
    first = events.Scalars(PREFIX + "angular_update/invariant")[0]
    assert first.wall_time == pytest.approx(kept[0].time)
    # histograms over the tensors at the 1st, 3rd and 5th written record: steps 1, 4, 6
    assert set(events.Tags()["histograms"]) == {
        PREFIX + f"tensors/{m}" for m in ("angular_update", "weight_norm", "effective_lr")
    }
    histograms = events.Histograms(PREFIX + "tensors/weight_norm")
    assert [h.step for h in histograms] == [1, 4, 6]
    for histogram in histograms:
        record = next(r for r in kept if r.step == histogram.step)
        norms = record.metrics["weight_norm"].double()
        assert histogram.histogram_value.num == len(record.tensor_names)
        assert histogram.histogram_value.min == pytest.approx(float(norms.min()), rel=1e-6)
        assert histogram.histogram_value.sum == pytest.approx(float(norms.sum()), rel=1e-5)
    # a later export into the same folder replaces only its own files, not the live log
    to_tensorboard(stepsize_lens.load(lens.path), tmp_path / "tb")
    assert len(other_event_files(tmp_path / "tb")) == 1
    assert len(_series(_read(tmp_path / "tb"), PREFIX + "invariant_fraction")[0]) == len(kept)


def test_live_writer_per_tensor_scalars_into_the_loops_own_writer(tmp_path: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    mine = SummaryWriter(log_dir=str(tmp_path / "tb"), flush_secs=3600, max_queue=10_000)
    flushes = []
    flush = mine.flush
    mine.flush = lambda: (flushes.append(1), flush())[1]
    writer = TensorBoardWriter(
        mine, prefix="lens/", per_tensor="scalars", every=3, metrics=["cos_grad"], flush_secs=0
    )
    records, lens = _train_live(None, writer, close=False)
    kept = [r for r in records if not r.skipped]
    # flush_secs=0: flushed after every written record, so all are in the file mid-run
    assert len(flushes) == len(kept)
    events = _read(tmp_path / "tb")
    assert _series(events, "lens/invariant_fraction")[0] == [r.step for r in kept]
    lens.close()
    assert len(flushes) == len(kept) + 1
    mine.add_scalar("train/loss", 0.5, global_step=8)  # still the loop's: flushed, not closed
    mine.close()
    events = _read(tmp_path / "tb")
    assert _series(events, "train/loss") == ([8], [0.5])
    per_tensor = {tag for tag in events.Tags()["scalars"] if tag.startswith("lens/tensors/")}
    names = kept[0].tensor_names
    assert per_tensor == {f"lens/tensors/cos_grad/{name}" for name in names}
    for name in names:
        steps, values = _series(events, f"lens/tensors/cos_grad/{name}")
        expected = [kept[0], kept[3]]  # the 1st and 4th written record: steps 1 and 5
        finite = [r for r in expected if np.isfinite(r.per_tensor("cos_grad")[name])]
        assert steps == [r.step for r in finite], name
        want = [r.per_tensor("cos_grad")[name] for r in finite]
        np.testing.assert_allclose(values, want, rtol=1e-6)


def test_live_writer_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="per_tensor"):
        live_writer(tmp_path / "tb", per_tensor="table")
    with pytest.raises(ValueError, match="every"):
        live_writer(tmp_path / "tb", every=0)
    with pytest.raises(ValueError, match="unknown metric 'nope'"):
        live_writer(tmp_path / "tb", metrics=["nope"])
    with pytest.raises(TypeError, match="log folder or a SummaryWriter"):
        live_writer(3)
