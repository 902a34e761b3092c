"""How long does the functional probe take on timm's ResNet-18? Grouped against per tensor.

Not a test. Run: ``python benchmarks/probe_speed.py [--model resnet18] [--input-shape 3,224,224]
[--batch-size 4] [--repeats 1] [--threads N] [--cli]``. Threads: by default as many as
``stepsize-lens inspect`` takes (`invariance.idle_threads`: the idle CPUs). Builds
``timm.create_model(model, pretrained=False)`` (nothing is downloaded) and a standard normal
batch, then, interleaved in this one process, times `invariance.probe` as ``stepsize-lens
inspect`` runs it (grouped: tensors tested together, failures found by bisection) and with
``grouped=False`` (the per-tensor protocol the probe had before: every tensor rescaled alone,
draw by draw). Prints the wall and CPU seconds and the forwards of each, the ratio per tensor
over grouped, and whether every verdict and every ``approximate`` flag agree.
``--cli`` also times the whole ``stepsize-lens inspect benchmarks.probe_speed:timm_resnet18
--input-shape 3,224,224`` in a child process (start-up, imports, model, probe, census), run
from the repository root. Target: inspect at most 20 s.

timm imports torchvision at import time (data transforms, datasets, FrozenBatchNorm2d), and
torchvision may be missing beside a CPU build of torch. Then this script lets those imports
resolve to inert stand-ins (any use raises) and says so: timm's ResNet and ViT code never touch
them, so the model is timm's own.
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.machinery
import os
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]


class _Missing(type):
    """A stand-in class whose attributes are further stand-ins (``InterpolationMode.BILINEAR``)."""

    def __getattr__(cls, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        child = _Missing(name, (cls,), {})
        setattr(cls, name, child)
        return child


class _Unavailable(metaclass=_Missing):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("torchvision is not installed (benchmarks/probe_speed.py stand-in)")


class _StandInModule(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _Unavailable


class _TorchvisionStandIns(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name == "torchvision" or name.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec: Any) -> types.ModuleType:
        module = _StandInModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        pass


def import_timm() -> tuple[Any, bool]:
    """``(timm, stand_ins_used)``: timm, with torchvision stand-ins only if it is missing."""
    try:
        import timm
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("torchvision"):
            raise
        for name in [name for name in sys.modules if name.split(".")[0] in ("timm", "torchvision")]:
            del sys.modules[name]
        sys.meta_path.insert(0, _TorchvisionStandIns())
        import timm

        return timm, True
    return timm, False


def timm_resnet18() -> torch.nn.Module:
    """timm's ResNet-18, untrained: a factory for ``stepsize-lens inspect``."""
    timm, _ = import_timm()
    return timm.create_model("resnet18", pretrained=False)


def _timed_probe(model: torch.nn.Module, inputs: torch.Tensor, grouped: bool) -> dict[str, Any]:
    from stepsize_lens.invariance import probe

    forwards = [0]

    def count(*_: Any) -> None:
        forwards[0] += 1

    handle = model.register_forward_pre_hook(count)  # deep-copied into the float64 twin too
    try:
        wall, cpu = time.perf_counter(), time.process_time()
        result = probe(model, inputs, grouped=grouped)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        handle.remove()
    return {"result": result, "wall": wall, "cpu": cpu, "forwards": forwards[0]}


def _cli_seconds(shape: str, batch_size: int) -> tuple[float, int]:
    command = [
        sys.executable,
        "-c",
        "from stepsize_lens.cli import main; main()",
        "inspect",
        "benchmarks.probe_speed:timm_resnet18",
        "--input-shape",
        shape,
        "--batch-size",
        str(batch_size),
    ]
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, PYTHONPATH=path)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode:
        print(done.stdout + done.stderr)
    return seconds, done.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18", help="a timm model name")
    parser.add_argument("--input-shape", default="3,224,224")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=1, help="interleaved pairs")
    parser.add_argument(
        "--threads", type=int, default=None, help="intra-op threads (default: as inspect)"
    )
    parser.add_argument("--cli", action="store_true", help="also time stepsize-lens inspect")
    args = parser.parse_args()
    from stepsize_lens.invariance import idle_threads

    with idle_threads(args.threads):  # the pool inspect gives the probe
        _compare(args)


def _compare(args: argparse.Namespace) -> None:
    timm, stand_ins = import_timm()
    shape = tuple(int(size) for size in args.input_shape.split(","))
    torch.manual_seed(0)
    model = timm.create_model(args.model, pretrained=False)
    inputs = torch.randn((args.batch_size, *shape), generator=torch.Generator().manual_seed(0))
    print(
        f"timm {timm.__version__} {args.model} (pretrained=False), input {args.batch_size}x"
        f"{'x'.join(map(str, shape))}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} torch thread(s), {os.cpu_count()} CPUs"
        + (", torchvision missing: its imports resolved to inert stand-ins" if stand_ins else "")
    )

    runs: dict[bool, list[dict[str, Any]]] = {True: [], False: []}
    for repeat in range(args.repeats):
        for grouped in (True, False) if repeat % 2 == 0 else (False, True):
            run = _timed_probe(model, inputs, grouped)
            runs[grouped].append(run)
            label = "grouped   " if grouped else "per tensor"
            print(
                f"  {label} wall {run['wall']:7.2f} s  cpu {run['cpu']:7.2f} s  "
                f"forwards {run['forwards']:4d}  {run['result']!r}",
                flush=True,
            )

    def median(grouped: bool, key: str) -> float:
        return statistics.median(run[key] for run in runs[grouped])

    print(
        f"per tensor / grouped: wall {median(False, 'wall') / median(True, 'wall'):.1f}x, "
        f"cpu {median(False, 'cpu') / median(True, 'cpu'):.1f}x, "
        f"forwards {median(False, 'forwards') / median(True, 'forwards'):.1f}x"
    )
    new, old = runs[True][0]["result"].table, runs[False][0]["result"].table
    same_verdict = int((new["verdict"] == old["verdict"]).sum())
    same_flag = int((new["approximate"] == old["approximate"]).sum())
    print(
        f"verdicts agree on {same_verdict}/{len(new)} tensors, approximate flags on "
        f"{same_flag}/{len(new)}; verdict counts {new['verdict'].value_counts().to_dict()}"
    )
    if args.cli:
        seconds, code = _cli_seconds(args.input_shape, args.batch_size)
        print(f"stepsize-lens inspect (child process, exit {code}): {seconds:.1f} s wall")


if __name__ == "__main__":
    main()
