"""The experiments' lr schedules: warmup + cosine and warmup-stable-decay as LambdaLR factors."""

from __future__ import annotations

import math

import pytest
import torch

from stepsize_lens.errors import UserInputError
from stepsize_lens.experiments.lr_schedules import lr_factor, lr_scheduler


def test_cosine_warms_up_linearly_then_decays_to_zero() -> None:
    factors = [lr_factor("cosine", s, 100, warmup=10) for s in range(100)]
    assert factors[:3] == pytest.approx([0.1, 0.2, 0.3])
    assert factors[9] == 1.0 and factors[10] == 1.0
    assert factors[55] == pytest.approx(0.5)  # halfway through the decay
    assert factors[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 89 / 90)))
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))


def test_wsd_is_flat_until_the_last_fifth_then_linear_to_zero() -> None:
    factors = [lr_factor("wsd", s, 100, warmup=10) for s in range(100)]
    assert factors[9] == 1.0 and factors[79] == 1.0
    assert factors[80] == pytest.approx(1.0) and factors[90] == pytest.approx(0.5)
    assert factors[99] == pytest.approx(0.05)


def test_constant_is_one_and_unknown_schedules_are_user_errors() -> None:
    assert {lr_factor("constant", s, 10, warmup=5) for s in range(10)} == {1.0}
    with pytest.raises(UserInputError, match="schedule"):
        lr_factor("linear", 0, 10)


def test_scheduler_drives_the_optimizer_and_records_the_peak_as_initial_lr() -> None:
    param = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([param], lr=0.5)
    assert lr_scheduler(optimizer, "constant", 10) is None
    scheduler = lr_scheduler(optimizer, "cosine", 10, warmup=2)
    seen = []
    for _ in range(10):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen[:3] == pytest.approx([0.25, 0.5, 0.5])
    assert optimizer.param_groups[0]["initial_lr"] == 0.5
