"""Benchmark: ``optimizer.step()`` alone for AdamP/SGDP against torch and the reference package.

Fixed gradients (from one real forward/backward on random images, so the convolutions that
feed a BatchNorm get the tangential gradients that make AdamP/SGDP project), CPU, 2 threads,
one process. Every optimizer owns a copy of the parameters; repetitions are interleaved
(one step of each optimizer per round, in rotating order) and the median is reported, with
ratios to the torch peer of the same family measured in the same rounds. Our ``fused=True``
optimizers are timed once their step is compiled by ``torch.compile`` (`fused_ready(timeout=
None)`; the wait is printed: it is the background compilation, which inductor's cache
shortens in later processes).

    MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=4294967296 \\
        python benchmarks/optim_step.py

glibc's default allocator returns large blocks to the system after each use, so optimizers
that allocate parameter-sized temporaries pay page faults at every step and their times
swing between repetitions; the two variables keep such blocks in the heap. Targets (issue 22,
ResNet-18): our fused AdamP <= 2.2x torch AdamW(fused); our fused SGDP <= 2x torch
SGD(momentum, foreach) with weight decay and without; the reference package >= 2x slower than
our multi-tensor path.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stepsize_lens.experiments.models import cifar_resnet18, vit_tiny  # noqa: E402
from stepsize_lens.optim import SGDP, AdamP  # noqa: E402

ADAM = dict(lr=1e-3, weight_decay=1e-2)
SGD = dict(lr=0.1, momentum=0.9, weight_decay=5e-4)
SGD_NO_WD = dict(lr=0.1, momentum=0.9)

#: family -> (its torch peer, the reference package's optimizer)
FAMILIES = {
    "adam": ("torch AdamW(fused)", "reference AdamP"),
    "sgd": ("torch SGD(momentum, foreach)", "reference SGDP"),
    "sgd0": ("torch SGD(momentum, foreach) no wd", "reference SGDP no wd"),
}


def _fixed_grads(model: nn.Module) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (16,), generator=gen)
    F.cross_entropy(model(x), y).backward()
    return [p.grad.detach().clone() for p in model.parameters()]


def _optimizers() -> dict[str, tuple[str, Callable]]:
    """name -> (family, factory(params))."""
    import adamp as reference

    out: dict[str, tuple[str, Callable]] = {
        "torch AdamW(foreach)": ("adam", lambda p: torch.optim.AdamW(p, foreach=True, **ADAM)),
        "torch AdamW(fused)": ("adam", lambda p: torch.optim.AdamW(p, fused=True, **ADAM)),
        "reference AdamP": ("adam", lambda p: reference.AdamP(p, **ADAM)),
        "ours AdamP (fused)": ("adam", lambda p: AdamP(p, fused=True, **ADAM)),
        "ours AdamP (multi-tensor)": ("adam", lambda p: AdamP(p, foreach=True, **ADAM)),
        "ours AdamP (per-tensor)": ("adam", lambda p: AdamP(p, foreach=False, **ADAM)),
    }
    for fam, kw, tail in (("sgd", SGD, ""), ("sgd0", SGD_NO_WD, " no wd")):
        out.update(
            {
                f"torch SGD(momentum, foreach){tail}": (
                    fam,
                    lambda p, kw=kw: torch.optim.SGD(p, foreach=True, **kw),
                ),
                f"reference SGDP{tail}": (fam, lambda p, kw=kw: reference.SGDP(p, **kw)),
                f"ours SGDP (fused){tail}": (fam, lambda p, kw=kw: SGDP(p, fused=True, **kw)),
                f"ours SGDP (multi-tensor){tail}": (
                    fam,
                    lambda p, kw=kw: SGDP(p, foreach=True, **kw),
                ),
                f"ours SGDP (per-tensor){tail}": (
                    fam,
                    lambda p, kw=kw: SGDP(p, foreach=False, **kw),
                ),
            }
        )
    return out


def bench_model(
    name: str, model: nn.Module, rounds: int, warmup: int
) -> dict[str, tuple[float, float]]:
    grads = _fixed_grads(model)
    weights = [p.detach().clone() for p in model.parameters()]
    numel = sum(w.numel() for w in weights)
    print(f"\n## {name}: {numel / 1e6:.1f}M parameters in {len(weights)} tensors")

    steps: dict[str, Callable] = {}
    family: dict[str, str] = {}
    made = {}
    for label, (fam, factory) in _optimizers().items():
        params = [nn.Parameter(w.clone()) for w in weights]
        for p, g in zip(params, grads):
            p.grad = g  # shared: no optimizer here writes into gradients
        made[label] = (factory(params), params)
        steps[label], family[label] = made[label][0].step, fam
    start = time.perf_counter()
    ready = all(
        opt.fused_ready(timeout=None) for opt, _ in made.values() if hasattr(opt, "fused_ready")
    )
    print(
        f"fused steps {'compiled' if ready else 'NOT compiled (multi-tensor fallback)'} after "
        f"{time.perf_counter() - start:.1f} s of waiting for the background compilation"
    )
    opt, params = made["ours AdamP (multi-tensor)"]
    opt.step()
    views = [int(opt.state[p]["projection"]) for p in params]
    projected = (
        f"AdamP projects {sum(v > 0 for v in views)} of "
        f"{sum(p.ndim > 1 for p in params)} tensors with ndim > 1 "
        f"({sum(v == 1 for v in views)} channel, {sum(v == 2 for v in views)} layer)"
    )
    print(projected)

    labels = list(steps)
    times: dict[str, list[float]] = {k: [] for k in labels}
    for r in range(warmup + rounds):
        order = labels[r % len(labels) :] + labels[: r % len(labels)]
        for label in order:
            start = time.perf_counter()
            steps[label]()
            elapsed = time.perf_counter() - start
            if r >= warmup:
                times[label].append(elapsed)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}

    def ratio(a: str, b: str) -> float:
        """Median over rounds of time(a) / time(b): robust to load that drifts between rounds."""
        return statistics.median(x / y for x, y in zip(times[a], times[b]))

    print(f"{'optimizer':36s} {'median ms':>10s} {'IQR ms':>8s} {'x peer':>7s} {'ref/this':>9s}")
    ratios = {}
    for label in labels:
        q = statistics.quantiles(times[label], n=4)
        peer, ref = FAMILIES[family[label]]
        ratios[label] = (ratio(label, peer), ratio(ref, label))
        print(
            f"{label:36s} {med[label]:10.2f} {(q[2] - q[0]) * 1e3:8.2f} "
            f"{ratios[label][0]:7.2f} {ratios[label][1]:9.2f}"
        )
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--resnet-only", action="store_true", help="skip the ViT-tiny table")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"MALLOC_MMAP_THRESHOLD_={os.environ.get('MALLOC_MMAP_THRESHOLD_', '(unset)')} "
        f"MALLOC_TRIM_THRESHOLD_={os.environ.get('MALLOC_TRIM_THRESHOLD_', '(unset)')}"
    )
    print(f"Adam family: {ADAM}; SGD family: {SGD}, and {SGD_NO_WD} (no wd)")
    print(
        "x peer: time / the torch peer of the family (AdamW(fused), SGD(momentum, foreach) with\n"
        "or without weight decay), ref/this: the reference package's time / this one; both the\n"
        "median over rounds of same-round ratios"
    )
    results = {
        "ResNet-18": bench_model("ResNet-18 (CIFAR)", cifar_resnet18(), args.rounds, args.warmup),
    }
    if not args.resnet_only:
        results["ViT-tiny"] = bench_model("ViT-tiny", vit_tiny(), args.rounds, args.warmup)
    res = results["ResNet-18"]
    print("\nTargets on ResNet-18 (fused: compiled; multi: the default multi-tensor path):")
    checks = [
        ("fused AdamP / AdamW(fused)", res["ours AdamP (fused)"][0], "<= 2.2"),
        ("fused SGDP / SGD(momentum, foreach)", res["ours SGDP (fused)"][0], "<= 2"),
        ("fused SGDP / SGD(momentum, foreach), no wd", res["ours SGDP (fused) no wd"][0], "<= 2"),
        ("reference AdamP / multi AdamP", res["ours AdamP (multi-tensor)"][1], ">= 2"),
        ("reference SGDP / multi SGDP", res["ours SGDP (multi-tensor)"][1], ">= 2"),
        ("reference SGDP / multi SGDP, no wd", res["ours SGDP (multi-tensor) no wd"][1], ">= 2"),
    ]
    for name, value, target in checks:
        print(f"  {name:40s} {value:5.2f}  (target {target})")


if __name__ == "__main__":
    main()
