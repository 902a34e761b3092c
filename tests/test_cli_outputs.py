"""What the CLI writes: a symlink planted at every output name is replaced, never followed; an
output folder that is another user's symlink is refused; names from the file reach the
terminal without control characters and report.md without HTML."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from _cli_runs import HOSTILE, REPORT_FIGURES, call_main, tiny_run

COMPARE_FIGURES = ("paper_panel", "norm_growth", "effective_step")
PAGES = ("report.md", "report.html", "report.json")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("cli_outputs")
    return {
        "a": tiny_run(folder / "a.pt", label="A"),
        "b": tiny_run(folder / "b.pt", label="B", seed=1),
        "hostile": tiny_run(
            folder / "hostile.pt", label=f"L{HOSTILE}", hidden=f"T{HOSTILE}", scalar=f"S{HOSTILE}"
        ),
    }


def plant_everywhere(folder: Path, names: list[str], victim: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    victim.write_bytes(b"precious")
    victim.chmod(0o600)
    for name in names:
        (folder / name).symlink_to(victim)


def assert_regular_files(folder: Path, names: list[str], victim: Path) -> None:
    assert victim.read_bytes() == b"precious"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600
    for name in names:
        path = folder / name
        assert not path.is_symlink() and path.is_file() and path.stat().st_size > 0, name
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def figure_files(names: tuple[str, ...]) -> list[str]:
    return [f"{name}.{fmt}" for name in names for fmt in ("png", "pdf")]


@pytest.mark.slow
def test_report_replaces_symlinks_at_every_output_name(runs, tmp_path):
    out, victim = tmp_path / "run_report", tmp_path / "victim"
    names = figure_files(REPORT_FIGURES) + list(PAGES)
    plant_everywhere(out, names, victim)
    code, _, err = call_main("report", runs["a"], "-f", "markdown", "--out", out)
    assert code == 0, err
    for fmt in ("html", "json"):
        code, _, err = call_main("report", runs["a"], "-f", fmt, "--no-figures", "--out", out)
        assert code == 0, err
    assert_regular_files(out, names, victim)


@pytest.mark.slow
def test_compare_replaces_symlinks_at_every_output_name(runs, tmp_path):
    out, victim = tmp_path / "a_vs_b_compare", tmp_path / "victim"
    names = figure_files(COMPARE_FIGURES) + list(PAGES)
    plant_everywhere(out, names, victim)
    pair = (runs["a"], runs["b"])
    code, _, err = call_main("compare", *pair, "-f", "markdown", "--out", out)
    assert code == 0, err
    for fmt in ("html", "json"):
        code, _, err = call_main("compare", *pair, "-f", fmt, "--no-figures", "--out", out)
        assert code == 0, err
    assert_regular_files(out, names, victim)


def test_export_replaces_a_symlink_at_the_event_file_name(runs, tmp_path, monkeypatch):
    """The event file's name is predictable (time, host, pid, a counter): pin the first two,
    plant a symlink there, export."""
    from tensorboard.summary.writer import event_file_writer as efw

    from stepsize_lens.integrations.tensorboard import EXPORT_SUFFIX

    monkeypatch.setattr(efw.time, "time", lambda: 1_700_000_000.0)
    monkeypatch.setattr(efw.socket, "gethostname", lambda: "host")
    name = f"events.out.tfevents.1700000000.host.{os.getpid()}.{efw._global_uid._value}"
    logdir, victim = tmp_path / "tb", tmp_path / "victim"
    plant_everywhere(logdir, [name + EXPORT_SUFFIX], victim)
    code, _, err = call_main("export", runs["a"], "--tensorboard", logdir)
    assert code == 0, err
    assert_regular_files(logdir, [name + EXPORT_SUFFIX], victim)
    assert [p.name for p in logdir.iterdir()] == [name + EXPORT_SUFFIX]  # staging removed


def _foreign_symlink(link: Path, target: Path, monkeypatch) -> None:
    from stepsize_lens import _files

    target.mkdir(exist_ok=True)
    link.symlink_to(target, target_is_directory=True)
    if os.geteuid() == 0:
        os.lchown(link, 4242, 4242)
    else:  # cannot chown: be someone else instead
        monkeypatch.setattr(_files.os, "geteuid", lambda: os.getuid() + 1)


@pytest.mark.parametrize("where", ["default folder", "--out"])
def test_an_output_folder_that_is_another_users_symlink_is_refused(
    runs, tmp_path, monkeypatch, where
):
    run = Path(tmp_path / "a.pt")
    run.write_bytes(runs["a"].read_bytes())
    link = tmp_path / ("a_report" if where == "default folder" else "out")
    elsewhere = tmp_path / "x"
    _foreign_symlink(link, elsewhere, monkeypatch)
    args = ["report", run, "-f", "json"] + (["--out", link] if where == "--out" else [])
    code, out, err = call_main(*args)
    assert code == 2 and out == ""
    (line,) = err.splitlines()
    assert line == (
        f"stepsize-lens: error: {link}: is a symbolic link owned by another user (uid "
        f"{os.lstat(link).st_uid}); refusing to write through it: remove it or choose another "
        "folder"
    )
    assert list(elsewhere.iterdir()) == []


def _no_controls(text: str) -> None:
    bad = [c for c in text if (ord(c) < 0x20 and c not in "\n") or 0x7F <= ord(c) < 0xA0]
    assert not bad, bad


def test_names_reach_the_terminal_without_control_characters(runs, tmp_path):
    for args in (
        ("report", runs["hostile"], "--no-figures", "--by", "tensor"),
        ("compare", runs["hostile"], runs["a"], "--no-figures", "--out", tmp_path),
        ("report", runs["hostile"], "-f", "json", "--no-figures", "--out", tmp_path),
        ("report", runs["hostile"], "-f", "markdown", "--no-figures", "--out", tmp_path),
    ):
        code, out, err = call_main(*args)
        assert code == 0, err
        _no_controls(out)
        assert "\u202e" not in out
    code, out, _ = call_main("report", runs["hostile"], "--no-figures", "--by", "tensor")
    assert "L\\x1b]0;pwned\\x07" in out  # the label, shown with visible escapes
    assert "T\\x1b]0;pwned\\x07" in out  # the tensor name
    assert "S\\x1b]0;pwned\\x07" in out  # the scalar's name


def test_report_md_carries_no_html_from_names(runs, tmp_path):
    for args in (
        ("report", runs["hostile"], "-f", "markdown", "--by", "tensor"),
        ("compare", runs["hostile"], runs["a"], "-f", "markdown"),
    ):
        code, out, err = call_main(*args, "--no-figures", "--out", tmp_path)
        assert code == 0, err
        page = (tmp_path / "report.md").read_text(encoding="utf-8")
        assert page == out
        for raw in ("<script", "<img", "</script"):
            assert raw not in page
        assert "&lt;script&gt;" in page and "&lt;img src=x onerror=alert(2)&gt;" in page
        _no_controls(page)


def test_json_keeps_the_names_exactly(runs, tmp_path):
    code, out, err = call_main(
        "report", runs["hostile"], "-f", "json", "--no-figures", "--out", tmp_path
    )
    assert code == 0, err
    data = json.loads(out)
    assert data["run"]["label"] == f"L{HOSTILE}"
    assert f"S{HOSTILE}" in data["run"]["scalars"]
    assert json.loads((tmp_path / "report.json").read_text(encoding="utf-8")) == data
