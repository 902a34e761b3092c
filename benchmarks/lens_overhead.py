"""What does the lens cost? CIFAR ResNet-18 training step on CPU (batch 32, SGD momentum 0.9).

Not a test. Run: ``python benchmarks/lens_overhead.py [--steps N]``. Everything is measured in
this one process, interleaved (each round runs one step of every configuration in turn), and
reported as medians with ratios to the plain step:

- plain:             no lens
- lens every step:   ``attach(..., schedule=every(1))``
- lens default:      ``attach(...)`` with the default schedule, in its every-10th-step phase
                     (steps 100-999); from step 1000 on it records every 100th step
- lens every step, fused: the same with ``fused=True`` (a torch.compile-generated float64
                     reduction kernel; compiled during warm-up)
- naive recorder:    a per-parameter loop computing the same metrics with ``.norm().item()``,
                     ``.dot().item()`` and friends, the way hand-written loggers do
- parameter copy:    copying every parameter once (the floor for any snapshot)

and, separately, each recorder's own cost per recorded step (pre hook + post hook, timed
directly around a real ``optimizer.step()``) as a multiple of the parameter copy.

Peers (``--peer-rounds N``, 0 skips them; ``--cockpit-rounds N``), on the same model and step,
with their own plain step measured alongside: the lens and the W&B-style logger interleaved with
plain steps; Cockpit, whose steps are far slower and allocate gigabytes of per-example gradients,
in a second block against its own plain steps, each measured step preceded by an unmeasured
plain step that absorbs the page faults the previous Cockpit step leaves behind:

- W&B-style histograms: what ``wandb.watch(model, log="all", log_freq=1)`` computes each step,
  written out here (`HistogramLogger`): per parameter a 64-bin ``torch.histc`` of the weights
  and of the gradient between their min and max, with the host syncs and copies that involves
- Cockpit economy: ``cockpit-for-pytorch``'s cheapest configuration (``configuration("economy")``:
  Alpha, Distance, GradHist1d, GradNorm, InnerTest, Loss, NormTest, OrthoTest, UpdateSize),
  computed every step, on the model extended with BackPACK (first-order extensions only, so no
  graph converter is needed)
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import statistics
import time
import warnings
from collections.abc import Callable

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
        self.handles = [
            optimizer.register_step_pre_hook(self.pre),
            optimizer.register_step_post_hook(self.post),
        ]

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


def measure_record_cost(reps: int) -> tuple[dict[str, float], float]:
    """Median ms of each recorder's own work per recorded step (pre hook + post hook, timed
    around a real ``optimizer.step()``, interleaved), and of one parameter copy."""
    model, optimizer = make_setup()
    x, y = torch.randn(BATCH, 3, 32, 32), torch.randint(0, 10, (BATCH,))
    train_step(model, optimizer, x, y)  # grads and momentum exist
    recorders = {}
    for name, fused in (("lens", False), ("lens, fused", True)):
        lens = stepsize_lens.attach(model, optimizer, path=None, schedule=every(1), fused=fused)
        lens.detach()  # we call the hooks ourselves, around the real step
        recorders[name] = (lens._pre_step, lens._post_step)
    naive = NaiveRecorder(optimizer)
    for handle in naive.handles:
        handle.remove()
    recorders["naive recorder"] = (naive.pre, naive.post)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    copies = [torch.empty_like(p) for p in params]
    own: dict[str, list[float]] = {name: [] for name in recorders}
    copy = []
    for rep in range(reps + 1):
        for name, (pre, post) in recorders.items():
            t0 = time.perf_counter()
            pre(optimizer, (), {})
            t1 = time.perf_counter()
            optimizer.step()
            t2 = time.perf_counter()
            post(optimizer, (), {})
            t3 = time.perf_counter()
            if rep:  # the first round allocates buffers (and compiles the fused kernel)
                own[name].append((t1 - t0) + (t3 - t2))
        t0 = time.perf_counter()
        with torch.no_grad():
            torch._foreach_copy_(copies, params)
        if rep:
            copy.append(time.perf_counter() - t0)
    return {name: median_ms(values) for name, values in own.items()}, median_ms(copy)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="measured rounds (after 3 warm-up)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--peer-rounds", type=int, default=10, help="measured rounds of the peers (0: skip them)"
    )
    parser.add_argument(
        "--cockpit-rounds", type=int, default=3, help="measured Cockpit steps (0: skip Cockpit)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    configs: dict[str, tuple] = {}
    for name in (
        "plain",
        "lens every step",
        "lens every step, fused",
        "lens default",
        "naive recorder",
    ):
        model, optimizer = make_setup()
        configs[name] = (model, optimizer)
    every_lens = stepsize_lens.attach(*configs["lens every step"], path=None, schedule=every(1))
    stepsize_lens.attach(
        *configs["lens every step, fused"], path=None, schedule=every(1), fused=True
    )
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
    own, copy_ms = measure_record_cost(reps=max(10, args.steps))

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
    print("own cost per recorded step (pre + post hook), interleaved:")
    for name, ms in own.items():
        print(f"  {name:<32}{ms:>10.2f} ms = {ms / copy_ms:>5.1f}x the parameter copy")
    print("  (target for the lens: <= 4x the parameter copy)")
    steady = (plain + own["lens"] / 100) / plain
    print(
        f"default schedule from step 1000 (every 100th step), derived from the two lines above: "
        f"{steady:.4f}x plain"
    )
    print(f"records: every-step lens {every_lens.num_records}, default {default_lens.num_records}")
    if args.peer_rounds > 0:
        print_peers(args.peer_rounds, args.cockpit_rounds)


# -- peers ----------------------------------------------------------------------------------------
class HistogramLogger:
    """What ``wandb.watch(model, log="all", log_freq=1)`` computes at every step, without wandb.

    For every parameter, its weights and its gradient: drop non-finite values, take min and max
    (two host syncs), a 64-bin ``torch.histc`` over that range, and the counts and bin edges
    copied to host lists, which is what a W&B histogram is built from.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, bins: int = 64) -> None:
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        self.bins = bins
        self.histograms: list[tuple[list[float], list[float]]] = []
        optimizer.register_step_pre_hook(self.pre)

    def histogram(self, tensor: torch.Tensor) -> tuple[list[float], list[float]]:
        flat = tensor.detach().reshape(-1).float()
        flat = flat[torch.isfinite(flat)]
        low, high = flat.min().item(), flat.max().item()
        counts = flat.histc(bins=self.bins, min=low, max=high)
        edges = torch.linspace(low, high, steps=self.bins + 1)
        return counts.cpu().tolist(), edges.tolist()

    def pre(self, *_: object) -> None:
        self.histograms.clear()
        for p in self.params:
            self.histograms.append(self.histogram(p))
            if p.grad is not None:
                self.histograms.append(self.histogram(p.grad))


