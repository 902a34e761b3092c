"""The lens on one CUDA GPU: overhead, memory, no host synchronisation, AdamP/SGDP routes.

Not a test. Run on a machine with a GPU: ``python benchmarks/gpu_check.py`` (about 2-4 minutes
on one H200; nothing is downloaded: both models are built here from torch alone). Without CUDA
it says so and exits with code 0; ``--dry-run`` runs the same code on the CPU with tiny models
(no timing or memory targets apply there) to check the script itself.

Checks, printed as one table:

1. Two models, bf16 autocast, each against its own plain step (blocks of steps interleaved,
   the GPU synchronised only at block ends, so the CPU runs ahead as in real training):
   - ResNet-50 (torchvision layout, BatchNorm), 224x224, batch 64, SGD momentum 0.9;
   - a GPT-2-small-sized decoder (12 layers, width 768, 12 heads, vocab 50257, tied
     embedding, 124M parameters), batch 8 x 512 tokens, AdamW.
   For each: the step time ratio with the lens recording every step and on its default
   schedule in steady state (every 100th step; measured over 100 steps, and derived from one
   record's cost), and the memory the lens holds as a multiple of the parameter bytes (from
   ``torch.cuda.memory_allocated``) and its peak extra during a record (from
   ``torch.cuda.max_memory_allocated``).
2. ``torch.cuda.set_sync_debug_mode("error")`` over 100 recorded steps of each model: any host
   synchronisation in the recording path raises. A plain step is checked first, so a model
   that synchronises by itself is reported as such rather than blamed on the lens.
3. AdamP and SGDP on CUDA: the default multi-tensor route (``foreach=None``) against the
   per-tensor reference route (``foreach=False``), same gradients, 20 steps: the largest
   relative parameter difference and whether the applied views agree.
4. Kernel launches (every dispatched torch op that is not a view, counted with a
   ``TorchDispatchMode``, `stepsize_lens._launches`; on the CPU with the accelerator paths
   forced, ``STEPSIZE_LENS_DEVICE_PATHS=accelerator``), and ops that make the host wait:
   - one lens record on ResNet-18, ViT-tiny and ResNet-50 (the full models, also in a dry
     run: a step with the lens minus the same step without it, SGD momentum, foreach);
   - one optimizer step on ResNet-18's parameters for each path: AdamP and SGDP per-tensor
     (``foreach=False``) and multi-tensor (default), beside torch's AdamW (foreach, fused) and
     SGD momentum (foreach). The compiled path (``fused=True``) runs inductor's kernels, which
     a dispatch mode does not see: it is timed instead.
5. On CUDA, the compiled route: ``AdamP(fused=True)`` and ``SGDP(fused=True)`` once compiled
   (``fused_ready``) against their multi-tensor path and torch's AdamW(fused) / SGD(foreach),
   ms per step on ResNet-50's parameters.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import stepsize_lens
from stepsize_lens._device_paths import ENV_VAR
from stepsize_lens._launches import count_launches
from stepsize_lens.experiments.models import CifarResNet, vit_tiny
from stepsize_lens.optim import SGDP, AdamP
from stepsize_lens.recording.schedules import every


# -- models -------------------------------------------------------------------------------------
class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or in_planes != out:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(self.bn2(self.conv2(h)))
        return F.relu(self.bn3(self.conv3(h)) + self.downsample(x))


class ResNet(nn.Module):
    """ResNet-50 (blocks 3-4-6-3, 25.6M parameters at 1000 classes); ``width`` scales it down
    for the dry run."""

    def __init__(self, blocks=(3, 4, 6, 3), width: int = 64, classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        layers, in_planes = [], width
        for index, count in enumerate(blocks):
            planes = width * 2**index
            for block in range(count):
                stride = 2 if index > 0 and block == 0 else 1
                layers.append(Bottleneck(in_planes, planes, stride))
                in_planes = planes * Bottleneck.expansion
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(in_planes, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, stride=2, padding=1)
        return self.fc(F.adaptive_avg_pool2d(self.layers(h), 1).flatten(1))


class Block(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.ln2 = nn.LayerNorm(width)
        self.fc = nn.Linear(width, 4 * width)
        self.out = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(width, dim=2)
        q, k, v = (t.view(batch, tokens, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(attended.transpose(1, 2).reshape(batch, tokens, width))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class GPT(nn.Module):
    """A GPT-2-small-sized decoder (124M parameters at the defaults), embedding tied."""

    def __init__(
        self, vocab: int = 50257, context: int = 1024, width: int = 768, layers: int = 12
    ) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, width)
        self.positions = nn.Embedding(context, width)
        self.blocks = nn.ModuleList(Block(width, max(1, width // 64)) for _ in range(layers))
        self.ln = nn.LayerNorm(width)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(idx.shape[1], device=idx.device)
        x = self.tokens(idx) + self.positions(positions)
        for block in self.blocks:
            x = block(x)
        return self.ln(x) @ self.tokens.weight.T


@dataclass
class Workload:
    name: str
    build: Callable[[], nn.Module]
    optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer]
    batch: Callable[[torch.Generator, torch.device], tuple[torch.Tensor, torch.Tensor]]


def workloads(dry: bool) -> list[Workload]:
    if dry:
        image, batch, vocab, tokens = 32, 4, 97, 16
        resnet = lambda: ResNet((1, 1, 1, 1), width=8, classes=10)  # noqa: E731
        gpt = lambda: GPT(vocab=vocab, context=64, width=32, layers=2)  # noqa: E731
        classes = 10
    else:
        image, batch, vocab, tokens = 224, 64, 50257, 512
        resnet, gpt, classes = ResNet, GPT, 1000

    def images(gen: torch.Generator, device: torch.device):
        x = torch.randn(batch, 3, image, image, generator=gen).to(device)
        return x, torch.randint(0, classes, (batch,), generator=gen).to(device)

    def text(gen: torch.Generator, device: torch.device):
        idx = torch.randint(0, vocab, (8 if not dry else 2, tokens + 1), generator=gen)
        return idx[:, :-1].to(device), idx[:, 1:].to(device)

    return [
        Workload(
            "ResNet-50, bf16 autocast" + (" (dry run: tiny)" if dry else ""),
            resnet,
            lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-4),
            images,
        ),
        Workload(
            "GPT-2 small, bf16 autocast" + (" (dry run: tiny)" if dry else ""),
            gpt,
            lambda p: torch.optim.AdamW(p, lr=3e-4, weight_decay=0.1),
            text,
        ),
    ]


# -- measurements -------------------------------------------------------------------------------
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_step(model, optimizer, x, y, device: torch.device) -> None:
    with torch.autocast(device.type, dtype=torch.bfloat16):
        out = model(x)
        loss = F.cross_entropy(out.reshape(-1, out.shape[-1]).float(), y.reshape(-1))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def fresh(workload: Workload, device: torch.device, seed: int = 0):
    torch.manual_seed(seed)
    model = workload.build().to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last) if "ResNet" in workload.name else model
    return model, workload.optimizer(list(model.parameters()))


def overhead(workload: Workload, device: torch.device, rounds: int, block: int) -> dict[str, float]:
    """Step-time ratios, interleaved blocks of ``block`` steps per configuration."""
    configs = {}
    lenses = {}
    for name in ("plain", "every step", "default"):
        model, optimizer = fresh(workload, device)
        if name == "every step":
            lenses[name] = stepsize_lens.attach(
                model, optimizer, path=None, schedule=every(1), flush_every=None
            )
        elif name == "default":
            lenses[name] = stepsize_lens.attach(model, optimizer, path=None, flush_every=None)
            lenses[name].step = 1000 + block // 2  # steady state: every 100th step
        configs[name] = (model, optimizer)
    gen = torch.Generator().manual_seed(1)
    data = [workload.batch(gen, device) for _ in range(4)]
    times: dict[str, list[float]] = {name: [] for name in configs}
    names = list(configs)
    for round_index in range(rounds + 1):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            model, optimizer = configs[name]
            synchronize(device)
            t0 = time.perf_counter()
            for step in range(block):
                train_step(model, optimizer, *data[step % len(data)], device)
            synchronize(device)
            if round_index:  # the first round warms up (cudnn autotuning, allocations)
                times[name].append((time.perf_counter() - t0) / block)
    plain = statistics.median(times["plain"])
    # one record's own cost, from the every-step lens's blocks, spread over 100 steps
    record = statistics.median(times["every step"]) - plain
    out = {
        "plain ms": 1e3 * plain,
        "every step": statistics.median(times["every step"]) / plain,
        "default, measured": statistics.fmean(times["default"]) / statistics.fmean(times["plain"]),
        "default, derived": (plain + max(record, 0.0) / 100) / plain,
        "records": float(lenses["default"].num_records),
    }
    for lens in lenses.values():
        lens.close()
    return out


def memory(workload: Workload, device: torch.device) -> dict[str, float]:
    """The lens's memory from the allocator: held between records, and the peak extra."""
    model, optimizer = fresh(workload, device, seed=2)
    gen = torch.Generator().manual_seed(3)
    data = workload.batch(gen, device)
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    out: dict[str, float] = {}
    for _ in range(3):
        train_step(model, optimizer, *data, device)
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        train_step(model, optimizer, *data, device)
        synchronize(device)
        plain_peak = torch.cuda.max_memory_allocated(device)
        plain_now = torch.cuda.memory_allocated(device)
    lens = stepsize_lens.attach(model, optimizer, path=None, schedule=every(1), flush_every=None)
    train_step(model, optimizer, *data, device)  # the first record allocates the snapshot
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        train_step(model, optimizer, *data, device)
        synchronize(device)
        held = torch.cuda.memory_allocated(device) - plain_now
        out["held, allocator"] = held / param_bytes
        out["record extra, allocator"] = (
            torch.cuda.max_memory_allocated(device) - plain_peak - held
        ) / param_bytes
    out["held, own buffers"] = lens.held_bytes / lens.tracked_bytes
    lens.close()
    return out


