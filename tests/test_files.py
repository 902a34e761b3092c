"""`_files.atomic_write`: a symlink at the target's name is replaced, never followed; an output
folder that is another user's symlink is refused."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from stepsize_lens import _files
from stepsize_lens._files import (
    UnsafeFolderError,
    atomic_write,
    atomic_write_text,
    check_folder,
    output_folder,
)


def plant(link: Path, victim: Path) -> None:
    victim.write_bytes(b"precious")
    victim.chmod(0o600)
    link.symlink_to(victim)


def assert_untouched(victim: Path) -> None:
    assert victim.read_bytes() == b"precious"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600


def test_a_symlink_at_the_target_is_replaced_not_followed(tmp_path):
    victim, target = tmp_path / "victim", tmp_path / "out" / "report.md"
    target.parent.mkdir()
    plant(target, victim)
    atomic_write_text(target, "# report\n")
    assert_untouched(victim)
    assert not target.is_symlink() and target.is_file()
    assert target.read_text() == "# report\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.md"]  # no temp left


def test_a_dangling_symlink_is_replaced_and_nothing_is_created_where_it_points(tmp_path):
    target, nowhere = tmp_path / "fig.png", tmp_path / "created_through_link"
    target.symlink_to(nowhere)
    atomic_write(target, lambda handle: handle.write(b"\x89PNG"))
    assert not nowhere.exists() and not target.is_symlink()
    assert target.read_bytes() == b"\x89PNG"


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")

    def fail(handle):
        handle.write(b"half")
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError):
        atomic_write(target, fail)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_a_lone_surrogate_does_not_fail_a_text_write(tmp_path):
    path = atomic_write_text(tmp_path / "r.md", "label \udc80 end")
    assert path.read_bytes() == b"label \\udc80 end"


def _foreign(link: Path, monkeypatch) -> None:
    """Make ``link`` (a symlink) another user's: chown it when root, else pretend to be
    someone else."""
    if os.geteuid() == 0:
        os.lchown(link, 4242, 4242)
    else:
        monkeypatch.setattr(_files.os, "geteuid", lambda: os.getuid() + 1)


def test_a_folder_that_is_another_users_symlink_is_refused(tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    link = tmp_path / "run_report"
    link.symlink_to(elsewhere, target_is_directory=True)
    check_folder(link)  # our own symlink: followed
    _foreign(link, monkeypatch)
    with pytest.raises(UnsafeFolderError, match="symbolic link owned by another user") as info:
        atomic_write_text(link / "report.md", "x")
    assert isinstance(info.value, PermissionError) and info.value.filename == str(link)
    with pytest.raises(UnsafeFolderError):
        output_folder(link)
    assert list(elsewhere.iterdir()) == []


def test_check_folder_passes_missing_and_plain_folders(tmp_path):
    assert check_folder(tmp_path / "missing" / "deeper") == tmp_path / "missing" / "deeper"
    assert check_folder(tmp_path) == tmp_path
    assert output_folder(tmp_path / "new").is_dir()
