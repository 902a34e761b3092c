"""The appending layout of a run being written: a small index at the run's path and append-only
chunk files in a hidden folder beside it, so a save writes only what changed.

While a lens records, ``run.pt`` is an *index*: the run dict without its records, with
``"chunks": [{"file", "records", "checksum"}, ...]`` and ``"num_groups"``; the records live in
``.run.pt.d/<session>-<n>.pt``, each chunk holding the records, user scalars and events added
since the previous save (``{"format": CHUNK_FORMAT, "version", "records", "metrics", "views",
"groups", "scalars", "events", "checksum"}``, tensors as narrow as the run was when it was
written; metrics, views and groups packed as float32 [M, n, T], int8 [V, n, T] and float64
[F, n, G] under ``metric_names``, ``view_names`` and ``group_names``, so a chunk is a handful
of tensors). A save writes one new chunk (atomically), then the index (atomically), then
removes the chunks the new one merged: a process killed at any moment leaves an index and the
chunks it names. Merging keeps the folder small: when a save completes 16 chunks of one level,
it writes them with its own records as one chunk of the next level, up to level 2 (every record
is written at most three times, so the total cost stays linear in the records, and a week of
saves every 30 s is about a hundred chunks). `close()` compacts the run into one ordinary
``run.pt`` and removes the folder (`RunWriter.save`).

`assemble` turns an index back into the one-file layout for `validate`: columns a chunk lacks
(tensors or groups added later) are NaN (metrics, groups) or -1 (views).
"""

from __future__ import annotations

import math
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from stepsize_lens._schema import View
from stepsize_lens.errors import RunFileError
from stepsize_lens.run import checksum

CHUNK_FORMAT = "stepsize_lens/run-chunk"
CHUNK_NAME = re.compile(r"[0-9a-f]{8}-[0-9]{6,}\.pt")
MAX_CHUNKS = 10_000_000


class MissingChunk(RunFileError):
    """A chunk the index names is not on disk (a save replaced it, or the run was copied
    without its folder)."""


def folder_of(path: Path) -> Path:
    """The hidden chunk folder of the run at ``path``: ``.run.pt.d`` beside ``run.pt``."""
    return path.with_name(f".{path.name}.d")


def remove_folder(path: Path) -> None:
    """Remove the chunk folder of ``path`` (after compaction); quietly if there is none."""
    shutil.rmtree(folder_of(path), ignore_errors=True)


def remove_other_chunks(path: Path, keep: set[str]) -> None:
    """Remove chunk files of ``path``'s folder that the index no longer names (an earlier
    session's, or one a killed save left unnamed)."""
    try:
        entries = list(folder_of(path).iterdir())
    except OSError:
        return
    for entry in entries:
        if entry.name not in keep and (CHUNK_NAME.fullmatch(entry.name) or entry.suffix == ".tmp"):
            try:
                entry.unlink()
            except OSError:
                pass


def remove_chunk(path: Path, name: str) -> None:
    """Remove one chunk file of ``path``'s folder (merged into another); quietly if gone."""
    try:
        (folder_of(path) / name).unlink()
    except OSError:
        pass


def is_index(data: Any) -> bool:
    return isinstance(data, dict) and "chunks" in data


def assemble(index: dict[str, Any], path: Path, read: Callable[[Path], Any]) -> dict[str, Any]:
    """The run of an index at ``path`` in the one-file layout, its chunks read with ``read``
    (the bounded loader) and each checked against its own checksum and the index's."""
    source = str(path)
    checksum.verify(index, source, required=True)
    entries = index.get("chunks")
    params = index.get("params")
    num_groups = index.get("num_groups")
    if (
        not isinstance(entries, list)
        or len(entries) > MAX_CHUNKS
        or not isinstance(params, dict)
        or not isinstance(params.get("name"), list)
        or type(num_groups) is not int
        or num_groups < 0
    ):
        raise RunFileError(f"{source}: run file has a malformed chunk index")
    num_tensors = len(params["name"])
    folder = folder_of(path)
    parts: list[dict[str, Any]] = []
    for entry in entries:
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("file"), str)
            or not CHUNK_NAME.fullmatch(entry["file"])
            or not isinstance(entry.get("checksum"), str)
        ):
            raise RunFileError(f"{source}: run file has a malformed chunk index")
        chunk_path = folder / entry["file"]
        if not chunk_path.exists():
            raise MissingChunk(
                f"{source}: its records are in {folder.name}/ beside it, which lacks "
                f"{entry['file']} (copy a run after close(), when it is one file)"
            )
        chunk = read(chunk_path)
        checksum.verify(chunk, str(chunk_path), required=True)
        if chunk.get(checksum.KEY) != entry["checksum"] or chunk.get("format") != CHUNK_FORMAT:
            raise RunFileError(f"{chunk_path}: corrupted: not the chunk the index names")
        parts.append(chunk)
    try:
        return _joined(index, parts, num_tensors, num_groups)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError):
        raise RunFileError(f"{source}: run file has a malformed chunk") from None


def _joined(
    index: dict[str, Any], parts: list[dict[str, Any]], num_tensors: int, num_groups: int
) -> dict[str, Any]:
    data = {k: v for k, v in index.items() if k not in ("chunks", "num_groups", checksum.KEY)}
    data["records"] = {
        name: torch.cat([part["records"][name] for part in parts])
        if parts
        else torch.zeros(0, dtype=dtype)
        for name, dtype in (
            ("step", torch.int64),
            ("time", torch.float64),
            ("skipped", torch.bool),
        )
    }
    for section, width, fill, dtype in (
        ("metrics", num_tensors, math.nan, torch.float32),
        ("views", num_tensors, float(View.UNTESTED), torch.int8),
        ("groups", num_groups, math.nan, torch.float64),
    ):
        key = f"{section[:-1]}_names" if section != "metrics" else "metric_names"
        names = parts[0][key] if parts else []
        for part in parts:
            packed = part[section]
            if (
                part[key] != names
                or not isinstance(packed, torch.Tensor)
                or packed.ndim != 3
                or packed.shape[0] != len(names)
                or packed.shape[1] != part["records"]["step"].shape[0]
            ):
                raise ValueError(f"chunk section {section} does not match the first chunk's")
        data[section] = {
            name: _stacked([part[section][k] for part in parts], width, fill, dtype)
            for k, name in enumerate(names)
        }
    scalars: dict[str, dict[str, list[torch.Tensor]]] = {}
    for part in parts:
        for name, series in part["scalars"].items():
            both = scalars.setdefault(name, {"step": [], "value": []})
            both["step"].append(series["step"])
            both["value"].append(series["value"])
    data["scalars"] = {
        name: {"step": torch.cat(both["step"]), "value": torch.cat(both["value"])}
        for name, both in scalars.items()
    }
    data["events"] = [event for part in parts for event in part["events"]]
    return data


def _stacked(
    blocks: list[torch.Tensor], width: int, fill: float, dtype: torch.dtype
) -> torch.Tensor:
    """Row blocks [n_i, w_i] (w_i <= width) as one [sum n_i, width] tensor, padded with fill."""
    rows = sum(int(block.shape[0]) for block in blocks)
    out = torch.full((rows, width), fill, dtype=dtype)
    start = 0
    for block in blocks:
        if block.ndim != 2 or block.shape[1] > width or block.dtype != dtype:
            raise ValueError("chunk block of the wrong shape or dtype")
        out[start : start + block.shape[0], : block.shape[1]] = block
        start += block.shape[0]
    return out
