"""A lens record in at most `LIMIT` kernel launches, none that makes a GPU host wait, on models
of three sizes, and a number of launches that depends on the row lengths, not on the number of
tensors. Counted with a TorchDispatchMode (`stepsize_lens._launches`) around real optimizer
steps, with the accelerator paths forced on the CPU (``STEPSIZE_LENS_DEVICE_PATHS=accelerator``),
as the difference between a step with the lens and the same step without it."""

from __future__ import annotations

import pytest
import torch
from _lens_models import imagenet_resnet18, imagenet_resnet50, vit_tiny_224
from torch import nn

import stepsize_lens
from stepsize_lens._device_paths import ENV_VAR
from stepsize_lens._launches import Launches, count_launches
from stepsize_lens.recording.device import ACCELERATOR_PATHS
from stepsize_lens.recording.schedules import every

LIMIT = 300  # launches per record (issue 22)


def record_launches(model: nn.Module, records: int = 2) -> tuple[int, Launches]:
    """The most launches one record took (the first copies w, later ones find w' kept), and
    everything counted during the lens's steps."""
    params = list(model.parameters())
    gen = torch.Generator().manual_seed(0)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)
    plain = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4, foreach=True)
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4, foreach=True)
    with torch.no_grad():  # a step of each first: momentum buffers exist from here on
        plain.step()
        optimizer.step()
    with count_launches() as base:
        plain.step()
    lens = stepsize_lens.attach(model, optimizer, path=None, schedule=every(1))
    most, seen = 0, Launches()
    for _ in range(records):
        lens.latest()  # lands the previous record: host-side bookkeeping, not a device's work
        with count_launches() as step:
            optimizer.step()
        most = max(most, step.total - base.total)
        seen = seen + step
    assert lens._snapshot is not None and lens._snapshot.paths == ACCELERATOR_PATHS
    assert lens.num_records + len(lens._records.pending) == records
    lens.close()
    return most, seen


@pytest.fixture(autouse=True)
def accelerator_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, "accelerator")


@pytest.mark.parametrize(
    "build", [imagenet_resnet18, vit_tiny_224, imagenet_resnet50], ids=["resnet18", "vit", "r50"]
)
def test_a_record_takes_a_bounded_number_of_launches_and_never_waits(build):
    torch.manual_seed(0)
    most, seen = record_launches(build())
    assert 20 < most <= LIMIT, seen.ops.most_common(12)  # (a record is real work: > 20)
    assert not seen.waiting, seen.waiting


def _stack(layers: int) -> nn.Module:
    torch.manual_seed(0)
    blocks = []
    for _ in range(layers):
        blocks += [nn.Linear(48, 48), nn.LayerNorm(48), nn.Conv1d(48, 48, 3)]
    return nn.Sequential(*blocks)


def test_launches_depend_on_row_lengths_not_on_the_number_of_tensors():
    few, _ = record_launches(_stack(2), records=3)
    many, _ = record_launches(_stack(12), records=3)
    assert many == few
