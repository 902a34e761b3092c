"""Data every machine has: the digits and the standard library's source as character-level text."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from stepsize_lens.errors import UserInputError
from stepsize_lens.experiments.datasets import (
    TEXT_TOKENS,
    TEXT_VOCAB,
    decode,
    digits,
    encode,
    stdlib_folder,
    stdlib_text,
    text_batches,
)


def test_digits_split_is_standardised_on_the_training_set() -> None:
    data = digits()
    assert data.x_train.shape[1:] == (1, 8, 8) and len(data.x_test) == 449
    assert data.x_train.mean().abs() < 1e-5 and (data.x_train.std() - 1).abs() < 1e-5


def _folder(tmp_path: Path) -> Path:
    for name, text in {
        "alpha.py": "def a():\n    return 1\n",
        "beta.py": "x = 'héllo'\n",
        "gamma.py": "\tpass\n" * 300,
        "_private.py": "secret = 1\n",
        "notes.txt": "not python\n",
    }.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    return tmp_path


def test_stdlib_text_reads_public_modules_in_a_seeded_order(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    data = stdlib_text(max_chars=5000, val_fraction=0.25, folder=folder)
    assert sorted(data.files) == ["alpha.py", "beta.py", "gamma.py"]
    total = sum(len((folder / name).read_text(encoding="utf-8")) + 1 for name in data.files)
    assert len(data.train) + len(data.val) == total
    assert len(data.val) == round(0.25 * total)
    again = stdlib_text(max_chars=5000, val_fraction=0.25, folder=folder)
    assert again.files == data.files and torch.equal(again.train, data.train)
    cut = stdlib_text(max_chars=1000, val_fraction=0.25, folder=folder)
    assert len(cut.train) + len(cut.val) == 1000
    orders = {stdlib_text(5000, 0.25, seed=s, folder=folder).files for s in range(8)}
    assert len(orders) > 1  # the seed moves the files' order
    text = decode(torch.cat([data.train, data.val]))
    assert "secret" not in text and "not python" not in text
    assert "\ufffd" in text  # the tab and the é are outside the vocabulary


def test_stdlib_text_of_this_interpreter_is_real_python() -> None:
    data = stdlib_text(max_chars=20_000)
    assert stdlib_folder().is_dir()
    assert data.vocab_size == TEXT_TOKENS == len(TEXT_VOCAB) + 1 == 97
    assert int(torch.cat([data.train, data.val]).max()) < TEXT_TOKENS
    assert "def " in decode(data.train) and "import" in decode(data.train)


def test_encode_decode_round_trip_and_bad_arguments(tmp_path: Path) -> None:
    text = "for i in range(3):\n    print(i)  # ~!\n"
    assert decode(encode(text)) == text
    with pytest.raises(UserInputError, match="max_chars"):
        stdlib_text(max_chars=10)
    with pytest.raises(UserInputError, match="val_fraction"):
        stdlib_text(val_fraction=1.0)
    with pytest.raises(UserInputError, match="no Python source"):
        stdlib_text(folder=tmp_path)


def test_text_batches_are_windows_with_next_token_targets() -> None:
    tokens = torch.arange(500)
    batches = list(text_batches(tokens, batch_size=3, context=8, steps=4, seed=1))
    assert len(batches) == 4
    inputs, targets = batches[0]
    assert inputs.shape == targets.shape == (3, 8)
    assert torch.equal(targets, inputs + 1)  # the next token of consecutive ids
    again = list(text_batches(tokens, 3, 8, 4, seed=1))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again))
    with pytest.raises(UserInputError, match="too short"):
        next(text_batches(torch.arange(5), 1, 8, 1, 0))
