"""Batched augmentation on image tensors: random crop with padding, horizontal flip, cutout.

Each op draws its random parameters for the whole batch at once from a CPU ``torch.Generator``
(so runs are reproducible on any device) and applies them with tensor indexing, avoiding
per-example Python transforms.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ..transfer import to_device

__all__ = ["Augment", "random_crop", "random_flip", "cutout", "AUGMENT_PRESETS"]


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Zero-pad by ``padding`` and crop back to the original size at a random offset per image."""
    if padding <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    dy = to_device(torch.randint(0, 2 * padding + 1, (n,), generator=generator), x.device)
    dx = to_device(torch.randint(0, 2 * padding + 1, (n,), generator=generator), x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]  # (n, h, 1)
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]  # (n, 1, w)
    batch = torch.arange(n, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()


def random_flip(x: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Mirror each image left-right with probability ``p``."""
    flip = to_device(torch.rand(x.shape[0], generator=generator) < p, x.device)
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def cutout(x: torch.Tensor, length: int, generator: torch.Generator) -> torch.Tensor:
    """Zero a ``length`` x ``length`` square at a random centre per image (DeVries & Taylor 2017);
    squares near the border are clipped, as in the original."""
    if length <= 0:
        return x
    n, _, h, w = x.shape
    cy = to_device(torch.randint(0, h, (n,), generator=generator), x.device)
    cx = to_device(torch.randint(0, w, (n,), generator=generator), x.device)
    ys = torch.arange(h, device=x.device)[None, :]
    xs = torch.arange(w, device=x.device)[None, :]
    half = length // 2
    in_rows = (ys >= (cy[:, None] - half)) & (ys < (cy[:, None] - half + length))
    in_cols = (xs >= (cx[:, None] - half)) & (xs < (cx[:, None] - half + length))
    hole = in_rows[:, :, None] & in_cols[:, None, :]  # (n, h, w)
    return x.masked_fill(hole[:, None], 0)


@dataclass(frozen=True)
class Augment:
    """Crop padding, flip, cutout length; ``Augment()`` is the identity."""

    crop_padding: int = 0
    flip: bool = False
    cutout: int = 0

    def apply(self, images: torch.Tensor, normalize: Callable[[torch.Tensor], torch.Tensor],
              generator: torch.Generator) -> torch.Tensor:
        """Crop and flip the uint8 ``images``, normalise, then cut out (the hole is the mean colour)."""
        images = random_crop(images, self.crop_padding, generator)
        if self.flip:
            images = random_flip(images, generator)
        return cutout(normalize(images), self.cutout, generator)


# The paper's setup (§5.1; SPEC.md).
AUGMENT_PRESETS = {
    "cifar10": Augment(crop_padding=4, flip=True, cutout=16),
    "cifar100": Augment(crop_padding=4, flip=True, cutout=8),
    "svhn": Augment(cutout=20),
    "fashion_mnist": Augment(crop_padding=2, flip=True),
}
