"""W&B writer: a real offline wandb run, read back from the run's own .wandb log."""

from __future__ import annotations

import importlib
import json
import struct
import sys
import time
from pathlib import Path

import pytest
import torch
from _lens_models import Tee, batches, small_model
from _wandb_env import wandb_offline
from torch import nn

import stepsize_lens

wandb = pytest.importorskip("wandb")
from google.protobuf.message import DecodeError  # noqa: E402
from wandb.proto import wandb_internal_pb2  # noqa: E402

from stepsize_lens.integrations.wandb import ARTIFACT_TYPE, WandbWriter  # noqa: E402

STEPS = 7
INF_AT = 2  # the third step's loss is inf: the GradScaler skips step 3
PREFIX = "stepsize_lens/"


# -- reading an offline run back ----------------------------------------------------------------
def _records(path: Path) -> list[wandb_internal_pb2.Record]:
    """The protobuf records of a .wandb log: a 7-byte header, then 32 KiB blocks of chunks
    (CRC32C, length, type 1 full / 2 first / 3 middle / 4 last); a block tail under 7 bytes
    is padding."""
    data, pos, block, payloads, buf = path.read_bytes(), 7, 32768, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        if pos + 7 + length > len(data):
            break  # a chunk still being written
        payload, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 1:
            payloads.append(payload)
        elif kind == 2:
            buf = payload
        elif kind == 3:
            buf += payload
        elif kind == 4:
            payloads.append(buf + payload)
            buf = b""
    records = []
    for payload in payloads:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        records.append(record)
    return records


def _offline_run(root: Path) -> tuple[Path, list[wandb_internal_pb2.Record]]:
    """The offline run's folder and records, once its log ends with the exit record
    (``run.finish()`` can return while wandb's service still writes the log, so a read may
    end in a partly written chunk or record)."""
    (folder,) = sorted((root / "wandb").glob("offline-run-*"))
    (log,) = sorted(folder.glob("run-*.wandb"))
    deadline = time.monotonic() + 60
    while True:
        try:
            records = _records(log)
        except DecodeError:  # wandb's service is still writing a record: read again
            records = []
        if records and records[-1].WhichOneof("record_type") == "exit":
            return folder, records
        if time.monotonic() > deadline:
            raise AssertionError(f"{log}: no exit record after 60 s")
        time.sleep(0.05)


def _of_type(records: list, kind: str) -> list:
    return [getattr(r, kind) for r in records if r.WhichOneof("record_type") == kind]


def _rows(records: list) -> list[dict[tuple[str, ...], object]]:
    """History rows, keys as tuples (nested keys such as a table's ``path``)."""
    return [
        {
            tuple(item.nested_key) or (item.key,): json.loads(item.value_json)
            for item in history.item
        }
        for history in _of_type(records, "history")
    ]


