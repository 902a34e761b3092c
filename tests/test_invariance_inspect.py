"""`stepsize-lens inspect`: built-in and user models, and one-line errors for bad specs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

import stepsize_lens


def _repo_root() -> str:
    return str(Path(stepsize_lens.__file__).resolve().parents[1])


@pytest.fixture
def user_models(tmp_path, monkeypatch):
    (tmp_path / "lens_user_models.py").write_text(
        textwrap.dedent(
            """
            from torch import nn

            not_callable = 3

            def raises():
                raise RuntimeError("cannot build this model")

            def small():
                return nn.Sequential(nn.Linear(6, 4, bias=False), nn.BatchNorm1d(4))

            def not_a_module():
                return "a string"
            """
        )
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "lens_user_models", raising=False)
    yield
    sys.modules.pop("lens_user_models", None)


def _invoke(*args: str):
    from stepsize_lens.cli import app

    return CliRunner().invoke(app, ["inspect", *args])


def test_inspect_builtin_prints_census():
    result = _invoke("digits_cnn", "--batch-size", "2", "--draws", "1")
    assert result.exit_code == 0, result.output
    assert "census of digits_cnn" in result.stdout
    assert "Conv2d" in result.stdout and "98.4% of parameters" in result.stdout


def test_inspect_factory_from_current_folder(user_models):
    result = _invoke("lens_user_models:small", "--input-shape", "6", "--tensors")
    assert result.exit_code == 0, result.output
    assert "0.weight" in result.stdout and "channel" in result.stdout


@pytest.mark.parametrize(
    ("spec", "extra", "message"),
    [
        ("no_such_module_xyz:factory", [], "cannot import module 'no_such_module_xyz'"),
        ("lens_user_models:missing", ["--input-shape", "6"], "has no attribute 'missing'"),
        ("lens_user_models:not_callable", ["--input-shape", "6"], "is not callable"),
        ("lens_user_models:raises", ["--input-shape", "6"], "cannot build this model"),
        ("lens_user_models:not_a_module", ["--input-shape", "6"], "not a torch.nn.Module"),
        ("lens_user_models:small", ["--input-shape", "7"], "does not fit model"),
        ("lens_user_models:small", [], "pass --input-shape"),
        ("lens_user_models:small", ["--input-shape", "6,a"], "not a list of integers"),
        ("resnet", [], "unknown model 'resnet'"),
        ("resnet18", ["--input-shape", "1,8,8"], "does not fit model"),
        ("mlp", ["--batch-size", "1"], "batch size must be at least 2"),
        ("mlp", ["--draws", "0"], "draws must be at least 1"),
    ],
)
def test_inspect_bad_model_is_one_line_and_exit_2(user_models, spec, extra, message):
    result = _invoke(spec, *extra)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0] and "Traceback" not in result.output


def test_inspect_bad_model_through_the_console_script(user_models):
    code = "from stepsize_lens.cli import main; main()"
    proc = subprocess.run(
        [sys.executable, "-c", code, "inspect", "lens_user_models:raises", "--input-shape", "6"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": _repo_root()},
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "cannot build this model" in proc.stderr
