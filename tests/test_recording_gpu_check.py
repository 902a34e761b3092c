"""benchmarks/gpu_check.py, the lens's GPU check: a clear message without CUDA, and the whole
script dry-run on the CPU with tiny models so it is known to work before a GPU is at hand."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def _load():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_cuda_it_says_so_and_exits_cleanly(capsys):
    assert _load().main([]) == 0
    assert "no CUDA device is available" in capsys.readouterr().out


def test_the_models_have_the_advertised_sizes():
    module = _load()
    with torch.device("meta"):
        resnet, gpt = module.ResNet(), module.GPT()
    assert sum(p.numel() for p in resnet.parameters()) == 25_557_032  # torchvision's ResNet-50
    assert 124e6 < sum(p.numel() for p in gpt.parameters()) < 125e6  # GPT-2 small


@pytest.mark.slow
def test_dry_run_on_the_cpu(capsys):
    assert _load().main(["--dry-run", "--rounds", "1", "--block", "2"]) == 0
    out = capsys.readouterr().out
    assert "dry run on the CPU" in out
    for check in ("every step / plain", "default (steady) / plain", "memory held, own buffers"):
        assert out.count(check) == 2, check
    assert "AdamP on cpu" in out and "views equal" in out and "SGDP on cpu" in out
    # the launches table: a lens record on three full-size models, each optimizer path per step
    records = [line for line in out.splitlines() if "launches per lens record" in line]
    assert len(records) == 3, records
    for line in records:
        launches = int(line.split("|")[2].split(";")[0])
        assert 20 < launches <= 300 and "waiting ops: none" in line, line
    assert out.count("launches per step, ResNet-18") == 7
