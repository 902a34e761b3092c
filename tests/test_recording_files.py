"""No run is ever lost: a file per run by default, one live lens per path, never over a newer
run, saves that fail without stopping training, permissions from the umask."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from _lens_models import small_model, train

import stepsize_lens
from stepsize_lens.recording import files
from stepsize_lens.run import RunWriter

ROOT = Path(__file__).resolve().parents[1]


def _optimizer(model):
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


def test_without_a_path_each_run_gets_its_own_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    lenses = []
    for _ in range(2):
        model = small_model()
        optimizer = _optimizer(model)
        lens = stepsize_lens.attach(model, optimizer, label="resnet/18 sgd", schedule=1)
        train(model, optimizer, 2)
        lenses.append(lens)
    paths = [Path(lens.path) for lens in lenses]
    for lens in lenses:
        lens.close()
    assert paths[0] != paths[1] and all(p.parent == Path("runs") for p in paths)
    assert all(re.fullmatch(r"\d{8}-\d{6}_resnet-18-sgd(-\d+)?\.pt", p.name) for p in paths)
    assert all(stepsize_lens.load(p).num_records == 2 for p in paths)
    printed = capsys.readouterr().err
    assert printed.count(str(paths[0])) == 1 and printed.count(str(paths[1])) == 1


def test_names_are_made_unique_against_files_and_live_claims(tmp_path):
    (tmp_path / "run.pt").write_bytes(b"")
    assert files.sibling(tmp_path / "run.pt") == tmp_path / "run-2.pt"
    claimed = files.RunFile(tmp_path / "run-2.pt", "a test lens")
    claimed.claim()
    assert files.sibling(tmp_path / "run.pt") == tmp_path / "run-3.pt"
    claimed.release()
    assert files.sibling(tmp_path / "run.pt") == tmp_path / "run-2.pt"


def test_an_explicit_path_is_written_as_given(tmp_path, capsys):
    model = small_model()
    optimizer = _optimizer(model)
    with stepsize_lens.attach(model, optimizer, path=tmp_path / "mine.pt", schedule=1):
        train(model, optimizer, 1)
    assert stepsize_lens.load(tmp_path / "mine.pt").num_records == 1
    assert capsys.readouterr().err == ""  # only a chosen-for-you path is announced


def test_two_live_lenses_never_share_a_path(tmp_path):
    first_model, second_model = small_model(), small_model(1)
    first = stepsize_lens.attach(first_model, _optimizer(first_model), path=tmp_path / "run.pt")
    with pytest.raises(ValueError, match="already being written by the lens 'SGD' on SGD"):
        stepsize_lens.attach(second_model, _optimizer(second_model), path=tmp_path / "run.pt")
    first.close()  # a closed lens gives its path up (its run stays: replacing it needs asking)
    stepsize_lens.attach(
        second_model, _optimizer(second_model), path=tmp_path / "run.pt", overwrite=True
    ).close()


def test_a_dropped_lens_no_longer_holds_its_path(tmp_path):
    model = small_model()
    stepsize_lens.attach(model, _optimizer(model), path=tmp_path / "run.pt")  # dropped at once
    other = small_model(1)
    stepsize_lens.attach(other, _optimizer(other), path=tmp_path / "run.pt", overwrite=True).close()


def test_an_older_lens_never_overwrites_a_newer_run(tmp_path):
    path = tmp_path / "run.pt"
    model = small_model()
    optimizer = _optimizer(model)
    old = stepsize_lens.attach(model, optimizer, path=path, schedule=1, label="old")
    train(model, optimizer, 2)
    old.flush()
    # another process writes the same path meanwhile
    newer = RunWriter(path, {"label": "newer"})
    newer.save()
    with pytest.warns(RuntimeWarning, match="written by someone else"):
        old.close()
    assert stepsize_lens.load(path).label == "newer"
    assert old.path == str(tmp_path / "run-2.pt")
    assert stepsize_lens.load(tmp_path / "run-2.pt").num_records == 2


def test_a_file_present_before_attach_is_replaced_only_when_asked(tmp_path):
    path = tmp_path / "run.pt"
    RunWriter(path, {"label": "yesterday"}).save()
    before = path.read_bytes()
    model = small_model()
    optimizer = _optimizer(model)
    with pytest.raises(ValueError) as raised:
        stepsize_lens.attach(model, optimizer, path=path, label="today", schedule=1)
    message = str(raised.value)
    assert "\n" not in message and str(path) in message
    assert "resume=True" in message and "overwrite=True" in message
    train(model, optimizer, 1)  # the refused attach hooked nothing
    assert path.read_bytes() == before
    with stepsize_lens.attach(
        model, optimizer, path=path, label="today", schedule=1, overwrite=True
    ):
        train(model, optimizer, 1)
    assert stepsize_lens.load(path).label == "today"
    with pytest.raises(ValueError, match="resume=True continues .* overwrite=True replaces"):
        stepsize_lens.attach(model, optimizer, path=path, resume=True, overwrite=True)


def test_a_closed_run_is_never_replaced_silently(tmp_path):
    """The issue's case: a closed run of 30 records, then a new lens on its path."""
    path = tmp_path / "run.pt"
    model = small_model()
    optimizer = _optimizer(model)
    with stepsize_lens.attach(model, optimizer, path=path, schedule=1):
        train(model, optimizer, 30)
    other = small_model(1)
    with pytest.raises(ValueError, match="already exists: pass resume=True"):
        stepsize_lens.attach(other, _optimizer(other), path=path, schedule=1)
    assert stepsize_lens.load(path).num_records == 30
    # resume=True continues it (SGD keeps no step count: step= says where training is)
    lens = stepsize_lens.attach(model, optimizer, path=path, schedule=1, resume=True, step=30)
    train(model, optimizer, 5)
    lens.close()
    assert list(stepsize_lens.load(path).steps) == list(range(1, 36))


