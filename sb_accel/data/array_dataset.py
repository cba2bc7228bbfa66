"""The in-memory dataset, :class:`ArrayDataset` (uint8 NCHW images, int64 labels), and the checks
that refuse a malformed one when it is created, raising :class:`DataError` with the fix."""
from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch

from ..transfer import to_device

__all__ = ["ArrayDataset", "DataError", "looks_channels_first"]


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
    # normalize()'s constants per device, copied there once (a copy per batch would stall a GPU)
    _staged: Dict[torch.device, Tuple[torch.Tensor, torch.Tensor]] = field(
        default_factory=dict, init=False, repr=False, compare=False)

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
        if looks_channels_first(tuple(x.shape[1:]), channels_last_expected=False):
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

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (or float 0..255) images -> float32 standardised per channel, on x's device."""
        staged = self._staged.get(x.device)
        if staged is None:
            staged = tuple(to_device((s * 255.0).view(1, -1, 1, 1), x.device) for s in (self.mean, self.std))
            self._staged[x.device] = staged
        mean, std = staged
        return (x.float() - mean) / std

    def subset(self, train: Optional[int] = None, test: Optional[int] = None, seed: int = 0) -> "ArrayDataset":
        """A class-balanced-in-expectation random subset (fixed seed), for demos and tests."""
        g = torch.Generator().manual_seed(seed)
        tr = torch.randperm(len(self.y_train), generator=g)[:train] if train else slice(None)
        te = torch.randperm(len(self.y_test), generator=g)[:test] if test else slice(None)
        return ArrayDataset(self.name, self.x_train[tr], self.y_train[tr], self.x_test[te],
                            self.y_test[te], self.num_classes)


def looks_channels_first(shape: tuple, channels_last_expected: bool) -> bool:
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
    classes = max(int(y_train.max()) + 1, 1)
    if int(y_train.min()) < 0:
        return classes  # _check_label_range names the negative label and this range
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
