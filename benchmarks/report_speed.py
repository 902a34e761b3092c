"""How long does a report take on a big run? 10,000 records × 200 tensors, synthetic.

Not a test. Run: ``python benchmarks/report_speed.py [--records N] [--tensors T]``. Writes a
synthetic run with `RunWriter` (the lens's own writer) into a temporary folder, then, in this one
process, times: ``load``; the summary (`analysis.summarize` per group and class, plus
`analysis.find`); the report's data (`report.report_data`: summaries per group, class and
tensor, findings, strongest decays); and a full ``report(format="html")`` (load, analysis, six
figures saved as PNG + PDF, one self-contained page). Target: the full report under 10 s.

The synthetic network looks like a BN CNN: 4-D conv weights (channel-invariant: tiny cosines),
2-D linear weights (the last one not invariant), 1-D norm weights and biases; norms grow as
(1 + t/τ)^(1/4), angular updates fall as t^(−1/2) with noise, the lr drops tenfold at 50% and
75% of training, loss and accuracy are logged every 10 steps.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from stepsize_lens._schema import GROUP_FIELDS, METRICS, View
from stepsize_lens.run import RunWriter


def _layout(num_tensors: int) -> list[dict]:
    """Parameter rows: repeating conv / bn.weight / bn.bias blocks, linear layers at the end."""
    rows = []
    i = 0
    while len(rows) < num_tensors - 2:
        width = 16 * 2 ** min(i // 8, 4)
        for name, shape in (
            (f"block{i}.conv.weight", (width, width, 3, 3)),
            (f"block{i}.bn.weight", (width,)),
            (f"block{i}.bn.bias", (width,)),
        ):
            if len(rows) < num_tensors - 2:
                rows.append((name, shape))
        i += 1
    rows += [("fc.weight", (10, 256)), ("fc.bias", (10,))]
    out = []
    for index, (name, shape) in enumerate(rows):
        numel = math.prod(shape)
        out.append(
            {
                "name": name,
                "group": 0 if len(shape) > 1 else 1,
                "index": index,
                "shape": list(shape),
                "numel": numel,
                "ndim": len(shape),
                "rows": shape[0],
                "module_type": "Conv2d"
                if len(shape) == 4
                else "Linear"
                if len(shape) == 2
                else "BN",
                "dtype": "torch.float32",
                "aliases": [],
            }
        )
    return out


def write_synthetic_run(path: Path, records: int, tensors: int, seed: int = 0) -> Path:
    """A run file of ``records`` × ``tensors`` written through `RunWriter`."""
    rng = np.random.default_rng(seed)
    params = _layout(tensors)
    meta = {
        "label": "synthetic SGD momentum",
        "optimizer": {
            "class": "SGD",
            "module": "torch.optim.sgd",
            "defaults": {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": False},
        },
        "model_class": "SyntheticCNN",
        "schedule": "every(1)",
        "delta": 0.1,
        "closed": True,
    }
    writer = RunWriter(path, meta)
    writer.add_params(params)
    writer.set_num_groups(2)
    numel = np.array([p["numel"] for p in params], dtype=np.float64)
    rows = np.array([p["rows"] for p in params], dtype=np.float64)
    invariant = np.array([p["ndim"] > 1 and p["name"] != "fc.weight" for p in params])
    steps = np.arange(1, records + 1, dtype=np.float64)
    lr = np.where(steps > 0.75 * records, 0.001, np.where(steps > 0.5 * records, 0.01, 0.1))
    w0 = np.sqrt(numel) * 0.05 + 1.0
    weight = w0[None, :] * (1.0 + steps[:, None] / 200.0) ** 0.25
    noise = np.exp(0.3 * rng.standard_normal((records, tensors)))
    angle = 0.05 * (lr[:, None] / 0.1) * (steps[:, None] + 10.0) ** -0.5 * noise
    grad = 1.0 / weight * noise
    cos = np.where(invariant, 1e-7, 0.3) * noise
    channel_cos = np.where(invariant, 1e-6, 0.5) * noise
    update = weight * np.tan(angle)
    columns = {
        "weight_norm": weight,
        "grad_norm": grad,
        "update_norm": update,
        "relative_update": update / weight,
        "angular_update": angle,
        "effective_lr": lr[:, None] / weight**2,
        "cos_grad": cos,
        "cos_update": np.full_like(weight, 1e-3),
        "norm_growth": update**2,
        "channel_cos_grad_max": np.where(
            np.array([p["ndim"] for p in params]) > 1, channel_cos, np.nan
        ),
        "channel_weight_norm": weight / np.sqrt(rows),
        "channel_angular_update": angle,
        "channel_angular_update_cv": np.where(
            np.array([p["ndim"] for p in params]) > 1, 0.2 * noise, np.nan
        ),
    }
    metrics = torch.from_numpy(np.stack([columns[m] for m in METRICS], axis=1).astype(np.float32))
    tested = np.array([p["ndim"] > 1 for p in params])
    test_view = np.where(tested, np.where(invariant, View.CHANNEL, View.NONE), -1).astype(np.int8)
    views = torch.from_numpy(np.stack([test_view, np.full(tensors, -1, np.int8)]))
    groups = np.zeros((len(GROUP_FIELDS), 2))
    fields = {"weight_decay": 5e-4, "momentum": 0.9, "dampening": 0.0, "nesterov": 0.0}
    for r in range(records):
        for g, name in enumerate(GROUP_FIELDS):
            groups[g] = lr[r] if name == "lr" else fields.get(name, math.nan)
        writer.append(int(steps[r]), float(r), False, metrics[r], views, torch.from_numpy(groups))
        if r % 10 == 0:
            loss = 2.3 * math.exp(-steps[r] / (0.2 * records)) + 0.05 * rng.random()
            writer.log_scalars(int(steps[r]), {"loss": loss, "test_accuracy": 1.0 - loss / 2.5})
    return writer.save()


class Timer:
    """Wall-clock and CPU seconds of a block (CPU time is what a loaded machine cannot inflate
    much; on an idle machine the two agree)."""

    def __enter__(self) -> Timer:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--tensors", type=int, default=200)
    args = parser.parse_args()

    from rich.console import Console

    import stepsize_lens
    from stepsize_lens.analysis import find, summarize
    from stepsize_lens.report import report, report_data

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.pt"
        with Timer() as t:
            write_synthetic_run(path, args.records, args.tensors)
        size = path.stat().st_size / 2**20
        print(
            f"synthetic run: {args.records:,} records x {args.tensors} tensors, {size:.1f} MiB "
            f"(written in {t.wall:.2f} s)"
        )
        timings = {}
        with Timer() as timings["load"]:
            run = stepsize_lens.load(path)
        with Timer() as timings["summary (summarize per group and class, find)"]:
            summarize(run)
            find(run)
        with Timer() as timings["report data (summaries incl. per tensor, findings, decays)"]:
            report_data(run)
        full = "full report --format html (load, analysis, 7 figures png+pdf, page)"
        with Timer() as timings[full]:
            result = report(
                path, out=Path(tmp) / "report", format="html", console=Console(file=io.StringIO())
            )
        print(f"  {'step':<70} {'wall':>7} {'cpu':>7}")
        for name, timer in timings.items():
            print(f"  {name:<70} {timer.wall:6.2f}s {timer.cpu:6.2f}s")
        page = result.page.stat().st_size / 2**20
        verdict = "meets" if timings[full].wall < 10 else "MISSES"
        print(f"  page: {page:.1f} MiB; target: full report under 10 s (wall) -> {verdict}")
        load = os.getloadavg()[0]
        print(f"  machine load average over the last minute: {load:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
