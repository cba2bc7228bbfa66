"""Fixed selection batch sizes ("buckets") for engines that serve only a few shapes: pure functions.

A CUDA graph replays one fixed shape, and a kernel's first call at a new shape costs 25-37 ms of
cuDNN plan search on an H100; so a graph-captured engine captures a few sizes (the recipe's
``selection.bucket_sizes``, e.g. 128/256/512/1024) and serves any batch from them:

* a batch of ``n <= max(buckets)`` examples is padded up to the smallest bucket that holds it (one
  replay; the padding rows are computed and dropped: eval-mode forwards treat examples independently);
* a larger batch is split into chunks of the largest bucket, and the remainder is padded as above.

So the driver's selection batch should be one of the buckets (the GPU preset uses 1024): any other
size pays for its padding.
"""
from __future__ import annotations

from typing import Iterable, List, Tuple

from .errors import EngineError

__all__ = ["usable_buckets", "plan_buckets"]


def usable_buckets(bucket_sizes: Iterable[int], max_batch: int) -> Tuple[int, ...]:
    """The buckets worth capturing for candidate batches of at most ``max_batch`` examples: sorted,
    without duplicates, up to the smallest bucket that holds ``max_batch`` (larger ones would only
    cost capture time and memory). All of them if none holds it (larger batches are split).

    Raises:
        EngineError: no buckets, or a bucket that is not a positive int.
    """
    sizes = list(bucket_sizes)
    if not sizes or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in sizes):
        raise EngineError(f"selection bucket_sizes must be a non-empty list of positive ints, got {sizes!r}")
    ordered = sorted(set(sizes))
    holding = [b for b in ordered if b >= max_batch]
    return tuple(b for b in ordered if not holding or b <= holding[0])


def plan_buckets(n: int, buckets: Tuple[int, ...]) -> List[Tuple[int, int, int]]:
    """How a batch of ``n`` examples runs on sorted ``buckets``: ``(start, stop, bucket)`` per replay,
    rows ``start:stop`` of the batch padded to ``bucket`` rows.

    >>> plan_buckets(300, (128, 256, 512, 1024))
    [(0, 300, 512)]
    >>> plan_buckets(1500, (128, 256, 512, 1024))
    [(0, 1024, 1024), (1024, 1500, 512)]
    """
    if n < 0:
        raise ValueError(f"a batch has >= 0 examples, got {n}")
    largest = buckets[-1]
    plan = []
    start = 0
    while n - start > largest:
        plan.append((start, start + largest, largest))
        start += largest
    if n > start:
        plan.append((start, n, next(b for b in buckets if b >= n - start)))
    return plan
