"""Shared fixtures.

Report fixtures (tests/test_plots.py, test_report.py, test_cli_report.py): real runs recorded
with the lens, built once per test session.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

REPORT_STEPS = 40

# AdamP/SGDP(fused=True) compile their step in the background from their first step: a minute
# of both CPUs per model. The suite runs their fused steps on the multi-tensor path, and the
# tests of the compiled path (tests/test_optim_compiled.py) turn compilation back on.
os.environ.setdefault("STEPSIZE_LENS_COMPILE", "0")


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    # small models train faster on one thread, and the CPUs are shared with other jobs
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Torch on one thread for the test (tiny models: many times faster on shared CPUs)."""
    with _one_thread():
        yield


@pytest.fixture(scope="session")
def report_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Digits-CNN runs (40 steps, seed 0, loss and test accuracy logged) recorded with the lens:
    sgd, sgd_momentum, adamw, sgdp, adamp. Name → run file."""
    import torch

    from stepsize_lens.experiments.demo import train_digits_run
    from stepsize_lens.optim import SGDP, AdamP

    folder = tmp_path_factory.mktemp("report_runs")
    optimizers = {
        "sgd": ("SGD", lambda p: torch.optim.SGD(p, lr=0.1)),
        "sgd_momentum": ("SGD momentum 0.9", lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)),
        "adamw": ("AdamW", lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=0.05)),
        "sgdp": ("SGDP", lambda p: SGDP(p, lr=0.1, momentum=0.9, weight_decay=1e-4)),
        "adamp": ("AdamP", lambda p: AdamP(p, lr=1e-3, weight_decay=0.05)),
    }
    paths = {}
    with _one_thread():
        for name, (label, make) in optimizers.items():
            paths[name] = train_digits_run(
                folder / f"{name}.pt", make, steps=REPORT_STEPS, seed=0, label=label, batch_size=32
            )
    return paths


@pytest.fixture
def local_runs(report_runs: dict[str, Path], tmp_path: Path) -> dict[str, Path]:
    """Copies of the `report_runs` in this test's folder (default outputs land beside them)."""
    return {
        name: Path(shutil.copy(path, tmp_path / path.name)) for name, path in report_runs.items()
    }


@pytest.fixture(scope="session")
def report_lr_drop_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small BatchNorm MLP trained 30 steps with SGD momentum, lr ×0.1 at step 15 (StepLR),
    weight decay 5e-4, recorded with the lens; logs "loss"."""
    import torch
    from torch import nn

    import stepsize_lens

    path = tmp_path_factory.mktemp("report_lr") / "lr_drop.pt"
    with _one_thread():
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Linear(8, 32, bias=False), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 3)
        )
        optimizer = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9, weight_decay=5e-4)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=15, gamma=0.1)
        x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
        with stepsize_lens.attach(model, optimizer, path=path, label="MLP lr drop") as lens:
            for _ in range(30):
                loss = nn.functional.cross_entropy(model(x), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                scheduler.step()
                lens.log(loss=loss)
    return path


@pytest.fixture(scope="session")
def report_empty_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run file the lens wrote without any optimizer step: no records."""
    import torch

    import stepsize_lens

    path = tmp_path_factory.mktemp("report_empty") / "empty.pt"
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    stepsize_lens.attach(model, optimizer, path=path).close()
    return path
