"""README.md cannot rot: every ```python block runs, every ``stepsize-lens`` command line names a
command and options that exist (the cheap ones run for real, on tiny run files), and the test
command it gives is the one CI runs.

Each python block runs on its own, as a reader would paste it: in a fresh namespace and an empty
working folder (so ``path="run.pt"`` lands there), with wandb offline and silent. A block may be
skipped only by an HTML comment ``<!-- no-run -->`` on the line before it, for a block that
genuinely cannot run here; the README has none.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import shutil
from pathlib import Path

import pytest
from _wandb_env import wandb_offline

from tests._cli_runs import call_main, tiny_run

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
NO_RUN = "<!-- no-run -->"
# blocks that train through a framework (seconds of imports and set-up each)
SLOW_IMPORTS = ("lightning", "transformers", "wandb")


def fenced_blocks(text: str, language: str) -> list[tuple[int, str, bool]]:
    """(line number, code, marked no-run) of every fenced block of ``language``, in order."""
    blocks = []
    pattern = rf"^```{language}[ \t]*\n(.*?)^```[ \t]*$"
    for match in re.finditer(pattern, text, flags=re.MULTILINE | re.DOTALL):
        line = text.count("\n", 0, match.start()) + 1
        before = text[: match.start()].rstrip().splitlines()
        skipped = bool(before) and before[-1].strip() == NO_RUN
        blocks.append((line, match.group(1), skipped))
    return blocks


def command_lines(text: str) -> list[list[str]]:
    """The arguments of every ``stepsize-lens`` line of the README's bash blocks (the comment and
    any output redirection cut off)."""
    lines = []
    for _, code, _ in fenced_blocks(text, "bash"):
        for line in code.splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0] == "stepsize-lens":
                cut = next((i for i, w in enumerate(words) if w in (">", "|")), len(words))
                lines.append(words[1:cut])
    return lines


TEXT = README.read_text(encoding="utf-8")
PYTHON_BLOCKS = fenced_blocks(TEXT, "python")


def _param(line: int, code: str, skipped: bool):
    marks = [pytest.mark.skip(reason=f"README.md:{line} is marked {NO_RUN}")] if skipped else []
    if any(re.search(rf"^\s*(from|import) {name}\b", code, re.M) for name in SLOW_IMPORTS):
        marks.append(pytest.mark.slow)
    return pytest.param(code, id=f"line{line}", marks=marks)


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working folder, wandb offline with every file under it, one torch thread."""
    wandb_offline(monkeypatch, tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


def test_the_readme_has_python_examples_and_none_is_skipped():
    assert len(PYTHON_BLOCKS) >= 5
    assert not any(skipped for *_, skipped in PYTHON_BLOCKS)


@pytest.mark.parametrize("code", [_param(*block) for block in PYTHON_BLOCKS])
def test_python_block_runs(code: str, scratch: Path) -> None:
    namespace = {"__name__": "__readme__"}
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(code, str(README), "exec"), namespace)  # noqa: S102 - the README's own code
    import stepsize_lens

    if "./run.pt" in code or 'path="run.pt"' in code:  # says it writes run.pt: it did
        assert stepsize_lens.load(scratch / "run.pt").num_records > 0


def test_the_readme_runs_the_test_command_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()
    command = ci[-1].strip()
    assert command == ".venv/bin/python -m pytest -q"
    blocks = [code.strip() for _, code, _ in fenced_blocks(TEXT, "bash")]
    assert command in blocks, "README.md's Development section lost CI's test command"
    assert any(line.startswith(command) for block in blocks for line in block.splitlines())


def test_every_command_line_names_a_command_and_options_that_exist():
    lines = command_lines(TEXT)
    assert {"--help", "report", "compare", "inspect", "export", "reproduce", "demo"} <= {
        words[0] for words in lines
    }
    for words in lines:
        if words[0].startswith("-"):
            continue
        code, out, err = call_main(words[0], "--help")
        assert code == 0, (words, err)
        for option in (w.split("=")[0] for w in words[1:] if w.startswith("--")):
            assert option in out, f"`stepsize-lens {' '.join(words)}`: {option} is not an option"


CHEAP = ("--help", "--version", "report", "compare", "export", "inspect")


@pytest.mark.slow
def test_the_cheap_command_lines_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--help, report, compare, export and inspect, as written, on tiny run files."""
    monkeypatch.chdir(tmp_path)
    made = tiny_run(tmp_path / "made.pt")
    ran = []
    for words in command_lines(TEXT):
        if words[0] not in CHEAP:
            continue
        for word in words[1:]:
            if word.endswith(".pt") and not Path(word).exists():
                shutil.copy(made, word)
        code, out, err = call_main(*words)
        assert code == 0, (words, err)
        ran.append(words[0])
    assert {"--help", "report", "compare", "export", "inspect"} <= set(ran)
