"""Reading a run file: `load` turns a path into a validated `Run`, or one clear `RunFileError`.

``torch.load(weights_only=True)`` is the only loader used: a file that would run code on load
is refused, and its payload never runs.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
import zipfile
from pathlib import Path

import torch

from stepsize_lens.errors import RunFileError
from stepsize_lens.run.format import validate
from stepsize_lens.run.run import Run


def load(path: str | os.PathLike[str]) -> Run:
    """Load and validate a run file. Every problem raises `RunFileError` with a one-line message.

    Uses ``torch.load(weights_only=True)``: a file that would run code on load is refused, and
    its payload never runs.
    """
    path = Path(path)
    if not path.exists():
        raise RunFileError(f"{path}: no such file")
    if path.is_dir():
        raise RunFileError(f"{path}: is a directory, not a run file")
    if path.stat().st_size == 0:
        raise RunFileError(f"{path}: empty file, not a run file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about foreign pickle protocols
            data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        if "weights_only" in text or "Unsupported global" in text:
            found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
            what = f"it names {found.group(1)}" if found else "unsupported pickle content"
            raise RunFileError(
                f"{path}: refused to load: the file holds objects that could run code ({what})"
            ) from None
        raise RunFileError(f"{path}: not a run file (unreadable pickle: {first[:120]})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = "truncated or corrupt" if _looks_like_zip(path) else "not a run file"
        raise RunFileError(f"{path}: {hint} ({message[:120]})") from None
    except Exception as exc:  # anything else torch.load may raise on foreign bytes
        raise RunFileError(f"{path}: not a run file ({type(exc).__name__})") from None
    return Run(validate(data, source=str(path)), path=path)


def _looks_like_zip(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(4) == b"PK\x03\x04"
