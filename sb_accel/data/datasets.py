"""Datasets as in-memory uint8 tensors (N, C, H, W), loaded from ``.npz`` files or torchvision.

The ``.npz`` format: arrays ``x_train`` (N, H, W, C) or (N, H, W) uint8, ``y_train`` (N,) integer
labels, ``x_test``, ``y_test`` likewise. Files are looked for as ``<data_dir>/<name>.npz``; the
offline copies in ``../shared/data`` (CIFAR-10 as JPEG bytes, Fashion-MNIST) are found and
decoded automatically; with ``download=True`` torchvision fetches the official files.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

from ..files import atomic_write

__all__ = ["ArrayDataset", "DataError", "load_dataset", "list_datasets", "data_search_dirs", "synthetic_dataset"]


class DataError(RuntimeError):
    """A dataset is missing or malformed; the message says how to get or fix it."""


@dataclass
class ArrayDataset:
    """Train and test splits as uint8 NCHW tensors plus int64 labels."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.dtype != torch.uint8 or x.dim() != 4:
                raise DataError(f"{self.name}: x_{split} must be uint8 (N, C, H, W), got {x.dtype} {tuple(x.shape)}")
            if y.shape != (x.shape[0],):
                raise DataError(f"{self.name}: y_{split} has shape {tuple(y.shape)}, expected ({x.shape[0]},)")
        # Channel statistics from the training split, for normalisation.
        xf = self.x_train[: min(10000, len(self.x_train))].float() / 255.0
        self.mean = xf.mean(dim=(0, 2, 3))
        self.std = xf.std(dim=(0, 2, 3)).clamp_min(1e-3)

    @property
    def in_channels(self) -> int:
        return self.x_train.shape[1]

    @property
    def image_size(self) -> int:
        return self.x_train.shape[2]

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (or float 0..255) images -> float32 standardised per channel, on x's device."""
        mean = (self.mean * 255.0).to(x.device).view(1, -1, 1, 1)
        std = (self.std * 255.0).to(x.device).view(1, -1, 1, 1)
        return (x.float() - mean) / std

    def subset(self, train: Optional[int] = None, test: Optional[int] = None, seed: int = 0) -> "ArrayDataset":
        """A class-balanced-in-expectation random subset (fixed seed), for demos and tests."""
        g = torch.Generator().manual_seed(seed)
        tr = torch.randperm(len(self.y_train), generator=g)[:train] if train else slice(None)
        te = torch.randperm(len(self.y_test), generator=g)[:test] if test else slice(None)
        return ArrayDataset(self.name, self.x_train[tr], self.y_train[tr], self.x_test[te],
                            self.y_test[te], self.num_classes)


def data_search_dirs(data_dir: Optional[str] = None) -> List[Path]:
    """Where datasets are looked for: ``data_dir`` (or $SB_ACCEL_DATA, else ./data), then
    ``../shared/data`` beside the working directory and beside this checkout."""
    first = Path(data_dir or os.environ.get("SB_ACCEL_DATA", "data"))
    repo = Path(__file__).resolve().parents[2]
    dirs = [first, Path.cwd().parent / "shared" / "data", repo.parent / "shared" / "data"]
    unique: List[Path] = []
    for d in dirs:
        if d.resolve() not in [u.resolve() for u in unique]:
            unique.append(d)
    return unique


