"""The user's candidate batches as row numbers, so that selection stays tensor-only.

The selection driver, the policies and the backprop batcher move ``(x, y, indices)`` tensors. The
selecting loader hands them *row ids* (int64 on the host) as ``x`` and ``y`` and keeps the user's
batches here, whatever their structure (tuples, dicts of token ids). A selection forward gathers
the rows it scores (:class:`StoredRowsEngine`); a training batch is gathered once when it is
handed out. Batches go as soon as no buffered row refers to them (:meth:`CandidateRows.release`).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import torch
import torch.nn as nn

from .data.batch_structure import Batch, concat, num_rows, take_rows
from .engines import EngineRefresher, SelectionEngine
from .selection import TrainBatch

__all__ = ["CandidateRows", "StoredRowsEngine", "batch_state", "remap_row_ids"]


class CandidateRows:
    """Candidate batches by row id: ids are consecutive within a batch and never reused."""

    def __init__(self) -> None:
        self._batches: List[Tuple[int, int, Batch]] = []  # (first id, rows, batch), ascending ids
        self.next_id = 0

    def __len__(self) -> int:
        """Batches held."""
        return len(self._batches)

    def clear(self) -> None:
        """Drop every batch and start the ids at 0 again (a restored state's rows are added next)."""
        self._batches = []
        self.next_id = 0

    def add(self, batch: Batch) -> torch.Tensor:
        """Hold ``batch``; returns its row ids (int64, on the host)."""
        n = num_rows(batch)
        ids = torch.arange(self.next_id, self.next_id + n)
        self._batches.append((self.next_id, n, batch))
        self.next_id += n
        return ids

    def gather(self, ids: torch.Tensor) -> Batch:
        """The user's rows ``ids`` (host int64, any order, from any held batches), in that order."""
        ids = ids.cpu()
        if not len(ids):
            raise ValueError("no rows to gather")
        firsts = torch.tensor([first for first, _, _ in self._batches])
        which = torch.searchsorted(firsts, ids, right=True) - 1
        if bool((which < 0).any()):
            raise KeyError("a row id refers to a candidate batch that was released")
        parts, order = [], []
        for slot in torch.unique(which).tolist():
            first, n, batch = self._batches[slot]
            mine = (which == slot).nonzero().squeeze(1)
            local = ids[mine] - first
            if bool((local >= n).any()):
                raise KeyError("a row id refers to a candidate batch that was released")
            if len(local) == n and bool((local == torch.arange(n)).all()):
                parts.append(batch)  # the whole batch, as loaded: no copy
            else:
                parts.append(take_rows(batch, local))
            order.append(mine)
        merged = concat(parts)
        positions = torch.cat(order)
        if bool((positions == torch.arange(len(ids))).all()):
            return merged
        return take_rows(merged, torch.argsort(positions))

    def release(self, live: Iterable[torch.Tensor]) -> None:
        """Drop every held batch none of the ``live`` row ids (host tensors) refers to."""
        alive = [t.reshape(-1).cpu() for t in live if len(t)]
        if not alive:
            self._batches = []
            return
        ids = torch.cat(alive)
        firsts = torch.tensor([first for first, _, _ in self._batches])
        used = set(torch.unique(torch.searchsorted(firsts, ids, right=True) - 1).tolist())
        self._batches = [b for slot, b in enumerate(self._batches) if slot in used]


class StoredRowsEngine(SelectionEngine):
    """A selection engine over row ids: gathers the user's rows and scores them with the engine the
    refresher serves now (a refresh or a fallback may swap it).

    Engines with a per-example loss hook (``batch_losses``: torch, torch-graph) run
    ``loss_fn(forward(model, batch), batch)`` on any batch structure; the exported engines (ONNX
    Runtime, TensorRT) score ``batch[0]`` against the labels ``batch[1]`` with cross-entropy, which
    the loader checks they can before it builds one.
    """

    def __init__(self, rows: CandidateRows, refresher: EngineRefresher, forward: Callable[[nn.Module, Any], Any],
                 loss_fn: Callable[[Any, Any], torch.Tensor]) -> None:
        self.rows = rows
        self.refresher = refresher
        self.forward = forward
        self.loss_fn = loss_fn

    @property
    def served(self) -> SelectionEngine:
        return self.refresher.engine

    @property
    def name(self) -> str:
        return self.served.name

    def losses(self, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Per-example losses of the stored rows ``x`` (``y`` holds the same ids, unused)."""
        batch = self.rows.gather(x)
        engine = self.served
        hook = getattr(engine, "batch_losses", None)
        if hook is not None:
            return hook(batch, self.forward, self.loss_fn)
        return engine.losses(batch[0], batch[1])

    def refresh(self, model: nn.Module, rebuild: bool = False) -> None:
        """Refreshes belong to the refresher (:meth:`EngineRefresher.after_step`)."""
        raise RuntimeError("StoredRowsEngine is refreshed through its EngineRefresher")


def batch_state(b: TrainBatch) -> Dict[str, torch.Tensor]:
    """A batch of row ids as its checkpoint form (on the CPU)."""
    return {"x": b.x.cpu(), "y": b.y.cpu(), "indices": b.indices.cpu(), "weights": b.weights.cpu()}


def remap_row_ids(state: Any, remap: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``state`` (a driver state dict) with the row ids of every stored batch mapped by ``remap``."""
    if isinstance(state, dict):
        if {"x", "y", "indices", "weights"} <= set(state):
            return {**state, "x": remap(state["x"]), "y": remap(state["y"])}
        return {k: remap_row_ids(v, remap) for k, v in state.items()}
    if isinstance(state, list):
        return [remap_row_ids(v, remap) for v in state]
    return state
