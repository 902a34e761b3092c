"""The run file's checksum (`stepsize_lens.run.checksum`): a flipped bit anywhere in its
content is `RunFileError: <path>: corrupted`; files without one (versions 1 and 2) load."""

from __future__ import annotations

import random

import pytest
import torch
from test_run_chunks import _new_writer, _record, tensor_records

from stepsize_lens.errors import RunFileError
from stepsize_lens.run import load
from stepsize_lens.run.checksum import KEY, digest


@pytest.fixture
def saved(tmp_path):
    writer = _new_writer(tmp_path / "run.pt", tensors=5)
    for step in range(1, 21):
        _record(writer, step, step)
    writer.log_scalars(3, {"loss": 0.5})
    writer.save()
    return tmp_path / "run.pt"


def _flipped(source, target, position: int, bit: int) -> None:
    data = bytearray(source.read_bytes())
    data[position] ^= 1 << bit
    target.write_bytes(bytes(data))


def test_a_bit_flipped_in_any_tensor_is_detected(saved, tmp_path):
    rng = random.Random(7)
    bad = tmp_path / "bad.pt"
    for start, size in tensor_records(saved):
        for _ in range(3):
            _flipped(saved, bad, start + rng.randrange(size), rng.randrange(8))
            with pytest.raises(RunFileError, match=r"bad\.pt: corrupted"):
                load(bad)


def test_bit_flips_anywhere_load_unchanged_or_fail_at_load(saved, tmp_path):
    """Flips, truncations and overwritten stretches: the file loads with exactly the saved
    content (a flip in zip padding or a timestamp), or `load` raises one line."""
    rng = random.Random(11)
    original = digest(load(saved).to_dict())
    raw = saved.read_bytes()
    bad = tmp_path / "bad.pt"
    unchanged = 0
    for case in range(200):
        data = bytearray(raw)
        kind = case % 4
        if kind in (0, 1):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif kind == 2:
            data = data[: rng.randrange(len(data))]
        else:
            start = rng.randrange(len(data))
            data[start : start + 16] = bytes(rng.randrange(256) for _ in range(16))[
                : len(data) - start
            ]
        bad.write_bytes(bytes(data))
        try:
            run = load(bad)
        except RunFileError as error:
            assert "\n" not in str(error) and str(bad) in str(error)
            continue
        assert digest(run.to_dict()) == original, f"case {case} loaded changed content"
        unchanged += 1
    assert unchanged < 100


def test_a_changed_checksum_is_detected(saved, tmp_path):
    data = torch.load(saved, weights_only=True)
    data[KEY] = "sha256:" + "0" * 64
    torch.save(data, tmp_path / "bad.pt")
    with pytest.raises(RunFileError, match="corrupted"):
        load(tmp_path / "bad.pt")


def test_files_without_a_checksum_still_load(saved, tmp_path):
    data = torch.load(saved, weights_only=True)
    del data[KEY]
    data["version"] = 2
    torch.save(data, tmp_path / "v2.pt")
    assert load(tmp_path / "v2.pt").num_records == 20


def test_saving_a_loaded_run_keeps_its_content_and_checksum(saved, tmp_path):
    run = load(saved)
    run.save(tmp_path / "again.pt")
    again = torch.load(tmp_path / "again.pt", weights_only=True)
    assert again[KEY] == torch.load(saved, weights_only=True)[KEY] == digest(again)


def test_the_digest_sees_types_order_free_keys_and_every_byte():
    base = {"a": [1, 2.0, "3", None, True], "t": torch.arange(4, dtype=torch.float32)}
    assert digest(base) == digest(dict(reversed(list(base.items()))))  # key order is free
    for other in (
        {**base, "a": [1, 2, "3", None, True]},  # 2.0 vs 2
        {**base, "a": [1, 2.0, "3", None, 1]},  # True vs 1
        {**base, "t": torch.arange(4, dtype=torch.float64)},  # dtype
        {**base, "t": torch.arange(4, dtype=torch.float32).reshape(2, 2)},  # shape
        {**base, "t": torch.tensor([0.0, 1.0, 2.0, 3.0000002])},  # one bit
    ):
        assert digest(other) != digest(base)