def test_run_files_get_the_permissions_of_the_umask(tmp_path):
    before = os.umask(0o027)
    try:
        model = small_model()
        optimizer = _optimizer(model)
        with stepsize_lens.attach(model, optimizer, path=tmp_path / "run.pt", schedule=1):
            train(model, optimizer, 1)
    finally:
        os.umask(before)
    assert stat.S_IMODE((tmp_path / "run.pt").stat().st_mode) == 0o640


def test_failing_saves_never_stop_training_and_the_next_good_save_has_everything(
    tmp_path, monkeypatch
):
    path = tmp_path / "run.pt"
    real_save = RunWriter.save
    failing = {"on": False}

    def save(self, target=None, **options):
        if failing["on"]:
            raise OSError(28, "No space left on device")
        return real_save(self, target, **options)

    monkeypatch.setattr(RunWriter, "save", save)
    model = small_model()
    optimizer = _optimizer(model)
    lens = stepsize_lens.attach(model, optimizer, path=path, schedule=1, flush_every=0.0)
    train(model, optimizer, 2)
    failing["on"] = True
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(model, optimizer, 3)  # every step tries to save and fails
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1  # warned once for the whole streak
    assert str(path) in messages[0] and "No space left on device" in messages[0]
    assert stepsize_lens.load(path).num_records == 2  # the last good file is intact
    failing["on"] = False
    train(model, optimizer, 1)
    assert stepsize_lens.load(path).num_records == 6  # the next good save holds every record
    lens.close()


def test_a_final_save_that_fails_goes_to_a_fallback_and_stays_reachable(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    model = small_model()
    optimizer = _optimizer(model)
    lens = stepsize_lens.attach(model, optimizer, path=folder / "run.pt", schedule=1)
    train(model, optimizer, 3)
    shutil.rmtree(folder)
    folder.write_text("the run folder turned into a file")  # saving under it now fails
    with pytest.warns(RuntimeWarning, match="final save") as caught:
        where = lens.close()
    assert where is not None and where.parent == Path(files.tempfile.gettempdir())
    assert str(where) in str(caught[-1].message)
    assert stepsize_lens.load(where).num_records == 3
    assert lens.run().num_records == 3
    where.unlink()


NOTEBOOK = textwrap.dedent(
    """
    import sys, warnings, torch, stepsize_lens
    from torch import nn
    warnings.simplefilter("ignore")
    path = sys.argv[1]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    def steps(n):
        for _ in range(n):
            optimizer.zero_grad(); model(torch.randn(3, 4)).sum().backward(); optimizer.step()

    lens = stepsize_lens.attach(model, optimizer, path=path, label="first", schedule=1)  # cell 1
    steps(2)
    try:  # the cell run again as it was: one line, naming the file and both options
        stepsize_lens.attach(model, optimizer, path=path, label="second", schedule=1)
    except ValueError as exc:
        print(exc)
    steps(1)  # the first lens still records
    # again with overwrite=True: the first lens is closed (its run saved), then replaced
    lens = stepsize_lens.attach(
        model, optimizer, path=path, label="second", schedule=1, overwrite=True
    )
    steps(3)
    lens.close()
    other = stepsize_lens.attach(model, optimizer, path=path + ".other", schedule=1)
    steps(1)  # left open: the interpreter exits with it attached
    """
)


def test_notebook_reattach_then_exit_never_overwrites_a_closed_run(tmp_path):
    script = tmp_path / "notebook.py"
    script.write_text(NOTEBOOK)
    path = tmp_path / "run.pt"
    done = subprocess.run(
        [sys.executable, str(script), str(path)],
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
        capture_output=True,
        text=True,
    )
    (line,) = done.stdout.splitlines()
    assert line.startswith(f"{path} is already being written by the lens 'first' on SGD")
    assert "resume=True" in line and "overwrite=True" in line
    run = stepsize_lens.load(path)
    assert run.label == "second" and run.meta["closed"] is True
    assert list(run.steps) == [1, 2, 3]  # a lens counts steps from its attach
    left_open = stepsize_lens.load(str(path) + ".other")  # saved at exit
    assert left_open.meta["closed"] is True and left_open.num_records == 1


def test_a_refused_attach_leaves_the_optimizers_lens_in_place(tmp_path):
    first_model, second_model = small_model(), small_model(1)
    other = stepsize_lens.attach(first_model, _optimizer(first_model), path=tmp_path / "a.pt")
    optimizer = _optimizer(second_model)
    mine = stepsize_lens.attach(second_model, optimizer, path=tmp_path / "b.pt", schedule=1)
    with pytest.raises(ValueError, match="a.pt is already being written"):
        stepsize_lens.attach(second_model, optimizer, path=tmp_path / "a.pt")
    train(second_model, optimizer, 2)
    assert mine.num_records == 2  # still attached and recording
    mine.close()
    other.close()
