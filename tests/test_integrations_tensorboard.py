"""TensorBoard export, read back with tensorboard's own EventAccumulator; import hygiene."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _runs import crafted_run
from typer.testing import CliRunner

from stepsize_lens.errors import UserInputError
from stepsize_lens.integrations.tensorboard import (
    exported_event_files,
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
    events = EventAccumulator(str(logdir))
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
        "'torch.utils.tensorboard', 'accelerate') if m in sys.modules]; "
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