# -- a short training run ---------------------------------------------------------------------
def _train(tmp_path: Path, run, writer: WandbWriter) -> tuple[list, object]:
    """STEPS seeded steps recorded at every step, step 3 skipped by a GradScaler; the loop
    logs its own loss to wandb at every step, as loops do."""
    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**4)
    tee = Tee(writer)
    lens = stepsize_lens.attach(
        model, optimizer, path=tmp_path / "run.pt", schedule=1, scaler=scaler, on_record=tee
    )
    for i, (x, y) in enumerate(batches(STEPS)):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        run.log({"loss": loss.item()})
        if i == INF_AT:
            loss = loss * float("inf")
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    lens.close()
    assert lens.callback_errors == 0
    return tee.records, lens


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An offline, silent wandb whose every file (staging and cache too) is under tmp_path."""
    wandb_offline(monkeypatch, tmp_path)
    return tmp_path


# -- tests --------------------------------------------------------------------------------------
def test_key_scalars_histograms_and_artifact_in_the_offline_run(offline: Path) -> None:
    run = wandb.init(project="stepsize-lens-test", dir=offline)
    try:
        writer = WandbWriter(per_tensor="histogram", every=2, artifact=True, report=False)
        records, lens = _train(offline, run, writer)
    finally:
        run.finish()
    folder, log = _offline_run(offline)

    kept = [r for r in records if not r.skipped]
    assert [r.step for r in records] == list(range(1, STEPS + 1))
    assert [r.step for r in kept] == [1, 2, 4, 5, 6, 7]  # step 3 was skipped

    # the x-axis: <prefix>step, and everything under <prefix> plotted against it
    metrics = _of_type(log, "metric")
    assert any(m.name == PREFIX + "step" for m in metrics)
    assert any(m.glob_name == PREFIX + "*" and m.step_metric == PREFIX + "step" for m in metrics)

    rows = _rows(log)
    ours = {row[(PREFIX + "step",)]: row for row in rows if (PREFIX + "step",) in row}
    assert sorted(ours) == [r.step for r in kept]  # one row per record, none for the skip
    for record in kept:
        row = ours[record.step]
        scalars = record.key_scalars
        assert {"angular_update/invariant", "effective_lr/group_0", "invariant_fraction"} <= set(
            scalars
        )
        for name, value in scalars.items():
            assert row[(PREFIX + name,)] == pytest.approx(value, rel=1e-12), (record.step, name)
        logged = {key[0][len(PREFIX) :] for key in row if key[0].startswith(PREFIX)}
        assert logged - {"step"} - {f"per_tensor/{m}" for m in writer.metrics} == set(scalars)
    # the loop's own rows are all there: the writer never moved wandb's step under it
    assert sum(("loss",) in row for row in rows) == STEPS
    assert [row[("_step",)] for row in rows] == list(range(len(rows)))

    # histograms at the 1st, 3rd and 5th logged record: steps 1, 4 and 6
    tag = PREFIX + "per_tensor/angular_update"
    with_histogram = sorted(step for step, row in ours.items() if (tag, "_type") in row)
    assert with_histogram == [1, 4, 6]
    for step in with_histogram:
        row = ours[step]
        assert row[(tag, "_type")] == "histogram"
        record = next(r for r in kept if r.step == step)
        finite = torch.isfinite(record.metrics["angular_update"])
        assert sum(row[(tag, "values")]) == int(finite.sum())
        low, high = row[(tag, "bins")][0], row[(tag, "bins")][-1]
        values = record.metrics["angular_update"][finite]
        assert low == pytest.approx(float(values.min()), rel=1e-6)
        assert high == pytest.approx(float(values.max()), rel=1e-6)

    # at close: one artifact holding the run file (report=False: no HTML report)
    contents = _artifact_files(log, f"stepsize_lens-{run.id}")
    assert set(contents) == {"run.pt"}
    assert contents["run.pt"].read_bytes() == Path(lens.path).read_bytes()
    assert folder.is_dir()


def _artifact_files(log: list, name: str) -> dict[str, Path]:
    """The one run artifact of the log, checked by name: its files, staged under tmp."""
    (artifact,) = [a for a in _of_type(log, "artifact") if a.type == ARTIFACT_TYPE]
    assert artifact.name == name
    contents = {entry.path: Path(entry.local_path) for entry in artifact.manifest.contents}
    assert all(path.is_file() for path in contents.values())
    return contents


@pytest.mark.slow  # the HTML report draws its figures (a few seconds)
def test_artifact_with_the_html_report_of_a_run_kept_in_memory(offline: Path) -> None:
    run = wandb.init(project="stepsize-lens-test", dir=offline)
    try:
        writer = WandbWriter(artifact=True, artifact_name="digits-lens")
        model = small_model()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        lens = stepsize_lens.attach(model, optimizer, path=None, schedule=1, on_record=writer)
        for x, y in batches(4):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
        lens.close()
        assert lens.callback_errors == 0
        assert writer.finish(lens) is None  # once only
    finally:
        run.finish()
    _, log = _offline_run(offline)
    contents = _artifact_files(log, "digits-lens")
    assert set(contents) == {"run.pt", "report.html"}
    saved = stepsize_lens.load(contents["run.pt"])  # the records, saved for the artifact
    assert list(saved.steps) == [1, 2, 3, 4]
    page = contents["report.html"].read_text(encoding="utf-8")
    assert page.lstrip().lower().startswith("<!doctype html")
    assert "data:image/png;base64" in page  # self-contained: figures embedded


def test_per_tensor_table_at_the_chosen_interval(offline: Path) -> None:
    run = wandb.init(project="stepsize-lens-test", dir=offline)
    try:
        writer = WandbWriter(
            run=run,
            prefix="lens/",
            per_tensor="table",
            every=3,
            metrics=("angular_update", "cos_grad"),
            commit=False,  # the figures join the loop's next row
        )
        records, lens = _train(offline, run, writer)
    finally:
        run.finish()
    folder, log = _offline_run(offline)
    assert not _of_type(log, "artifact") or all(
        a.type != ARTIFACT_TYPE for a in _of_type(log, "artifact")
    )  # artifact=False: no run artifact

    kept = {r.step: r for r in records if not r.skipped}
    history = _rows(log)
    rows = {row[("lens/step",)]: row for row in history if ("lens/step",) in row}
    assert sorted(rows) == sorted(kept)
    # commit=False: no row of its own; each record shares the loop's next row (the last one,
    # with nothing after it, is committed at finish)
    assert len(history) == STEPS + 1
    assert all(("loss",) in row for row in history[:STEPS])
    assert sum(("lens/step",) in row and ("loss",) in row for row in history) == len(kept) - 1
    with_table = sorted(step for step, row in rows.items() if ("lens/per_tensor", "path") in row)
    assert with_table == [1, 5]  # the 1st and 4th logged record (steps 1, 2, 4, 5)
    for step in with_table:
        table = json.loads((folder / "files" / rows[step][("lens/per_tensor", "path")]).read_text())
        assert table["columns"] == [
            "step",
            "tensor",
            "group",
            "class",
            "test",
            "angular_update",
            "cos_grad",
        ]
        record = kept[step]
        assert [row[1] for row in table["data"]] == list(record.tensor_names)
        assert [row[3] for row in table["data"]] == list(record.classes)
        assert all(row[0] == step for row in table["data"])
        for metric, column in (("angular_update", 5), ("cos_grad", 6)):
            for row, value in zip(table["data"], record.per_tensor(metric).values()):
                if value != value:  # NaN: written as empty
                    assert row[column] is None
                else:
                    assert row[column] == pytest.approx(value, rel=1e-6), (metric, row[1])
        tests = {row[4] for row in table["data"]}
        assert tests <= {"channel", "layer", "none", None} and "channel" in tests
    assert lens.path is not None


def test_without_an_active_run_training_goes_on(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(wandb, "run", None)
    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    lens = stepsize_lens.attach(model, optimizer, path=None, schedule=1, on_record=WandbWriter())
    for x, y in batches(3):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    lens.close()
    assert lens.num_records == 3 and lens.callback_errors == 3
    said = [line for line in capsys.readouterr().err.splitlines() if "wandb" in line]
    assert len(said) == 1 and "no active wandb run" in said[0]  # said once, on one line


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="prefix"):
        WandbWriter(prefix="")
    with pytest.raises(ValueError, match="per_tensor"):
        WandbWriter(per_tensor="tables")
    with pytest.raises(ValueError, match="every"):
        WandbWriter(every=0)
    with pytest.raises(ValueError, match="unknown metric 'nope'"):
        WandbWriter(metrics=("nope",))


def test_missing_wandb_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ModuleNotFoundError
    monkeypatch.delitem(sys.modules, "stepsize_lens.integrations.wandb")
    with pytest.raises(ImportError, match=r"pip install 'stepsize-lens\[wandb\]'"):
        importlib.import_module("stepsize_lens.integrations.wandb")
