"""The ``.npz`` dataset format: reading a file into a validated :class:`ArrayDataset`, and writing
one atomically.

Arrays ``x_train`` (N, H, W, C) or (N, H, W) uint8, ``y_train`` (N,) integer labels, ``x_test``,
``y_test`` likewise, and optionally ``num_classes`` (a scalar; without it the classes are
``0 .. max(y_train)``).
"""
from __future__ import annotations

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
