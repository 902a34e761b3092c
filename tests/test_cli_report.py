"""``stepsize-lens report`` and ``compare`` end to end on real recorded runs, every bad input,
the import-free help path, and the HTML page in headless Chromium."""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _cli_runs import REPORT_FIGURES, run_main
from PIL import Image
from typer.testing import CliRunner

from stepsize_lens.cli import app

ROOT = Path(__file__).parents[1]
RUNNER = CliRunner()


def invoke(*args: str):
    return RUNNER.invoke(app, [str(a) for a in args])


def assert_png(path: Path) -> None:
    with Image.open(path) as image:
        image.load()
        assert image.format == "PNG"


# --------------------------------------------------------------------------------------------
# Commands end to end
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_report_text_writes_figures_beside_the_run(local_runs):
    result = invoke("report", local_runs["sgd_momentum"])
    assert result.exit_code == 0, result.stderr
    assert "stepsize-lens report: SGD momentum 0.9" in result.stdout
    assert "no weight decay" in result.stdout  # the finding for this run
    out = local_runs["sgd_momentum"].parent / "sgd_momentum_report"
    for name in REPORT_FIGURES:
        assert_png(out / f"{name}.png")
        assert (out / f"{name}.pdf").read_bytes()[:5] == b"%PDF-"


def test_report_json_parses_with_the_documented_keys(report_runs, tmp_path):
    result = invoke(
        "report", report_runs["adamp"], "--format", "json", "--no-figures", "--out", tmp_path
    )
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["schema"] == "stepsize_lens.report/1"
    assert {"run", "summary", "findings", "strongest_decay", "figures"} <= set(data)
    assert data["run"]["optimizer"] == "AdamP"
    assert not list(tmp_path.glob("*.png"))


@pytest.mark.slow
def test_report_html_is_one_self_contained_page(report_runs, tmp_path):
    result = invoke("report", report_runs["sgdp"], "-f", "html", "--out", tmp_path, "--by", "group")
    assert result.exit_code == 0, result.stderr
    page = Path(result.stdout.strip())
    assert page == tmp_path / "report.html"
    html = page.read_text(encoding="utf-8")
    assert html.count('src="data:image/png;base64,') == len(REPORT_FIGURES)
    assert "Summary per param group" in html


def test_report_markdown_and_by_tensor(report_runs, tmp_path):
    result = invoke(
        "report",
        report_runs["sgd"],
        "--format",
        "markdown",
        "--by",
        "tensor",
        "--out",
        tmp_path,
        "--no-figures",
    )
    assert result.exit_code == 0, result.stderr
    assert "## Summary per tensor" in result.stdout
    assert (tmp_path / "report.md").read_text(encoding="utf-8") == result.stdout


def test_report_delta_option(report_runs):
    result = invoke("report", report_runs["sgd"], "-f", "json", "--no-figures", "--delta", "0.5")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["run"]["delta"] == 0.5


@pytest.mark.slow
def test_compare_three_runs(local_runs):
    runs = [local_runs[n] for n in ("sgd_momentum", "sgdp", "adamw")]
    result = invoke("compare", *runs)
    assert result.exit_code == 0, result.stderr
    assert "Side by side, ratios to SGD momentum 0.9 (ref)" in result.stdout
    out = runs[0].parent / "sgd_momentum_vs_sgdp_vs_adamw_compare"
    for name in ("paper_panel", "norm_growth", "effective_step"):
        assert_png(out / f"{name}.png")


def test_compare_json_with_a_reference_label(report_runs):
    runs = [report_runs[n] for n in ("adamw", "adamp")]
    result = invoke("compare", *runs, "-f", "json", "--no-figures", "--reference", "AdamP")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["schema"] == "stepsize_lens.compare/1" and data["reference"] == "AdamP"
    assert [r["run"]["label"] for r in data["runs"]] == ["AdamW", "AdamP"]
    assert {row["run"] for row in data["comparison"]} == {"AdamW", "AdamP"}


