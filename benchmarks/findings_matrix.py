"""The full findings matrix (docs/findings.md): every optimizer × schedule × length × labels.

Not a test. Run: ``python benchmarks/findings_matrix.py [--steps 300] [--optimizers sgd,...]
[--schedules cosine,...]``. Trains each cell of `experiments.findings_matrix.all_cells` (7
optimizers × 5 schedules × short/long × noise/real labels = 140 small seeded runs) into a
temporary folder, builds its report data and prints one row per cell: the ground truth (the
timescales the run covers, Σ η_t·λ'_t; the recorded norm ratio and the norm-growth part), the
findings that fired, the advice lines and the verdict, then every rule a report broke
(`findings_matrix.violations`) and their count. The test suite runs the 36-cell version
(tests/test_experiments_findings_matrix.py).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from stepsize_lens.experiments import findings_matrix as M
from stepsize_lens.report import report_data

SHORT = {
    "equilibrium_tracking": "track",
    "equilibrium_time": "eq_time",
    "equilibrium_reached": "reached",
    "equilibrium_missed": "MISSED",
    "premature_decay": "PREMATURE",
    "gradient_faded": "faded",
    "wd_timescale": "tau",
    "rotation_balance": "rot",
    "early_overshoot": "OVERSHOOT",
    "gradient_norm_rise": "grad_rise",
    "no_weight_decay": "NO_WD",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--optimizers", default=",".join(M.OPTIMIZERS))
    parser.add_argument("--schedules", default=",".join(M.SCHEDULES))
    args = parser.parse_args()
    optimizers, schedules = args.optimizers.split(","), args.schedules.split(",")
    cells = [
        c for c in M.all_cells(args.steps) if c.optimizer in optimizers and c.schedule in schedules
    ]
    problems: list[str] = []
    started = time.perf_counter()
    print(f"{'cell':38} {'Σηλ′':>7} {'‖w‖ end':>8} {'norm part':>9}  verdict  advice  findings")
    with tempfile.TemporaryDirectory() as folder:
        for cell in cells:
            run = M.train_cell(cell, Path(folder) / f"{cell.name}.pt")
            data = report_data(run)
            row = M.cell_row(cell, run, data)
            fired = " ".join(
                SHORT.get(f["kind"], f["kind"])
                + ("!" if f["severity"] in ("warning", "critical") else "")
                for f in data["findings"]
            )
            print(
                f"{row['cell']:38} {row['covered']:7.3g} {row['norm_ratio']:8.3g} "
                f"{row['norm_part']:9.3g}  {'healthy' if row['healthy'] else 'NOT    '}  "
                f"{row['advice']:6d}  {fired}",
                flush=True,
            )
            problems += M.violations(run, data, cell)
    print(f"\n{len(cells)} cells in {time.perf_counter() - started:.0f} s; ! = warning or critical")
    print(f"rule violations: {len(problems)}")
    for line in problems:
        print("  " + line)


if __name__ == "__main__":
    main()
