"""A small BatchNorm/LayerNorm network, seeded batches and a training loop for the lens tests."""

from __future__ import annotations

import torch
from torch import nn


def small_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 16),
        nn.LayerNorm(16),
        nn.Linear(16, 4),
    )


def batches(n: int, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(n):
        yield torch.randn(8, 3, 6, 6, generator=gen), torch.randint(0, 4, (8,), generator=gen)


def train(model, optimizer, steps, lens=None):
    for x, y in batches(steps):
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if lens is not None:
            lens.log(loss=loss)
    return model


class Tee:
    """An ``on_record`` callback that hands each record to ``writer`` and keeps it in
    ``records``; forwards ``on_close`` (for tests of the live writers)."""

    def __init__(self, writer) -> None:
        self.writer, self.records = writer, []

    def __call__(self, record) -> None:
        self.records.append(record)
        self.writer(record)

    def on_close(self, lens) -> None:
        self.writer.on_close(lens)
