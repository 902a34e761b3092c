"""`format.validate` at load: every field a reader uses. A seeded fuzz of a real run's dict
(delete, retype, reshape, NaN, negative, huge...) either loads and reports cleanly or raises
`RunFileError` at `load`, never anything later."""

from __future__ import annotations

import math
import random
import warnings
from typing import Any

import pytest
import torch
from _dict_paths import dict_paths, get_path
from _lens_models import small_model, train

import stepsize_lens
from stepsize_lens.errors import RunFileError
from stepsize_lens.run import load
from stepsize_lens.run.checksum import seal

CASES = 300


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> dict[str, Any]:
    """The raw dict of a small real run: two param groups, every step recorded, a scalar."""
    path = tmp_path_factory.mktemp("real") / "run.pt"
    model = small_model()
    params = list(model.parameters())
    optimizer = torch.optim.SGD(
        [{"params": params[:2], "weight_decay": 1e-4}, {"params": params[2:]}],
        lr=0.1,
        momentum=0.9,
    )
    lens = stepsize_lens.attach(model, optimizer, path=path, schedule=1, label="fuzz")
    train(model, optimizer, 6, lens)
    lens.close()
    return load(path).to_dict()


def _save(data: dict[str, Any], path) -> None:
    """As a writer would (a fresh checksum), so the fuzz reaches validation."""
    torch.save(seal(data), path)


REPLACEMENTS = (
    None,
    "x",
    "",
    7,
    -1,
    0,
    2**63,
    10**30,
    1.5,
    math.nan,
    math.inf,
    -math.inf,
    True,
    [],
    {},
    [1, 2],
    {"a": 1},
    [[[[[]]]]],
)


def _mutated_tensor(value: torch.Tensor, rng: random.Random, values_only: bool = False) -> Any:
    """Reshaped, retyped, emptied... or (``values_only``: same shape and dtype) NaN, negative,
    huge or reversed values."""
    choice = rng.choice((5, 6, 7, 9)) if values_only else rng.randrange(11)
    if choice == 0:
        return value.reshape(-1)
    if choice == 1:
        return value.unsqueeze(0)
    if choice == 2:
        return value[: max(value.shape[0] - 1, 0)] if value.ndim else value.reshape(1)
    if choice == 3:
        return value.T.contiguous() if value.ndim == 2 else value.reshape(1, -1)
    if choice == 4:
        return value.to(rng.choice([torch.float64, torch.float32, torch.int32, torch.int8]))
    if choice == 5:
        if value.dtype == torch.bool:
            return value.to(torch.uint8)
        return torch.full_like(value, math.nan) if value.is_floating_point() else -value
    if choice == 6:
        out = value.clone()
        if out.numel():
            out.view(-1)[rng.randrange(out.numel())] = (
                -1 if not out.is_floating_point() else -torch.finfo(out.dtype).max
            )
        return out
    if choice == 7:
        if value.dtype == torch.bool:
            return ~value
        if value.is_floating_point():
            return torch.full_like(value, torch.finfo(value.dtype).max)
        return torch.full_like(value, 2**62) if value.dtype != torch.int8 else value + 50
    if choice == 8:
        return torch.cat([value, value]) if value.ndim else value
    if choice == 9:
        return value.flip(0) if value.ndim else value
    return torch.zeros((0,) * max(value.ndim, 1), dtype=value.dtype)


def mutate(data: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """One to three mutations of a deep copy of ``data``."""
    import copy

    data = copy.deepcopy(data)
    for _ in range(rng.randint(1, 3)):
        if rng.random() < 0.4:  # odd values of the right type: these should mostly load
            tensors = [p for p in dict_paths(data) if isinstance(get_path(data, p), torch.Tensor)]
            if tensors:
                path = rng.choice(tensors)
                parent = get_path(data, path[:-1])
                parent[path[-1]] = _mutated_tensor(parent[path[-1]], rng, values_only=True)
                continue
        section = rng.choice(list(data))  # a section first: the params lists would dominate
        nodes = [(section,), *dict_paths(data[section], (section,))]
        path = rng.choice(nodes)
        parent, key = get_path(data, path[:-1]), path[-1]
        value = parent[key]
        roll = rng.random()
        if roll < 0.2:
            del parent[key]
        elif isinstance(value, torch.Tensor) and roll < 0.8:
            parent[key] = _mutated_tensor(value, rng)
        elif isinstance(value, list) and value and roll < 0.5:
            parent[key] = rng.choice([value[:-1], value + value[-1:], value[::-1]])
        else:
            parent[key] = copy.deepcopy(rng.choice(REPLACEMENTS))
    return data


def _exercise(run, compare: bool) -> None:
    """What readers do with a loaded run: the report's data, a comparison, the frames."""
    from stepsize_lens.report import compare_data, report_data

    report_data(run)
    if compare:
        compare_data([run, run])
    run.frame("wide")
    run.frame()
    _ = run.params, run.groups, run.scalars, run.events, repr(run)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore")
def test_fuzzed_runs_fail_at_load_or_report_cleanly(real_run, tmp_path):
    rng = random.Random(21)
    path = tmp_path / "fuzz.pt"
    loaded = refused = 0
    for case in range(CASES):
        data = mutate(real_run, rng)
        _save(data, path)
        try:
            run = load(path)
        except RunFileError as error:
            assert "\n" not in str(error)
            refused += 1
            continue
        loaded += 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                _exercise(run, compare=loaded % 8 == 1)
            except Exception as exc:  # pragma: no cover - the failure report
                raise AssertionError(f"case {case}: loaded, then {exc!r}") from exc
    assert loaded > 50 and refused > 100, (loaded, refused)


@pytest.mark.parametrize(
    ("where", "fragment"),
    [
        (("groups", "wd_ratio"), "wd_ratio"),
        (("records", "time"), "records.time"),
        (("params", "group"), "'group'"),
        (("meta",), "meta"),
        (("views", "test_view"), "test_view"),
    ],
)
def test_a_deleted_field_fails_at_load(real_run, tmp_path, where, fragment):
    import copy

    data = copy.deepcopy(real_run)
    del get_path(data, where[:-1])[where[-1]]
    _save(data, tmp_path / "bad.pt")
    with pytest.raises(RunFileError, match="bad.pt") as info:
        load(tmp_path / "bad.pt")
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda d: d["records"].__setitem__("step", d["records"]["step"].double()), "dtype"),
        (lambda d: d["views"]["applied_view"].fill_(9), "View"),
        (lambda d: d["params"]["group"].__setitem__(0, 5), "param group"),
        (lambda d: d["params"]["name"].__setitem__(1, d["params"]["name"][0]), "twice"),
        (lambda d: d["meta"].__setitem__("delta", "wide"), "delta"),
        (lambda d: d["meta"]["optimizer"]["defaults"].__setitem__("ns_steps", "5"), "ns_steps"),
        (lambda d: d["scalars"]["loss"].__setitem__("value", torch.zeros(2)), "value"),
        (lambda d: d["events"].append({"step": "one", "kind": "x"}), "event"),
        (lambda d: d["records"]["step"].__setitem__(0, 10**6), "backwards"),
    ],
)
def test_malformed_fields_fail_at_load(real_run, tmp_path, change, fragment):
    import copy

    data = copy.deepcopy(real_run)
    change(data)
    _save(data, tmp_path / "bad.pt")
    with pytest.raises(RunFileError, match=fragment):
        load(tmp_path / "bad.pt")
