"""The fused CPU passes of a record: built at run time, never waited for, optional.

On the CPU the eager passes of `snapshot` cost about seven reads of every parameter per record
(norms, batched matmuls, subtraction, copy, slicing, each its own pass). ``cpu_kernel.cpp``
does a record's work in two passes, one before the step (w and g) and one after it (W and w',
Δ formed in registers, W ← w' in the same pass), with float64 accumulators and OpenMP threads
over rows. It is compiled with ``torch.utils.cpp_extension`` on first use:

- **Never stalls a step.** `start` (called when a lens is attached to CPU tensors) loads or
  builds the module in a background thread; until it is ready, records take the eager path.
  The build itself runs in a child process at low priority, so a training process that exits
  or is killed mid-build leaves no half-held lock behind (torch's build lock is released by
  the child when it finishes).
- **Cached.** The module lives in torch's extension cache (``TORCH_EXTENSIONS_DIR``, default
  ``~/.cache/torch_extensions``) under a name that digests the source, the flags, the torch and
  Python versions and the CPU's feature flags (it is compiled with ``-march=native``, so a
  cache shared by different machines gets one build per kind of CPU). A later process imports
  it directly, in well under a second.
- **Falls back cleanly.** Without Linux, a C++ compiler or ``ninja``, or when the build fails,
  one line on stderr says so and records keep the eager path. ``STEPSIZE_LENS_CPU_KERNEL=0``
  turns the kernel off.

`forced` pins the path for tests ("eager" or "kernel"; "kernel" waits for the build).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch

SOURCE = Path(__file__).with_name("cpu_kernel.cpp")
FLAGS = ["-O3", "-march=native", "-fopenmp"]
# parameter dtypes the kernel reads (widened to float64); others take the eager path
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# how long the background thread waits for a build before giving up on it (the child goes on)
BUILD_WAIT = 900.0
# a build lock older than this was left by a build that died (a build takes well under a minute)
STALE_LOCK = 600.0
READY_STAMP = "stepsize_lens.ready"
ENV_SWITCH = "STEPSIZE_LENS_CPU_KERNEL"

# what the child process runs: build (or find up to date) and stamp; argv: source, name,
# build folder, flags as JSON. Only torch is imported, from a neutral working directory.
_CHILD = """
import json, os, sys, time
from pathlib import Path
try:
    os.nice(10)
except OSError:
    pass
source, name, folder, flags = sys.argv[1], sys.argv[2], Path(sys.argv[3]), json.loads(sys.argv[4])
folder.mkdir(parents=True, exist_ok=True)
lock = folder / "lock"
if lock.exists() and time.time() - lock.stat().st_mtime > float(sys.argv[5]):
    lock.unlink()  # left by a build that died
from torch.utils.cpp_extension import load
module = load(name, sources=[source], extra_cflags=flags, build_directory=str(folder))
(folder / sys.argv[6]).write_text(module.__file__)
"""


@dataclass
class Status:
    """Where the kernel stands: state "idle", "loading", "ready", "failed" or "off"; how it
    became ready ("cache" or "built") and in how many seconds; why it failed."""

    state: str = "idle"
    how: str = ""
    seconds: float = float("nan")
    error: str = ""


class Loader:
    """Loads the module once, in a background thread, with ``load`` (a callable returning the
    module and how it got it, or raising). Thread-safe; never raises to its callers."""

    def __init__(self, load: Callable[[], tuple[ModuleType, str]]) -> None:
        self._load = load
        self._lock = threading.Lock()
        self._done = threading.Event()
        self.module: ModuleType | None = None
        self.status = Status()

    def start(self) -> None:
        """Begin loading in the background (once); returns at once."""
        with self._lock:
            if self.status.state != "idle":
                return
            if switched_off():
                self.status = Status("off")
                self._done.set()
                return
            self.status = Status("loading")
        threading.Thread(target=self._run, name="stepsize_lens-cpu-kernel", daemon=True).start()

    def _run(self) -> None:
        began = time.perf_counter()
        try:
            module, how = self._load()
        except Unavailable as exc:
            self._fail(f"the fused CPU kernel is unavailable ({exc})")
        except BaseException as exc:  # noqa: BLE001 - any failure means: stay on the eager path
            self._fail(f"the fused CPU kernel could not be built ({_one_line(exc)})")
        else:
            self.module = module
            self.status = Status("ready", how, time.perf_counter() - began)
        finally:
            self._done.set()

    def _fail(self, why: str) -> None:
        self.status = Status("failed", error=why)
        _say(f"{why}; recording takes the slower eager path")

    def ready(self) -> ModuleType | None:
        """The module if it is loaded, else None (never waits)."""
        return self.module

    def wait(self, timeout: float | None = None) -> ModuleType | None:
        """Start if needed and wait until the module is loaded or has failed (benchmarks, tests)."""
        self.start()
        self._done.wait(timeout)
        return self.module


class Unavailable(RuntimeError):
    """This process cannot build the kernel (no Linux, compiler or ninja)."""


def switched_off() -> bool:
    return os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "off", "false", "no")


def unavailable() -> str:
    """Why this process cannot build the kernel ("" if it can)."""
    if not sys.platform.startswith("linux"):
        return f"not built on {sys.platform}"
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        return f"no C++ compiler: {compiler!r} not found"
    from torch.utils.cpp_extension import is_ninja_available

    if not is_ninja_available():
        return "ninja not found (pip install ninja)"
    return ""


def module_name() -> str:
    """The cached module's name: a digest of everything its binary depends on."""
    digest = hashlib.sha256()
    for part in (
        SOURCE.read_bytes(),
        json.dumps(FLAGS).encode(),
        torch.__version__.encode(),
        sys.version.encode(),
        _cpu_identity().encode(),
    ):
        digest.update(part)
        digest.update(b"\0")
    return f"stepsize_lens_rows_{digest.hexdigest()[:16]}"


