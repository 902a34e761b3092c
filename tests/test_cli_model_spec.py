"""`cli.model_spec`: built-in and user models from a spec, inputs that fit, one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import stepsize_lens
from stepsize_lens.cli.model_spec import model_and_inputs, parse_input_shape, resolve_model
from stepsize_lens.errors import UserInputError


def _repo_root() -> str:
    return str(Path(stepsize_lens.__file__).resolve().parents[1])


@pytest.fixture
def user_models(tmp_path, monkeypatch):
    (tmp_path / "lens_user_models.py").write_text(
        textwrap.dedent(
            """
            import torch
            from torch import nn

            not_callable = 3

            def raises():
                raise RuntimeError("cannot build this model")

            def small():
                return nn.Sequential(nn.Linear(6, 4, bias=False), nn.BatchNorm1d(4))

            def not_a_module():
                return "a string"

            def tokens():  # a tiny language model: token ids -> embedding -> LayerNorm
                return nn.Sequential(nn.Embedding(50, 8), nn.LayerNorm(8), nn.Linear(8, 3))

            def token_batch():
                return torch.randint(0, 50, (3, 5))

            def token_kwargs():
                return {"input": torch.randint(0, 50, (3, 5))}

            def no_tensor():
                return [1, 2]

            class Argmax(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.lin = nn.Linear(6, 4)

                def forward(self, x):
                    return self.lin(x).argmax(dim=1)
            """
        )
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "lens_user_models", raising=False)
    yield tmp_path
    sys.modules.pop("lens_user_models", None)


def _invoke(*args: str):
    from stepsize_lens.cli import app

    return CliRunner().invoke(app, ["inspect", *args])


@pytest.mark.parametrize(
    ("text", "shape"),
    [("3,32,32", (3, 32, 32)), ("3x8x8", (3, 8, 8)), ("(6)", (6,)), ((2, 5), (2, 5))],
)
def test_parse_input_shape(text, shape):
    assert parse_input_shape(text) == shape


@pytest.mark.parametrize("text", ["", "3,0", "-1", "a,b"])
def test_parse_input_shape_rejects_bad_shapes(text):
    with pytest.raises(UserInputError):
        parse_input_shape(text)


def test_resolve_model_builtin_and_factory(user_models):
    model, shape = resolve_model("mlp")
    assert isinstance(model, torch.nn.Module) and shape is not None
    path_before = list(sys.path)
    model, shape = resolve_model("lens_user_models:small")
    assert shape is None and isinstance(model[1], torch.nn.BatchNorm1d)
    assert sys.path == path_before  # the current folder was added only for the import


def test_model_and_inputs_is_seeded_and_leaves_model_and_rng_alone(user_models):
    rng = torch.get_rng_state()
    model, inputs = model_and_inputs("lens_user_models:small", "6", batch_size=3, seed=5)
    assert torch.equal(torch.get_rng_state(), rng)
    assert inputs.shape == (3, 6)
    bn = model[1]
    assert int(bn.num_batches_tracked) == 0 and torch.all(bn.running_mean == 0)
    again, inputs_again = model_and_inputs("lens_user_models:small", (6,), batch_size=3, seed=5)
    assert torch.equal(inputs, inputs_again)
    assert torch.equal(model[0].weight, again[0].weight)


def test_token_inputs_are_integers_in_range_and_seeded(user_models):
    model, inputs = model_and_inputs("lens_user_models:tokens", "5", input_dtype="long", seed=1)
    assert inputs.dtype == torch.int64 and inputs.shape == (4, 5)
    assert int(inputs.min()) >= 0 and int(inputs.max()) < 50  # below the embedding's size
    _, again = model_and_inputs("lens_user_models:tokens", "5", input_dtype="long", seed=1)
    assert torch.equal(inputs, again)
    _, narrow = model_and_inputs(
        "lens_user_models:tokens", "5", input_dtype="int", input_range="7,9", batch_size=64
    )
    assert narrow.dtype == torch.int32 and set(narrow.unique().tolist()) == {7, 8}
    _, floats = model_and_inputs("mlp", input_range=(-1, 1), batch_size=64)
    assert floats.dtype == torch.float32 and -1 <= float(floats.min()) < float(floats.max()) < 1


def test_inspect_a_token_model(user_models):
    result = _invoke("lens_user_models:tokens", "--input-shape", "5", "--input-dtype", "long")
    assert result.exit_code == 0, result.output
    assert "Embedding" in result.stdout
    verdicts = _invoke(
        "lens_user_models:tokens",
        "--input-shape",
        "5",
        "--input-dtype",
        "long",
        "--input-range",
        "0,50",
        "--tensors",
    )
    assert verdicts.exit_code == 0, verdicts.output
    line = next(row for row in verdicts.stdout.splitlines() if "0.weight" in row)
    assert "channel" in line  # each embedding row is normalised by the LayerNorm on its own


@pytest.mark.parametrize("example", ["token_batch", "token_kwargs"])
def test_inspect_with_example_inputs(user_models, example):
    result = _invoke("lens_user_models:tokens", "--example", f"lens_user_models:{example}")
    assert result.exit_code == 0, result.output
    assert "Embedding" in result.stdout


def test_example_inputs_are_seeded(user_models):
    _, first = model_and_inputs("lens_user_models:tokens", example="lens_user_models:token_batch")
    _, again = model_and_inputs("lens_user_models:tokens", example="lens_user_models:token_batch")
    assert torch.equal(first, again)


def test_inspect_factory_from_current_folder(user_models):
    result = _invoke("lens_user_models:small", "--input-shape", "6", "--tensors")
    assert result.exit_code == 0, result.output
    assert "0.weight" in result.stdout and "channel" in result.stdout


def test_inspect_with_one_thread_gives_the_same_verdicts(user_models):
    default = _invoke("lens_user_models:small", "--input-shape", "6")
    one = _invoke("lens_user_models:small", "--input-shape", "6", "--threads", "1")
    assert one.exit_code == 0, one.output
    assert one.stdout == default.stdout  # the census


@pytest.mark.parametrize(
    ("spec", "extra", "message"),
    [
        ("no_such_module_xyz:factory", [], "cannot import module 'no_such_module_xyz'"),
        ("lens_user_models:missing", ["--input-shape", "6"], "has no attribute 'missing'"),
        ("lens_user_models:not_callable", ["--input-shape", "6"], "is not callable"),
        ("lens_user_models:raises", ["--input-shape", "6"], "cannot build this model"),
        ("lens_user_models:not_a_module", ["--input-shape", "6"], "not a torch.nn.Module"),
        ("lens_user_models:small", ["--input-shape", "7"], "does not fit model"),
        ("lens_user_models:Argmax", ["--input-shape", "6"], "no floating-point tensor"),
        ("lens_user_models:small", [], "pass --input-shape"),
        ("lens_user_models:small", ["--input-shape", "6,a"], "not a list of integers"),
        ("resnet", [], "unknown model 'resnet'"),
        ("resnet18", ["--input-shape", "1,8,8"], "does not fit model"),
        ("mlp", ["--batch-size", "1"], "batch size must be at least 2"),
        ("mlp", ["--draws", "0"], "draws must be at least 1"),
        ("mlp", ["--threads", "0"], "--threads must be at least 1"),
        (
            "lens_user_models:tokens",
            ["--input-shape", "5"],
            "wants integer inputs (token ids), not floats: pass --input-dtype long "
            "--input-range 0,50",
        ),
        (
            "lens_user_models:tokens",
            ["--input-shape", "5", "--input-dtype", "long", "--input-range", "0,1000"],
            "out of range for model 'lens_user_models:tokens' (embedding sizes: 50): pass a "
            "smaller --input-range",
        ),
        ("mlp", ["--input-dtype", "long", "--input-range", "0,5"], "wants floating-point inputs"),
        ("mlp", ["--input-dtype", "int"], "need a value range: pass --input-range"),
        ("mlp", ["--input-range", "5,2"], "LOW must be below HIGH"),
        ("mlp", ["--input-range", "0"], "must be two numbers LOW,HIGH"),
        ("mlp", ["--input-dtype", "long", "--input-range", "0,2.5"], "must be integers"),
        (
            "lens_user_models:tokens",
            ["--example", "lens_user_models:token_batch", "--input-shape", "5"],
            "--example gives the inputs: drop --input-shape",
        ),
        ("mlp", ["--example", "lens_user_models:no_tensor"], "returned a list"),
        ("mlp", ["--example", "lens_user_models:raises"], "example 'lens_user_models:raises'"),
        ("mlp", ["--example", "lens_user_models:token_batch"], "does not fit model 'mlp'"),
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


def test_inspect_help_imports_no_heavy_module():
    code = (
        "import sys\n"
        "from stepsize_lens.cli import main\n"
        "sys.argv = ['stepsize-lens', 'inspect', '--help']\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as exc:\n"
        "    assert exc.code == 0, exc.code\n"
        "heavy = {m.split('.')[0] for m in sys.modules} & {'torch', 'matplotlib', 'pandas'}\n"
        "print('HEAVY', sorted(heavy), file=sys.stderr)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": _repo_root()},
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stderr and "--input-shape" in proc.stdout
