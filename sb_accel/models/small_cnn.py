"""A small ResNet-9-style CNN (after Page's DAWNBench net): fast enough to train on a 2-core CPU.

conv-bn-relu(w) -> [conv(2w) pool res(2w)] -> conv(4w) pool -> [conv(8w) pool res(8w)] -> pool -> fc.
Width ``w = 8`` gives about 0.41 M parameters.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .registry import register_model


def _conv_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class _Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv_bn(channels, channels), _conv_bn(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class SmallResNet(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 8,
                 scale: float = 0.125) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            _conv_bn(in_channels, 2 * w),
            _conv_bn(2 * w, 4 * w), nn.MaxPool2d(2), _Residual(4 * w),
            _conv_bn(4 * w, 8 * w), nn.MaxPool2d(2),
            _conv_bn(8 * w, 16 * w), nn.MaxPool2d(2), _Residual(16 * w),
            nn.AdaptiveMaxPool2d(1), nn.Flatten(),
        )
        self.fc = nn.Linear(16 * w, num_classes, bias=False)
        self.scale = scale  # logit scaling as in the DAWNBench net: keeps early losses tame

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x)) * self.scale


@register_model("small_cnn")
def small_cnn(num_classes: int = 10, in_channels: int = 3, width: int = 8) -> nn.Module:
    """ResNet-9-style CNN, ~0.41 M parameters at width 8 (16-32-64-128 channels)."""
    return SmallResNet(num_classes, in_channels, width)


@register_model("resnet9")
def resnet9(num_classes: int = 10, in_channels: int = 3, width: int = 16) -> nn.Module:
    """The same net at width 16 (~1.6 M parameters)."""
    return SmallResNet(num_classes, in_channels, width)
