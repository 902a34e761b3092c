"""The notebooks: committed without outputs, and executed end to end on quick settings.

Each notebook runs in a fresh kernel started from *this* interpreter (a kernelspec written to a
temporary JUPYTER_PATH, which jupyter_client searches first), with STEPSIZE_LENS_QUICK=1, one
torch thread and the repository on PYTHONPATH, in a temporary working folder.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
KERNEL = "python3"


def test_the_three_notebooks_exist() -> None:
    names = [path.stem for path in NOTEBOOKS]
    assert names == ["01_quickstart", "02_paper_figures", "03_your_optimizer"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebook_has_no_outputs(path: Path) -> None:
    book = nbformat.read(path, as_version=4)
    nbformat.validate(book)
    for cell in book.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name}: a cell has outputs"
            assert cell.execution_count is None, f"{path.name}: a cell has an execution count"
    assert book.metadata.kernelspec.name == KERNEL


@pytest.fixture
def kernel_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A python3 kernelspec that runs sys.executable; returns the notebooks' working folder."""
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "stepsize_lens tests", "language": "python"})
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("STEPSIZE_LENS_QUICK", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # tiny models; the CPUs are shared
    path = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", str(ROOT) + (os.pathsep + path if path else ""))
    work = tmp_path / "work"
    work.mkdir()
    return work


def _execute(book: nbformat.NotebookNode, cwd: Path) -> nbformat.NotebookNode:
    from nbclient import NotebookClient

    client = NotebookClient(
        book, timeout=300, kernel_name=KERNEL, resources={"metadata": {"path": str(cwd)}}
    )
    client.execute()
    return book


@pytest.mark.slow
def test_kernel_runs_this_interpreter(kernel_env: Path) -> None:
    from nbformat.v4 import new_code_cell, new_notebook

    book = new_notebook(cells=[new_code_cell("import sys, os; print(sys.executable, os.getcwd())")])
    _execute(book, kernel_env)
    printed = book.cells[0].outputs[0]["text"].split()
    assert Path(printed[0]).resolve() == Path(sys.executable).resolve()
    assert Path(printed[1]).resolve() == kernel_env.resolve()


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_on_quick_settings(path: Path, kernel_env: Path) -> None:
    book = _execute(nbformat.read(path, as_version=4), kernel_env)
    outputs = [out for cell in book.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    images = [out for out in outputs if "image/png" in out.get("data", {})]
    assert len(images) >= 2, "the notebook's figures were not displayed"
