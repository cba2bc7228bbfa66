"""Lockstep backprop under DistributedDataParallel: every rank takes the same number of steps.

Each DDP step is a collective (the gradient all-reduce in ``backward``), so a rank that steps when
another does not waits forever. Selective-Backprop keeps a random number of examples per candidate
batch on each rank, so the ranks' :class:`~sb_accel.selection.BackpropBatcher` fill at different
rates. The rule:

* **During the epoch**: the batcher cuts full local batches (``b = batch_size / world`` kept
  examples each) into a ready queue; after every candidate batch the ranks agree, with one
  ``all_reduce(MIN)`` of their queue lengths, on how many steps all of them can take now, and each
  takes that many batches from the front of its queue. A rank that kept more waits with the
  surplus in its queue; every step is a full global batch of ``batch_size`` examples.
* **At the epoch's end** what remains (the queue and the batcher's remainder) is handled by
  ``end_of_epoch``, the same on every rank:

  - ``carry`` (default): it all stays and opens the next epoch's steps (no collective; nothing is
    lost; whatever remains after the last epoch is reported as ``untrained_remainder``).
  - ``partial``: the ranks agree (``all_reduce(MAX)``) on ``max_r ceil(left_r / b)`` more steps;
    in each, every rank trains up to ``b`` of its remaining examples, possibly none (an empty batch
    still joins the all-reduce). Loss weights are scaled by ``world * n_r / N`` (``n_r`` this rank's
    examples in the step, ``N`` all ranks', one ``all_reduce(SUM)``), so the averaged gradient is
    the mean over the step's ``N`` examples, as a single process's partial batch would be.
  - ``drop``: every rank discards its queue and remainder (counted in :attr:`dropped`).

So no rank ever waits for a step the others will not take.
"""
from __future__ import annotations

from collections import deque
from typing import Any, Deque, Dict, Iterable, Iterator, List

import torch

from ..selection import TrainBatch
from .distributed import RankGroup

__all__ = ["LockstepBatches"]


class LockstepBatches:
    """The ready queue of full local batches and the agreement on when to step.

    Args:
        group: the ranks.
        end_of_epoch: ``"carry"``, ``"partial"`` or ``"drop"`` (see the module docstring).
    """

    def __init__(self, group: RankGroup, end_of_epoch: str = "carry") -> None:
        self.group = group
        self.end_of_epoch = end_of_epoch
        self._queue: Deque[TrainBatch] = deque()
        self.dropped = 0  # examples discarded by the "drop" rule from the queue

    def pending(self) -> int:
        """Kept examples in full local batches that wait for the other ranks."""
        return sum(len(b) for b in self._queue)

    def buffered(self) -> List[TrainBatch]:
        """The full local batches waiting for the other ranks."""
        return list(self._queue)

    def offer(self, batches: Iterable[TrainBatch]) -> Iterator[TrainBatch]:
        """Queue this rank's new full batches; yield as many as every rank can train now."""
        self._queue.extend(batches)
        for _ in range(self.group.min_int(len(self._queue))):
            yield self._queue.popleft()

    def end_epoch(self, remainder: Iterable[TrainBatch], empty: TrainBatch) -> Iterator[TrainBatch]:
        """Apply the end-of-epoch rule to the queue and ``remainder`` (the batcher's end-of-epoch
        batches under the same rule); ``empty``: a zero-example batch of the right shape."""
        if self.end_of_epoch == "carry":
            return
        left: List[TrainBatch] = list(self._queue) + list(remainder)
        self._queue.clear()
        if self.end_of_epoch == "drop":
            self.dropped += sum(len(b) for b in left)
            return
        steps = self.group.max_int(len(left))
        for j in range(steps):
            batch = left[j] if j < len(left) else empty
            (total,) = self.group.sum([len(batch)], kind="ready")
            scale = self.group.world_size * len(batch) / total
            yield TrainBatch(batch.x, batch.y, batch.indices, batch.weights * scale)

    def state_dict(self) -> Dict[str, Any]:
        """The queued batches (on the CPU) and the drop count."""
        return {"queue": [{"x": b.x.cpu(), "y": b.y.cpu(), "indices": b.indices.cpu(), "weights": b.weights.cpu()}
                          for b in self._queue], "dropped": self.dropped}

    def load_state_dict(self, state: Dict[str, Any], device: torch.device | str = "cpu") -> None:
        self._queue = deque(TrainBatch(b["x"].to(device), b["y"].to(device), b["indices"].to(device),
                                      b["weights"].to(device))
                            for b in state["queue"])
        self.dropped = int(state["dropped"])
