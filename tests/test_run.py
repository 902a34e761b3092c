"""The run file: round trip, atomic saves, and one clear error for every kind of bad input."""

from __future__ import annotations

import math
import os
import pickle

import numpy as np
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


# The version-1 layout, written by hand: twelve metrics, no channel_angular_update_cv.
V1_METRICS = (
    "weight_norm",
    "grad_norm",
    "update_norm",
    "relative_update",
    "angular_update",
    "effective_lr",
    "cos_grad",
    "cos_update",
    "norm_growth",
    "channel_cos_grad_max",
    "channel_weight_norm",
    "channel_angular_update",
)
V1_GROUP_FIELDS = (
    "lr",
    "weight_decay",
    "momentum",
    "dampening",
    "beta1",
    "beta2",
    "eps",
    "wd_ratio",
    "delta",
    "nesterov",
)


def version_1_run(records: int = 40) -> dict:
    """A version-1 run of an SGD-momentum BatchNorm conv (channel-invariant, norm growing) and
    its 1-D BatchNorm gain, as stepsize_lens 0.x wrote it."""
    steps = torch.arange(1, records + 1, dtype=torch.int64)
    t = steps.double()
    norm = torch.stack([1.0 + 0.01 * t, torch.ones(records, dtype=torch.float64)], dim=1)
    angle = torch.stack([0.02 / (1.0 + 0.01 * t) ** 2, 0.01 * torch.ones(records)], dim=1)
    update = norm * torch.tan(angle)
    cos_grad = torch.tensor([[0.0, 0.3]]).expand(records, 2)
    metrics = {
        "weight_norm": norm,
        "grad_norm": 1.0 / norm,
        "update_norm": update,
        "relative_update": update / norm,
        "angular_update": angle,
        "effective_lr": 0.1 / norm**2,
        "cos_grad": cos_grad,
        "cos_update": torch.zeros(records, 2),
        "norm_growth": update**2,
        "channel_cos_grad_max": torch.tensor([[0.0, math.nan]]).expand(records, 2),
        "channel_weight_norm": torch.stack([norm[:, 0], torch.full((records,), math.nan)], 1),
        "channel_angular_update": torch.stack([angle[:, 0], torch.full((records,), math.nan)], 1),
    }
    groups = {
        name: torch.full((records, 1), math.nan, dtype=torch.float64) for name in V1_GROUP_FIELDS
    }
    groups.update(
        lr=torch.full((records, 1), 0.1, dtype=torch.float64),
        weight_decay=torch.full((records, 1), 5e-4, dtype=torch.float64),
        momentum=torch.full((records, 1), 0.9, dtype=torch.float64),
        dampening=torch.zeros((records, 1), dtype=torch.float64),
        nesterov=torch.zeros((records, 1), dtype=torch.float64),
    )
    return {
        "format": "stepsize_lens/run",
        "version": 1,
        "meta": {
            "label": "old sgd",
            "created": "2025-01-01T00:00:00+00:00",
            "optimizer": {"class": "SGD", "module": "torch.optim.sgd", "defaults": {"lr": 0.1}},
            "schedule": "every(1)",
            "delta": 0.1,
            "metrics": list(V1_METRICS),
            "closed": True,
        },
        "params": {
            "name": ["conv.weight", "bn.weight"],
            "group": [0, 0],
            "index": [0, 1],
            "shape": [[8, 3, 3, 3], [8]],
            "numel": [216, 8],
            "ndim": [4, 1],
            "rows": [8, 1],
            "module_type": ["Conv2d", "BatchNorm2d"],
            "dtype": ["float32", "float32"],
            "aliases": [[], []],
        },
        "records": {
            "step": steps,
            "time": t,
            "skipped": torch.zeros(records, dtype=torch.bool),
        },
        "metrics": {name: metrics[name].float().contiguous() for name in V1_METRICS},
        "views": {
            "test_view": torch.tensor([[1, -1]], dtype=torch.int8).expand(records, 2).contiguous(),
            "applied_view": torch.full((records, 2), -1, dtype=torch.int8),
        },
        "groups": groups,
        "scalars": {},
        "events": [],
    }


def test_a_version_1_file_loads_and_reports(tmp_path):
    from stepsize_lens.report import report_data
    from stepsize_lens.report.document import report_document
    from stepsize_lens.report.text import markdown_document

    torch.save(version_1_run(), tmp_path / "v1.pt")
    run = load(tmp_path / "v1.pt")
    assert run.format_version == 1 and VERSION == 3
    assert run.metric_names == METRICS  # the metric added in version 2 reads as NaN
    assert (
        run.metric("channel_angular_update_cv") != run.metric("channel_angular_update_cv")
    ).all()
    data = report_data(run)
    assert data["run"]["label"] == "old sgd" and data["findings"]
    kinds = {f["kind"] for f in data["findings"]}
    assert "rotation_balance" not in kinds  # nothing to say without the metric
    assert "## Findings" in markdown_document(report_document(data))


def test_a_version_2_file_lacking_its_metric_is_malformed(tmp_path):
    data = version_1_run()
    data["version"] = 2
    torch.save(data, tmp_path / "bad.pt")
    _expect_error(tmp_path / "bad.pt", "channel_angular_update_cv")


def test_saving_an_older_run_writes_the_current_version(tmp_path):
    torch.save(version_1_run(), tmp_path / "v1.pt")
    old = load(tmp_path / "v1.pt")
    old.save(tmp_path / "v2.pt")
    assert old.format_version == 1 and "upgraded_from" not in old.meta  # unchanged
    raw = torch.load(tmp_path / "v2.pt", weights_only=True)
    assert raw["version"] == VERSION and raw["meta"]["upgraded_from"] == 1
    assert set(raw["metrics"]) == set(METRICS)
    new = load(tmp_path / "v2.pt")
    assert new.format_version == VERSION
    for name in V1_METRICS:
        np.testing.assert_array_equal(new.metric(name), old.metric(name))
    current = _writer()
    current.save(tmp_path / "current.pt")
    load(tmp_path / "current.pt").save(tmp_path / "again.pt")
    assert "upgraded_from" not in torch.load(tmp_path / "again.pt", weights_only=True)["meta"]