# --------------------------------------------------------------------------------------------
# Bad input: one line on stderr, exit code 2, no traceback
# --------------------------------------------------------------------------------------------


def assert_one_line_error(result, *fragments: str) -> None:
    stderr = result.stderr
    code = result.exit_code if hasattr(result, "exit_code") else result.returncode
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("stepsize-lens: error: ")
    assert "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in lines[0]


class Payload:
    """An object whose pickle would run code on load."""

    def __reduce__(self):
        return (os.system, ("echo owned",))


def test_missing_file(tmp_path):
    assert_one_line_error(invoke("report", tmp_path / "nope.pt"), "no such file")


def test_unreadable_file(report_runs, tmp_path):
    path = Path(shutil.copy(report_runs["sgd"], tmp_path / "locked.pt"))
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):  # root reads anything: garbage bytes stand in
            path.chmod(0o600)
            path.write_bytes(b"\x00\x01garbage that no unpickler reads\xff" * 10)
        assert_one_line_error(invoke("report", path), str(path))
    finally:
        path.chmod(0o600)


def test_truncated_file(report_runs, tmp_path):
    data = report_runs["sgd"].read_bytes()
    path = tmp_path / "cut.pt"
    path.write_bytes(data[: len(data) // 2])
    assert_one_line_error(invoke("report", path), "truncated or corrupt")


def test_foreign_file(tmp_path):
    torch.save({"state_dict": {"w": torch.zeros(3)}}, tmp_path / "model.pt")
    assert_one_line_error(invoke("report", tmp_path / "model.pt"), "not a stepsize_lens run file")
    (tmp_path / "notes.txt").write_text("hello")
    assert_one_line_error(invoke("report", tmp_path / "notes.txt"), "not a run file")


def test_unsafe_file_is_refused_and_never_executed(tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as handle:
        pickle.dump({"format": "stepsize_lens/run", "payload": Payload()}, handle)
    result = invoke("report", path)
    assert_one_line_error(result, "refused to load")
    assert "owned" not in result.stdout


def test_run_without_records(report_empty_run):
    assert_one_line_error(invoke("report", report_empty_run), "has no records")


def test_compare_needs_two_runs(report_runs):
    assert_one_line_error(invoke("compare", report_runs["sgd"]), "at least two run files")


def test_compare_unknown_reference(report_runs):
    result = invoke("compare", report_runs["sgd"], report_runs["sgdp"], "--reference", "Nope")
    assert_one_line_error(result, "no run labelled 'Nope'")


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["report", "run.pt", "--bogus"], "No such option: --bogus"),
        (["report", "run.pt", "--format", "pdf"], "'pdf' is not one of"),
        (["report"], "Missing argument"),
    ],
)
def test_usage_errors_through_the_console_script(args, fragment):
    assert_one_line_error(run_main(*args), fragment, "--help")


def _by_choices(command: str) -> list[str]:
    help_text = run_main(command, "--help", env={"COLUMNS": "200"}).stdout
    found = re.search(r"--by\s+[<\[]([\w|]+)[>\]]", help_text)
    assert found, help_text
    return found.group(1).split("|")


def test_compare_by_offers_only_what_it_accepts(report_runs):
    assert _by_choices("report") == ["group", "class", "tensor"]
    assert _by_choices("compare") == ["class", "group"]
    result = run_main("compare", report_runs["sgd"], report_runs["sgdp"], "--by", "tensor")
    assert_one_line_error(result, "'tensor' is not one of 'class', 'group'")


def test_bad_delta():
    assert_one_line_error(
        invoke("report", "run.pt", "--delta", "0"), "--delta must be a positive number"
    )


