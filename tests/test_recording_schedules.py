from __future__ import annotations

import pytest

from stepsize_lens.recording import schedules


def test_every():
    assert [s for s in range(1, 11) if schedules.every(3)(s)] == [3, 6, 9]
    assert [s for s in range(1, 11) if schedules.every(3, start=1)(s)] == [1, 4, 7, 10]
    assert all(schedules.every(1)(s) for s in range(1, 20))
    with pytest.raises(ValueError):
        schedules.every(0)


def test_log_spaced_is_dense_early_sparse_late():
    sched = schedules.log_spaced(dense=10, max_interval=50)
    picked = [s for s in range(1, 1001) if sched(s)]
    assert picked[:9] == list(range(1, 10))
    assert picked[9:13] == [10, 20, 30, 40]  # interval 10 from step 10
    assert picked[-3:] == [900, 950, 1000]  # capped at 50


def test_default_schedule_size_for_a_million_steps():
    sched = schedules.default_schedule()
    records = sum(1 for s in range(1, 1_000_001) if sched(s))
    assert records == 10_180
    bytes_per_record = 161 * (
        13 * 4 + 2
    )  # ResNet-50: 161 tensors, 13 float32 metrics, 2 int8 views
    assert records * bytes_per_record < 100e6


def test_resolve():
    assert isinstance(schedules.resolve(None), schedules.log_spaced)
    assert schedules.resolve(5) == schedules.every(5)
    fn = lambda s: s % 7 == 0  # noqa: E731
    assert schedules.resolve(fn) is fn
    with pytest.raises(TypeError):
        schedules.resolve("often")
    assert schedules.describe(schedules.every(2)) == "every(2)"
