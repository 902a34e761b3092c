"""Mutated run files through ``stepsize-lens report`` and ``compare``: at least 200 files (bit
flips, overwritten bytes, truncations, random dict mutations, targeted fields; seeded), each
ends in exit code 0, 1 or 2, never a traceback, and on failure exactly one line on stderr.

Files are made once per module; the commands run in-process through `cli.main` (fast), and a
few through the real entry point in a fresh interpreter."""

from __future__ import annotations

import copy
import io
import math
import os
import random
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from _cli_runs import HOSTILE, call_main, tiny_run
from _dict_paths import dict_paths, get_path

SEED = 21
FORMATS = ("text", "json", "markdown", "html")
ROOT = Path(__file__).parents[1]


def _bit_flips(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 16)):
        i = rng.randrange(len(out))
        out[i] ^= 1 << rng.randrange(8)
    return bytes(out)


def _overwrite(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    start = rng.randrange(len(out))
    size = rng.randint(1, 64)
    out[start : start + size] = bytes(rng.randrange(256) for _ in range(size))
    return bytes(out[: len(data)])


def _truncate(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.randrange(len(data))]


# -- dict mutations --------------------------------------------------------------------------


JUNK: list[Callable[[random.Random], Any]] = [
    lambda r: None,
    lambda r: "",
    lambda r: HOSTILE,
    lambda r: -1,
    lambda r: 2**62,
    lambda r: float("nan"),
    lambda r: float("inf"),
    lambda r: 1e308,
    lambda r: [],
    lambda r: {},
    lambda r: [1, "x", None],
    lambda r: {"x": torch.zeros(2)},
    lambda r: torch.zeros(0),
    lambda r: torch.full((r.randint(1, 30), r.randint(1, 7)), float("nan")),
    lambda r: torch.randint(-5, 200, (r.randint(1, 30),), dtype=torch.int64),
    lambda r: torch.ones(3, 3, dtype=torch.bool),
    lambda r: True,
]


def _tensor_mutation(t: torch.Tensor, rng: random.Random) -> Any:
    t = t.clone()
    op = rng.randrange(9)
    if op == 0 and t.numel():
        flat = t.reshape(-1)
        flat[rng.randrange(flat.numel())] = (
            (rng.choice([float("nan"), float("inf"), -1e30]) if t.is_floating_point() else -(2**40))
            if t.dtype != torch.bool
            else True
        )
        return t
    if op == 1:
        return t.reshape(-1)
    if op == 2 and t.ndim:
        return t[: rng.randrange(max(1, t.shape[0]))]
    if op == 3:
        return t.to(rng.choice([torch.float16, torch.int32, torch.complex64, torch.uint8]))
    if op == 4 and t.ndim == 2:
        return t.t().contiguous()
    if op == 5 and t.ndim:
        return torch.cat([t, t])
    if op == 6 and t.ndim and t.shape[0] > 1:
        return t.flip(0)  # steps out of order
    if op == 7:
        return t.unsqueeze(-1)
    return torch.empty((0, *t.shape[1:]), dtype=t.dtype)


def _dict_mutation(data: dict, rng: random.Random) -> dict:
    data = copy.deepcopy(data)
    for _ in range(rng.randint(1, 3)):
        path = rng.choice(dict_paths(data, list_items=3))
        parent, key = get_path(data, path[:-1]), path[-1]
        value = parent[key]
        choice = rng.random()
        if choice < 0.25 and isinstance(parent, dict):
            del parent[key]
        elif choice < 0.55 and torch.is_tensor(value):
            parent[key] = _tensor_mutation(value, rng)
        elif choice < 0.65 and isinstance(value, list) and value:
            del value[rng.randrange(len(value))]
        elif choice < 0.7 and isinstance(parent, dict):
            parent[HOSTILE if rng.random() < 0.5 else "extra"] = rng.choice(JUNK)(rng)
        else:
            parent[key] = rng.choice(JUNK)(rng)
    return data


def _targeted(data: dict) -> list[dict]:
    """Hand-picked fields every reader uses, each broken one way."""
    cases: list[Callable[[dict], None]] = []
    for field in list(data["groups"]):
        cases.append(lambda d, f=field: d["groups"].pop(f))
    for column in list(data["params"]):
        cases.append(lambda d, c=column: d["params"].pop(c))
    for metric in ("weight_norm", "angular_update", "effective_lr", "cos_grad"):
        cases.append(lambda d, m=metric: d["metrics"].pop(m))
        cases.append(lambda d, m=metric: d["metrics"].__setitem__(m, d["metrics"][m][:, :2]))
    steps = data["records"]["step"]
    cases += [
        lambda d: d["records"].__setitem__("step", steps.flip(0)),
        lambda d: d["records"].__setitem__("step", torch.zeros_like(steps)),
        lambda d: d["records"].__setitem__(
            "step", steps.double().index_fill(0, torch.tensor([3]), math.nan)
        ),
        lambda d: d["records"].__setitem__("step", -steps),
        lambda d: d["records"].__setitem__("time", torch.full_like(d["records"]["time"], math.inf)),
        lambda d: d["records"].__setitem__("skipped", torch.ones_like(d["records"]["skipped"])),
        lambda d: d["records"].pop("skipped"),
        lambda d: d["views"]["test_view"].fill_(99),
        lambda d: d["views"]["applied_view"].fill_(-7),
        lambda d: d["views"].pop("test_view"),
        lambda d: d["params"]["shape"].__setitem__(0, [-3, 2]),
        lambda d: d["params"]["group"].__setitem__(0, 7),
        lambda d: d["params"]["name"].__setitem__(1, d["params"]["name"][0]),
        lambda d: d["params"]["name"].__setitem__(0, 12),
        lambda d: d["params"]["numel"].__setitem__(0, 10**18),
        lambda d: d["scalars"]["loss"].__setitem__("step", d["scalars"]["loss"]["step"][:3]),
        lambda d: d["scalars"].__setitem__("loss", torch.zeros(3)),
        lambda d: d["scalars"].__setitem__(
            HOSTILE,
            {"step": torch.tensor([1]), "value": torch.tensor([math.nan], dtype=torch.float64)},
        ),
        lambda d: d.__setitem__("events", [{"step": "x", "kind": None}]),
        lambda d: d.__setitem__("events", {"not": "a list"}),
        lambda d: d["meta"].__setitem__("label", 5),
        lambda d: d["meta"].__setitem__("label", HOSTILE * 50),
        lambda d: d["meta"].__setitem__("delta", -1.0),
        lambda d: d["meta"].__setitem__("optimizer", "SGD"),
        lambda d: d["meta"]["optimizer"].__setitem__("defaults", {"lr": "fast"}),
        lambda d: d["meta"].pop("metrics"),
        lambda d: d.__setitem__("version", 999),
        lambda d: d.__setitem__("version", "2"),
        lambda d: d.__setitem__("format", "other"),
        lambda d: d.__setitem__("records", {k: v[:0] for k, v in d["records"].items()}),
        lambda d: d.__setitem__("metrics", {}),
    ]
    out = []
    for case in cases:
        mutated = copy.deepcopy(data)
        case(mutated)
        out.append(mutated)
    return out


def _save(data: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(data, buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory) -> tuple[Path, list[Path]]:
    folder = tmp_path_factory.mktemp("cli_fuzz")
    base = tiny_run(folder / "base.pt", steps=10)
    raw = base.read_bytes()
    data = torch.load(base, weights_only=True)
    rng = random.Random(SEED)
    blobs = [_bit_flips(raw, rng) for _ in range(50)]
    blobs += [_overwrite(raw, rng) for _ in range(20)]
    blobs += [_truncate(raw, rng) for _ in range(30)]
    blobs += [_save(_dict_mutation(data, rng)) for _ in range(70)]
    blobs += [_save(mutated) for mutated in _targeted(data)]
    paths = []
    for i, blob in enumerate(blobs):
        path = folder / f"m{i:03d}.pt"
        path.write_bytes(blob)
        paths.append(path)
    return base, paths


class Hang(BaseException):
    """Raised by the watchdog in a call that runs past `CALL_LIMIT_S` (the CLI turns it into a
    line, which `_check` then refuses)."""


CALL_LIMIT_S = 120  # one tiny run's report takes well under a second


def _call_with_watchdog(*args: object) -> tuple[int, str, str]:
    def alarm(signum: int, frame: Any) -> None:
        raise Hang(f"no answer after {CALL_LIMIT_S} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(CALL_LIMIT_S)
    try:
        return call_main(*args)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _check(args: tuple, code: int, err: str) -> None:
    assert "Hang" not in err, (args, err)
    assert code in (0, 1, 2), (args, code, err)
    assert "Traceback" not in err, (args, err)
    if code != 0:
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("stepsize-lens: "), (args, err)


@pytest.mark.slow
def test_fuzzed_files_through_report_and_compare(fuzzed, tmp_path):
    base, paths = fuzzed
    assert len(paths) >= 200
    codes: Counter = Counter()
    for i, path in enumerate(paths):
        fmt = FORMATS[i % len(FORMATS)]
        out = tmp_path / f"o{i % 3}"
        args = ("report", path, "--no-figures", "-f", fmt, "--out", out)
        code, _, err = _call_with_watchdog(*args)
        _check(args, code, err)
        codes["report", code] += 1
        pair = (base, path) if i % 2 else (path, base)
        args = ("compare", *pair, "--no-figures", "-f", FORMATS[(i + 1) % 4], "--out", out)
        code, _, err = _call_with_watchdog(*args)
        _check(args, code, err)
        codes["compare", code] += 1
    print(dict(codes))
    assert codes["report", 2] > 0 and codes["compare", 2] > 0  # the fuzz does reach errors


@pytest.mark.slow
def test_some_fuzzed_files_at_the_real_entry_point(fuzzed, tmp_path):
    """The console script itself, in a fresh interpreter (warnings and all), on a few files: a
    bit-flipped one, a randomly mutated dict, a targeted field."""
    base, paths = fuzzed
    for path in (paths[0], paths[120], paths[-1]):
        for args in (
            ("report", path, "--no-figures", "--out", tmp_path),
            ("compare", base, path, "--no-figures", "-f", "json", "--out", tmp_path),
        ):
            result = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    "from stepsize_lens.cli import main; main()",
                    *map(str, args),
                ],
                capture_output=True,
                text=True,
                cwd=ROOT,
                env={**os.environ, "COLUMNS": "120"},
                timeout=180,
            )
            _check(args, result.returncode, result.stderr)
