"""What does the lens cost? Two ResNet-18 training steps on CPU (batch 32, SGD momentum 0.9).

Not a test. Run: ``python benchmarks/lens_overhead.py [--rounds N] [--fast-rounds N]``.

Models: the CIFAR ResNet-18 (3x3 stem, 32x32 inputs: a slow step that hides the lens) and the
same network with the ImageNet stem (7x7 stride-2 conv + 3x3 stride-2 max-pool) at 32x32, a fast
step where the lens's own work shows. For each model, everything is measured in this one
process, interleaved (each round runs one step of every configuration in turn, in a rotating
order), and reported as medians with ratios to the plain step:

- plain:                   no lens
- lens every step:         ``attach(..., schedule=every(1))``
- lens default, steady:    ``attach(...)`` with the default schedule from step 1000 on (every
                           100th step recorded): the median step time, i.e. an unrecorded
                           step (each hook one Python call); the steady state adds one
                           isolated record's own cost per 100 steps (printed below)
- naive recorder:          a per-parameter loop computing the same metrics with ``.item()``
- W&B-style histograms:    what ``wandb.watch(model, log="all", log_freq=1)`` computes each
                           step (`HistogramLogger`)

Then, per model: the lens's own cost per record (pre hook + post hook, timed around the real
``optimizer.step()`` of real training steps), every step (w' kept: the next capture copies
nothing) and for an isolated record (the capture copies w), as multiples of one copy of every
parameter measured alone (the median of back-to-back copies, cache-warm) and
inside a training step (the first copy after the backward pass); the memory the lens holds as
a multiple of the tracked parameter bytes (`Lens.held_bytes`); what starting to record costs
(``attach`` plus the first recorded step, which allocates the snapshot and copies w, against a
plain step: medians over 5 fresh models that have already taken 3 plain steps); and the peak
RSS increase of attaching the lens, measured in a fresh process per model (after the lens's
code has run once on a tiny model, so module imports are not counted).

Optional: ``--cockpit-rounds N`` adds Cockpit's cheapest configuration ("economy", from
``cockpit-for-pytorch``) on the CIFAR model, against its own plain steps.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

import stepsize_lens
from stepsize_lens.experiments.models import CifarResNet, cifar_resnet18
from stepsize_lens.recording.schedules import every

BATCH = 32
Step = Callable[[torch.Tensor, torch.Tensor], None]


class ImageNetStemResNet18(CifarResNet):
    """ResNet-18 with the ImageNet stem: 7x7 stride-2 conv, BatchNorm, ReLU, 3x3 stride-2
    max-pool, then the four stages (11.7M parameters at 1000 classes, 62 tensors)."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__((2, 2, 2, 2), num_classes=num_classes)
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, stride=2, padding=1)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


MODELS = {
    "CIFAR ResNet-18 (3x3 stem)": (cifar_resnet18, 10),
    "ResNet-18, ImageNet stem (fast step)": (ImageNetStemResNet18, 1000),
}


def make_setup(model_name: str, seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer]:
    build, _ = MODELS[model_name]
    torch.manual_seed(seed)
    model = build()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    return model, optimizer


def batches(model_name: str, seed: int):
    classes = MODELS[model_name][1]
    gen = torch.Generator().manual_seed(seed)
    while True:
        yield (
            torch.randn(BATCH, 3, 32, 32, generator=gen),
            torch.randint(0, classes, (BATCH,), generator=gen),
        )


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x, y) -> None:
    loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def median_ms(values: list[float]) -> float:
    return 1e3 * statistics.median(values)


# -- peers ------------------------------------------------------------------------------------
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


