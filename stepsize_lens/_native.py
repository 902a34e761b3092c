"""C++ CPU kernels built at run time: never waited for by training, cached, optional. A leaf.

The package's hand-written CPU kernel (AdamP and SGDP's fused steps, ``optim/cpu_kernel.cpp``;
the lens's record passes are torch ops only since issue 22) ships as source and is compiled with
``torch.utils.cpp_extension`` on the user's machine. An `Extension` names a source; its
`Loader` brings the module in:

- **Never stalls a step.** `Loader.start` loads or builds the module in a background thread;
  until it is ready, callers take their eager path. The build itself runs in a child process
  at low priority, so a training process that exits or is killed mid-build leaves no
  half-held lock behind (torch's build lock is released by the child when it finishes).
- **Cached.** The module lives in torch's extension cache (``TORCH_EXTENSIONS_DIR``, default
  ``~/.cache/torch_extensions``) under a name that digests the source, the flags, the torch and
  Python versions and the CPU's feature flags (it is compiled with ``-march=native``, so a
  cache shared by different machines gets one build per kind of CPU). A later process imports
  it directly, in well under a second.
- **Falls back cleanly.** Without Linux, a C++ compiler or ``ninja``, or when the build fails,
  one line on stderr says so and callers keep their eager path. ``STEPSIZE_LENS_CPU_KERNEL=0``
  turns every kernel off.
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch

FLAGS = ["-O3", "-march=native", "-fopenmp"]
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
    """Where a kernel stands: state "idle", "loading", "ready", "failed" or "off"; how it
    became ready ("cache" or "built") and in how many seconds; why it failed."""

    state: str = "idle"
    how: str = ""
    seconds: float = float("nan")
    error: str = ""


class Unavailable(RuntimeError):
    """This process cannot build the kernel (no Linux, compiler or ninja)."""


class Loader:
    """Loads a module once, in a background thread, with ``load`` (a callable returning the
    module and how it got it, or raising). Thread-safe; never raises to its callers.

    ``what`` names the kernel and ``fallback`` says what runs instead, in the one stderr line
    of a failure.
    """

    def __init__(
        self,
        load: Callable[[], tuple[ModuleType, str]],
        what: str = "the fused CPU kernel",
        fallback: str = "recording takes the slower eager path",
    ) -> None:
        self._load = load
        self.what = what
        self.fallback = fallback
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
            self._fail(f"{self.what} is unavailable ({exc})")
        except BaseException as exc:  # noqa: BLE001 - any failure means: stay on the eager path
            self._fail(f"{self.what} could not be built ({_one_line(exc)})")
        else:
            self.module = module
            self.status = Status("ready", how, time.perf_counter() - began)
        finally:
            self._done.set()

    def _fail(self, why: str) -> None:
        self.status = Status("failed", error=why)
        say(f"{why}; {self.fallback}")

    def ready(self) -> ModuleType | None:
        """The module if it is loaded, else None (never waits)."""
        return self.module

    def wait(self, timeout: float | None = None) -> ModuleType | None:
        """Start if needed and wait until the module is loaded or has failed (benchmarks, tests)."""
        self.start()
        self._done.wait(timeout)
        return self.module


def switched_off() -> bool:
    return os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "off", "false", "no")


def unavailable() -> str:
    """Why this process cannot build a kernel ("" if it can)."""
    if not sys.platform.startswith("linux"):
        return f"not built on {sys.platform}"
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        return f"no C++ compiler: {compiler!r} not found"
    from torch.utils.cpp_extension import is_ninja_available

    if not is_ninja_available():
        return "ninja not found (pip install ninja)"
    return ""


@dataclass(frozen=True)
class Extension:
    """A C++ source compiled into a module named ``prefix`` + a digest (`module_name`)."""

    source: Path
    prefix: str
    flags: tuple[str, ...] = tuple(FLAGS)

    def module_name(self) -> str:
        """The cached module's name: a digest of everything its binary depends on."""
        digest = hashlib.sha256()
        for part in (
            self.source.read_bytes(),
            json.dumps(list(self.flags)).encode(),
            torch.__version__.encode(),
            sys.version.encode(),
            _cpu_identity().encode(),
        ):
            digest.update(part)
            digest.update(b"\0")
        return f"{self.prefix}_{digest.hexdigest()[:16]}"

    def load_or_build(self) -> tuple[ModuleType, str]:
        """Import the cached module, building it first in a child process if needed."""
        name = self.module_name()
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
                    str(self.source),
                    name,
                    str(folder),
                    json.dumps(list(self.flags)),
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


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


_said: set[str] = set()


def say(message: str) -> None:
    """One line on stderr, once per process."""
    if message not in _said:
        _said.add(message)
        print(f"stepsize_lens: {message}", file=sys.stderr)
