"""Datasets as in-memory uint8 tensors (N, C, H, W), loaded from ``.npz`` files or torchvision.

The ``.npz`` format: arrays ``x_train`` (N, H, W, C) or (N, H, W) uint8, ``y_train`` (N,) integer
labels, ``x_test``, ``y_test`` likewise, and optionally ``num_classes`` (a scalar; without it the
classes are ``0 .. max(y_train)``). Files are looked for as ``<data_dir>/<name>.npz``; the offline
copies in ``../shared/data`` (CIFAR-10 as JPEG bytes, Fashion-MNIST) are found and decoded
automatically; with ``download=True`` torchvision fetches the official files.

Every dataset is validated when it is created (:meth:`ArrayDataset.validate`), before any model or
run directory exists: a malformed one raises :class:`DataError` naming the array and the fix.
"""
from __future__ import annotations

import io
import numbers
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Set

import numpy as np
import torch

from ..files import atomic_write

__all__ = ["ArrayDataset", "DataError", "load_dataset", "list_datasets", "data_search_dirs", "synthetic_dataset"]


class DataError(ValueError):
    """A dataset is missing or malformed, or does not fit the run (a usage error: ``sb-accel``
    exits with status 2); the message says how to get or fix it."""


@dataclass
class ArrayDataset:
    """Train and test splits as uint8 NCHW tensors plus int64 labels.

    ``num_classes=None`` infers the classes from the training labels (``0 .. max(y_train)``); the
    test labels must then lie within them. Validated on creation (:meth:`validate`).
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: Optional[int] = None

    def __post_init__(self) -> None:
        self.validate()
        # Channel statistics from the training split, for normalisation.
        xf = self.x_train[: min(10000, len(self.x_train))].float() / 255.0
        self.mean = xf.mean(dim=(0, 2, 3))
        self.std = xf.std(dim=(0, 2, 3)).clamp_min(1e-3)

    def validate(self) -> None:
        """Refuse what would crash later or train silently wrong: images that are not uint8
        (N, C, H, W) (channels-last ones are recognised), empty splits, splits of different image
        shapes, labels that are not integer class indices within ``[0, num_classes)``. Labels
        become int64; ``num_classes`` is inferred if it is None."""
        for split in ("train", "test"):
            self._check_images(split)
        train_shape, test_shape = tuple(self.x_train.shape[1:]), tuple(self.x_test.shape[1:])
        if train_shape != test_shape:
            raise DataError(f"{self.name}: x_train images are {_chw(train_shape)} but x_test images are "
                            f"{_chw(test_shape)} (channels x height x width): both splits need the same image "
                            "size and channels")
        self.y_train = _integer_labels(self.name, "train", self.y_train, len(self.x_train))
        self.y_test = _integer_labels(self.name, "test", self.y_test, len(self.x_test))
        if self.num_classes is None:
            self.num_classes = _infer_classes(self.name, self.y_train, self.y_test)
        if not isinstance(self.num_classes, numbers.Integral) or isinstance(self.num_classes, bool) \
                or self.num_classes < 1:
            raise DataError(f"{self.name}: num_classes must be a positive integer, got {self.num_classes!r}")
        self.num_classes = int(self.num_classes)
        for split in ("train", "test"):
            _check_label_range(self.name, split, getattr(self, f"y_{split}"), self.num_classes)

    def _check_images(self, split: str) -> None:
        x = getattr(self, f"x_{split}")
        where = f"{self.name}: x_{split}"
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if hasattr(x, "shape") else type(x).__name__
            raise DataError(f"{where} must be a uint8 tensor (N, C, H, W), got {shape}")
        if _looks_channels_first(tuple(x.shape[1:]), channels_last_expected=False):
            raise DataError(f"{where} has shape {tuple(x.shape)}, which looks channels-last (N, H, W, C); "
                            "ArrayDataset takes channels-first (N, C, H, W) tensors: pass x.permute(0, 3, 1, 2)")
        if x.dtype != torch.uint8:
            raise DataError(f"{where} must be uint8 (0..255), got {x.dtype}: scale float images in [0, 1] by 255 "
                            "and convert with .round().to(torch.uint8)")
        if len(x) == 0:
            raise DataError(f"{where} is empty: a dataset needs at least one training and one test example")

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
    """The .npz at ``path`` as a validated dataset; ``num_classes`` (or the file's own
    ``num_classes`` array) declares the classes, else they are inferred from ``y_train``."""
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = {"x_train", "y_train", "x_test", "y_test"} - set(f.files)
            if missing:
                raise DataError(f"{path}: missing arrays {sorted(missing)}; the .npz format needs "
                                "x_train, y_train, x_test, y_test (uint8 images N,H,W,C or N,H,W)")
            arrays = {k: f[k] for k in ("x_train", "y_train", "x_test", "y_test")}
            if num_classes is None and "num_classes" in f.files:
                num_classes = _declared_classes(path, f["num_classes"])
    except (OSError, ValueError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{path}: not a readable .npz of plain arrays ({exc}); write it with "
                        "np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)") from None
    tensors = {}
    for split in ("train", "test"):
        tensors[f"x_{split}"] = _images_nchw(path, split, arrays[f"x_{split}"])
        tensors[f"y_{split}"] = _label_array(path, split, arrays[f"y_{split}"])
    return ArrayDataset(str(name), num_classes=num_classes, **tensors)


def _images_nchw(path: Path, split: str, x: np.ndarray) -> torch.Tensor:
    """An .npz image array (N, H, W, C) or (N, H, W), checked, as a uint8 (N, C, H, W) tensor."""
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise DataError(f"{path}: x_{split} must be (N,H,W,C) or (N,H,W), got shape {x.shape}")
    if _looks_channels_first(x.shape[1:], channels_last_expected=True):
        raise DataError(f"{path}: x_{split} has shape {x.shape}, which looks channels-first (N,C,H,W); the .npz "
                        f"format is channels-last (N,H,W,C): save np.transpose(x_{split}, (0, 2, 3, 1))")
    if x.dtype != np.uint8:
        raise DataError(f"{path}: x_{split} must be uint8 (0..255), got {x.dtype}: save "
                        f"(x_{split} * 255).round().astype(np.uint8) for float images in [0, 1]")
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _label_array(path: Path, split: str, y: np.ndarray) -> torch.Tensor:
    """An .npz label array as a tensor of its own kind (integer or float: :class:`ArrayDataset`
    checks the values); (N, 1) is accepted as (N,)."""
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        one_hot = " (one-hot? save y.argmax(1))" if y.ndim == 2 else ""
        raise DataError(f"{path}: y_{split} must be (N,) class indices, got shape {y.shape}{one_hot}")
    if y.dtype.kind not in "iuf":
        raise DataError(f"{path}: y_{split} must hold integer class indices, got dtype {y.dtype}")
    return torch.from_numpy(y.astype(np.float64 if y.dtype.kind == "f" else np.int64))


def _declared_classes(path: Path, value: np.ndarray) -> int:
    if value.shape != () or value.dtype.kind not in "iu" or int(value) < 1:
        raise DataError(f"{path}: num_classes must be a positive integer scalar, got {value!r}")
    return int(value)


def _looks_channels_first(shape: tuple, channels_last_expected: bool) -> bool:
    """Whether an image shape (without N) has its small channel axis at the wrong end: a first
    axis of at most 4 followed by a last one larger than 4 (e.g. (3, 32, 32) where (32, 32, 3) is
    expected), or the reverse where channels-first is expected."""
    first, last = (shape[0], shape[-1]) if channels_last_expected else (shape[-1], shape[0])
    return len(shape) == 3 and first <= 4 < last


def _chw(shape: tuple) -> str:
    return "x".join(str(d) for d in shape)


def _integer_labels(name: str, split: str, y: torch.Tensor, n: int) -> torch.Tensor:
    """``y`` checked to be ``n`` integer class indices, as int64."""
    where = f"{name}: y_{split}"
    if not isinstance(y, torch.Tensor) or tuple(y.shape) != (n,):
        shape = tuple(y.shape) if hasattr(y, "shape") else type(y).__name__
        raise DataError(f"{where} has shape {shape}, expected ({n},): one integer label per image")
    if y.dtype == torch.bool or y.is_complex():
        raise DataError(f"{where} must hold integer class indices, got {y.dtype}")
    if y.is_floating_point():
        fractional = y[~torch.isfinite(y) | (y != y.round())]
        if len(fractional):
            raise DataError(f"{where} holds fractional labels (e.g. {float(fractional[0]):g}): labels are class "
                            "indices 0..num_classes-1 (soft labels and regression targets are not supported); "
                            "if they are meant as classes, round them: np.rint(y).astype(np.int64)")
        raise DataError(f"{where} holds whole numbers as {str(y.dtype).replace('torch.', '')}: store labels as "
                        "integers, y.astype(np.int64) (or y.long() for a tensor)")
    return y.long()


def _infer_classes(name: str, y_train: torch.Tensor, y_test: torch.Tensor) -> int:
    """Classes ``0 .. max(y_train)``: refused if a test label lies outside them, or if a class in
    that range has no training example (a stray label such as 57 among 0..9, or labels from 1)."""
    if int(y_train.min()) < 0:
        return 1  # _check_label_range names the negative label
    classes = int(y_train.max()) + 1
    if int(y_test.max()) >= classes:
        raise DataError(f"{name}: y_test has label {int(y_test.max())} but the training labels only go up to "
                        f"{classes - 1}: fix the labels, or declare the classes in the file "
                        "(np.savez(..., num_classes=K))")
    present = torch.unique(y_train).tolist()  # sorted
    absent = classes - len(present)
    if absent:
        examples = _gaps(present, 5)
        shown = ", ".join(map(str, examples)) + (", ..." if absent > len(examples) else "")
        hint = " (labels counted from 1? subtract 1)" if examples == [0] and absent == 1 else ""
        raise DataError(f"{name}: the training labels go up to {classes - 1}, so there would be {classes} classes, "
                        f"but {absent} of them have no training example ({shown}){hint}: fix the labels, or "
                        "declare the classes in the file (np.savez(..., num_classes=K)) if that is intended")
    return classes


def _gaps(sorted_values: List[int], limit: int) -> List[int]:
    """The first ``limit`` non-negative integers missing from ``sorted_values``."""
    missing: List[int] = []
    expected = 0
    for value in sorted_values:
        missing.extend(range(expected, min(value, expected + limit - len(missing))))
        if len(missing) >= limit:
            break
        expected = value + 1
    return missing


def _check_label_range(name: str, split: str, y: torch.Tensor, num_classes: int) -> None:
    low, high = int(y.min()), int(y.max())
    if low < 0:
        raise DataError(f"{name}: y_{split} has negative labels (e.g. {low}): labels are class indices "
                        f"0..{num_classes - 1}; drop unlabelled examples or map them to a class")
    if high >= num_classes:
        classes = f"{num_classes} class{'es' if num_classes > 1 else ''}"
        raise DataError(f"{name}: y_{split} has label {high} but the dataset has {classes} (labels "
                        f"0..{num_classes - 1}): fix the labels, or declare more classes")


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
    """Download with torchvision and cache as our .npz (needs internet). A failed download
    (no network, a broken file) removes what it created and raises :class:`DataError`."""
    import torchvision

    cls = getattr(torchvision.datasets, tv_class)
    root = target.parent / "torchvision"
    fresh = _outermost_missing(target.parent)
    before = set(target.parent.rglob("*")) if fresh is None else set()
    try:
        if tv_class == "SVHN":
            train, test = cls(str(root), split="train", download=True), cls(str(root), split="test", download=True)
        else:
            train, test = cls(str(root), train=True, download=True), cls(str(root), train=False, download=True)
    except BaseException as exc:
        _remove_created(target.parent, fresh, before)
        if not isinstance(exc, Exception):
            raise
        raise DataError(f"could not download {name} with torchvision ({type(exc).__name__}: {exc}). Is there no "
                        f"network here? Download it where there is one (sb-accel train --dataset {name} --download "
                        f"writes data/{target.name}) and copy the file to {target}, or put a .npz with "
                        "x_train/y_train/x_test/y_test (uint8 images N,H,W,C) there. What the failed download had "
                        "written was removed.") from None
    if tv_class == "SVHN":
        xs = {"x_train": train.data.transpose(0, 2, 3, 1), "x_test": test.data.transpose(0, 2, 3, 1)}
        ys = {"y_train": np.asarray(train.labels), "y_test": np.asarray(test.labels)}
    else:
        xs = {"x_train": np.asarray(train.data), "x_test": np.asarray(test.data)}
        ys = {"y_train": np.asarray(train.targets), "y_test": np.asarray(test.targets)}
    _save_npz_atomic(target, **xs, **ys)
    return _from_npz(target, name, num_classes)


def _outermost_missing(directory: Path) -> Optional[Path]:
    """The outermost of ``directory`` and its parents that does not exist (None if it exists)."""
    missing = None
    for path in (directory, *directory.parents):
        if path.exists():
            break
        missing = path
    return missing


def _remove_created(directory: Path, fresh: Optional[Path], before: Set[Path]) -> None:
    """Remove what appeared in ``directory`` since ``before`` (or ``fresh``, the new directory tree)."""
    if fresh is not None:
        shutil.rmtree(fresh, ignore_errors=True)
        return
    for path in sorted(set(directory.rglob("*")) - before, key=lambda p: len(p.parts)):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


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
