"""A small BatchNorm/LayerNorm network, seeded batches and a training loop for the lens tests."""

from __future__ import annotations

import torch
from torch import nn


def small_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 16),
        nn.LayerNorm(16),
        nn.Linear(16, 4),
    )


def batches(n: int, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(n):
        yield torch.randn(8, 3, 6, 6, generator=gen), torch.randint(0, 4, (8,), generator=gen)


def train(model, optimizer, steps, lens=None):
    for x, y in batches(steps):
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if lens is not None:
            lens.log(loss=loss)
    return model


class Tee:
    """An ``on_record`` callback that hands each record to ``writer`` and keeps it in
    ``records``; forwards ``on_close`` (for tests of the live writers)."""

    def __init__(self, writer) -> None:
        self.writer, self.records = writer, []

    def __call__(self, record) -> None:
        self.records.append(record)
        self.writer(record)

    def on_close(self, lens) -> None:
        self.writer.on_close(lens)


class _Bottleneck(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        out = planes * 4
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.downsample = nn.Sequential()
        if stride != 1 or in_planes != out:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = nn.functional.relu(self.bn1(self.conv1(x)))
        h = nn.functional.relu(self.bn2(self.conv2(h)))
        return nn.functional.relu(self.bn3(self.conv3(h)) + self.downsample(x))


def imagenet_resnet18() -> nn.Module:
    """ResNet-18 in torchvision's layout (7x7 stem, 1000 classes): 62 tensors, 11.7M."""
    from stepsize_lens.experiments.models import CifarResNet

    model = CifarResNet((2, 2, 2, 2), num_classes=1000)
    model.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
    return model


def imagenet_resnet50() -> nn.Module:
    """ResNet-50 in torchvision's layout (blocks 3-4-6-3, 1000 classes): 161 tensors, 25.6M
    (parameters only: the launch tests never run its forward pass)."""
    layers: list[nn.Module] = [nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)]
    layers.append(nn.BatchNorm2d(64))
    in_planes = 64
    for index, count in enumerate((3, 4, 6, 3)):
        for block in range(count):
            layers.append(_Bottleneck(in_planes, 64 * 2**index, 2 if index and not block else 1))
            in_planes = 64 * 2**index * 4
    layers.append(nn.Linear(in_planes, 1000))
    return nn.Sequential(*layers)


def vit_tiny_224() -> nn.Module:
    """ViT-Tiny in timm's layout (patch 16, 224x224, 1000 classes): 152 tensors, 5.7M."""
    from stepsize_lens.experiments.models import vit_tiny

    return vit_tiny(num_classes=1000, image_size=224, patch_size=16)
