"""Places in a nested run dict, for the fuzz tests: `dict_paths` lists them, `get_path` reads
one."""

from __future__ import annotations

from typing import Any


def dict_paths(value: Any, prefix: tuple = (), list_items: int | None = None) -> list[tuple]:
    """Every place below ``value``: the key / index paths to dict items, list items and leaves
    (of each list only the first ``list_items`` items, all when None)."""
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, item in value.items():
            found += dict_paths(item, (*prefix, key), list_items)
    elif isinstance(value, list):
        for index, item in enumerate(value[:list_items]):
            found += dict_paths(item, (*prefix, index), list_items)
    return found


def get_path(root: Any, path: tuple) -> Any:
    """The item at ``path`` (as `dict_paths` gives it) below ``root``."""
    for key in path:
        root = root[key]
    return root
