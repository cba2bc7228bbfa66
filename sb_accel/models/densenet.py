"""DenseNet-BC for CIFAR (Huang et al., "Densely Connected Convolutional Networks", CVPR 2017).

Bottleneck layers (BN-ReLU-conv1x1 to 4k channels, BN-ReLU-conv3x3 to k channels) whose output
is concatenated to their input; transitions (BN-ReLU-conv1x1 compressing by ``compression``,
2x2 average pooling) between dense blocks; a 3x3 stem conv to 2k channels. For depth L the three
CIFAR dense blocks hold (L - 4) / 6 bottleneck layers each: DenseNet-BC-100 with k = 12 has
about 0.8 M parameters. ``densenet121`` uses the ImageNet block sizes 6-12-24-16 with k = 32 on
the same CIFAR stem (no 7x7 conv, no max-pool).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import register_model

__all__ = ["Bottleneck", "DenseNet", "densenet", "densenet121"]


class Bottleneck(nn.Module):
    """Adds ``growth_rate`` channels: ``cat([x, conv3x3(conv1x1(x))])`` with BN-ReLU pre-activation."""

    def __init__(self, in_channels: int, growth_rate: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, 4 * growth_rate, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth_rate)
        self.conv2 = nn.Conv2d(4 * growth_rate, growth_rate, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return torch.cat([x, out], dim=1)


def _transition(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm2d(in_channels), nn.ReLU(inplace=True),
                         nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.AvgPool2d(2))


class DenseNet(nn.Module):
    """DenseNet-BC with dense blocks of ``block_config`` bottleneck layers each."""

    def __init__(self, block_config: Sequence[int], growth_rate: int = 12, compression: float = 0.5,
                 num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        if not 0.0 < compression <= 1.0:
            raise ValueError(f"DenseNet compression must be in (0, 1], got {compression}")
        channels = 2 * growth_rate
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 3, padding=1, bias=False)]
        for b, n in enumerate(block_config):
            for _ in range(n):
                layers.append(Bottleneck(channels, growth_rate))
                channels += growth_rate
            if b < len(block_config) - 1:
                reduced = int(math.floor(channels * compression))
                layers.append(_transition(channels, reduced))
                channels = reduced
        layers += [nn.BatchNorm2d(channels), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


@register_model("densenet")
def densenet(num_classes: int = 10, in_channels: int = 3, growth_rate: int = 12, depth: int = 100,
             compression: float = 0.5) -> nn.Module:
    """CIFAR DenseNet-BC-``depth`` (three blocks of (depth - 4) / 6 layers); default BC-100, k = 12."""
    if depth < 10 or (depth - 4) % 6 != 0:
        raise ValueError(f"DenseNet-BC depth must be 6n + 4 with n >= 1 (40, 100, 190, ...), got {depth}")
    n = (depth - 4) // 6
    return DenseNet((n, n, n), growth_rate, compression, num_classes, in_channels)


@register_model("densenet121")
def densenet121(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """DenseNet-121 block sizes 6-12-24-16, k = 32, on a CIFAR stem; ~7.0 M parameters."""
    return DenseNet((6, 12, 24, 16), 32, 0.5, num_classes, in_channels)
