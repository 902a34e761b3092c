"""An offline, silent W&B whose every file lives under one folder (shared by the W&B tests)."""

from __future__ import annotations

from pathlib import Path

import pytest


def wandb_offline(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """Offline, silent wandb: runs, staging, cache, config and artifacts under ``folder``."""
    for name, value in {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_CONSOLE": "off",
        "WANDB_DIR": str(folder / "wandb"),
        "WANDB_DATA_DIR": str(folder / "wandb_data"),
        "WANDB_CACHE_DIR": str(folder / "wandb_cache"),
        "WANDB_CONFIG_DIR": str(folder / "wandb_config"),
        "WANDB_ARTIFACT_DIR": str(folder / "wandb_artifacts"),
    }.items():
        monkeypatch.setenv(name, value)
    (folder / "wandb").mkdir(exist_ok=True)
