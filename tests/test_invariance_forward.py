"""`invariance._forward`: a trial forward leaves buffers, RNG and train/eval flags as they were."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch
from torch import nn

from stepsize_lens import invariance as inv


def test_trial_forward_leaves_the_model_and_every_rng_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.Dropout(0.5)).eval()
    inputs = torch.randn(3, 5)
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    states = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    inv.trial_forward(model, inputs)
    assert not any(module.training for module in model.modules())
    for name, buffer in model.named_buffers():
        assert torch.equal(buffer, buffers[name]), name
    assert torch.equal(torch.get_rng_state(), states[0])
    assert random.getstate() == states[1]
    assert np.array_equal(np.random.get_state()[1], states[2])


def test_trial_forward_raises_what_the_model_raises_and_restores_flags():
    model = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4)).eval()
    with pytest.raises(RuntimeError):
        inv.trial_forward(model, torch.randn(3, 7))
    assert not any(module.training for module in model.modules())


def test_idle_threads_sizes_the_pool_to_the_idle_cpus_and_puts_it_back(monkeypatch):
    before = torch.get_num_threads()
    with inv.idle_threads(1) as used:
        assert used == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.setattr(os, "getloadavg", lambda: (7.5, 0.0, 0.0))  # half a CPU idle
    with inv.idle_threads() as used:
        assert used == 1 == torch.get_num_threads()
    monkeypatch.setattr(os, "getloadavg", lambda: (6.6, 0.0, 0.0))  # 1.4 idle: one
    with inv.idle_threads() as used:
        assert used == 1 == torch.get_num_threads()
    monkeypatch.setattr(os, "getloadavg", lambda: (0.3, 0.0, 0.0))
    with inv.idle_threads() as used:
        assert used == min(before, 8) == torch.get_num_threads()
    with pytest.raises(ValueError, match="at least 1"), inv.idle_threads(0):
        pass
    assert torch.get_num_threads() == before