def _from_npz(path: Path, name: str, num_classes: Optional[int] = None) -> ArrayDataset:
    with np.load(path) as f:
        missing = {"x_train", "y_train", "x_test", "y_test"} - set(f.files)
        if missing:
            raise DataError(f"{path}: missing arrays {sorted(missing)}; the .npz format needs "
                            "x_train, y_train, x_test, y_test (uint8 images N,H,W,C or N,H,W)")
        arrays = {k: f[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    tensors = {}
    for split in ("train", "test"):
        x = arrays[f"x_{split}"]
        if x.dtype != np.uint8:
            raise DataError(f"{path}: x_{split} must be uint8, got {x.dtype}")
        if x.ndim == 3:
            x = x[..., None]
        if x.ndim != 4:
            raise DataError(f"{path}: x_{split} must be (N,H,W,C) or (N,H,W), got shape {x.shape}")
        tensors[f"x_{split}"] = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        tensors[f"y_{split}"] = torch.from_numpy(arrays[f"y_{split}"].astype(np.int64)).reshape(-1)
    classes = num_classes or int(max(tensors["y_train"].max(), tensors["y_test"].max())) + 1
    return ArrayDataset(name, num_classes=classes, **tensors)


def _save_npz_atomic(path: Path, **arrays: np.ndarray) -> None:
    atomic_write(path, lambda f: np.savez(f, **arrays))


def _decode_jpeg_blob(blob: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    from PIL import Image
    return np.stack([np.asarray(Image.open(io.BytesIO(blob[offsets[i]:offsets[i + 1]].tobytes())).convert("RGB"))
                     for i in range(len(offsets) - 1)])


def _find(filename: str, data_dir: Optional[str]) -> Optional[Path]:
    for d in data_search_dirs(data_dir):
        if (d / filename).is_file():
            return d / filename
    return None


def _cifar10(data_dir: Optional[str], download: bool) -> ArrayDataset:
    target = data_search_dirs(data_dir)[0] / "cifar10.npz"
    found = _find("cifar10.npz", data_dir)
    if found:
        return _from_npz(found, "cifar10", 10)
    jpeg = _find("cifar10_jpeg.npz", data_dir)
    if jpeg:  # the offline JPEG copy: decode once into the data dir (~10 s)
        with np.load(jpeg) as src:
            arrays = {"x_train": _decode_jpeg_blob(src["train_jpeg"], src["train_offsets"]),
                      "y_train": src["y_train"],
                      "x_test": _decode_jpeg_blob(src["test_jpeg"], src["test_offsets"]),
                      "y_test": src["y_test"]}
        _save_npz_atomic(target, **arrays)
        return _from_npz(target, "cifar10", 10)
    if download:
        return _torchvision("CIFAR10", "cifar10", target, 10)
    raise _missing("cifar10", target)


def _npz_or_torchvision(name: str, tv_class: str, num_classes: int) -> Callable[[Optional[str], bool], ArrayDataset]:
    def load(data_dir: Optional[str], download: bool) -> ArrayDataset:
        found = _find(f"{name}.npz", data_dir)
        if found:
            return _from_npz(found, name, num_classes)
        target = data_search_dirs(data_dir)[0] / f"{name}.npz"
        if download:
            return _torchvision(tv_class, name, target, num_classes)
        raise _missing(name, target)
    return load


def _torchvision(tv_class: str, name: str, target: Path, num_classes: int) -> ArrayDataset:
    """Download with torchvision and cache as our .npz (needs internet)."""
    import torchvision

    cls = getattr(torchvision.datasets, tv_class)
    root = str(target.parent / "torchvision")
    if tv_class == "SVHN":
        train, test = cls(root, split="train", download=True), cls(root, split="test", download=True)
        xs = {"x_train": train.data.transpose(0, 2, 3, 1), "x_test": test.data.transpose(0, 2, 3, 1)}
        ys = {"y_train": np.asarray(train.labels), "y_test": np.asarray(test.labels)}
    else:
        train, test = cls(root, train=True, download=True), cls(root, train=False, download=True)
        xs = {"x_train": np.asarray(train.data), "x_test": np.asarray(test.data)}
        ys = {"y_train": np.asarray(train.targets), "y_test": np.asarray(test.targets)}
    _save_npz_atomic(target, **xs, **ys)
    return _from_npz(target, name, num_classes)


def _missing(name: str, target: Path) -> DataError:
    return DataError(f"dataset {name!r} not found (looked for {name}.npz in "
                     f"{', '.join(str(d) for d in data_search_dirs(str(target.parent)))}). "
                     f"Pass --download to fetch it with torchvision (needs internet), or put a "
                     f".npz with x_train/y_train/x_test/y_test at {target}.")


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
    "cifar10": _cifar10,
    "cifar100": _npz_or_torchvision("cifar100", "CIFAR100", 100),
    "svhn": _npz_or_torchvision("svhn", "SVHN", 10),
    "fashion_mnist": _npz_or_torchvision("fashion_mnist", "FashionMNIST", 10),
}


def list_datasets() -> List[str]:
    return sorted(_LOADERS) + ["synthetic", "<path>.npz"]


def load_dataset(name: str, data_dir: Optional[str] = None, download: bool = False) -> ArrayDataset:
    """Load ``name`` (cifar10, cifar100, svhn, fashion_mnist, synthetic, or a path to a .npz)."""
    if name.endswith(".npz"):
        path = Path(name)
        if not path.is_file():
            raise DataError(f"no such .npz file: {path}")
        return _from_npz(path, path.stem)
    if name == "synthetic":
        return synthetic_dataset()
    key = name.lower().replace("-", "_")
    if key not in _LOADERS:
        raise DataError(f"unknown dataset {name!r}; choose one of: {', '.join(list_datasets())}")
    return _LOADERS[key](data_dir, download)
