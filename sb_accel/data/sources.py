"""Loaders of the named datasets: a ``<name>.npz`` in the search directories, else the offline
CIFAR-10 JPEG copy (decoded once), else (``download=True``) torchvision, cached as our ``.npz``."""
from __future__ import annotations

import io
import shutil
import zipfile
import zlib
from pathlib import Path
from typing import Callable, Optional, Set

import numpy as np

from .array_dataset import ArrayDataset, DataError
from .npz import from_npz, save_npz_atomic
from .paths import data_search_dirs, find_data_file, missing_dataset_error

__all__ = ["load_cifar10", "npz_or_torchvision", "local_dataset_file"]

# The files a named dataset is read from without downloading, in order of preference (default:
# ``<name>.npz``); CIFAR-10 also from the offline JPEG copy, decoded once into ``cifar10.npz``.
_LOCAL_FILES = {"cifar10": ("cifar10.npz", "cifar10_jpeg.npz")}


def local_dataset_file(name: str, data_dir: Optional[str] = None) -> Optional[Path]:
    """The file :func:`~sb_accel.data.load_dataset` reads dataset ``name`` from without
    downloading, searched as :func:`~sb_accel.data.paths.data_search_dirs` says; None if there is none."""
    for filename in _LOCAL_FILES.get(name, (f"{name}.npz",)):
        found = find_data_file(filename, data_dir)
        if found is not None:
            return found
    return None


def _decode_jpeg_blob(blob: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    from PIL import Image
    return np.stack([np.asarray(Image.open(io.BytesIO(blob[offsets[i]:offsets[i + 1]].tobytes())).convert("RGB"))
                     for i in range(len(offsets) - 1)])


def load_cifar10(data_dir: Optional[str], download: bool) -> ArrayDataset:
    target = data_search_dirs(data_dir)[0] / "cifar10.npz"
    found = local_dataset_file("cifar10", data_dir)
    if found is not None and found.name == "cifar10.npz":
        return from_npz(found, "cifar10", 10)
    if found is not None:  # the offline JPEG copy, cifar10_jpeg.npz: decode once into the data dir (~10 s)
        try:
            with np.load(found, allow_pickle=False) as src:
                arrays = {"x_train": _decode_jpeg_blob(src["train_jpeg"], src["train_offsets"]),
                          "y_train": src["y_train"],
                          "x_test": _decode_jpeg_blob(src["test_jpeg"], src["test_offsets"]),
                          "y_test": src["y_test"]}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
            raise DataError(f"{found} (the CIFAR-10 JPEG copy) cannot be read ({type(exc).__name__}: {exc}), e.g. "
                            "an interrupted copy: copy it again, or put cifar10.npz beside it") from None
        save_npz_atomic(target, **arrays)
        return from_npz(target, "cifar10", 10)
    if download:
        return _torchvision("CIFAR10", "cifar10", target, 10)
    raise missing_dataset_error("cifar10", target)


def npz_or_torchvision(name: str, tv_class: str, num_classes: int) -> Callable[[Optional[str], bool], ArrayDataset]:
    def load(data_dir: Optional[str], download: bool) -> ArrayDataset:
        found = local_dataset_file(name, data_dir)
        if found is not None:
            return from_npz(found, name, num_classes)
        target = data_search_dirs(data_dir)[0] / f"{name}.npz"
        if download:
            return _torchvision(tv_class, name, target, num_classes)
        raise missing_dataset_error(name, target)
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
    save_npz_atomic(target, **xs, **ys)
    return from_npz(target, name, num_classes)


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
