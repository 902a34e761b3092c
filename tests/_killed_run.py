"""A run killed at step 150 whose last save was at step 54 (issue 21): run as a script, it trains
an Adam model on a fixed data stream, saves the run at step 54, checkpoints the model and the
optimizer at step 150 and kills itself with SIGKILL. The test imports the same model, data and
loop to resume it and to train the uninterrupted reference."""

from __future__ import annotations

import os
import signal
import sys

import torch
from torch import nn

SAVED, KILLED, END = 54, 150, 300


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8, bias=False), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 3))


def optimizer(net: nn.Module, kind: str = "adam") -> torch.optim.Optimizer:
    if kind == "sgd":
        return torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    return torch.optim.Adam(net.parameters(), lr=1e-2)


_GEN = torch.Generator().manual_seed(1)
DATA = [
    (torch.randn(8, 4, generator=_GEN), torch.randint(0, 3, (8,), generator=_GEN))
    for _ in range(END)
]


def steps(net: nn.Module, opt: torch.optim.Optimizer, start: int, stop: int, lens=None) -> None:
    """Optimizer steps ``start + 1`` to ``stop``; the run is saved right after step SAVED."""
    for index in range(start, stop):
        x, y = DATA[index]
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
        if lens is not None and index + 1 == SAVED:
            lens.flush()


def main(path: str, checkpoint: str, kind: str) -> None:
    import stepsize_lens

    torch.set_num_threads(1)  # as the test's own runs (tests/conftest.py one_thread): same sums

    net = model()
    opt = optimizer(net, kind)
    lens = stepsize_lens.attach(net, opt, path=path, label="killed", flush_every=None)
    steps(net, opt, 0, KILLED, lens)
    torch.save({"model": net.state_dict(), "opt": opt.state_dict()}, checkpoint)
    os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    main(*sys.argv[1:4])
