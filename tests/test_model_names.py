"""Tensor names and the model class through torch.compile, DDP, DataParallel and FSDP wrappers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import stepsize_lens
from stepsize_lens.model_names import (
    clean_name,
    model_class_name,
    parameter_names,
    unwrap_model,
)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.block = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6))
        self.head = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3))
        return self.head(torch.relu(self.block(h)))


def _plain_names(model: nn.Module) -> dict[int, tuple[list[str], str]]:
    return parameter_names(model)


def _by_name(names: dict[int, tuple[list[str], str]]) -> dict[str, str]:
    return {value[0][0]: value[1] for value in names.values()}


def test_clean_name_drops_only_wrapper_components():
    assert clean_name("_orig_mod.conv.weight") == "conv.weight"
    assert clean_name("layer1._orig_mod.0.weight") == "layer1.0.weight"
    assert clean_name("_fsdp_wrapped_module.block._checkpoint_wrapped_module.0.bias") == (
        "block.0.bias"
    )
    assert clean_name("module.weight") == "module.weight"  # a user's module may be "module"
    assert clean_name("orig_mod.weight") == "orig_mod.weight"


def test_compiled_model_is_named_like_the_plain_model():
    torch.manual_seed(0)
    model = Net()
    compiled = torch.compile(model)  # only wraps: nothing compiles until it is called
    assert type(compiled).__name__ == "OptimizedModule"
    assert next(iter(dict(compiled.named_parameters()))).startswith("_orig_mod.")
    assert unwrap_model(compiled) is model
    assert model_class_name(compiled) == "Net"
    assert _by_name(parameter_names(compiled)) == _by_name(_plain_names(model))
    assert _by_name(parameter_names(compiled))["conv.weight"] == "Conv2d"


def test_nested_compiled_submodule_keeps_its_place_in_the_name():
    model = Net()
    model.block = torch.compile(model.block)
    names = _by_name(parameter_names(model))
    assert "block.0.weight" in names and names["block.0.weight"] == "Linear"
    assert not any("_orig_mod" in name for name in names)


def test_data_parallel_and_compile_nest():
    model = Net()
    wrapped = torch.compile(nn.DataParallel(model))
    assert unwrap_model(wrapped) is model
    assert model_class_name(wrapped) == "Net"
    assert _by_name(parameter_names(wrapped)) == _by_name(_plain_names(model))
    assert model_class_name(None) is None and parameter_names(None) == {}


def test_run_recorded_on_a_compiled_model_agrees_with_a_probe_of_the_plain_model(tmp_path):
    from stepsize_lens import invariance

    torch.manual_seed(0)
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    lens = stepsize_lens.attach(torch.compile(model), optimizer, path=None, schedule=1)
    x = torch.randn(8, 3, 6, 6)
    for _ in range(3):  # train the plain model: same parameters, no compilation needed here
        optimizer.zero_grad()
        model(x).pow(2).mean().backward()
        optimizer.step()
    run = lens.run()
    lens.close()
    assert run.tensor_names == [name for name, _ in model.named_parameters()]
    assert run.meta["model_class"] == "Net"
    table = invariance.agreement(run, invariance.probe(model, x))
    assert "conv.weight" in table.index and table.loc["conv.weight", "probe"] == "channel"
    assert len(table) == 3  # conv.weight, block.0.weight, head.weight


@pytest.fixture
def single_process_group(tmp_path):
    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_ddp_names_and_model_class(single_process_group, tmp_path):
    from torch.nn.parallel import DistributedDataParallel

    torch.manual_seed(0)
    model = Net()
    ddp = DistributedDataParallel(model)
    assert next(iter(dict(ddp.named_parameters()))).startswith("module.")
    assert model_class_name(ddp) == "Net"
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1)
    lens = stepsize_lens.attach(ddp, optimizer, path=tmp_path / "run.pt", schedule=1)
    optimizer.zero_grad()
    ddp(torch.randn(4, 3, 6, 6)).sum().backward()
    optimizer.step()
    lens.close()
    run = stepsize_lens.load(tmp_path / "run.pt")
    assert run.tensor_names == [name for name, _ in model.named_parameters()]
    assert run.meta["model_class"] == "Net"
    assert run.param_column("module_type")[0] == "Conv2d"


def test_fsdp2_generated_classes_read_as_the_original(single_process_group):
    from torch.distributed.fsdp import fully_shard

    model = Net()
    fully_shard(model.head)
    fully_shard(model)
    assert type(model).__name__.startswith("FSDP")
    assert model_class_name(model) == "Net"
    assert _by_name(parameter_names(model))["head.weight"] == "Linear"
