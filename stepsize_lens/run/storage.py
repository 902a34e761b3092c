"""Putting a run dict on disk: atomically, with the permissions the umask gives new files, and
sealed with its checksum (`stepsize_lens.run.checksum`)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

from stepsize_lens._files import atomic_write
from stepsize_lens.run.checksum import KEY, seal


def save_run_dict(data: Mapping[str, Any], path: str | os.PathLike[str]) -> str:
    """Atomically write a run dict (temporary file, fsync, rename, fsync of the folder) with
    its checksum set; returns the checksum."""
    payload = seal(data)
    atomic_write(path, lambda handle: torch.save(payload, handle))
    return payload[KEY]
