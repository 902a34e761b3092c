"""Real data that every machine already has (no download).

- `digits`: 1,797 grey-scale 8x8 images of the digits 0-9 (UCI ML hand-written digits, bundled
  with scikit-learn). Pixels are scaled from 0..16 to mean 0 / std 1 using training-set
  statistics.
- `stdlib_text`: character-level text, the source code of the Python standard library's own
  top-level modules (``sysconfig.get_paths()["stdlib"]``), for the tiny GPT.
"""

from __future__ import annotations

import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from stepsize_lens.errors import UserInputError


@dataclass(frozen=True)
class Split:
    """Train and test tensors: images [N, 1, 8, 8] float32, labels [N] int64."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def digits(test_fraction: float = 0.25, seed: int = 0) -> Split:
    """The digits images, shuffled with ``seed`` and split into train and test."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - scikit-learn is a dependency
        raise UserInputError(
            "the digits data needs scikit-learn: pip install scikit-learn"
        ) from exc
    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1)
    labels = torch.tensor(bunch.target, dtype=torch.int64)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    images, labels = images[order], labels[order]
    n_test = int(round(test_fraction * len(labels)))
    x_train, x_test = images[n_test:], images[:n_test]
    mean, std = x_train.mean(), x_train.std()
    return Split((x_train - mean) / std, labels[n_test:], (x_test - mean) / std, labels[:n_test])


def batches(
    x: torch.Tensor, y: torch.Tensor, batch_size: int, steps: int, seed: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``steps`` minibatches drawn epoch by epoch in a seeded order (same order for every run)."""
    gen = torch.Generator().manual_seed(seed)
    out: list[tuple[torch.Tensor, torch.Tensor]] = []
    while len(out) < steps:
        order = torch.randperm(len(y), generator=gen)
        for start in range(0, len(y) - batch_size + 1, batch_size):
            idx = order[start : start + batch_size]
            out.append((x[idx], y[idx]))
            if len(out) == steps:
                break
    return out


# --------------------------------------------------------------------------------------------
# Character-level text: the standard library's source
# --------------------------------------------------------------------------------------------

TEXT_VOCAB = "\n" + "".join(chr(code) for code in range(32, 127))
"""The characters `stdlib_text` keeps: newline and printable ASCII; anything else (tabs, non-ASCII
letters) becomes token ``len(TEXT_VOCAB)``, so there are ``len(TEXT_VOCAB) + 1`` = 97 tokens."""
TEXT_TOKENS = len(TEXT_VOCAB) + 1
_INDEX = {char: index for index, char in enumerate(TEXT_VOCAB)}


@dataclass(frozen=True, eq=False)
class TextSplit:
    """Token ids (int64) for training and validation, and the files they came from (in order)."""

    train: torch.Tensor
    val: torch.Tensor
    files: tuple[str, ...]

    @property
    def vocab_size(self) -> int:
        return TEXT_TOKENS


def stdlib_folder() -> Path:
    """The folder of this interpreter's standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def encode(text: str) -> torch.Tensor:
    """Characters to token ids (`TEXT_VOCAB`; other characters to the last id)."""
    unknown = len(TEXT_VOCAB)
    return torch.tensor([_INDEX.get(char, unknown) for char in text], dtype=torch.int64)


def decode(tokens: torch.Tensor) -> str:
    """Token ids back to text (the unknown id as U+FFFD)."""
    return "".join(TEXT_VOCAB[i] if i < len(TEXT_VOCAB) else "\ufffd" for i in tokens.tolist())


def stdlib_text(
    max_chars: int = 1_000_000,
    val_fraction: float = 0.1,
    seed: int = 0,
    folder: str | Path | None = None,
) -> TextSplit:
    """Character-level text from the standard library's top-level modules.

    The files are the ``*.py`` directly in ``folder`` (default: `stdlib_folder`) whose names do
    not start with ``_`` (private and machine-generated modules such as ``_sysconfigdata``),
    sorted by name, then shuffled with ``seed``; their texts are joined in that order (each
    ended by a newline) up to ``max_chars`` characters, and the first 1 − ``val_fraction`` of
    the characters are the training text, the rest the validation text. The same Python version
    gives the same text on every machine.
    """
    if max_chars < 1000:
        raise UserInputError(f"max_chars must be at least 1000, not {max_chars}")
    if not 0.0 < val_fraction < 1.0:
        raise UserInputError(f"val_fraction must be between 0 and 1, not {val_fraction}")
    root = Path(folder) if folder is not None else stdlib_folder()
    paths = sorted(path for path in root.glob("*.py") if not path.name.startswith("_"))
    if not paths:
        raise UserInputError(f"no Python source files in {root}")
    order = torch.randperm(len(paths), generator=torch.Generator().manual_seed(seed)).tolist()
    pieces, used, total = [], [], 0
    for index in order:
        text = paths[index].read_text(encoding="utf-8", errors="replace") + "\n"
        pieces.append(text[: max_chars - total])
        used.append(paths[index].name)
        total += len(pieces[-1])
        if total >= max_chars:
            break
    tokens = encode("".join(pieces))
    n_val = max(1, int(round(val_fraction * len(tokens))))
    return TextSplit(tokens[:-n_val], tokens[-n_val:], tuple(used))


def text_batches(
    tokens: torch.Tensor, batch_size: int, context: int, steps: int, seed: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``steps`` batches of (inputs, next-token targets), each [batch_size, context], from
    windows starting at seeded random positions of ``tokens``."""
    if len(tokens) <= context + 1:
        raise UserInputError(f"text of {len(tokens)} tokens is too short for context {context}")
    gen = torch.Generator().manual_seed(seed)
    offsets = torch.arange(context + 1)
    for _ in range(steps):
        starts = torch.randint(0, len(tokens) - context - 1, (batch_size, 1), generator=gen)
        windows = tokens[starts + offsets]
        yield windows[:, :-1], windows[:, 1:]
