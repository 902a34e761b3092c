"""Real data that ships inside a package: scikit-learn's handwritten digits (no download).

1,797 grey-scale 8x8 images of the digits 0-9 (UCI ML hand-written digits, bundled with
scikit-learn). Pixels are scaled from 0..16 to mean 0 / std 1 using training-set statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

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
