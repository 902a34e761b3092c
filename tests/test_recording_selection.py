"""``tensors=`` selections as predicates over (name, param, owner class)."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from stepsize_lens.recording.selection import matcher

P = nn.Parameter(torch.zeros(2, 2))


def test_each_kind_of_selection():
    assert matcher(None) is None
    assert matcher("fc.weight")("fc.weight", P, None)
    assert not matcher("fc.weight")("fc.weight2", P, None)
    assert matcher("layer4.*")("layer4.0.conv1.weight", P, None)
    assert not matcher("layer4.*")("layer3.0.conv1.weight", P, None)
    assert matcher(re.compile(r"conv\d"))("layer4.0.conv1.weight", P, None)
    assert matcher(nn.Conv2d)("x", P, nn.Conv2d)
    assert not matcher(nn.Conv2d)("x", P, nn.Linear) and not matcher(nn.Conv2d)("x", P, None)
    assert matcher(nn.modules.conv._ConvNd)("x", P, nn.Conv2d)  # subclasses count
    assert matcher(lambda name, p: p.ndim == 2)("x", P, None)
    either = matcher(["a", nn.LayerNorm])
    assert either("a", P, None) and either("b", P, nn.LayerNorm) and not either("b", P, None)
    assert not matcher([])("a", P, None)  # an empty list selects nothing


def test_bad_selections():
    with pytest.raises(TypeError, match="tensors="):
        matcher(3.5)
    with pytest.raises(TypeError, match="nn.Module class"):
        matcher(dict)
