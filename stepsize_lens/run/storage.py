"""Putting a run dict on disk: atomically, with the permissions the umask gives new files."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

from stepsize_lens._files import atomic_write


def save_run_dict(data: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Atomically write a run dict (temporary file, fsync, rename, fsync of the folder)."""
    payload = dict(data)
    atomic_write(path, lambda handle: torch.save(payload, handle))
