"""The CLI never prints a traceback: expected errors are one line and exit 2, Ctrl-C one line
and 130, anything unexpected one line naming the exception and the stepsize_lens frame it came
from, with how to get the traceback, and exit 1 (``--debug`` / ``STEPSIZE_LENS_DEBUG=1`` add
the traceback)."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from _cli_runs import call_main, run_main, tiny_run

import stepsize_lens.cli as cli

ROOT = Path(__file__).parents[1]
HINT = "run with --debug or STEPSIZE_LENS_DEBUG=1 for the traceback"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A good run, and one whose group fields lack ``wd_ratio`` (raises deep inside)."""
    folder = tmp_path_factory.mktemp("cli_errors")
    good = tiny_run(folder / "good.pt")
    data = torch.load(good, weights_only=True)
    del data["groups"]["wd_ratio"]
    torch.save(data, folder / "deep.pt")
    return {"good": good, "deep": folder / "deep.pt"}


def one_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def test_every_command_on_a_file_that_raises_deep_inside(runs, tmp_path):
    """A KeyError from inside the package (whichever command meets it, or a clean exit 2 once
    validation refuses the file at load): one line, never a traceback."""
    deep, good = runs["deep"], runs["good"]
    commands = [
        ("report", deep, "--no-figures", "--out", tmp_path / "r"),
        ("report", deep, "-f", "json", "--no-figures", "--out", tmp_path / "r"),
        ("compare", good, deep, "--no-figures", "--out", tmp_path / "c"),
        ("compare", deep, good, "-f", "markdown", "--no-figures", "--out", tmp_path / "c"),
        ("export", deep, "--tensorboard", tmp_path / "tb"),
    ]
    codes = []
    for args in commands:
        code, _, err = call_main(*args)
        codes.append(code)
        assert code in (0, 1, 2), (args, code, err)
        if code == 1:
            line = one_line(err)
            assert line.startswith("stepsize-lens: internal error: KeyError: 'wd_ratio' (")
            assert "stepsize_lens/" in line and ".py:" in line and line.endswith(HINT)
        elif code == 2:
            assert one_line(err).startswith("stepsize-lens: error: ")
    assert set(codes[:4]) != {0}  # report and compare do read wd_ratio


def test_the_real_entry_point_names_the_frame(runs):
    result = run_main("report", runs["deep"], "--no-figures", "-f", "json")
    assert result.returncode in (1, 2), result.stderr
    line = one_line(result.stderr)
    if result.returncode == 1:
        assert "KeyError: 'wd_ratio' (stepsize_lens/" in line and line.endswith(HINT)


def _raising(exc: BaseException):
    def report(*args, **kwargs):
        raise exc

    return report


@pytest.mark.parametrize(
    ("exc", "code", "expected"),
    [
        (MemoryError(), 1, "stepsize-lens: internal error: MemoryError ("),
        (RecursionError("maximum recursion depth exceeded"), 1, "internal error: RecursionError"),
        (ValueError("bad\nvalue \x1b[2J"), 1, "internal error: ValueError: bad value \\x1b[2J ("),
        (PermissionError(13, "Permission denied", "/x/y.png"), 2, "error: /x/y.png: Permission"),
        (OSError(28, "No space left on device"), 2, "error: [Errno 28] No space left on device"),
        (KeyboardInterrupt(), 130, "stepsize-lens: error: interrupted"),
    ],
)
def test_unexpected_errors_are_one_line(monkeypatch, runs, exc, code, expected):
    import stepsize_lens.report as report_module

    monkeypatch.setattr(report_module, "report", _raising(exc))
    got, out, err = call_main("report", runs["good"])
    assert got == code
    line = one_line(err)
    assert expected in line
    if code == 1:
        # the innermost frame of the package, and the one that raised (outside it)
        assert "(stepsize_lens/cli/__init__.py:" in line
        assert f"; raised in {Path(__file__).name}:" in line and " in report)" in line
        assert line.endswith(HINT)