def no_sync(workload: Workload, device: torch.device, steps: int) -> str:
    """Run ``steps`` recorded steps with CUDA's sync debug mode set to "error"."""
    if device.type != "cuda":
        return "n/a (CPU)"
    model, optimizer = fresh(workload, device, seed=4)
    gen = torch.Generator().manual_seed(5)
    data = workload.batch(gen, device)
    for _ in range(2):
        train_step(model, optimizer, *data, device)
    synchronize(device)
    torch.cuda.set_sync_debug_mode("error")
    try:
        train_step(model, optimizer, *data, device)
    except RuntimeError as exc:
        torch.cuda.set_sync_debug_mode(0)
        return f"n/a: the plain step itself synchronises ({str(exc).splitlines()[0][:60]})"
    torch.cuda.set_sync_debug_mode(0)
    lens = stepsize_lens.attach(model, optimizer, path=None, schedule=every(1), flush_every=None)
    train_step(model, optimizer, *data, device)  # the first record builds the snapshot
    synchronize(device)
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(steps):
            train_step(model, optimizer, *data, device)
    except RuntimeError as exc:
        return f"FAIL: {str(exc).splitlines()[0][:80]}"
    finally:
        torch.cuda.set_sync_debug_mode(0)
    synchronize(device)
    records = lens.run().num_records
    lens.close()
    return f"pass ({steps} recorded steps, {records} records)"


