"""A user's batch as a structure of tensors: rows counted, taken, concatenated and moved.

The selecting loader (:class:`sb_accel.SelectiveLoader`) hands back kept examples in the batch
structure the user's DataLoader produced: a tensor, a tuple/list (namedtuples keep their type) or a
mapping (``dict``, Hugging Face ``BatchEncoding``), nested freely. Every tensor leaf holds one row
per example along dim 0. Leaves that are not tensors (strings, ids as Python lists) cannot follow a
row selection and are refused with a message saying how to make them tensors.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, List, Sequence

import torch

__all__ = ["Batch", "num_rows", "take_rows", "concat", "move", "leaves", "map_leaves"]

Batch = Any  # a tensor, or a tuple / list / mapping of batches


def map_leaves(batch: Batch, fn: Callable[[torch.Tensor], torch.Tensor], path: str = "batch") -> Batch:
    """``batch`` with ``fn`` applied to every tensor leaf, the structure (and its types) kept."""
    if torch.is_tensor(batch):
        return fn(batch)
    if isinstance(batch, Mapping):
        items = {k: map_leaves(v, fn, f"{path}[{k!r}]") for k, v in batch.items()}
        return _rebuild_mapping(batch, items)
    if isinstance(batch, (tuple, list)):
        parts = [map_leaves(v, fn, f"{path}[{i}]") for i, v in enumerate(batch)]
        if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
            return type(batch)(*parts)
        return type(batch)(parts) if isinstance(batch, tuple) else parts
    raise TypeError(f"{path} is a {type(batch).__name__}, not a tensor: every part of a batch the selecting loader "
                    "handles must be a tensor with one row per example (collate strings or ids into tensors, or "
                    "drop them in the Dataset)")


def _rebuild_mapping(original: Mapping, items: dict) -> Mapping:
    if type(original) is dict:
        return items
    try:  # BatchEncoding, OrderedDict, ...: the user's own mapping type
        return type(original)(items)
    except TypeError:
        return items


def leaves(batch: Batch) -> List[torch.Tensor]:
    """Every tensor leaf of ``batch``, in structure order."""
    found: List[torch.Tensor] = []
    map_leaves(batch, lambda t: found.append(t) or t)
    return found


def num_rows(batch: Batch) -> int:
    """Examples in ``batch`` (dim 0 of its leaves); ``ValueError`` when leaves disagree or one is a scalar."""
    sizes = set()

    def size(t: torch.Tensor) -> torch.Tensor:
        if t.dim() == 0:
            raise ValueError("a batch holds a 0-d tensor: every tensor must have one row per example along dim 0")
        sizes.add(t.shape[0])
        return t

    map_leaves(batch, size)
    if not sizes:
        raise ValueError("the batch holds no tensor")
    if len(sizes) > 1:
        raise ValueError(f"the batch's tensors disagree on the number of examples (dim 0 sizes {sorted(sizes)})")
    return sizes.pop()


def take_rows(batch: Batch, rows: torch.Tensor) -> Batch:
    """``batch`` restricted to ``rows`` (int64 row numbers; moved to each leaf's device)."""
    return map_leaves(batch, lambda t: t.index_select(0, rows.to(t.device, non_blocking=True)))


def concat(batches: Sequence[Batch]) -> Batch:
    """Row-wise concatenation of batches of one structure."""
    if len(batches) == 1:
        return batches[0]
    flat = [leaves(b) for b in batches]
    merged = iter([torch.cat([parts[i] for parts in flat]) for i in range(len(flat[0]))])
    return map_leaves(batches[0], lambda _: next(merged))


def move(batch: Batch, device: torch.device | str) -> Batch:
    """``batch`` on ``device`` (host->GPU copies from pinned memory are asynchronous)."""
    device = torch.device(device)

    def to(t: torch.Tensor) -> torch.Tensor:
        if t.device == device:
            return t
        non_blocking = device.type == "cuda" and t.device.type == "cpu" and t.is_pinned()
        return t.to(device, non_blocking=non_blocking)

    return map_leaves(batch, to)
