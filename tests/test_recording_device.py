"""Accelerator paths: chosen per device, forceable on the CPU; transfers that never wait."""

from __future__ import annotations

import torch

from stepsize_lens.recording.device import (
    ACCELERATOR_PATHS,
    CPU_PATHS,
    DevicePaths,
    PendingCopy,
    forced_paths,
    paths_for,
    to_device,
)


def test_paths_per_device_and_forced():
    assert paths_for(torch.device("cpu")) == CPU_PATHS
    assert paths_for(torch.device("cuda", 0)) == ACCELERATOR_PATHS
    forced = DevicePaths(refine_all_rows=True)
    with forced_paths(forced):
        assert paths_for(torch.device("cpu")) is forced
        with forced_paths(ACCELERATOR_PATHS):
            assert paths_for(torch.device("cpu")) is ACCELERATOR_PATHS
        assert paths_for(torch.device("cpu")) is forced
    assert paths_for(torch.device("cpu")) == CPU_PATHS


def test_cpu_transfers():
    host = torch.arange(4.0)
    assert to_device(host, torch.device("cpu")) is host
    now = PendingCopy(host, deferred=False)
    assert now.ready() and now.result() is host
    later = PendingCopy(host, deferred=True)
    host.add_(1)  # the deferred copy is private, as the pinned buffer of a device copy is
    assert later.ready() and later.result().tolist() == [0.0, 1.0, 2.0, 3.0]


def test_the_environment_switch_forces_the_accelerator_paths(monkeypatch):
    from stepsize_lens._device_paths import ENV_VAR

    monkeypatch.setenv(ENV_VAR, "accelerator")
    assert paths_for(torch.device("cpu")) == ACCELERATOR_PATHS
    forced = DevicePaths(refine_all_rows=True)
    with forced_paths(forced):  # a test's own choice still wins
        assert paths_for(torch.device("cpu")) is forced
    monkeypatch.setenv(ENV_VAR, "cpu")  # any other value: the device decides
    assert paths_for(torch.device("cpu")) == CPU_PATHS
    monkeypatch.delenv(ENV_VAR)
    assert paths_for(torch.device("cpu")) == CPU_PATHS