def projected_routes(device: torch.device, steps: int = 20) -> dict[str, tuple[float, bool]]:
    """Largest relative parameter difference multi-tensor vs per-tensor, and equal views."""
    out = {}
    for name, make in (
        ("AdamP", lambda p, f: AdamP(p, lr=1e-3, weight_decay=1e-2, foreach=f)),
        ("SGDP", lambda p, f: SGDP(p, lr=0.1, momentum=0.9, weight_decay=1e-4, foreach=f)),
    ):
        torch.manual_seed(6)
        model = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.GroupNorm(4, 32),
            nn.Flatten(),
            nn.LayerNorm(32 * 8 * 8),
            nn.Linear(32 * 8 * 8, 10),
        ).to(device)
        copies = [nn.Parameter(p.detach().clone()) for p in model.parameters()]
        reference = make(list(model.parameters()), False)
        routed = make(copies, None)
        x = torch.randn(16, 3, 8, 8, device=device)
        y = torch.randint(0, 10, (16,), device=device)
        views_equal = True
        for _ in range(steps):
            reference.zero_grad()
            F.cross_entropy(model(x), y).backward()
            for p, q in zip(model.parameters(), copies):
                q.grad = p.grad.clone()
            reference.step()
            routed.step()
            for p, q in zip(model.parameters(), copies):
                a, b = reference.state[p].get("projection"), routed.state[q].get("projection")
                if a is not None and b is not None and not torch.equal(a.cpu(), b.cpu()):
                    views_equal = False
        worst = 0.0
        for p, q in zip(model.parameters(), copies):
            scale = float(p.detach().double().norm()) or 1.0
            worst = max(worst, float((p.detach() - q.detach()).double().norm()) / scale)
        out[name] = (worst, views_equal)
    return out


# -- launches -----------------------------------------------------------------------------------
def resnet18() -> nn.Module:
    """ResNet-18 in torchvision's layout (7x7 stem, 1000 classes): 62 tensors."""
    model = CifarResNet((2, 2, 2, 2), num_classes=1000)
    model.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
    return model