def test_the_frame_named_is_the_innermost_of_the_package(monkeypatch, runs):
    import stepsize_lens.analysis as analysis

    def deep_inside(*args, **kwargs):
        from stepsize_lens._sanitize import map_strings

        return map_strings({"x": object()}, lambda text: text[10**9])  # raises in _sanitize

    monkeypatch.setattr(analysis, "tensor_classes", deep_inside)
    code, _, err = call_main("report", runs["good"], "--no-figures", "-f", "json")
    assert code == 1
    line = one_line(err)
    assert "internal error: IndexError: string index out of range (" in line
    assert "(stepsize_lens/_sanitize.py:" in line
    assert f" in map_strings; raised in {Path(__file__).name}:" in line


@pytest.mark.parametrize("how", ["flag", "flag after the command", "env"])
def test_debug_adds_the_traceback_and_keeps_the_code(monkeypatch, runs, how):
    import stepsize_lens.report as report_module

    monkeypatch.setattr(report_module, "report", _raising(LookupError("deep")))
    args = ["report", runs["good"]]
    if how == "flag":
        args = ["--debug", *args]
    elif how == "flag after the command":
        args = [*args, "--debug"]
    else:
        monkeypatch.setenv("STEPSIZE_LENS_DEBUG", "1")
    code, _, err = call_main(*args)
    assert code == 1
    assert "Traceback (most recent call last)" in err and "LookupError: deep" in err
    assert err.splitlines()[-1].startswith("stepsize-lens: internal error: LookupError: deep (")
    assert HINT not in err


def test_debug_on_a_user_error_keeps_exit_2(runs, tmp_path):
    code, _, err = call_main("report", tmp_path / "missing.pt", "--debug")
    assert code == 2
    assert "Traceback" in err and err.splitlines()[-1].startswith("stepsize-lens: error: ")
    code, _, err = call_main("report", tmp_path / "missing.pt")
    assert code == 2 and one_line(err).startswith("stepsize-lens: error: ")


def test_usage_errors_and_help_still_work(runs):
    code, _, err = call_main("report", runs["good"], "--no-such-option")
    assert code == 2 and "No such option" in one_line(err)
    code, out, _ = call_main("--help")
    assert code == 0 and "--debug" in out
    code, out, _ = call_main("--version")
    assert code == 0 and out.startswith("stepsize-lens ")
    code, _, err = call_main()
    assert code in (0, 2) and "Traceback" not in err


def test_the_catch_all_needs_no_particular_typer_or_click(monkeypatch, runs):
    """A click without ``Abort`` or ``NoArgsIsHelpError`` (typer 0.29 vendors one without the
    first): nothing refers to what is not there."""
    from stepsize_lens.cli import _click_exceptions

    real = _click_exceptions()
    bare = types.SimpleNamespace(
        ClickException=real.ClickException, UsageError=getattr(real, "UsageError", None)
    )
    monkeypatch.setattr(cli, "_click_exceptions", lambda: bare)
    monkeypatch.delattr(cli.typer, "Abort", raising=False)
    code, _, err = call_main("report", runs["deep"], "--no-figures", "-f", "json")
    assert code in (1, 2) and "AttributeError" not in err
    one_line(err)
    code, _, err = call_main("report", runs["good"], "--bogus")
    assert code == 2 and "No such option" in one_line(err)


def test_an_error_message_with_control_characters_reaches_stderr_escaped(tmp_path):
    name = tmp_path / "\x1b]0;title\x07.pt"
    code, _, err = call_main("report", name)
    assert code == 2
    line = one_line(err)
    assert "\x1b" not in line and "\x07" not in line and "\\x1b]0;title\\x07" in line


def test_interrupt_at_the_real_entry_point(tmp_path):
    """SIGINT in a real process: one line, exit 130."""
    script = (
        "import stepsize_lens.report as r, stepsize_lens.cli as c\n"
        "def stop(*a, **k): raise KeyboardInterrupt\n"
        "r.report = stop\n"
        "c.main(['report', 'x.pt'])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert result.returncode == 130
    assert one_line(result.stderr) == "stepsize-lens: error: interrupted"