def cockpit_setup():
    """A training-step function ``(x, y) -> None`` with Cockpit economy tracking every step, on
    the benchmark model, or a string saying why Cockpit cannot run here."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # cockpit imports the deprecated pkg_resources
            from backpack import extend
            from cockpit import Cockpit
            from cockpit.utils.configuration import configuration
    except ImportError as exc:
        return f"not available ({exc}); pip install cockpit-for-pytorch"
    model, optimizer = make_setup()
    model = extend(model)
    loss_fn = extend(nn.CrossEntropyLoss())
    per_example = nn.CrossEntropyLoss(reduction="none")
    cockpit = Cockpit(model.parameters(), quantities=configuration("economy"))
    counter = itertools.count()

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        global_step = next(counter)
        outputs = model(x)
        loss = loss_fn(outputs, y)
        info = {
            "batch_size": x.shape[0],
            "individual_losses": per_example(outputs, y),
            "loss": loss,
            "optimizer": optimizer,
        }
        optimizer.zero_grad(set_to_none=True)
        with warnings.catch_warnings():
            # BackPACK warns that BatchNorm in train mode mixes samples (so per-example
            # gradients are not meaningful) and that container modules have no extension
            warnings.simplefilter("ignore")
            with cockpit(global_step, info=info):
                loss.backward(create_graph=cockpit.create_graph(global_step))
        optimizer.step()

    return step


def _timed_rounds(
    steps: dict[str, Callable[[torch.Tensor, torch.Tensor], None]],
    rounds: int,
    seed: int,
    warm_up: int = 1,
) -> dict[str, list[float]]:
    """Seconds per step of each configuration, interleaved, same batch within a round."""
    gen = torch.Generator().manual_seed(seed)
    times: dict[str, list[float]] = {name: [] for name in steps}
    names = list(steps)
    for round_index in range(rounds + warm_up):
        x = torch.randn(BATCH, 3, 32, 32, generator=gen)
        y = torch.randint(0, 10, (BATCH,), generator=gen)
        order = names[round_index % len(names) :] + names[: round_index % len(names)]
        for name in order:
            t0 = time.perf_counter()
            steps[name](x, y)
            if round_index >= warm_up:
                times[name].append(time.perf_counter() - t0)
    return times


def _plain_step() -> Callable[[torch.Tensor, torch.Tensor], None]:
    model, optimizer = make_setup()
    return lambda x, y: train_step(model, optimizer, x, y)


def print_peers(rounds: int, cockpit_rounds: int) -> None:
    """Peers against the plain step, in two blocks of interleaved rounds.

    Block 1: plain, lens every step, W&B-style histograms. Block 2: Cockpit economy against
    its own plain step; each Cockpit step allocates gigabytes (per-example gradients), so the
    step after it pays page faults: a discarded plain step follows every Cockpit step.
    """
    steps: dict[str, Callable[[torch.Tensor, torch.Tensor], None]] = {"plain": _plain_step()}
    model, optimizer = make_setup()
    stepsize_lens.attach(model, optimizer, path=None, schedule=every(1))
    steps["lens every step"] = lambda x, y: train_step(model, optimizer, x, y)
    hist_model, hist_optimizer = make_setup()
    HistogramLogger(hist_optimizer)
    steps["W&B-style histograms"] = lambda x, y: train_step(hist_model, hist_optimizer, x, y)
    times = _timed_rounds(steps, rounds, seed=1, warm_up=2)
    print(f"peers, same model and step ({rounds} interleaved rounds after 2 warm-up):")
    print(f"{'configuration':<34}{'ms/step':>10}{'x plain':>10}")
    plain = median_ms(times["plain"])
    for name, values in times.items():
        print(f"{name:<34}{median_ms(values):>10.1f}{median_ms(values) / plain:>10.3f}")

    cockpit = cockpit_setup()
    if not callable(cockpit):
        print(f"Cockpit economy: {cockpit}")
        return
    if cockpit_rounds <= 0:
        return
    plain_step = steps["plain"]
    block = {"plain": plain_step, "Cockpit economy": cockpit}
    gen = torch.Generator().manual_seed(2)
    kept: dict[str, list[float]] = {name: [] for name in block}
    for round_index in range(cockpit_rounds + 1):
        x = torch.randn(BATCH, 3, 32, 32, generator=gen)
        y = torch.randint(0, 10, (BATCH,), generator=gen)
        for name, step in block.items():
            plain_step(x, y)  # settle: absorbs the page faults after the previous Cockpit step
            t0 = time.perf_counter()
            step(x, y)
            if round_index >= 1:
                kept[name].append(time.perf_counter() - t0)
    plain = median_ms(kept["plain"])
    cockpit_ms = median_ms(kept["Cockpit economy"])
    print(f"Cockpit block ({cockpit_rounds} rounds after 1 warm-up, each step after a plain one):")
    print(f"{'plain':<34}{plain:>10.1f}{1.0:>10.3f}")
    print(f"{'Cockpit economy':<34}{cockpit_ms:>10.1f}{cockpit_ms / plain:>10.3f}")


if __name__ == "__main__":
    main()
