"""The ``.npz`` dataset format: reading a file into a validated :class:`ArrayDataset`, and writing
one atomically.

Arrays ``x_train`` (N, H, W, C) or (N, H, W) uint8, ``y_train`` (N,) integer labels, ``x_test``,
``y_test`` likewise, and optionally ``num_classes`` (a scalar; without it the classes are
``0 .. max(y_train)``).
"""
from __future__ import annotations

import zipfile
import zlib
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..files import atomic_write
from .array_dataset import ArrayDataset, DataError, looks_channels_first

__all__ = ["from_npz", "save_npz_atomic"]


def from_npz(path: Path, name: str, num_classes: Optional[int] = None) -> ArrayDataset:
    """The .npz at ``path`` as a validated dataset; ``num_classes`` (or the file's own
    ``num_classes`` array) declares the classes, else they are inferred from ``y_train``."""
    _check_is_zip(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = {"x_train", "y_train", "x_test", "y_test"} - set(f.files)
            if missing:
                raise DataError(f"{path}: missing arrays {sorted(missing)}; the .npz format needs "
                                "x_train, y_train, x_test, y_test (uint8 images N,H,W,C or N,H,W)")
            arrays = {k: f[k] for k in ("x_train", "y_train", "x_test", "y_test")}
            if num_classes is None and "num_classes" in f.files:
                num_classes = _declared_classes(path, f["num_classes"])
    except DataError:
        raise
    except (zipfile.BadZipFile, EOFError, zlib.error) as exc:  # cut short or corrupted inside the archive
        raise DataError(f"{path} is a damaged .npz (a truncated or corrupted zip archive: {exc}), e.g. an "
                        f"interrupted copy or download: copy it again, or write it anew with {_SAVEZ}") from None
    except ValueError as exc:  # numpy refuses object arrays without allow_pickle, and so do we
        raise DataError(f"{path} holds object (pickled) arrays, which are never loaded; the .npz format needs plain "
                        f"numeric arrays: write it with {_SAVEZ}") from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    tensors = {}
    for split in ("train", "test"):
        tensors[f"x_{split}"] = _images_nchw(path, split, arrays[f"x_{split}"])
        tensors[f"y_{split}"] = _label_array(path, split, arrays[f"y_{split}"])
    return ArrayDataset(str(name), num_classes=num_classes, **tensors)


_SAVEZ = "np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)"
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip archive (np.savez), an empty one
_NPY_MAGIC = b"\x93NUMPY"


def _check_is_zip(path: Path) -> None:
    """Refuse a file that is not a zip archive at all, saying what it is instead (numpy would take it
    for a pickle and advise loading it unsafely)."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    if head.startswith(_ZIP_MAGIC):
        return
    if not head:
        what = "is empty (0 bytes), e.g. an interrupted copy: copy it again, or write it with"
    elif head.startswith(_NPY_MAGIC):
        what = "is a single .npy array (np.save), not an .npz archive of the four arrays: write it with"
    elif _looks_like_text(head):
        what = "is a text file, not an .npz (a zip archive of arrays): write it with"
    else:
        what = "is not an .npz file (it does not start like the zip archive np.savez writes): write it with"
    raise DataError(f"{path} {what} {_SAVEZ}")


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c.isspace() for c in text)


def _images_nchw(path: Path, split: str, x: np.ndarray) -> torch.Tensor:
    """An .npz image array (N, H, W, C) or (N, H, W), checked, as a uint8 (N, C, H, W) tensor."""
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise DataError(f"{path}: x_{split} must be (N,H,W,C) or (N,H,W), got shape {x.shape}")
    if looks_channels_first(x.shape[1:], channels_last_expected=True):
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


def save_npz_atomic(path: Path, **arrays: np.ndarray) -> None:
    atomic_write(path, lambda f: np.savez(f, **arrays))