# --------------------------------------------------------------------------------------------
# Help stays light
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args", [["--help"], ["report", "--help"], ["compare", "--help"]])
def test_help_imports_no_heavy_module(args):
    code = (
        "import sys\n"
        "from stepsize_lens.cli import main\n"
        f"sys.argv = ['stepsize-lens', *{args!r}]\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as exc:\n"
        "    assert exc.code == 0, exc.code\n"
        "loaded = {m.split('.')[0] for m in sys.modules}\n"
        "heavy = sorted(loaded & {'torch', 'matplotlib', 'pandas'})\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stderr
    assert "Usage" in result.stdout


def test_demo_help_states_the_duration_the_readme_states():
    help_text = " ".join(run_main("demo", "--help", env={"COLUMNS": "200"}).stdout.split())
    claim = re.search(r"lens attached; (.+?) on two CPU cores", help_text)
    assert claim, help_text
    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    assert re.search(rf"{claim.group(1)} on (2|two) CPU cores", readme)


def test_version_is_the_package_version_and_imports_nothing_heavy():
    from stepsize_lens._version import __version__

    code = (
        "import sys\n"
        "from stepsize_lens.cli import main\n"
        "sys.argv = ['stepsize-lens', '--version']\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as exc:\n"
        "    assert exc.code == 0, exc.code\n"
        "loaded = {m.split('.')[0] for m in sys.modules}\n"
        "heavy = sorted(loaded & {'torch', 'matplotlib', 'pandas', 'numpy'})\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stderr
    assert result.stdout == f"stepsize-lens {__version__}\n"


# --------------------------------------------------------------------------------------------
# The HTML page in a real browser
# --------------------------------------------------------------------------------------------

CHROMIUM = next(
    (shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n)), None
)

# appended to a copy of the page: reports every image that failed to load or decode, and every
# resource error, into the DOM that --dump-dom prints
HARNESS = """
<script>
window.addEventListener("error", function (e) {
  if (e.target && e.target !== window)
    console.error("resource failed: " + (e.target.src || e.target.href));
}, true);
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); });
  broken.forEach(function (i) { console.error("image failed: " + i.src.slice(0, 60)); });
  document.body.setAttribute("data-check", "images=" + imgs.length + " broken=" + broken.length);
});
</script>
"""
CONSOLE_LINE = re.compile(r":CONSOLE[:(]")


def chromium_check(page: Path, tmp_path: Path) -> tuple[str, list[str]]:
    """Load ``page`` (plus the harness) headless; returns (the check attribute, console lines)."""
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail(
                "chromium is not installed; CI must install it (apt-get install -y chromium)"
            )
        pytest.skip("chromium is not installed")
    probe = tmp_path / "probe.html"
    probe.write_text(
        page.read_text(encoding="utf-8").replace("</body>", HARNESS + "</body>"), encoding="utf-8"
    )
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=5000",
        "--dump-dom",
        probe.as_uri(),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    found = re.search(r'data-check="([^"]*)"', result.stdout)
    console = [line for line in result.stderr.splitlines() if CONSOLE_LINE.search(line)]
    return (found.group(1) if found else ""), console


@pytest.mark.slow
def test_html_report_opens_in_headless_chromium_without_errors(report_runs, tmp_path):
    result = invoke("report", report_runs["adamp"], "-f", "html", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.stderr
    check, console = chromium_check(tmp_path / "out" / "report.html", tmp_path)
    assert check == f"images={len(REPORT_FIGURES)} broken=0"
    assert console == []


@pytest.mark.slow
def test_chromium_check_catches_broken_pages(tmp_path):
    """The browser check can fail: a missing image and a script error are both caught."""
    page = tmp_path / "broken.html"
    page.write_text(
        '<!DOCTYPE html><html><head><meta charset="utf-8"><title>t</title></head><body>'
        '<img src="missing.png"><script>notDefined();</script></body></html>',
        encoding="utf-8",
    )
    check, console = chromium_check(page, tmp_path)
    assert check == "images=1 broken=1"
    assert any("notDefined" in line for line in console)
    assert any("missing.png" in line for line in console)


# --------------------------------------------------------------------------------------------
# A narrow pseudo-terminal: every number whole or not shown
# --------------------------------------------------------------------------------------------

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)")
NUMBER = re.compile(r"\d+(?:[.,×]\d+)*(?:e[-+]?\d*)?")  # 2.19e-06, 1,250, 128×64×1×1


def on_pseudo_terminal(args: list[str], columns: int) -> str:
    """stdout of the console script run on a pseudo-terminal ``columns`` wide (its size set
    with TIOCSWINSZ, COLUMNS unset: the command finds the width as in a real terminal), with
    the escape codes taken out; stderr goes to a file."""
    import tempfile

    fcntl = pytest.importorskip("fcntl")
    termios = pytest.importorskip("termios")
    import struct

    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    code = "import sys; from stepsize_lens.cli import main; main()"
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, *args],
            stdin=slave,
            stdout=slave,
            stderr=err,
            cwd=ROOT,
            env=env,
            close_fds=True,
        )
        os.close(slave)
        chunks = []
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        os.close(master)
        code = proc.wait(timeout=300)
        err.seek(0)
        assert code == 0, err.read().decode()
    return ANSI.sub("", b"".join(chunks).decode("utf-8")).replace("\r\n", "\n")


