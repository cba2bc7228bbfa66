"""Datasets as in-memory uint8 tensors (N, C, H, W), loaded from ``.npz`` files or torchvision.

The ``.npz`` format: arrays ``x_train`` (N, H, W, C) or (N, H, W) uint8, ``y_train`` (N,) integer
labels, ``x_test``, ``y_test`` likewise, and optionally ``num_classes`` (a scalar; without it the
classes are ``0 .. max(y_train)``). Files are looked for as ``<data_dir>/<name>.npz``; the offline
copies in ``../shared/data`` (CIFAR-10 as JPEG bytes, Fashion-MNIST) are found and decoded
automatically; with ``download=True`` torchvision fetches the official files.

Every dataset is validated when it is created (:meth:`ArrayDataset.validate`), before any model or
run directory exists: a malformed one raises :class:`DataError` naming the array and the fix.

This module names the datasets and loads them (:func:`load_dataset`); the parts live beside it:
``array_dataset`` (the dataset and its checks), ``npz`` (the file format), ``paths`` (where files
are looked for) and ``sources`` (the offline CIFAR-10 copy, torchvision downloads).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

from .array_dataset import ArrayDataset, DataError
from .npz import from_npz
from .sources import load_cifar10, npz_or_torchvision

__all__ = ["load_dataset", "list_datasets", "synthetic_dataset"]


def synthetic_dataset(train: int = 2048, test: int = 512, num_classes: int = 10, size: int = 16,
                      channels: int = 3, seed: int = 0) -> ArrayDataset:
    """A learnable generated dataset (class = colour/position of a blob, plus noise) for fast tests."""
    g = torch.Generator().manual_seed(seed)
    n = train + test
    y = torch.randint(0, num_classes, (n,), generator=g)
    x = torch.randint(0, 96, (n, channels, size, size), generator=g, dtype=torch.int16)
    row = (y * 7) % (size - 4)
    col = (y * 3) % (size - 4)
    for i in range(n):
        x[i, int(y[i]) % channels, row[i]:row[i] + 4, col[i]:col[i] + 4] += 150
    x = x.clamp(0, 255).to(torch.uint8)
    return ArrayDataset("synthetic", x[:train], y[:train], x[train:], y[train:], num_classes)


_LOADERS: Dict[str, Callable[[Optional[str], bool], ArrayDataset]] = {
    "cifar10": load_cifar10,
    "cifar100": npz_or_torchvision("cifar100", "CIFAR100", 100),
    "svhn": npz_or_torchvision("svhn", "SVHN", 10),
    "fashion_mnist": npz_or_torchvision("fashion_mnist", "FashionMNIST", 10),
}


def list_datasets() -> List[str]:
    return sorted(_LOADERS) + ["synthetic", "<path>.npz"]


def load_dataset(name: str, data_dir: Optional[str] = None, download: bool = False) -> ArrayDataset:
    """Load ``name`` (cifar10, cifar100, svhn, fashion_mnist, synthetic, or a path to a .npz)."""
    if name.endswith(".npz"):
        path = Path(name)
        if not path.is_file():
            raise DataError(f"no such .npz file: {path}")
        return from_npz(path, path.stem)
    if name == "synthetic":
        return synthetic_dataset()
    key = name.lower().replace("-", "_")
    if key not in _LOADERS:
        raise DataError(f"unknown dataset {name!r}; choose one of: {', '.join(list_datasets())}")
    return _LOADERS[key](data_dir, download)
