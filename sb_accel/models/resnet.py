"""CIFAR-style ResNet (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016).

The ImageNet BasicBlock layout (widths 64-128-256-512) with a CIFAR stem: a single 3x3 stride-1
convolution and no max-pool, so a 32x32 input reaches the last stage at 4x4. Global average
pooling is adaptive, so 28x28 inputs work too. ResNet-18 has about 11.2 M parameters (10 classes).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import register_model

__all__ = ["BasicBlock", "ResNet", "resnet18", "resnet34"]


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 conv-BN projection) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet of BasicBlocks; ``blocks`` gives the number of blocks in each of the four stages."""

    widths = (64, 128, 256, 512)

    def __init__(self, blocks: Sequence[int], num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        if len(blocks) != len(self.widths):
            raise ValueError(f"ResNet needs {len(self.widths)} stage sizes, got {list(blocks)}")
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, self.widths[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(self.widths[0]), nn.ReLU(inplace=True))
        layers = []
        cin = self.widths[0]
        for stage, (n, width) in enumerate(zip(blocks, self.widths)):
            for i in range(n):
                layers.append(BasicBlock(cin, width, stride=2 if stage > 0 and i == 0 else 1))
                cin = width
        self.layers = nn.Sequential(*layers)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.layers(self.stem(x))))


@register_model("resnet18")
def resnet18(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """CIFAR ResNet-18 (blocks 2-2-2-2), ~11.2 M parameters."""
    return ResNet((2, 2, 2, 2), num_classes, in_channels)


@register_model("resnet34")
def resnet34(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """CIFAR ResNet-34 (blocks 3-4-6-3), ~21.3 M parameters."""
    return ResNet((3, 4, 6, 3), num_classes, in_channels)