LAUNCH_MODELS: dict[str, Callable[[], nn.Module]] = {
    "ResNet-18": resnet18,
    "ViT-tiny": lambda: vit_tiny(num_classes=1000, image_size=224, patch_size=16),
    "ResNet-50": ResNet,
}


@contextlib.contextmanager
def accelerator_paths(device: torch.device) -> Iterator[None]:
    """The accelerator code paths: by default on CUDA, forced on the CPU."""
    before = os.environ.get(ENV_VAR)
    if device.type == "cpu":
        os.environ[ENV_VAR] = "accelerator"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = before


def _with_grads(model: nn.Module, device: torch.device) -> list[torch.Tensor]:
    params = list(model.to(device).parameters())
    gen = torch.Generator().manual_seed(7)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen).to(device)
    return params


def record_launches(model: nn.Module, device: torch.device, records: int = 2) -> tuple[int, str]:
    """The most launches one lens record took (a step with the lens minus the same step
    without it), and the ops that made the host wait (empty: none)."""
    params = _with_grads(model, device)
    plain = torch.optim.SGD(params, lr=0.01, momentum=0.9, foreach=True)
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9, foreach=True)
    with torch.no_grad():
        plain.step()
        optimizer.step()
    with count_launches() as base:
        plain.step()
    lens = stepsize_lens.attach(model, optimizer, path=None, schedule=every(1), flush_every=None)
    most, waiting = 0, set()
    for _ in range(records):
        lens.latest()  # lands the previous record: host-side bookkeeping
        with count_launches() as step:
            optimizer.step()
        most = max(most, step.total - base.total)
        waiting |= set(step.waiting)
    lens.close()
    return most, ", ".join(sorted(waiting))


OPTIMIZER_PATHS: dict[str, Callable[[list[torch.Tensor]], torch.optim.Optimizer]] = {
    "AdamP per-tensor (foreach=False)": lambda p: AdamP(
        p, lr=1e-3, weight_decay=1e-2, foreach=False
    ),
    "AdamP multi-tensor (default)": lambda p: AdamP(p, lr=1e-3, weight_decay=1e-2),
    "SGDP per-tensor (foreach=False)": lambda p: SGDP(
        p, lr=0.1, momentum=0.9, weight_decay=1e-4, foreach=False
    ),
    "SGDP multi-tensor (default)": lambda p: SGDP(p, lr=0.1, momentum=0.9, weight_decay=1e-4),
    "torch AdamW(foreach)": lambda p: torch.optim.AdamW(
        p, lr=1e-3, weight_decay=1e-2, foreach=True
    ),
    "torch AdamW(fused)": lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=1e-2, fused=True),
    "torch SGD(momentum, foreach)": lambda p: torch.optim.SGD(
        p, lr=0.1, momentum=0.9, weight_decay=1e-4, foreach=True
    ),
}


def step_launches(
    make: Callable[[list[torch.Tensor]], torch.optim.Optimizer], device: torch.device
) -> tuple[int, str]:
    """Launches of one optimizer step on ResNet-18's parameters (after a first step that
    creates the state), and the ops that made the host wait."""
    torch.manual_seed(8)
    params = _with_grads(resnet18(), device)
    optimizer = make(params)
    optimizer.step()
    with count_launches() as step:
        optimizer.step()
    return step.total, ", ".join(sorted(step.waiting))


def launch_rows(device: torch.device) -> list[tuple[str, str, str]]:
    rows = []
    where = "CUDA" if device.type == "cuda" else "CPU, accelerator paths forced"
    with accelerator_paths(device):
        for name, build in LAUNCH_MODELS.items():
            torch.manual_seed(9)
            model = build()
            tensors = sum(1 for _ in model.parameters())
            launches, waiting = record_launches(model, device)
            rows.append(
                (
                    f"{name} ({tensors} tensors)",
                    f"launches per lens record ({where})",
                    f"{launches}; waiting ops: {waiting or 'none'}",
                )
            )
        for name, make in OPTIMIZER_PATHS.items():
            launches, waiting = step_launches(make, device)
            rows.append(
                (
                    name,
                    f"launches per step, ResNet-18 ({where})",
                    f"{launches}; waiting ops: {waiting or 'none'}",
                )
            )
    return rows


