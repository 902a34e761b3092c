"""What does a save cost as a run grows? The old full rewrite against the appending save.

Not a test. Run: ``python benchmarks/save_cost.py [--quick] [--tensors T] [--steps N]
[--save-every K]``. One `RunWriter` (the lens's own writer) records every step of a synthetic
run (default 1,000 tensors × 5,000 steps, as in issue 21); every K steps it is saved both ways,
interleaved in this one process (the order alternates): ``save(path)``, the full rewrite every
save used to be, and ``save(path, append=True)``, what the lens's periodic saves do now
(`stepsize_lens.run.chunks`: a chunk of the new records, then the small index). Both are real
atomic writes with fsync, in one temporary folder. Prints, per save, the records held and both
times, then the totals, the cost per record held (the old path's slope) and per new record,
the closing compaction and a load of each file. Runs torch on one thread (on a shared machine
spinning intra-op threads swamp small copies).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from stepsize_lens._schema import GROUP_FIELDS, METRICS, VIEWS
from stepsize_lens.run import RunWriter, load


def _writer(tensors: int) -> RunWriter:
    writer = RunWriter(None, {"label": "save_cost"})
    writer.add_params(
        [
            {
                "name": f"layer{i}.weight",
                "group": 0,
                "index": i,
                "shape": [64, 64],
                "numel": 4096,
                "ndim": 2,
                "rows": 64,
                "module_type": "Linear",
                "dtype": "float32",
                "aliases": [],
            }
            for i in range(tensors)
        ]
    )
    writer.set_num_groups(1)
    return writer


def _timed(save) -> float:
    start = time.perf_counter()
    save()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 tensors x 1,000 steps")
    parser.add_argument("--tensors", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--save-every", type=int, default=100)
    args = parser.parse_args()
    torch.set_num_threads(1)  # on a shared box, idle intra-op threads spin and blur the times
    if args.quick:
        args.tensors, args.steps, args.save_every = 200, 1000, 50
    gen = torch.Generator().manual_seed(0)
    writer = _writer(args.tensors)
    folder = Path(tempfile.mkdtemp(prefix="save_cost-"))
    old, new = folder / "full.pt", folder / "append.pt"
    print(
        f"{args.tensors} tensors x {args.steps} steps, every step recorded, saved every "
        f"{args.save_every} steps; {os.cpu_count()} CPUs (shared: ratios are what count)"
    )
    print(f"{'records':>8} {'full rewrite s':>15} {'append s':>10} {'full/append':>12}")
    totals = {"full": 0.0, "append": 0.0}
    rows = []
    for step in range(1, args.steps + 1):
        writer.append(
            step,
            time.time(),
            False,
            torch.rand((len(METRICS), args.tensors), generator=gen),
            torch.randint(-1, 3, (len(VIEWS), args.tensors), generator=gen, dtype=torch.int8),
            torch.full((len(GROUP_FIELDS), 1), 0.1, dtype=torch.float64),
        )
        if step % args.save_every:
            continue
        saves = [
            ("full", lambda: writer.save(old)),
            ("append", lambda: writer.save(new, append=True)),
        ]
        if (step // args.save_every) % 2:
            saves.reverse()
        took = {name: _timed(save) for name, save in saves}
        for name in took:
            totals[name] += took[name]
        rows.append((step, took["full"], took["append"]))
        print(
            f"{step:>8} {took['full']:>15.4f} {took['append']:>10.4f} "
            f"{took['full'] / took['append']:>12.1f}"
        )
    half = len(rows) // 2
    late = rows[half:]
    records_late = sum(r for r, _, _ in late) / len(late)
    print(
        f"total seconds saving: full rewrite {totals['full']:.2f}, append {totals['append']:.2f} "
        f"(ratio {totals['full'] / totals['append']:.1f})"
    )
    per_held = sum(f for _, f, _ in late) / len(late) / records_late
    per_new = sum(a for _, _, a in late) / len(late) / args.save_every
    print(
        f"second half of the run: full rewrite {1e6 * per_held:.1f} us per record held; "
        f"append {1e6 * per_new:.1f} us per new record"
    )
    first_append = sum(a for _, _, a in rows[:half]) / max(half, 1)
    last_append = sum(a for _, _, a in late) / len(late)
    print(
        f"append, mean per save: first half {first_append:.4f} s, second half {last_append:.4f} s"
    )
    close = _timed(lambda: writer.save(new))  # close(): compaction into one file
    print(f"close (compaction into one {new.stat().st_size / 1e6:.0f} MB file): {close:.2f} s")
    writer.save(new, append=True)  # a run still being written: index + chunks
    load_old = _timed(lambda: load(old))
    load_new = _timed(lambda: load(new))
    print(f"load: one file {load_old:.2f} s, index + chunks {load_new:.2f} s")
    for path in folder.rglob("*"):
        if path.is_file():
            path.unlink()


if __name__ == "__main__":
    main()
