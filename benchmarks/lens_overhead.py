"""What does the lens cost? CIFAR ResNet-18 training step on CPU (batch 32, SGD momentum 0.9).

Not a test. Run: ``python benchmarks/lens_overhead.py [--steps N]``. Everything is measured in
this one process, interleaved (each round runs one step of every configuration in turn), and
reported as medians with ratios to the plain step:

- plain:             no lens
- lens every step:   ``attach(..., schedule=every(1))``
- lens default:      ``attach(...)`` with the default schedule, in its every-10th-step phase
                     (steps 100-999); from step 1000 on it records every 100th step
- naive recorder:    a per-parameter loop computing the same metrics with ``.norm().item()``,
                     ``.dot().item()`` and friends, the way hand-written loggers do
- parameter copy:    copying every parameter once (the floor for any snapshot)

and, separately, the lens's own cost per recorded step (pre hook + post hook, timed directly
around a real ``optimizer.step()``) as a multiple of the parameter copy.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time

import torch
from torch import nn

import stepsize_lens
from stepsize_lens.models import cifar_resnet18
from stepsize_lens.schedules import every

BATCH = 32


class NaiveRecorder:
    """Per-parameter Python loop with one host sync per number: what a quick logger looks like."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        self.lr = optimizer.param_groups[0]["lr"]
        self.rows: list[dict[str, float]] = []
        optimizer.register_step_pre_hook(self.pre)
        optimizer.register_step_post_hook(self.post)

    def pre(self, *_: object) -> None:
        self.before = [(p.detach().clone(), p.grad.detach().clone()) for p in self.params]

    def post(self, *_: object) -> None:
        for p, (w, g) in zip(self.params, self.before):
            d = p.detach() - w
            wn, gn, dn = w.norm().item(), g.norm().item(), d.norm().item()
            wg, wd = (
                torch.dot(w.flatten(), g.flatten()).item(),
                torch.dot(w.flatten(), d.flatten()).item(),
            )
            radial = wd / wn if wn else math.nan
            row = {
                "weight_norm": wn,
                "grad_norm": gn,
                "update_norm": dn,
                "relative_update": dn / wn if wn else math.nan,
                "angular_update": math.atan2(
                    math.sqrt(max(dn * dn - radial * radial, 0)), wn + radial
                ),
                "effective_lr": self.lr / wn**2 if wn else math.nan,
                "cos_grad": wg / (wn * gn) if wn * gn else math.nan,
                "cos_update": wd / (wn * dn) if wn * dn else math.nan,
                "norm_growth": 2 * wd + dn * dn,
            }
            if p.ndim >= 2:
                wr, gr, dr = w.flatten(1), g.flatten(1), d.flatten(1)
                rn = wr.norm(dim=1)
                row["channel_cos_grad_max"] = (
                    ((wr * gr).sum(1) / (rn * gr.norm(dim=1))).abs().max().item()
                )
                row["channel_weight_norm"] = rn.mean().item()
                rad = (wr * dr).sum(1) / rn
                perp = (dr.norm(dim=1) ** 2 - rad**2).clamp_min(0).sqrt()
                row["channel_angular_update"] = torch.atan2(perp, rn + rad).mean().item()
            self.rows.append(row)


def make_setup(seed: int = 0):
    torch.manual_seed(seed)
    model = cifar_resnet18()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    return model, optimizer


def train_step(model, optimizer, x, y) -> None:
    loss = nn.functional.cross_entropy(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def median_ms(values: list[float]) -> float:
    return 1e3 * statistics.median(values)


def measure_record_cost(reps: int) -> tuple[float, float]:
    """(median ms of the lens's own work per recorded step, median ms of one parameter copy)."""
    model, optimizer = make_setup()
    x, y = torch.randn(BATCH, 3, 32, 32), torch.randint(0, 10, (BATCH,))
    train_step(model, optimizer, x, y)  # grads and momentum exist
    lens = stepsize_lens.attach(model, optimizer, path=None, schedule=every(1))
    lens.detach()  # we call the hooks ourselves, around the real step
    params = [p for g in optimizer.param_groups for p in g["params"]]
    copies = [torch.empty_like(p) for p in params]
    own, copy = [], []
    for rep in range(reps + 1):
        t0 = time.perf_counter()
        lens._pre_step(optimizer, (), {})
        t1 = time.perf_counter()
        optimizer.step()
        t2 = time.perf_counter()
        lens._post_step(optimizer, (), {})
        t3 = time.perf_counter()
        with torch.no_grad():
            torch._foreach_copy_(copies, params)
        t4 = time.perf_counter()
        if rep:  # the first round allocates the snapshot buffers
            own.append((t1 - t0) + (t3 - t2))
            copy.append(t4 - t3)
    lens.close()
    return median_ms(own), median_ms(copy)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="measured rounds (after 3 warm-up)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    configs: dict[str, tuple] = {}
    for name in ("plain", "lens every step", "lens default", "naive recorder"):
        model, optimizer = make_setup()
        configs[name] = (model, optimizer)
    every_lens = stepsize_lens.attach(*configs["lens every step"], path=None, schedule=every(1))
    default_lens = stepsize_lens.attach(*configs["lens default"], path=None)
    default_lens.step = 100  # start in the every-10th-step phase of the default schedule
    NaiveRecorder(configs["naive recorder"][1])

    gen = torch.Generator().manual_seed(0)
    times: dict[str, list[float]] = {name: [] for name in configs}
    names = list(configs)
    for round_index in range(args.steps + 3):
        x = torch.randn(BATCH, 3, 32, 32, generator=gen)
        y = torch.randint(0, 10, (BATCH,), generator=gen)
        order = names[round_index % len(names) :] + names[: round_index % len(names)]
        for name in order:
            t0 = time.perf_counter()
            train_step(*configs[name], x, y)
            if round_index >= 3:
                times[name].append(time.perf_counter() - t0)
    own_ms, copy_ms = measure_record_cost(reps=max(10, args.steps))

    params = sum(p.numel() for p in configs["plain"][0].parameters())
    print(
        f"CIFAR ResNet-18 ({params / 1e6:.1f}M parameters, 62 tensors), batch {BATCH}, "
        f"SGD momentum, CPU, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"{args.steps} interleaved rounds"
    )
    print(
        f"allocator: MALLOC_MMAP_THRESHOLD_={os.environ.get('MALLOC_MMAP_THRESHOLD_', 'unset')} "
        f"MALLOC_TRIM_THRESHOLD_={os.environ.get('MALLOC_TRIM_THRESHOLD_', 'unset')}"
    )
    plain = median_ms(times["plain"])
    print(f"{'configuration':<34}{'ms/step':>10}{'x plain':>10}")
    for name in names:
        ms = median_ms(times[name])
        print(f"{name:<34}{ms:>10.1f}{ms / plain:>10.3f}")
    print(f"{'parameter copy (floor)':<34}{copy_ms:>10.2f}{copy_ms / plain:>10.4f}")
    print(
        f"lens's own cost per recorded step: {own_ms:.2f} ms = {own_ms / copy_ms:.1f}x the "
        f"parameter copy (target <= 4x)"
    )
    steady = (plain + own_ms / 100) / plain
    print(
        f"default schedule from step 1000 (every 100th step), derived from the two lines above: "
        f"{steady:.4f}x plain"
    )
    print(f"records: every-step lens {every_lens.num_records}, default {default_lens.num_records}")


if __name__ == "__main__":
    main()
