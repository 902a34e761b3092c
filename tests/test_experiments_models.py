"""The built-in example models: shapes, sizes and what normalisation they use."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from stepsize_lens.experiments.models import (
    BUILTIN_MODELS,
    cifar_resnet18,
    digits_cnn,
    mlp,
    vit_tiny,
)


def _count(model: nn.Module) -> tuple[int, int]:
    params = list(model.parameters())
    return sum(p.numel() for p in params), len(params)


def _has(model: nn.Module, kind: type) -> bool:
    return any(isinstance(module, kind) for module in model.modules())


def test_cifar_resnet18_is_the_standard_one():
    torch.manual_seed(0)
    model = cifar_resnet18()
    assert _count(model) == (11_173_962, 62)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert [len(stage) for stage in (model.layer1, model.layer2, model.layer3, model.layer4)] == [
        2,
        2,
        2,
        2,
    ]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 20 and all(conv.bias is None for conv in convs)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 20
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert cifar_resnet18(num_classes=100).linear.out_features == 100


def test_vit_tiny_size_and_layernorm():
    torch.manual_seed(0)
    model = vit_tiny()
    numel, tensors = _count(model)
    assert tensors == 152
    assert 5.0e6 < numel < 6.0e6
    assert _has(model, nn.LayerNorm) and not _has(model, nn.BatchNorm2d)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_vit_rejects_bad_geometry():
    with pytest.raises(ValueError, match="divisible"):
        vit_tiny(image_size=30, patch_size=4)
    with pytest.raises(ValueError, match="divisible"):
        vit_tiny(dim=100, heads=3)


def test_mlp_has_no_normalisation():
    torch.manual_seed(0)
    model = mlp(in_features=12, hidden=(8, 6), num_classes=3)
    norms = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)
    assert not any(isinstance(m, norms) for m in model.modules())
    assert [m.out_features for m in model if isinstance(m, nn.Linear)] == [8, 6, 3]
    assert model(torch.randn(5, 3, 2, 2)).shape == (5, 3)


def test_digits_cnn_is_small_with_batchnorm():
    torch.manual_seed(0)
    model = digits_cnn()
    numel, _ = _count(model)
    assert 50_000 <= numel <= 100_000
    assert _has(model, nn.BatchNorm2d)
    assert model(torch.randn(3, 1, 8, 8)).shape == (3, 10)


@pytest.mark.parametrize("name", sorted(BUILTIN_MODELS))
def test_builtin_registry_builds_and_runs(name):
    factory, shape = BUILTIN_MODELS[name]
    torch.manual_seed(0)
    model = factory()
    assert isinstance(model, nn.Module)
    with torch.no_grad():
        out = model.eval()(torch.randn(2, *shape))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()


def test_builtin_names():
    assert set(BUILTIN_MODELS) == {"resnet18", "vit", "mlp", "digits_cnn"}


def test_tiny_gpt_is_causal_and_small():
    from stepsize_lens.experiments.models import tiny_gpt

    torch.manual_seed(0)
    model = tiny_gpt(qk_norm=True)
    numel, _ = _count(model)
    assert 100_000 < numel < 130_000
    tokens = torch.randint(0, 97, (2, 16))
    logits = model(tokens)
    assert logits.shape == (2, 16, 97)
    changed = tokens.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % 97
    # positions before the change see only the tokens before them
    torch.testing.assert_close(model(changed)[:, :10], logits[:, :10])
    assert not torch.allclose(model(changed)[:, 10:], logits[:, 10:])
    with pytest.raises(ValueError, match="context"):
        model(torch.zeros(1, 65, dtype=torch.long))


def test_qk_norm_makes_q_and_k_scale_invariant_and_nothing_else():
    from stepsize_lens.experiments.models import tiny_gpt
    from stepsize_lens.invariance import probe

    tokens = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(0))
    for qk_norm in (False, True):
        torch.manual_seed(0)
        model = tiny_gpt(dim=16, depth=1, heads=2, qk_norm=qk_norm)
        verdicts = probe(model, tokens).verdicts
        invariant = sorted(name for name, cls in verdicts.items() if cls != "none")
        expected = ["blocks.0.attn.k.weight", "blocks.0.attn.q.weight"] if qk_norm else []
        assert invariant == expected
        if qk_norm:  # a head normalises many rows together: the whole tensor, not each row
            assert {verdicts[name] for name in invariant} == {"layer"}
