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

import hashlib
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch

from .array_dataset import ArrayDataset, DataError
from .npz import from_npz
from .sources import load_cifar10, npz_or_torchvision

__all__ = ["load_dataset", "list_datasets", "synthetic_dataset", "check_subsets", "dataset_fingerprint",
           "describe_fingerprint"]


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


def check_subsets(data: ArrayDataset, train_subset: int, test_subset: int) -> None:
    """Refuse a ``train_subset`` or ``test_subset`` larger than its split (it would be capped silently)."""
    for key, asked, available, split in (("train_subset", train_subset, len(data.y_train), "training"),
                                         ("test_subset", test_subset, len(data.y_test), "test")):
        if asked > available:
            raise DataError(f"{key}: {asked} is more than the {available} {split} examples of {data.name}; "
                            f"pass at most {available} (0: all of them)")


_SAMPLED_IMAGES = 64  # images per split that the content hash reads (spread over the split)


def dataset_fingerprint(data: ArrayDataset) -> Dict[str, Any]:
    """What identifies a dataset cheaply: its name, split sizes, classes, image shape and a hash of
    every label and of 64 images per split spread evenly over it (a millisecond for CIFAR-10).

    A checkpoint records it, and a resumed run refuses other data (:mod:`sb_accel.train.run_directory`)."""
    digest = hashlib.blake2b(digest_size=8)
    for tensor in (data.x_train, data.y_train, data.x_test, data.y_test):
        rows = torch.linspace(0, len(tensor) - 1, min(len(tensor), _SAMPLED_IMAGES)).long()
        sample = tensor if tensor.dim() == 1 else tensor[rows]
        digest.update(repr(tuple(tensor.shape)).encode())
        digest.update(sample.detach().cpu().contiguous().numpy().tobytes())
    return {"name": data.name, "train": len(data.y_train), "test": len(data.y_test), "classes": data.num_classes,
            "image": list(data.x_train.shape[1:]), "hash": digest.hexdigest()}


def describe_fingerprint(fingerprint: Dict[str, Any]) -> str:
    """``cifar10 (50000 training / 10000 test examples, 10 classes, 3x32x32, content 1f2e...)``."""
    image = "x".join(map(str, fingerprint["image"]))
    return (f"{fingerprint['name']} ({fingerprint['train']} training / {fingerprint['test']} test examples, "
            f"{fingerprint['classes']} classes, {image}, content {fingerprint['hash']})")
