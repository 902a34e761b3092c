"""The run file: round trip, atomic saves, and one clear error for every kind of bad input."""

from __future__ import annotations

import math
import os
import pickle

import pytest
import torch

import stepsize_lens
from stepsize_lens._schema import GROUP_FIELDS, METRICS, VIEWS
from stepsize_lens.errors import RunFileError
from stepsize_lens.run import VERSION, Run, RunWriter, load, validate


def _writer(path=None, tensors=3, records=4) -> RunWriter:
    writer = RunWriter(path, {"label": "t"})
    writer.add_params(
        [
            {
                "name": f"t{i}",
                "group": 0,
                "index": i,
                "shape": [2, 2],
                "numel": 4,
                "ndim": 2,
                "rows": 2,
            }
            for i in range(tensors)
        ]
    )
    writer.set_num_groups(1)
    for step in range(1, records + 1):
        writer.append(
            step,
            float(step),
            False,
            torch.full((len(METRICS), tensors), float(step)),
            torch.ones((len(VIEWS), tensors), dtype=torch.int8),
            torch.full((len(GROUP_FIELDS), 1), 0.1, dtype=torch.float64),
        )
    writer.log_scalars(2, {"loss": 1.5})
    return writer


def test_round_trip_and_growth(tmp_path):
    writer = _writer(tmp_path / "run.pt", records=100)  # past the initial capacity of 64
    writer.save()
    run = load(tmp_path / "run.pt")
    assert run.num_records == 100 and run.num_tensors == 3
    assert run.metric("weight_norm")[99, 0] == 100.0
    assert run.scalars.to_dict("records") == [{"step": 2, "name": "loss", "value": 1.5}]
    assert run.groups["lr"].tolist() == [0.1] * 100


def test_saved_file_holds_only_filled_rows(tmp_path):
    writer = _writer(tmp_path / "run.pt", records=1)
    writer.save()
    raw = torch.load(tmp_path / "run.pt", weights_only=True)
    assert raw["metrics"]["weight_norm"].shape == (1, 3)
    assert raw["metrics"]["weight_norm"].untyped_storage().nbytes() == 3 * 4


def test_params_added_later_are_nan_before(tmp_path):
    writer = _writer(records=2)
    writer.add_params([{"name": "late", "group": 1}])
    writer.set_num_groups(2)
    writer.append(
        3,
        3.0,
        False,
        torch.zeros(len(METRICS), 4),
        torch.zeros(len(VIEWS), 4, dtype=torch.int8),
        torch.zeros(len(GROUP_FIELDS), 2, dtype=torch.float64),
    )
    run = Run(validate(writer.to_dict()))
    assert math.isnan(run.metric("weight_norm")[0, 3]) and run.metric("weight_norm")[2, 3] == 0
    assert run.view("test_view")[0, 3] == -1
    assert math.isnan(run.group_field("lr")[0, 1])


def test_atomic_save_leaves_no_temporary_files(tmp_path):
    _writer(tmp_path / "run.pt").save()
    assert sorted(os.listdir(tmp_path)) == ["run.pt"]


def _expect_error(path, fragment):
    with pytest.raises(RunFileError) as info:
        load(path)
    message = str(info.value)
    assert fragment in message and "\n" not in message
    return message


def test_missing_file(tmp_path):
    _expect_error(tmp_path / "nope.pt", "no such file")


def test_truncated_file(tmp_path):
    _writer(tmp_path / "run.pt").save()
    data = (tmp_path / "run.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    _expect_error(tmp_path / "cut.pt", "truncated or corrupt")


def test_foreign_files(tmp_path):
    (tmp_path / "text.pt").write_text("hello, not a run")
    _expect_error(tmp_path / "text.pt", "not a run file")
    torch.save({"state_dict": torch.zeros(2)}, tmp_path / "weights.pt")
    _expect_error(tmp_path / "weights.pt", "not a stepsize_lens run file")
    (tmp_path / "empty.pt").write_bytes(b"")
    _expect_error(tmp_path / "empty.pt", "empty file")
    _expect_error(tmp_path, "is a directory")


def _torch_error(path) -> str:
    try:
        torch.load(path, weights_only=True)
    except Exception as exc:
        return str(exc)
    raise AssertionError(f"{path} loaded")


def _ends_at_a_word(part: str, full: str) -> bool:
    """``part`` is ``full`` or a prefix of it that stops before a space or punctuation."""
    part = part.removesuffix("…")
    return full.startswith(part) and (len(part) == len(full) or full[len(part)] in " .,;:")


def test_truncated_file_message_is_whole(tmp_path):
    _writer(tmp_path / "run.pt", tensors=40, records=60).save()  # over 64 kB: miniz's long message
    data = (tmp_path / "run.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) * 9 // 10])
    message = _expect_error(tmp_path / "cut.pt", "truncated or corrupt")
    inside = message.split("(", 1)[1].removesuffix(")")
    assert _ends_at_a_word(inside, _torch_error(tmp_path / "cut.pt")), message
    assert "failed finding central directory" in inside  # torch's long message, cut whole


def test_text_and_binary_files_say_what_they_are(tmp_path):
    (tmp_path / "notes.pt").write_text("hello, not a run\n")
    message = _expect_error(tmp_path / "notes.pt", "not a run file")
    assert message.endswith("(it is a text file, not a torch.save archive)"), message
    (tmp_path / "noise.pt").write_bytes(b"\x00\x01garbage\xff" * 10)
    message = _expect_error(tmp_path / "noise.pt", "not a run file")
    assert message.endswith("(it is not a torch.save archive)"), message
    with open(tmp_path / "list.pkl", "wb") as handle:
        pickle.dump([1, 2, 3], handle)
    message = _expect_error(tmp_path / "list.pkl", "not a run file")
    assert message.endswith("(it is a pickle, not a torch.save archive)"), message


def test_shorten_cuts_at_a_word_boundary():
    from stepsize_lens.run.reader import shorten

    assert shorten("first sentence. second sentence\nmore") == "first sentence"
    assert shorten("[enforce fail at x.cc:9] . file in archive is odd") == "file in archive is odd"
    long = "word " * 100 + "end"
    short = shorten(long, limit=40)
    assert short.endswith("…") and len(short) <= 41
    assert _ends_at_a_word(short, long)
    assert shorten("x" * 50, limit=10) == "x" * 10 + "…"


def test_newer_format_version(tmp_path):
    data = _writer().to_dict()
    data["version"] = VERSION + 1
    torch.save(data, tmp_path / "future.pt")
    _expect_error(tmp_path / "future.pt", "newer than this stepsize_lens reads")


def test_malformed_run(tmp_path):
    data = _writer().to_dict()
    data["metrics"]["weight_norm"] = torch.zeros(2, 2)
    torch.save(data, tmp_path / "bad.pt")
    _expect_error(tmp_path / "bad.pt", "wrong shape")


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickle_that_would_run_code_is_refused_and_never_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = _writer().to_dict()
    data["meta"]["evil"] = _Payload()
    torch.save(data, tmp_path / "evil.pt")
    _expect_error(tmp_path / "evil.pt", "refused to load")
    with open(tmp_path / "raw.pkl", "wb") as handle:  # a plain pickle, not torch's zip format
        pickle.dump(_Payload(), handle)
    _expect_error(tmp_path / "raw.pkl", "refused to load")
    assert not (tmp_path / "PWNED").exists()


def test_load_is_exported():
    assert stepsize_lens.load is load and stepsize_lens.RunFileError is RunFileError
