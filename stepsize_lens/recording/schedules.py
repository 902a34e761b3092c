"""When the lens records: a schedule is any callable ``step -> bool`` (steps count from 1).

Premature step-size decay happens early in training, so the default is dense early and sparse
late (`default_schedule`): every step up to 100, every 10th step up to 1,000, then every 100th.
For a 1M-step run that is 10,180 records; a ResNet-50 (161 tensors, 13 float32 metrics + 2 int8
views = 54 bytes per tensor and record) then writes a run file of about 89 MB, and from step
1,000 on recording costs well under 1% of training time (benchmarks/lens_overhead.py measures
0.1-0.4% on two ResNet-18 steps).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

Schedule = Callable[[int], bool]


@dataclass(frozen=True)
class every:  # noqa: N801 - reads as a phrase: schedule=every(10)
    """Record every ``n``-th step: steps n, 2n, 3n, ... (or start, start + n, ... if given)."""

    n: int = 1
    start: int | None = None

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"every(n) needs n >= 1, got {self.n}")

    def __call__(self, step: int) -> bool:
        start = self.n if self.start is None else self.start
        return step >= start and (step - start) % self.n == 0

    def __str__(self) -> str:
        return f"every({self.n})" if self.start is None else f"every({self.n}, start={self.start})"


@dataclass(frozen=True)
class log_spaced:  # noqa: N801
    """Dense early, sparse late: the interval between records grows tenfold per decade of steps.

    Steps 1..``dense`` are all recorded; from then on step s is recorded when s is a multiple of
    ``10 ** (floor(log10(s)) - log10(dense))``, capped at ``max_interval``. With dense=100 and
    max_interval=100: every step to 99, every 10th to 999, every 100th after that.
    """

    dense: int = 100
    max_interval: int = 100

    def __post_init__(self) -> None:
        if self.dense < 1 or self.max_interval < 1:
            raise ValueError("log_spaced needs dense >= 1 and max_interval >= 1")

    def interval(self, step: int) -> int:
        if step < self.dense:
            return 1
        decades = math.floor(math.log10(step / self.dense) + 1e-12) + 1
        return int(min(self.max_interval, 10**decades))

    def __call__(self, step: int) -> bool:
        return step >= 1 and step % self.interval(step) == 0

    def __str__(self) -> str:
        return f"log_spaced(dense={self.dense}, max_interval={self.max_interval})"


def default_schedule() -> log_spaced:
    """The schedule `attach` uses when none is given (see module docstring for the sizes)."""
    return log_spaced(dense=100, max_interval=100)


def describe(schedule: Schedule) -> str:
    """A readable description of a schedule, stored in the run's metadata."""
    if isinstance(schedule, (every, log_spaced)):
        return str(schedule)
    return getattr(schedule, "__qualname__", None) or repr(schedule)


def resolve(schedule: Schedule | int | None) -> Schedule:
    """Accept a schedule, an int n (= every(n)) or None (= the default)."""
    if schedule is None:
        return default_schedule()
    if isinstance(schedule, bool):
        raise TypeError("schedule must be a callable step -> bool or an int, not a bool")
    if isinstance(schedule, int):
        return every(schedule)
    if not callable(schedule):
        raise TypeError(f"schedule must be a callable step -> bool or an int, not {schedule!r}")
    return schedule
