"""Opening a ``torch.save`` archive without trusting it: sizes are checked before any tensor is
materialised, and only ``torch.load(weights_only=True)`` ever reads it.

The bound (docs/design.md §8, "Bounded loading"): a run file's tensors may declare no more bytes
than the file stores, each tensor is a plain, contiguous view that stays inside its own storage,
and no two tensors share a storage. So loading takes the file's size in tensor memory plus the
pickle's Python objects, whatever the file claims. In order:

1. The zip's central directory (`zipfile`): every record is stored uncompressed (torch.save
   never compresses, so a deflated record can only make a small file declare a large one), the
   records' sizes add up to no more than the file, and no name repeats.
2. The pickle is unpickled with ``map_location="meta"``: tensors get their declared shapes,
   strides and storage sizes, but no data is read or allocated. Each storage's declared size
   must equal its record's size, and each tensor must be contiguous (no stride 0) inside its
   storage, on a storage of its own.
3. Only then ``torch.load(map_location="cpu", weights_only=True)`` reads the records, from the
   same open file (a file renamed over the path meanwhile is not mixed in).
"""

from __future__ import annotations

import os
import struct
import warnings
import zipfile
from typing import IO, Any

import torch

_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # a zip local file header, 30 bytes
MAX_NODES = 10_000_000  # containers and values walked in one file's object tree


class Refused(Exception):
    """The archive breaks the bound; the message says how (the caller adds the path)."""


def load_archive(handle: IO[bytes]) -> Any:
    """The object in an open ``torch.save`` zip archive, checked as the module docstring says.

    Raises `Refused` when the archive breaks the bound; any other exception is torch's or
    zipfile's on a file that is not a sound archive (the caller says what the file is).
    """
    size = os.fstat(handle.fileno()).st_size
    records = _records(handle, size)
    handle.seek(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns about foreign pickle protocols
        declared = torch.load(handle, map_location="meta", weights_only=True)
    _check_tensors(declared, records)
    del declared
    handle.seek(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(handle, map_location="cpu", weights_only=True)


def _records(handle: IO[bytes], size: int) -> dict[int, tuple[str, int]]:
    """{data offset: (name, size)} of the archive's records, after the directory checks."""
    handle.seek(0)
    with zipfile.ZipFile(handle) as archive:
        infos = archive.infolist()
    names = [info.filename for info in infos]
    if len(set(names)) != len(names):
        raise Refused("its zip archive names a record twice")
    total = 0
    records: dict[int, tuple[str, int]] = {}
    for info in infos:
        if info.compress_type != zipfile.ZIP_STORED:
            raise Refused(
                f"its record {info.filename!r} is compressed; torch.save stores records "
                "uncompressed, and a compressed run file could declare far more than it holds"
            )
        total += info.file_size
        if info.file_size != info.compress_size or total > size:
            raise Refused("its zip archive declares more bytes than the file holds")
        records[_data_offset(handle, info, size)] = (info.filename, info.file_size)
    return records


def _data_offset(handle: IO[bytes], info: zipfile.ZipInfo, size: int) -> int:
    """Where a stored record's bytes start: after its local header (name and extra field)."""
    handle.seek(info.header_offset)
    header = handle.read(_LOCAL_HEADER.size)
    if len(header) != _LOCAL_HEADER.size or header[:4] != b"PK\x03\x04":
        raise Refused(f"its zip record {info.filename!r} has no valid local header")
    fields = _LOCAL_HEADER.unpack(header)
    name_length, extra_length = fields[-2], fields[-1]
    start = info.header_offset + _LOCAL_HEADER.size + name_length + extra_length
    if start + info.file_size > size:
        raise Refused(f"its zip record {info.filename!r} runs past the end of the file")
    return start


def _check_tensors(obj: Any, records: dict[int, tuple[str, int]]) -> None:
    """Every tensor (on the meta device) contiguous, inside its storage, on a storage of its
    own whose declared size is its record's size."""
    used: set[int] = set()
    stack = [obj]
    nodes = 0
    while stack:
        value = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            raise Refused("it holds more values than a run file of its size could")
        if isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, (list, tuple)):
            stack.extend(value)
        elif isinstance(value, torch.Tensor):
            _check_tensor(value, records, used)


def _check_tensor(
    tensor: torch.Tensor, records: dict[int, tuple[str, int]], used: set[int]
) -> None:
    if tensor.layout != torch.strided:
        raise Refused(f"it holds a {tensor.layout} tensor; run files hold dense tensors only")
    storage = tensor.untyped_storage()
    offset = getattr(storage, "_checkpoint_offset", None)
    record = records.get(offset) if isinstance(offset, int) else None
    if record is None:
        raise Refused(
            "a tensor's storage is not where torch.save puts its record (a zip archive "
            "rewritten by another tool?)"
        )
    name, record_size = record
    if storage.nbytes() != record_size:
        raise Refused(
            f"a tensor declares {storage.nbytes()} bytes but its record {name!r} holds "
            f"{record_size}"
        )
    if record_size and offset in used:
        raise Refused("two of its tensors share one storage (overlapping tensors)")
    used.add(offset)
    if not tensor.is_contiguous():
        raise Refused(
            f"a tensor of shape {tuple(tensor.shape)} has strides {tensor.stride()}: run files "
            "hold contiguous tensors only (a stride-0 view makes a small file declare a huge "
            "array)"
        )
    end = (tensor.storage_offset() + tensor.numel()) * tensor.element_size()
    if tensor.storage_offset() < 0 or end > storage.nbytes():
        raise Refused(f"a tensor of shape {tuple(tensor.shape)} runs past its storage")
