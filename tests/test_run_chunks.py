"""Appending saves (`RunWriter.save(append=True)`, `stepsize_lens.run.chunks`): every record
kept across many saves, merged chunks, compaction, a killed writer, foreign and tampered
chunks."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from stepsize_lens._schema import GROUP_FIELDS, METRICS, VIEWS
from stepsize_lens.errors import RunFileError
from stepsize_lens.run import RunWriter, chunks, load


def _record(writer: RunWriter, step: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    tensors, groups = writer.num_tensors, max(writer.num_groups, 1)
    writer.append(
        step,
        float(step) + 0.5,
        step % 7 == 0,
        torch.rand((len(METRICS), tensors), generator=gen),
        torch.randint(-1, 3, (len(VIEWS), tensors), generator=gen, dtype=torch.int8),
        torch.rand((len(GROUP_FIELDS), groups), generator=gen, dtype=torch.float64),
    )


def _new_writer(path, tensors: int = 3) -> RunWriter:
    writer = RunWriter(path, {"label": "chunks"})
    writer.add_params([{"name": f"t{i}", "group": 0, "ndim": 2} for i in range(tensors)])
    writer.set_num_groups(1)
    return writer


def _assert_same(run, writer: RunWriter) -> None:
    want = writer.to_run()
    assert run.num_records == want.num_records and run.tensor_names == want.tensor_names
    assert (run.steps == want.steps).all() and (run.times == want.times).all()
    assert (run.skipped == want.skipped).all()
    for name in METRICS:
        torch.testing.assert_close(
            torch.from_numpy(run.metric(name)), torch.from_numpy(want.metric(name)), equal_nan=True
        )
    for name in VIEWS:
        assert (run.view(name) == want.view(name)).all()
    for name in GROUP_FIELDS:
        torch.testing.assert_close(
            torch.from_numpy(run.group_field(name)),
            torch.from_numpy(want.group_field(name)),
            equal_nan=True,
        )
    assert run.scalars.equals(want.scalars) and run.events == want.events
    assert run.meta == want.meta


def test_a_run_saved_1000_times_holds_every_record(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "fsync", lambda fd: None)  # bookkeeping, not durability, here
    path = tmp_path / "run.pt"
    writer = _new_writer(path)
    written = []
    chunk_of = writer._chunk
    monkeypatch.setattr(
        writer,
        "_chunk",
        lambda start: written.append(writer.num_records - start.records) or chunk_of(start),
    )
    for save in range(1, 1001):
        _record(writer, save, save)
        if save % 3 == 0:
            writer.log_scalars(save, {"loss": 1.0 / save})
        if save == 300:
            writer.add_params([{"name": "late", "group": 1, "ndim": 1}])
            writer.set_num_groups(2)
            writer.add_event(save, "params_added", "late")
        writer.meta["last_step"] = save
        writer.save(append=True)
        if save % 250 == 0:
            _assert_same(load(path), writer)
    index = torch.load(path, weights_only=True)
    assert len(index["chunks"]) <= 3 * chunks_per_level()  # merged, not 1,000 files
    assert len(os.listdir(chunks.folder_of(path))) == len(index["chunks"])
    assert sum(written) <= 3 * 1000  # each record written at most three times: linear
    writer.save()  # close: one file again
    assert not chunks.folder_of(path).exists()
    assert "chunks" not in torch.load(path, weights_only=True)
    _assert_same(load(path), writer)


def chunks_per_level() -> int:
    from stepsize_lens.run.writer import MERGE

    return MERGE


def test_a_copied_index_without_its_folder_says_where_the_records_are(tmp_path):
    writer = _new_writer(tmp_path / "run.pt")
    _record(writer, 1, 1)
    writer.save(append=True)
    (tmp_path / "copy.pt").write_bytes((tmp_path / "run.pt").read_bytes())
    with pytest.raises(RunFileError, match=r"copy\.pt: .*\.copy\.pt\.d.*close\(\)"):
        load(tmp_path / "copy.pt")


def test_a_tampered_chunk_is_corrupted(tmp_path):
    writer = _new_writer(tmp_path / "run.pt")
    for step in range(1, 4):
        _record(writer, step, step)
        writer.save(append=True)
    folder = chunks.folder_of(tmp_path / "run.pt")
    (chunk,) = [p for p in folder.iterdir() if p.name.endswith("3.pt")]
    start, size = tensor_records(chunk)[0]
    data = bytearray(chunk.read_bytes())
    data[start + size // 2] ^= 0x10
    chunk.write_bytes(bytes(data))
    with pytest.raises(RunFileError, match=r"3\.pt: corrupted"):
        load(tmp_path / "run.pt")


def tensor_records(path) -> list[tuple[int, int]]:
    """(offset, size) in the file of each non-empty tensor record of a torch.save archive."""
    from stepsize_lens.run.archive import _records

    with open(path, "rb") as handle:
        spans = _records(handle, os.path.getsize(path))
    return sorted(
        (start, size) for start, (name, size) in spans.items() if "/data/" in name and size
    )


def test_a_chunk_of_another_run_is_refused(tmp_path):
    first, second = _new_writer(tmp_path / "a.pt"), _new_writer(tmp_path / "b.pt")
    for step in range(1, 3):
        _record(first, step, step)
        _record(second, step, step + 10)
        first.save(append=True)
        second.save(append=True)
    ours = sorted(chunks.folder_of(tmp_path / "a.pt").iterdir())
    theirs = sorted(chunks.folder_of(tmp_path / "b.pt").iterdir())
    ours[-1].write_bytes(theirs[-1].read_bytes())  # sealed, but not the chunk the index names
    with pytest.raises(RunFileError, match="not the chunk the index names"):
        load(tmp_path / "a.pt")


def test_a_new_session_drops_the_chunks_of_the_previous_one(tmp_path):
    path = tmp_path / "run.pt"
    writer = _new_writer(path)
    for step in range(1, 6):
        _record(writer, step, step)
        writer.save(append=True)
    resumed = RunWriter.from_run(load(path), path)
    _record(resumed, 6, 6)
    resumed.save(append=True)
    assert len(list(chunks.folder_of(path).iterdir())) == 1  # all six records, one chunk
    _record(resumed, 7, 7)
    resumed.save(append=True)
    _assert_same(load(path), resumed)


def test_a_save_with_nothing_new_writes_only_the_index(tmp_path):
    path = tmp_path / "run.pt"
    writer = _new_writer(path)
    _record(writer, 1, 1)
    writer.save(append=True)
    writer.meta["closed"] = True
    writer.save(append=True)
    assert len(list(chunks.folder_of(path).iterdir())) == 1
    assert load(path).meta["closed"] is True


KILLED_WRITER = textwrap.dedent(
    """
    import sys, torch
    sys.path.insert(0, {tests!r})
    from test_run_chunks import _new_writer, _record
    writer = _new_writer({path!r})
    step = 0
    print("ready", flush=True)
    while True:
        step += 1
        _record(writer, step, step)
        if step % 5 == 0:
            writer.log_scalars(step, {{"loss": float(step)}})
        writer.save(append=step % 40 != 0)  # now and then a full save (what close() does)
    """
)


@pytest.mark.slow
def test_sigkill_during_appending_saves_leaves_a_loadable_run(tmp_path):
    rng = random.Random(21)
    path = tmp_path / "run.pt"
    script = KILLED_WRITER.format(tests=os.path.dirname(__file__), path=str(path))
    last = 0
    for _ in range(4):
        child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
        assert child.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(0.2, 1.5))
        child.send_signal(signal.SIGKILL)
        child.wait()
        if not path.exists():
            continue
        run = load(path)  # never raises: an index and its chunks, or one compacted file
        assert list(run.steps) == list(range(1, run.num_records + 1))
        steps, values = run.scalar("loss") if "loss" in run.scalar_names else ([], [])
        assert [int(s) for s in steps] == [float(v) for v in values]
        last = max(last, run.num_records)
    assert last > 0


def test_the_lens_appends_while_it_records_and_compacts_at_close(tmp_path):
    from _lens_models import small_model, train

    import stepsize_lens

    path = tmp_path / "run.pt"
    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    lens = stepsize_lens.attach(model, optimizer, path=path, schedule=1, flush_every=0.0)
    train(model, optimizer, 5, lens)  # a timed save after every record
    assert "chunks" in torch.load(path, weights_only=True)  # an index while it records
    assert load(path).num_records == 5
    lens.close()
    assert not chunks.folder_of(path).exists()
    raw = torch.load(path, weights_only=True)
    assert "chunks" not in raw and raw["records"]["step"].tolist() == [1, 2, 3, 4, 5]
    assert load(path).meta["closed"] is True
