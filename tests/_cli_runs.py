"""Tiny real runs for the CLI tests (a BatchNorm MLP, 12 SGD steps, recorded with the lens):
`tiny_run` with names of your choosing (hostile ones included), and `call_main`, the console
script's entry point called in-process; `run_main`, the same in a fresh interpreter; and
`REPORT_FIGURES`, the figures `report` writes."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

import stepsize_lens
from stepsize_lens.cli import main

ROOT = Path(__file__).parents[1]
REPORT_FIGURES = (
    "paper_panel",
    "norm_growth",
    "effective_step",
    "decay_split",
    "theory",
    "cos_threshold",
    "heatmap",
)


def run_main(*args: object, env: dict | None = None) -> subprocess.CompletedProcess:
    """The console script's entry point in a fresh interpreter."""
    code = "from stepsize_lens.cli import main; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


HOSTILE = "\x1b]0;pwned\x07\x1b[2J<script>alert(1)</script><img src=x onerror=alert(2)>\x9b31m"


def tiny_run(
    path: Path,
    label: str = "tiny",
    hidden: str = "hidden",
    scalar: str = "loss",
    steps: int = 12,
    seed: int = 0,
) -> Path:
    """Record a BatchNorm MLP for ``steps`` SGD steps into ``path``; ``hidden`` names its
    scale-invariant linear layer, ``scalar`` the logged loss."""
    torch.manual_seed(seed)
    model = nn.Sequential()
    model.add_module(hidden, nn.Linear(6, 12, bias=False))
    model.add_module("bn", nn.BatchNorm1d(12))
    model.add_module("act", nn.ReLU())
    model.add_module("head", nn.Linear(12, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9, weight_decay=5e-4)
    x, y = torch.randn(24, 6), torch.randint(0, 3, (24,))
    with stepsize_lens.attach(model, optimizer, path=path, label=label) as lens:
        for _ in range(steps):
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            lens.log(**{scalar: loss})
    return path


def call_main(*args: object) -> tuple[int, str, str]:
    """``stepsize-lens ARGS`` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    code: object = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code
    return (code if isinstance(code, int) else 1), out.getvalue(), err.getvalue()
