"""Reading a run file: `load` turns a path into a validated `Run`, or one clear `RunFileError`.

``torch.load(weights_only=True)`` is the only loader used: a file that would run code on load
is refused, and its payload never runs. Before any tensor is materialised the archive's
declared sizes are checked against the file's own (`archive`); a stored checksum is verified
(`checksum`); a run still being appended is put together from its chunks (`chunks`).
"""

from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path
from typing import Any

from stepsize_lens.errors import RunFileError
from stepsize_lens.run import checksum, chunks
from stepsize_lens.run.archive import Refused, load_archive
from stepsize_lens.run.format import validate
from stepsize_lens.run.run import Run

_ATTEMPTS = 3  # a save may replace the index and its chunks while they are being read


def load(path: str | os.PathLike[str]) -> Run:
    """Load and validate a run file. Every problem raises `RunFileError` with a one-line message.

    Uses ``torch.load(weights_only=True)``: a file that would run code on load is refused, and
    its payload never runs.
    """
    path = Path(path)
    for attempt in range(_ATTEMPTS):
        before = _stamp(path)
        data = read_object(path)
        if not chunks.is_index(data):
            checksum.verify(data, str(path), required=False)
            break
        try:
            data = chunks.assemble(data, path, read_object)
            break
        except chunks.MissingChunk:
            if attempt == _ATTEMPTS - 1 or _stamp(path) == before:
                raise
    return Run(validate(data, source=str(path)), path=path)


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def read_object(path: Path) -> Any:
    """The object a ``torch.save`` file at ``path`` holds, loaded within the bound of
    `archive`; every problem (unreadable, refused, not an archive) is one `RunFileError`."""
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed by the with below
    except FileNotFoundError:
        raise RunFileError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise RunFileError(f"{path}: is a directory, not a run file") from None
    except OSError as error:
        raise RunFileError(f"{path}: cannot read it ({_os_reason(error)})") from None
    with handle:
        try:
            if os.path.isdir(path):
                raise RunFileError(f"{path}: is a directory, not a run file")
            if os.fstat(handle.fileno()).st_size == 0:
                raise RunFileError(f"{path}: empty file, not a run file")
            if not zipfile.is_zipfile(handle):
                _legacy_load(handle)  # raises what torch says of the file, for _why_unreadable
                raise Refused("it is a legacy torch.save file; run files are zip archives")
            return load_archive(handle)
        except RunFileError:
            raise
        except Refused as refusal:
            raise RunFileError(f"{path}: refused to load: {refusal}") from None
        except MemoryError:
            raise RunFileError(f"{path}: too large to load in this process's memory") from None
        except Exception as exc:  # torch.load raises many kinds of errors on foreign bytes
            raise RunFileError(f"{path}: {_why_unreadable(path, exc)}") from None


def _legacy_load(handle: Any) -> None:
    """``torch.load`` of a file that is not a zip archive: it fails on anything but a legacy
    torch.save file, with the message `_why_unreadable` reads."""
    import warnings

    import torch

    handle.seek(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.load(handle, map_location="meta", weights_only=True)


def _os_reason(error: OSError) -> str:
    if isinstance(error, PermissionError):
        return "permission denied"
    return error.strerror or shorten(str(error))


_UNSAFE = re.compile(r"GLOBAL ([\w.]+)|allowlisted")
_HEAD_BYTES = 4096


def _why_unreadable(path: Path, exc: Exception) -> str:
    """Why ``torch.load`` failed, as people name it: code refused, truncated, or what the file is.

    A run file is a torch.save zip archive. The weights-only unpickler refuses any pickle that
    names a global outside its allowlist (that is how a pickle runs code); a plain pickle it
    may not even parse, so its globals are read here with `pickletools` (nothing runs).
    """
    text = str(exc)
    try:
        kind = _file_kind(path)
    except OSError as error:
        return f"cannot read the file ({error.strerror or shorten(str(error))})"
    unsafe = _UNSAFE.search(text)
    names = _pickle_globals(path) if kind == "pickle" else []
    if unsafe or names:
        name = names[0] if names else unsafe.group(1) if unsafe else None
        what = f"it names {name}" if name else "unsupported pickle content"
        return f"refused to load: the file holds objects that could run code ({what})"
    if kind == "zip":
        return f"corrupt, or a zip archive that torch.save did not write ({shorten(text)})"
    if kind == "cut zip":
        return f"truncated or corrupt: its zip archive has no end record ({shorten(text)})"
    if kind == "pickle":
        return "not a run file (it is a pickle, not a torch.save archive)"
    if kind == "text":
        return "not a run file (it is a text file, not a torch.save archive)"
    return "not a run file (it is not a torch.save archive)"


def _file_kind(path: Path) -> str:
    """ "zip", "cut zip" (a zip's first bytes without its end record: truncated), "pickle",
    "text" or "binary", from the file's first bytes (and its end, for zips)."""
    with open(path, "rb") as handle:
        head = handle.read(_HEAD_BYTES)
    if head.startswith(b"PK\x03\x04"):
        return "zip" if zipfile.is_zipfile(path) else "cut zip"
    if head.startswith(b"\x80"):  # a pickle's PROTO opcode (protocol 2 and later)
        return "pickle"
    if b"\x00" not in head:
        try:
            head.decode("utf-8")
            return "text"
        except UnicodeDecodeError as error:
            if error.start >= len(head) - 3:  # a character cut by the read, not binary data
                return "text"
    return "binary"


def _pickle_globals(path: Path) -> list[str]:
    """The globals (module.name) a pickle file names, read opcode by opcode without running it."""
    import pickletools

    names: list[str] = []
    strings: list[str] = []
    try:
        with open(path, "rb") as handle:
            for opcode, arg, _ in pickletools.genops(handle):
                if opcode.name in ("GLOBAL", "INST") and isinstance(arg, str):
                    names.append(arg.replace(" ", "."))
                elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                    names.append(".".join(strings[-2:]))
                elif isinstance(arg, str):
                    strings.append(arg)
    except Exception:  # a damaged pickle: keep what was read before the damage
        pass
    return names


def shorten(text: str, limit: int = 160) -> str:
    """The first sentence of ``text``'s first line, whole; past ``limit`` characters, cut at a
    word boundary and ended with "…". Exceptions of C++ libraries run on for lines."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    first = re.sub(r"^\[enforce fail at [^\]]*\][\s.]*", "", lines[0] if lines else "")
    sentence = re.split(r"(?<=[^\s.])\.(?:\s|$)", first, maxsplit=1)[0]
    if len(sentence) <= limit:
        return sentence
    cut = sentence[: limit + 1].rsplit(None, 1)[0] if " " in sentence[:limit] else sentence[:limit]
    return cut.rstrip(" ,;:") + "…"
