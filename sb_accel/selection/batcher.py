"""Backprop batcher (Selective-Backprop Alg. 1): accumulate kept examples into full batches.

Kept examples from successive candidate batches go into a buffer; whenever it holds at least
``batch_size`` examples a training batch of exactly ``batch_size`` is cut off, oldest first, so
no example is lost or duplicated and the remainder carries over to the next candidate batch.

End of epoch (``end_of_epoch``):

* ``"carry"`` (default): the remainder stays buffered and opens the next epoch's first batch;
  every backprop batch is full. Whatever remains after the last epoch is reported by
  :meth:`pending` and not trained on.
* ``"partial"`` (what the authors' code does: its ``get_batch(final=True)`` trains the remainder at
  the epoch's last candidate batch): :meth:`end_epoch` yields the remainder as one smaller batch.
* ``"drop"``: the remainder is discarded at the end of each epoch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Tuple

import torch

from ..transfer import to_device

__all__ = ["TrainBatch", "BackpropBatcher", "END_OF_EPOCH_RULES", "kept_rows"]

END_OF_EPOCH_RULES = ("carry", "partial", "drop")


def kept_rows(keep: torch.Tensor) -> torch.Tensor:
    """The candidate rows to train on, ascending: a bool keep mask's kept rows, or, for integer
    counts (a draw with replacement, Kath18), each row as often as it was drawn. The number of rows
    is the one host read per candidate batch."""
    if keep.dtype == torch.bool:
        return keep.nonzero().squeeze(1)
    return torch.repeat_interleave(torch.arange(len(keep), device=keep.device), keep)


@dataclass
class TrainBatch:
    """A batch of examples to backpropagate; ``weights`` scale each example's loss."""

    x: torch.Tensor
    y: torch.Tensor
    indices: torch.Tensor
    weights: torch.Tensor

    def __len__(self) -> int:
        return self.y.shape[0]


def _take_rows(tensors: Tuple[torch.Tensor, ...], rows: torch.Tensor) -> List[torch.Tensor]:
    """Each tensor's ``rows``, the row numbers copied once to each device that needs them (from the
    host: pinned and asynchronous, so a host-side decision does not stall the GPU)."""
    moved: Dict[torch.device, torch.Tensor] = {}
    taken = []
    for t in tensors:
        if t.device not in moved:
            moved[t.device] = to_device(rows, t.device)
        taken.append(t[moved[t.device]])
    return taken


class BackpropBatcher:
    """Buffer of kept examples that emits exactly-``batch_size`` training batches."""

    def __init__(self, batch_size: int, end_of_epoch: str = "carry") -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if end_of_epoch not in END_OF_EPOCH_RULES:
            raise ValueError(f"end_of_epoch must be one of {END_OF_EPOCH_RULES}, got {end_of_epoch!r}")
        self.batch_size = batch_size
        self.end_of_epoch = end_of_epoch
        self._chunks: List[TrainBatch] = []
        self._count = 0
        self.dropped = 0  # examples discarded by the "drop" rule

    def pending(self) -> int:
        """Number of kept examples waiting for a full batch."""
        return self._count

    def buffered(self) -> List[TrainBatch]:
        """The buffered chunks (oldest first)."""
        return list(self._chunks)

    def add_rows(self, x: torch.Tensor, y: torch.Tensor, indices: torch.Tensor, rows: Optional[torch.Tensor],
                 weights: Optional[torch.Tensor] = None) -> Iterator[TrainBatch]:
        """Buffer the rows ``rows`` of a candidate batch; yield every full batch now available.

        ``rows``: the kept row numbers, ascending, repeated for a row drawn more than once
        (:func:`kept_rows` of a keep mask or of draw counts); ``None``: all rows."""
        if x.shape[0] != y.shape[0] or indices.shape[0] != y.shape[0]:
            raise ValueError(f"candidate batch parts disagree in length: x {tuple(x.shape)}, "
                             f"y {tuple(y.shape)}, indices {tuple(indices.shape)}")
        if weights is None:
            weights = torch.ones(y.shape[0], dtype=torch.float32, device=y.device)
        if rows is None or len(rows) == y.shape[0]:
            chunk = TrainBatch(x, y, indices, weights)
        else:
            chunk = TrainBatch(*_take_rows((x, y, indices, weights), rows))
        return self._buffer(chunk)

    def _buffer(self, chunk: TrainBatch) -> Iterator[TrainBatch]:
        if len(chunk):
            self._chunks.append(chunk)
            self._count += len(chunk)
        while self._count >= self.batch_size:
            yield self._take(self.batch_size)

    def end_epoch(self) -> Iterator[TrainBatch]:
        """Apply the end-of-epoch rule to the remainder."""
        if self._count == 0 or self.end_of_epoch == "carry":
            return
        batch = self._take(self._count)
        if self.end_of_epoch == "partial":
            yield batch
        else:
            self.dropped += len(batch)

    def _take(self, n: int) -> TrainBatch:
        merged = self._merge()
        head = TrainBatch(merged.x[:n], merged.y[:n], merged.indices[:n], merged.weights[:n])
        rest = len(merged) - n
        self._chunks = [TrainBatch(merged.x[n:], merged.y[n:], merged.indices[n:], merged.weights[n:])] if rest else []
        self._count = rest
        return head

    def _merge(self) -> TrainBatch:
        if len(self._chunks) == 1:
            return self._chunks[0]
        c = self._chunks
        return TrainBatch(torch.cat([b.x for b in c]), torch.cat([b.y for b in c]),
                          torch.cat([b.indices for b in c]), torch.cat([b.weights for b in c]))

    def state_dict(self) -> dict:
        """The buffered examples (moved to CPU) so a resumed run loses none."""
        if not self._count:
            return {"pending": None, "dropped": self.dropped}
        m = self._merge()
        return {"pending": {"x": m.x.cpu(), "y": m.y.cpu(), "indices": m.indices.cpu(), "weights": m.weights.cpu()},
                "dropped": self.dropped}

    def load_state_dict(self, state: dict, device: torch.device | str = "cpu") -> None:
        self.dropped = int(state.get("dropped", 0))
        p = state["pending"]
        self._chunks = [] if p is None else [TrainBatch(p["x"].to(device), p["y"].to(device), p["indices"].to(device),
                                                        p["weights"].to(device))]
        self._count = 0 if p is None else len(p["y"])
