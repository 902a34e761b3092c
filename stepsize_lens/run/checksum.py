"""A run file's checksum: SHA-256 over its tensors' bytes and a canonical serialisation of
everything else, stored in the file (``"checksum": "sha256:<hex>"``) and verified by `load`.

torch does not check the CRCs of its zip archive, so without this a flipped bit in a tensor
record loads as a silently changed number. The digest covers the whole dict but the
``checksum`` key itself, walking it in a canonical order: dict items sorted by key, every
value tagged with its type; a tensor contributes its dtype, shape and raw bytes (C order);
floats their IEEE-754 bytes; a subtree of plain values (no tensor) its JSON with sorted keys
(which tells 2 from 2.0 and true from 1). Every save writes one (format version 3); a file
without one (versions 1 and 2, or a dict saved by hand) loads unverified, while the index and
chunks of an appending save must carry theirs (`verify`).
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Mapping
from typing import Any

import torch

from stepsize_lens.errors import RunFileError

KEY = "checksum"
ALGORITHM = "sha256"
MAX_DEPTH = 32  # a run dict nests 4 deep; anything far deeper is not a run


class _TooDeep(ValueError):
    pass


def digest(data: Mapping[str, Any]) -> str:
    """``"sha256:<hex>"`` of ``data`` without its ``checksum`` key (module docstring)."""
    hasher = hashlib.sha256()
    _feed(hasher, {k: v for k, v in data.items() if k != KEY}, 0)
    return f"{ALGORITHM}:{hasher.hexdigest()}"


def seal(data: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``data`` (shallow) with its checksum set."""
    sealed = {k: v for k, v in data.items() if k != KEY}
    sealed[KEY] = digest(sealed)
    return sealed


def verify(data: Any, source: str, required: bool) -> None:
    """Raise `RunFileError` ("<source>: corrupted: ...") unless ``data``'s stored checksum
    matches its content. Without a stored checksum: fine for older files (``required`` False),
    corrupted otherwise."""
    if not isinstance(data, dict):
        return  # not a run at all: `validate` says so
    stored = data.get(KEY)
    if stored is None and not required:
        return
    if not isinstance(stored, str):
        raise RunFileError(f"{source}: corrupted: the run file's checksum is missing")
    try:
        actual = digest(data)
    except _TooDeep:
        raise RunFileError(f"{source}: not a run file (nested deeper than a run)") from None
    except Exception as error:  # a tensor of a kind no run holds (its bytes have no view)
        raise RunFileError(f"{source}: not a run file ({type(error).__name__})") from None
    if actual != stored:
        raise RunFileError(
            f"{source}: corrupted: its content does not match the checksum it was saved with"
        )


def _feed(hasher: Any, value: Any, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise _TooDeep
    update = hasher.update
    if type(value) in (dict, list) and depth:
        # a subtree of plain values (the params table, meta): canonical JSON, in C
        try:
            text = json.dumps(value, sort_keys=True, allow_nan=True, check_circular=False)
        except (TypeError, ValueError, RecursionError):
            pass  # holds tensors (or odd keys): walked below
        else:
            raw = text.encode("ascii")
            update(b"J%d:" % len(raw) + raw)
            return
    if isinstance(value, torch.Tensor):
        flat = value.detach().cpu().contiguous().reshape(-1)
        update(f"T{flat.dtype}{tuple(value.shape)}".encode())
        if flat.numel():
            update(memoryview(flat.view(torch.uint8).numpy()))
    elif isinstance(value, Mapping):
        items = sorted(value.items(), key=lambda item: (type(item[0]).__name__, str(item[0])))
        update(b"D%d:" % len(items))
        for key, item in items:
            _feed(hasher, key, depth + 1)
            _feed(hasher, item, depth + 1)
    elif isinstance(value, (list, tuple)):
        update(b"L%d:" % len(value))
        for item in value:
            _feed(hasher, item, depth + 1)
    elif isinstance(value, bool):
        update(b"B1" if value else b"B0")
    elif isinstance(value, int):
        update(b"I%d;" % value)
    elif isinstance(value, float):
        update(b"F" + struct.pack("<d", value))
    elif isinstance(value, str):
        raw = value.encode("utf-8", "surrogatepass")
        update(b"S%d:" % len(raw) + raw)
    elif isinstance(value, bytes):
        update(b"Y%d:" % len(value) + value)
    elif value is None:
        update(b"N")
    else:
        raw = f"{type(value).__qualname__}:{value!r}".encode("utf-8", "replace")
        update(b"O%d:" % len(raw) + raw)
