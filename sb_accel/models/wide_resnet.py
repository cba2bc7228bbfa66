"""Wide Residual Networks (Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016).

WRN-d-k: a 3x3 stem conv (16 channels) and three groups of ``n = (d - 4) / 6`` pre-activation
blocks (BN-ReLU-conv3x3, optional dropout, BN-ReLU-conv3x3) of widths 16k, 32k and 64k, the last two
groups starting with stride 2, then BN-ReLU, global average pooling and a linear classifier.
WRN-28-10 has about 36.5 M parameters (10 classes).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import register_model

__all__ = ["WideBasicBlock", "WideResNet", "wrn", "wrn_28_10"]


class WideBasicBlock(nn.Module):
    """Pre-activation block; a 1x1 conv on the activated input is the shortcut when shapes change."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.shortcut: Optional[nn.Conv2d] = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = F.relu(self.bn1(x))
        residual = x if self.shortcut is None else self.shortcut(act)
        out = self.conv1(act)
        out = self.conv2(self.dropout(F.relu(self.bn2(out))))
        return out + residual


class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor``; ``depth`` must be 6n + 4 with n >= 1."""

    def __init__(self, depth: int = 28, widen_factor: int = 10, dropout: float = 0.0,
                 num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 40, ...), "
                             f"got {depth}")
        if widen_factor < 1:
            raise ValueError(f"WideResNet widen_factor must be >= 1, got {widen_factor}")
        n = (depth - 4) // 6
        widths = (16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.stem = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        blocks = []
        cin = 16
        for group, width in enumerate(widths):
            for i in range(n):
                stride = 2 if group > 0 and i == 0 else 1
                blocks.append(WideBasicBlock(cin, width, stride, dropout))
                cin = width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(inplace=True),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.head(self.blocks(self.stem(x))))


@register_model("wrn")
def wrn(num_classes: int = 10, in_channels: int = 3, depth: int = 28, widen_factor: int = 10,
        dropout: float = 0.0) -> nn.Module:
    """WideResNet of any valid depth and width (default WRN-28-10)."""
    return WideResNet(depth, widen_factor, dropout, num_classes, in_channels)


@register_model("wrn-28-10")
def wrn_28_10(num_classes: int = 10, in_channels: int = 3, dropout: float = 0.0) -> nn.Module:
    """WRN-28-10, ~36.5 M parameters."""
    return WideResNet(28, 10, dropout, num_classes, in_channels)