def _cpu_identity() -> str:
    """The CPU's model and instruction-set flags (what ``-march=native`` compiles for)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            lines = {
                line.strip()
                for line in info
                if line.startswith(("flags", "Features", "model name", "CPU implementer"))
            }
        return "\n".join(sorted(lines))
    except OSError:
        import platform

        return platform.machine() + platform.processor()


def build_folder(name: str) -> Path:
    """Where torch's extension cache keeps ``name`` (as ``torch.utils.cpp_extension`` does)."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    if root:
        return Path(root) / name
    from torch.utils.cpp_extension import get_default_build_root

    cuda = torch.version.cuda
    flavour = "cpu" if cuda is None else f"cu{cuda.replace('.', '')}"
    python = f"py{sys.version_info.major}{sys.version_info.minor}{getattr(sys, 'abiflags', '')}"
    return Path(get_default_build_root()) / f"{python}_{flavour}" / name


def _import(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_or_build() -> tuple[ModuleType, str]:
    """Import the cached module, building it first in a child process if needed."""
    name = module_name()
    folder = build_folder(name)
    stamp = folder / READY_STAMP
    if stamp.exists():
        with contextlib.suppress(OSError, ImportError):
            return _import(name, Path(stamp.read_text().strip())), "cache"
    reason = unavailable()
    if reason:
        raise Unavailable(reason)
    log = folder.parent / f"{name}.log"
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w", encoding="utf-8") as out:
        child = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _CHILD,
                str(SOURCE),
                name,
                str(folder),
                json.dumps(FLAGS),
                str(STALE_LOCK),
                READY_STAMP,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=folder.parent,
            start_new_session=True,  # a Ctrl-C of the training does not kill the build midway
        )
        try:
            code = child.wait(BUILD_WAIT)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"no build after {BUILD_WAIT:.0f} s; see {log}") from None
    if code != 0 or not stamp.exists():
        raise RuntimeError(f"the compiler failed; see {log}")
    return _import(name, Path(stamp.read_text().strip())), "built"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


_said: set[str] = set()


def _say(message: str) -> None:
    if message not in _said:
        _said.add(message)
        print(f"stepsize_lens: {message}", file=sys.stderr)


_loader = Loader(load_or_build)
_forced: str | None = None


def start_for(tensors: Iterable[torch.Tensor]) -> None:
    """Start loading the kernel if any of ``tensors`` is a CPU tensor it can read."""
    if _forced == "eager":
        return
    if any(t.device.type == "cpu" and t.dtype in DTYPES for t in tensors):
        _loader.start()


def status() -> Status:
    return _loader.status


def wait(timeout: float | None = None) -> ModuleType | None:
    """Start if needed and wait for the kernel (benchmarks and tests; training never waits)."""
    return _loader.wait(timeout)


def for_record() -> ModuleType | None:
    """The module a record should use now: the loaded kernel, None for the eager path."""
    if _forced == "eager":
        return None
    if _forced == "kernel":
        module = _loader.wait()
        if module is None:
            raise RuntimeError(f"the CPU kernel is forced but unavailable: {status().error}")
        return module
    return _loader.ready()


@contextlib.contextmanager
def forced(mode: str | None) -> Iterator[None]:
    """Records inside this block take ``mode``'s path: "eager", "kernel" (waits for the build,
    raises if it failed) or None (whatever is ready). For tests."""
    if mode not in (None, "eager", "kernel"):
        raise ValueError(f"mode must be None, 'eager' or 'kernel', not {mode!r}")
    global _forced
    before, _forced = _forced, mode
    try:
        yield
    finally:
        _forced = before