# -- measurements -----------------------------------------------------------------------------
def configurations(model_name: str) -> tuple[dict[str, Step], list[stepsize_lens.Lens]]:
    steps: dict[str, Step] = {}
    lenses = []
    for name in (
        "plain",
        "lens every step",
        "lens default, steady",
        "naive recorder",
        "W&B-style histograms",
    ):
        model, optimizer = make_setup(model_name)
        if name == "lens every step":
            lenses.append(stepsize_lens.attach(model, optimizer, path=None, schedule=every(1)))
        elif name == "lens default, steady":
            lens = stepsize_lens.attach(model, optimizer, path=None)
            lens.step = 1000 + 37  # every 100th step from here on; the first record is 63 away
            lenses.append(lens)
        elif name == "naive recorder":
            NaiveRecorder(optimizer)
        elif name == "W&B-style histograms":
            HistogramLogger(optimizer)
        steps[name] = lambda x, y, m=model, o=optimizer: train_step(m, o, x, y)
    return steps, lenses


def timed_rounds(steps: dict[str, Step], data, rounds: int, warm_up: int) -> dict[str, list[float]]:
    """Seconds per step of each configuration, interleaved (rotating order), same batch per
    round."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    names = list(steps)
    for round_index in range(rounds + warm_up):
        x, y = next(data)
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            t0 = time.perf_counter()
            steps[name](x, y)
            if round_index >= warm_up:
                times[name].append(time.perf_counter() - t0)
    return times


def own_cost(model_name: str, reps: int) -> dict[str, float]:
    """Median ms of the lens's own work per record (its hooks, timed around the real
    ``optimizer.step()`` of real training steps), and of one parameter copy alone (the median
    of back-to-back copies) and inside a training step (the first copy after the backward
    pass).

    - every step: a record that follows a record (the previous post hook left w' in the
      snapshot, so the capture copies nothing and this post hook keeps w' for the next);
    - isolated: a record after an unrecorded step (the capture copies w; nothing is kept), as on
      the default schedule.
    """
    model, optimizer = make_setup(model_name, seed=1)
    lens = stepsize_lens.attach(model, optimizer, path=None, schedule=every(1))
    lens.detach()  # we call its hooks ourselves, around the real step
    params = [p for group in optimizer.param_groups for p in group["params"]]
    copies = [torch.empty_like(p) for p in params]
    data = batches(model_name, seed=2)
    out: dict[str, list[float]] = {
        "every step": [],
        "isolated": [],
        "copy alone": [],
        "copy in a step": [],
    }

    def backward() -> None:
        x, y = next(data)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()

    def recorded(keep_next: bool) -> float:
        backward()
        lens.schedule = every(1) if keep_next else (lambda step: step % 2 == 1)
        if not keep_next:
            lens.step = 0  # records step 1; step 2 will not be recorded: nothing kept
        t0 = time.perf_counter()
        lens._pre_step(optimizer, (), {})
        t1 = time.perf_counter()
        optimizer.step()
        t2 = time.perf_counter()
        lens._post_step(optimizer, (), {})
        return (t1 - t0) + (time.perf_counter() - t2)

    def copies_back_to_back(count: int = 9) -> float:
        times = []
        for _ in range(count):
            t0 = time.perf_counter()
            torch._foreach_copy_(copies, params)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    for rep in range(reps + 2):
        recorded(keep_next=True)  # leaves w' in the snapshot
        every_step = recorded(keep_next=True)
        backward()
        optimizer.step()  # an unrecorded step: the parameters move on
        isolated = recorded(keep_next=False)
        if rep >= 2:  # the first rounds allocate and warm up
            out["every step"].append(every_step)
            out["isolated"].append(isolated)
        backward()
        t0 = time.perf_counter()
        torch._foreach_copy_(copies, params)
        in_step = time.perf_counter() - t0
        alone = copies_back_to_back()
        if rep >= 2:
            out["copy in a step"].append(in_step)
            out["copy alone"].append(alone)
    lens.close()
    return {name: median_ms(values) for name, values in out.items()}


def first_record(model_name: str, reps: int) -> dict[str, float]:
    """The cost of starting to record: ``attach`` plus the first recorded step (the snapshot's
    buffers allocated, w copied), against the plain steps around it, each on a model that has
    already taken 3 plain steps (its own first-step costs excluded). Medians over ``reps``
    fresh models, in ms."""
    out: dict[str, list[float]] = {"plain step": [], "attach": [], "first recorded step": []}
    for rep in range(reps):
        model, optimizer = make_setup(model_name, seed=10 + rep)
        data = batches(model_name, seed=10 + rep)
        for _ in range(3):
            train_step(model, optimizer, *next(data))
        t0 = time.perf_counter()
        train_step(model, optimizer, *next(data))
        out["plain step"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        lens = stepsize_lens.attach(model, optimizer, path=None, schedule=every(1))
        out["attach"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        train_step(model, optimizer, *next(data))
        out["first recorded step"].append(time.perf_counter() - t0)
        lens.close()
    return {name: median_ms(values) for name, values in out.items()}


def rss_probe(model_name: str) -> dict[str, float]:
    """In this (fresh) process: peak RSS before and after attaching the lens and recording."""
    torch.set_num_threads(1)
    model, optimizer = make_setup(model_name)
    data = batches(model_name, seed=3)

    def peak() -> int:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        return 0

    for _ in range(3):
        train_step(model, optimizer, *next(data))
    # the lens's code imported and run once (a fixed cost of a few MB, not per parameter)
    tiny = nn.Linear(4, 4)
    tiny_optimizer = torch.optim.SGD(tiny.parameters(), lr=0.1)
    tiny_lens = stepsize_lens.attach(tiny, tiny_optimizer, path=None, schedule=every(1))
    for _ in range(2):
        train_step(tiny, tiny_optimizer, torch.randn(2, 4), torch.randint(0, 4, (2,)))
    tiny_lens.close()
    before = peak()
    lens = stepsize_lens.attach(model, optimizer, path=None, schedule=every(1))
    for _ in range(3):
        train_step(model, optimizer, *next(data))
    after = peak()
    return {
        "rss_increase": after - before,
        "held": lens.held_bytes,
        "tracked": lens.tracked_bytes,
    }


def rss_in_fresh_process(model_name: str) -> dict[str, float] | None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [os.path.dirname(os.path.dirname(os.path.abspath(__file__))), *sys.path[1:2]]
        ),
    }
    done = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--rss-probe", model_name],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    if done.returncode != 0:
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def report_model(model_name: str, rounds: int) -> None:
    steps, lenses = configurations(model_name)
    times = timed_rounds(steps, batches(model_name, seed=0), rounds, warm_up=3)
    own = own_cost(model_name, reps=max(10, rounds // 2))
    model, _ = make_setup(model_name)
    params = sum(p.numel() for p in model.parameters())
    tensors = len(list(model.parameters()))
    print(f"\n== {model_name}: {params / 1e6:.1f}M parameters, {tensors} tensors ==")
    plain = median_ms(times["plain"])
    print(f"{'configuration':<34}{'ms/step':>10}{'x plain':>10}")
    for name, values in times.items():
        ms = median_ms(values)
        print(f"{name:<34}{ms:>10.1f}{ms / plain:>10.3f}")
    copy_alone, copy_step = own["copy alone"], own["copy in a step"]
    print(
        f"parameter copy: {copy_alone:.2f} ms alone (back to back), {copy_step:.2f} ms inside "
        "a training step"
    )
    for kind in ("every step", "isolated"):
        ms = own[kind]
        print(
            f"lens own cost per record, {kind + ':':<20}{ms:>7.2f} ms = "
            f"{ms / copy_alone:>4.1f}x the copy alone, {ms / copy_step:>4.1f}x the copy in a step"
        )
    steady = (plain + own["isolated"] / 100) / plain
    print(
        "default schedule from step 1000 (every 100th step recorded): the unrecorded steps "
        "are the 'lens default, steady' line above; with one isolated record per 100 steps, "
        f"(plain + record / 100) / plain = {steady:.4f}x"
    )
    first = first_record(model_name, reps=5)
    cost = first["attach"] + first["first recorded step"] - first["plain step"]
    print(
        f"first record: attach {first['attach']:.1f} ms + first recorded step "
        f"{first['first recorded step']:.1f} ms, against a plain step of "
        f"{first['plain step']:.1f} ms: the start costs {cost / plain:.2f} plain steps more"
    )
    records = ", ".join(f"{lens.num_records}" for lens in lenses)
    print(f"records taken by the lenses above (every step, default): {records}")
    probe = rss_in_fresh_process(model_name)
    if probe is None:
        print("memory: the fresh-process probe failed")
    else:
        rss = probe["rss_increase"]
        print(
            f"memory held by the lens: {probe['held'] / probe['tracked']:.3f}x the tracked "
            f"parameter bytes ({probe['tracked'] / 1e6:.1f} MB); peak RSS increase "
            f"{rss / 1e6:.1f} MB = {rss / probe['tracked']:.2f}x"
        )
    for lens in lenses:
        lens.close()


def cockpit_block(rounds: int) -> None:
    """Cockpit economy on the CIFAR model against its own plain steps; each Cockpit step
    allocates gigabytes, so a discarded plain step follows each one."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # cockpit imports the deprecated pkg_resources
            from backpack import extend
            from cockpit import Cockpit
            from cockpit.utils.configuration import configuration
    except ImportError as exc:
        print(f"Cockpit economy: not available ({exc}); pip install cockpit-for-pytorch")
        return
    name = "CIFAR ResNet-18 (3x3 stem)"
    model, optimizer = make_setup(name)
    model = extend(model)
    loss_fn = extend(nn.CrossEntropyLoss())
    per_example = nn.CrossEntropyLoss(reduction="none")
    cockpit = Cockpit(model.parameters(), quantities=configuration("economy"))
    counter = itertools.count()

    def cockpit_step(x: torch.Tensor, y: torch.Tensor) -> None:
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
            warnings.simplefilter("ignore")  # BackPACK's BatchNorm and container warnings
            with cockpit(global_step, info=info):
                loss.backward(create_graph=cockpit.create_graph(global_step))
        optimizer.step()

    plain_model, plain_optimizer = make_setup(name)

    def plain_step(x: torch.Tensor, y: torch.Tensor) -> None:
        train_step(plain_model, plain_optimizer, x, y)

    data = batches(name, seed=4)
    kept: dict[str, list[float]] = {"plain": [], "Cockpit economy": []}
    for round_index in range(rounds + 1):
        x, y = next(data)
        for label, step in (("plain", plain_step), ("Cockpit economy", cockpit_step)):
            plain_step(x, y)  # settle: absorbs the page faults after the previous Cockpit step
            t0 = time.perf_counter()
            step(x, y)
            if round_index >= 1:
                kept[label].append(time.perf_counter() - t0)
    plain = median_ms(kept["plain"])
    cockpit_ms = median_ms(kept["Cockpit economy"])
    print(f"\nCockpit block, {name} ({rounds} rounds after 1 warm-up):")
    print(f"{'plain':<34}{plain:>10.1f}{1.0:>10.3f}")
    print(f"{'Cockpit economy':<34}{cockpit_ms:>10.1f}{cockpit_ms / plain:>10.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=16, help="CIFAR model rounds")
    parser.add_argument("--fast-rounds", type=int, default=100, help="fast model rounds")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cockpit-rounds", type=int, default=0, help="0: skip Cockpit")
    parser.add_argument("--rss-probe", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_probe:
        print(json.dumps(rss_probe(args.rss_probe)))
        return
    torch.set_num_threads(args.threads)
    print(
        f"CPU, {torch.get_num_threads()} threads, torch {torch.__version__}, batch {BATCH}, "
        "SGD momentum 0.9, weight decay 5e-4; allocator: "
        f"MALLOC_MMAP_THRESHOLD_={os.environ.get('MALLOC_MMAP_THRESHOLD_', 'unset')} "
        f"MALLOC_TRIM_THRESHOLD_={os.environ.get('MALLOC_TRIM_THRESHOLD_', 'unset')}"
    )
    for model_name, rounds in zip(MODELS, (args.rounds, args.fast_rounds)):
        report_model(model_name, rounds)
        load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
        print(f"(load average after this model: {load}; other processes share these cores)")
    if args.cockpit_rounds > 0:
        cockpit_block(args.cockpit_rounds)


if __name__ == "__main__":
    main()
