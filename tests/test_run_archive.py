"""Bounded loading (`stepsize_lens.run.archive`): a small file that declares a huge run is
refused before anything is materialised, quickly and with bounded memory."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import zipfile

import pytest
import torch

from stepsize_lens._schema import GROUP_FIELDS, METRICS, VIEWS
from stepsize_lens.errors import RunFileError
from stepsize_lens.run import FORMAT, VERSION, load
from stepsize_lens.run.checksum import seal


def _zeros(shape, dtype):
    return torch.zeros(shape, dtype=dtype)


def _stride_0(shape, dtype):
    return torch.zeros(1, dtype=dtype).expand(shape)


def _run_dict(records: int, tensors: int, make=_zeros) -> dict:
    """A well-formed run dict of this size, its blocks made by ``make(shape, dtype)`` (steps
    1..R unless ``make`` is `_stride_0`)."""
    steps = torch.arange(1, records + 1) if make is _zeros else make((records,), torch.int64)
    return {
        "format": FORMAT,
        "version": VERSION,
        "meta": {"label": "big"},
        "params": {"name": [f"t{i}" for i in range(tensors)], "group": [0] * tensors},
        "records": {
            "step": steps,
            "time": make((records,), torch.float64),
            "skipped": make((records,), torch.bool),
        },
        "metrics": {name: make((records, tensors), torch.float32) for name in METRICS},
        "views": {name: make((records, tensors), torch.int8) for name in VIEWS},
        "groups": {name: make((records, 1), torch.float64) for name in GROUP_FIELDS},
    }


def _deflated(source, target) -> None:
    """``source`` re-zipped with every record deflated (a zip bomb, if it is large)."""
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            with zin.open(info) as src, zout.open(info.filename, "w") as dst:
                while block := src.read(1 << 20):
                    dst.write(block)


PEAK = textwrap.dedent(
    """
    import json, resource, sys, time
    import stepsize_lens
    from stepsize_lens.errors import RunFileError
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    try:
        stepsize_lens.load(sys.argv[1])
        message = None
    except RunFileError as error:
        message = str(error)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    print(json.dumps({"message": message, "grown_kib": grown,
                      "seconds": time.perf_counter() - start}))
    """
)


def _load_in_subprocess(path) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PEAK, str(path)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_zip_bomb_is_refused_with_bounded_memory(tmp_path):
    honest = tmp_path / "honest.pt"
    torch.save(seal(_run_dict(400_000, 4)), honest)  # ~150 MB of zeros
    bomb = tmp_path / "bomb.pt"
    _deflated(honest, bomb)
    honest.unlink()
    assert bomb.stat().st_size < 2_000_000
    result = _load_in_subprocess(bomb)
    assert "compressed" in result["message"] and str(bomb) in result["message"]
    assert result["grown_kib"] < 30_000  # loading would take 150 MB
    assert result["seconds"] < 60  # only a guard against hanging; not a timing claim


@pytest.mark.slow
def test_a_stride_0_file_is_refused_with_bounded_memory(tmp_path):
    path = tmp_path / "stride0.pt"
    huge = _run_dict(10**9, 64, make=_stride_0)
    torch.save(huge, path)  # unsealed (hashing 10^9 records): refused before the checksum
    assert path.stat().st_size < 100_000
    result = _load_in_subprocess(path)
    assert "stride" in result["message"] and str(path) in result["message"]
    assert result["grown_kib"] < 30_000


def test_overlapping_tensors_are_refused(tmp_path):
    data = _run_dict(5, 2)
    data["metrics"]["grad_norm"] = data["metrics"]["weight_norm"]  # one storage, two fields
    torch.save(data, tmp_path / "shared.pt")
    with pytest.raises(RunFileError, match="share one storage"):
        load(tmp_path / "shared.pt")
    data = _run_dict(5, 2)
    whole = torch.zeros(20, 2)
    data["metrics"]["weight_norm"], data["metrics"]["grad_norm"] = whole[:5], whole[3:8]
    torch.save(data, tmp_path / "overlap.pt")
    with pytest.raises(RunFileError, match="share one storage"):
        load(tmp_path / "overlap.pt")


def test_a_small_deflated_run_is_refused_too(tmp_path):
    torch.save(seal(_run_dict(3, 2)), tmp_path / "run.pt")
    assert load(tmp_path / "run.pt").num_records == 3
    _deflated(tmp_path / "run.pt", tmp_path / "deflated.pt")
    with pytest.raises(RunFileError, match="deflated.pt: refused to load: .* compressed"):
        load(tmp_path / "deflated.pt")


def test_a_record_shorter_than_its_tensor_is_refused(tmp_path):
    torch.save(seal(_run_dict(3, 2)), tmp_path / "run.pt")
    with (
        zipfile.ZipFile(tmp_path / "run.pt") as zin,
        zipfile.ZipFile(tmp_path / "short.pt", "w") as zout,
    ):
        for info in zin.infolist():  # without .format_version torch takes each record's offset
            if info.filename.endswith(".format_version"):  # from the zip, not its own layout
                continue
            data = zin.read(info)
            zout.writestr(info.filename, data[:-4] if info.filename.endswith("/data/3") else data)
    with pytest.raises(RunFileError, match="short.pt: refused to load: .*declares"):
        load(tmp_path / "short.pt")