def _letters_only_folder() -> Path:
    """A fresh folder whose path holds no digit: the header prints the run's path, and a
    narrow terminal folds a path wherever it must (a path is not a number)."""
    import random
    import string
    import tempfile

    base = Path(tempfile.gettempdir()).resolve()
    if re.search(r"\d", str(base)):
        base = Path("/tmp") if Path("/tmp").is_dir() else base
    name = "stepsize-lens-narrow-" + "".join(random.choices(string.ascii_lowercase, k=12))
    folder = base / name
    folder.mkdir()
    return folder


@pytest.mark.slow
def test_a_60_column_pseudo_terminal_shows_only_whole_numbers(report_runs):
    """``report`` and ``compare`` at 60 columns print every number and shape whole (each one
    also appears in the 250-column output) and cut no cell with an ellipsis; the crafted run
    has the long tensor names (timm's) whose strongest-decay table once printed 2.19e-0."""
    sys.path.insert(0, str(Path(__file__).parent))
    import numpy as np
    from _runs import Tensor, crafted_run

    folder = _letters_only_folder()
    try:
        if re.search(r"\d", str(folder)):
            pytest.skip("no temporary folder without digits in its path")
        tensors = (
            Tensor("layer.downsample.conv.weight", (128, 64, 1, 1), 0, "channel"),
            Tensor("layer.block.conv.weight", (256, 256, 3, 3), 0, "channel"),
            Tensor("fc.weight", (1000, 512), 0, "none"),
            Tensor("bn.weight", (64,), 1, "none"),
        )
        lr = 0.1 * np.cos(np.linspace(0, np.pi / 2, 200)) ** 2 + 1e-7
        crafted = crafted_run(
            tensors=tensors,
            records=200,
            weight_norm=lambda r: 1 + r / 50 * np.ones((1, 4)),
            angular_update=lambda r: 0.00089 * np.exp(-r / 20) + 2.19e-6 * np.ones((1, 4)),
            groups={"lr": np.stack([lr, lr], axis=1)},
            label="timm names",
        )
        crafted.save(folder / "crafted.pt")
        for name in ("sgd_momentum", "sgdp"):
            shutil.copy(report_runs[name], folder / f"{name}.pt")
        commands = (
            ["report", str(folder / "crafted.pt"), "--no-figures"],
            ["compare", str(folder / "sgd_momentum.pt"), str(folder / "sgdp.pt"), "--no-figures"],
        )
        for args in commands:
            narrow = on_pseudo_terminal(args, 60)
            wide = on_pseudo_terminal(args, 250)
            assert "Findings" in narrow and "Findings" in wide
            assert max(map(len, narrow.splitlines())) <= 60, args
            assert "…" not in narrow, args
            cut = set(NUMBER.findall(narrow)) - set(NUMBER.findall(wide))
            assert not cut, (args, sorted(cut))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
