"""`recording.options.LensOptions`: one object for the options `attach` and `Lens` list."""

from __future__ import annotations

import ast
import dataclasses
import inspect

import pytest
import torch

import stepsize_lens
from stepsize_lens.recording import options as options_module
from stepsize_lens.recording.lens import Lens, attach
from stepsize_lens.recording.options import OPTION_NAMES, LensOptions, options_from


def _parameters(function, skip: int) -> list[tuple[str, object]]:
    """(name, default) of ``function``'s parameters after its first ``skip``."""
    parameters = list(inspect.signature(function).parameters.values())[skip:]
    return [(p.name, p.default) for p in parameters]


def test_options_attach_and_lens_list_the_same_parameters_with_the_same_defaults():
    """The fields, attach's parameters after (model, optimizer) and Lens's after (optimizer,
    model): the same names in the same order, the same defaults (DEFAULT_PATH by identity)."""
    fields = [(field.name, field.default) for field in dataclasses.fields(LensOptions)]
    assert [name for name, _ in fields] == list(OPTION_NAMES)
    for listed in (_parameters(attach, 2), _parameters(Lens.__init__, 3)):
        assert [name for name, _ in listed] == [name for name, _ in fields]
        for (name, default), (_, field_default) in zip(listed, fields, strict=True):
            assert default is field_default or default == field_default, name
    assert list(inspect.signature(attach).parameters)[:2] == ["model", "optimizer"]
    assert list(inspect.signature(Lens.__init__).parameters)[:3] == ["self", "optimizer", "model"]


def test_every_option_has_a_docstring_and_is_named_by_attach_and_lens():
    tree = ast.parse(inspect.getsource(options_module))
    (cls,) = [node for node in tree.body if isinstance(node, ast.ClassDef)]
    documented = set()
    for field, after in zip(cls.body, cls.body[1:], strict=False):
        if isinstance(field, ast.AnnAssign) and isinstance(field.target, ast.Name):
            is_doc = isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
            if is_doc and isinstance(after.value.value, str) and after.value.value.strip():
                documented.add(field.target.id)
    assert documented == set(OPTION_NAMES)
    for name in OPTION_NAMES:
        assert f"``{name}``" in (attach.__doc__ or ""), name
        assert f"``{name}``" in (Lens.__init__.__doc__ or ""), name


def test_options_from_takes_the_options_by_name_and_is_frozen():
    arguments = {name: object() for name in OPTION_NAMES} | {"model": 1, "self": 2}
    options = options_from(arguments)
    assert all(getattr(options, name) is arguments[name] for name in OPTION_NAMES)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.label = "x"  # type: ignore[misc]


def test_attach_and_lens_build_the_same_lens(tmp_path):
    """attach hands its options over as one object; Lens(...) with the same keywords gives the
    same settings."""
    model = torch.nn.Linear(3, 2)
    given = {"schedule": 3, "label": "mine", "delta": 0.2, "flush_every": None, "step": 4}
    first, second = (torch.optim.SGD(model.parameters(), lr=0.1) for _ in range(2))
    one = stepsize_lens.attach(model, first, path=tmp_path / "run.pt", **given)
    other = Lens(second, model, path=tmp_path / "other.pt", **given)
    try:
        for lens in (one, other):
            assert (lens.label, lens.delta, lens.flush_every, lens.step) == ("mine", 0.2, None, 4)
        assert [one.schedule(s) for s in range(10)] == [other.schedule(s) for s in range(10)]
        assert {key: one.writer.meta[key] for key in ("label", "schedule", "delta")} == {
            key: other.writer.meta[key] for key in ("label", "schedule", "delta")
        }
    finally:
        one.close()
        other.close()
