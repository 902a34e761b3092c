"""`load` of a path the OS will not open: one `RunFileError` line naming it."""

from __future__ import annotations

import os

import pytest

from stepsize_lens.errors import RunFileError
from stepsize_lens.run import load, reader


def test_a_file_in_an_unreadable_folder_is_a_run_file_error(tmp_path, monkeypatch):
    path = tmp_path / "locked" / "run.pt"
    path.parent.mkdir()
    path.write_bytes(b"PK\x03\x04")

    def refuse(name, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(name))

    if os.geteuid() == 0:  # root opens anything: the refusal is what the OS would raise
        monkeypatch.setattr(reader, "open", refuse, raising=False)
    else:
        path.parent.chmod(0)
    try:
        with pytest.raises(RunFileError, match=r"run\.pt: cannot read it \(permission denied\)"):
            load(path)
    finally:
        path.parent.chmod(0o755)


def test_other_os_errors_are_run_file_errors(tmp_path):
    loop = tmp_path / "loop.pt"
    loop.symlink_to(tmp_path / "loop.pt")  # a link to itself: ELOOP
    with pytest.raises(RunFileError, match=r"loop\.pt: cannot read it \(.*symbolic links"):
        load(loop)
    inside_a_file = tmp_path / "plain.txt"
    inside_a_file.write_text("x")
    with pytest.raises(RunFileError, match=r"run\.pt: (cannot read it|no such file)"):
        load(inside_a_file / "run.pt")  # ENOTDIR