def compiled_route(device: torch.device, rounds: int = 20, block: int = 5) -> dict[str, float]:
    """ms per step on ResNet-50's parameters (CUDA): AdamP/SGDP compiled (``fused=True``,
    once ``fused_ready``), their multi-tensor path, torch's AdamW(fused) and SGD(foreach);
    interleaved blocks, the GPU synchronised at block ends."""
    torch.manual_seed(10)
    makers = {
        "AdamP(fused=True), compiled": lambda p: AdamP(p, lr=1e-3, weight_decay=1e-2, fused=True),
        "AdamP multi-tensor": lambda p: AdamP(p, lr=1e-3, weight_decay=1e-2),
        "torch AdamW(fused)": lambda p: torch.optim.AdamW(
            p, lr=1e-3, weight_decay=1e-2, fused=True
        ),
        "SGDP(fused=True), compiled": lambda p: SGDP(
            p, lr=0.1, momentum=0.9, weight_decay=1e-4, fused=True
        ),
        "SGDP multi-tensor": lambda p: SGDP(p, lr=0.1, momentum=0.9, weight_decay=1e-4),
        "torch SGD(momentum, foreach)": lambda p: torch.optim.SGD(
            p, lr=0.1, momentum=0.9, weight_decay=1e-4, foreach=True
        ),
    }
    optimizers = {}
    for name, make in makers.items():
        optimizer = make(_with_grads(ResNet(), device))
        optimizer.step()
        ready = getattr(optimizer, "fused_ready", None)
        if ready is not None and not ready(timeout=600):
            print(f"gpu_check: {name} did not compile: its multi-tensor path is timed instead")
        optimizers[name] = optimizer
    times: dict[str, list[float]] = {name: [] for name in optimizers}
    names = list(optimizers)
    for round_index in range(rounds + 1):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            synchronize(device)
            t0 = time.perf_counter()
            for _ in range(block):
                optimizers[name].step()
            synchronize(device)
            if round_index:
                times[name].append((time.perf_counter() - t0) / block)
    return {name: 1e3 * statistics.median(values) for name, values in times.items()}


# -- the table ----------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="run on the CPU, tiny models")
    parser.add_argument("--rounds", type=int, default=10, help="blocks per configuration")
    parser.add_argument("--block", type=int, default=10, help="steps per block")
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print(
            "gpu_check: no CUDA device is available here, so nothing was measured. Run it on "
            "a machine with a GPU (python benchmarks/gpu_check.py), or --dry-run to check the "
            "script on the CPU."
        )
        return 0
    device = torch.device("cpu" if args.dry_run else "cuda")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        header = f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    else:
        header = f"dry run on the CPU, torch {torch.__version__} (no targets apply)"
        args.rounds, args.block = min(args.rounds, 2), min(args.block, 3)
    started = time.perf_counter()
    rows: list[tuple[str, str, str]] = []
    for workload in workloads(args.dry_run):
        model, _ = fresh(workload, device)
        params = sum(p.numel() for p in model.parameters())
        del model
        label = f"{workload.name} ({params / 1e6:.1f}M params)"
        ratios = overhead(workload, device, args.rounds, args.block)
        rows.append((label, "plain step", f"{ratios['plain ms']:.1f} ms"))
        rows.append((label, "every step / plain", f"{ratios['every step']:.3f}x"))
        rows.append(
            (
                label,
                "default (steady) / plain",
                f"{ratios['default, measured']:.3f}x measured, "
                f"{ratios['default, derived']:.4f}x derived",
            )
        )
        for key, value in memory(workload, device).items():
            rows.append((label, f"memory {key}", f"{value:.3f}x param bytes"))
        rows.append((label, "sync debug mode 'error'", no_sync(workload, device, steps=100)))
        if device.type == "cuda":
            torch.cuda.empty_cache()
    for name, (worst, views) in projected_routes(device).items():
        rows.append(
            (
                f"{name} on {device.type}",
                "multi-tensor vs per-tensor",
                f"max rel. param diff {worst:.1e}, views {'equal' if views else 'DIFFER'}",
            )
        )
    rows += launch_rows(device)
    if device.type == "cuda":
        for name, ms in compiled_route(device).items():
            rows.append((name, "ms per step, ResNet-50 params", f"{ms:.2f} ms"))
    else:
        rows.append(("AdamP/SGDP(fused=True)", "compiled route's time", "n/a (CUDA only)"))
    width = [max(len(row[i]) for row in rows) for i in range(3)]
    print(f"gpu_check: {header}; {time.perf_counter() - started:.0f} s")
    print(" | ".join(h.ljust(w) for h, w in zip(("workload", "check", "result"), width)))
    print("-+-".join("-" * w for w in width))
    for row in rows:
        print(" | ".join(cell.ljust(w) for cell, w in zip(row, width)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
