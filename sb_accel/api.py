"""Selective-Backprop for an existing PyTorch loop, in a few lines.

>>> sb = SelectiveBackprop(model, selectivity=0.33)          # doctest: +SKIP
>>> for x, y in loader:                                     # candidate batches
...     for xb, yb in sb.select(x, y):                      # full training batches when ready
...         opt.zero_grad(); F.cross_entropy(model(xb), yb).backward(); opt.step()
...         sb.step()                                       # refreshes the engine on schedule
"""
from __future__ import annotations

from typing import Iterator, Optional, Tuple

import torch
import torch.nn as nn

from .engines import EngineContext, create_engine
from .engines.refresh import EngineRefresher, RefreshSchedule
from .selection import BackpropBatcher, SelectionPolicy
from .selection import SelectiveBackprop as SBPolicy
from .train.selection_step import select_candidates

__all__ = ["SelectiveBackprop"]


class SelectiveBackprop:
    """Wraps a model: selection passes on an engine, a policy, and a batcher of kept examples.

    Args:
        model: the training model (read by the torch engine, exported by the others).
        selectivity: expected fraction of candidates backpropagated (``beta = 1/s - 1``).
        batch_size: training batch size; default: the size of the first candidate batch.
        engine: ``"torch-fp32"``, ``"torch-bf16"``, ``"onnxruntime-int8"``, ``"tensorrt-fp16"``...
        refresh_every: refresh a snapshot engine every this many ``step()`` calls (0: never).
            Keep it small: stale selection hurts SB (see README). The default torch engine reads
            the live model and is never refreshed.
        policy: any :class:`~sb_accel.selection.SelectionPolicy` instead of SB.
        calibration: a few ``(x, y)`` training batches for INT8 engines and engine validation.
        history, seed: as :class:`sb_accel.selection.SelectiveBackprop`.
    """

    def __init__(self, model: nn.Module, selectivity: float = 0.33, *, batch_size: Optional[int] = None,
                 engine: str = "torch-fp32", refresh_every: int = 1, policy: Optional[SelectionPolicy] = None,
                 calibration: Optional[list] = None, history: int = 1024, seed: int = 0) -> None:
        self.model = model
        self.policy = policy or SBPolicy(selectivity=selectivity, history=history, seed=seed)
        self._engine_spec = engine
        self._calibration = calibration or []
        self._refresh_every = refresh_every
        self.refresher: Optional[EngineRefresher] = None  # built lazily: it needs a sample batch
        self.batch_size = batch_size
        self.batcher: Optional[BackpropBatcher] = None
        self.steps = 0
        self.epoch = 0

    def _setup(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.batch_size = self.batch_size or len(y)
        self.batcher = BackpropBatcher(self.batch_size)
        context = EngineContext(device=x.device, sample_batches=self._calibration or [(x, y)], max_batch=max(len(y), 512))
        engine = create_engine(self._engine_spec, self.model, context)
        self.refresher = EngineRefresher(engine, RefreshSchedule(self._refresh_every, every_epoch=False))

    def select(self, x: torch.Tensor, y: torch.Tensor, indices: Optional[torch.Tensor] = None) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """Score a candidate batch; yield every full training batch of kept examples now ready.

        ``indices`` (dataset indices) are needed only by policies that keep per-example state.
        """
        if self.refresher is None:
            self._setup(x, y)
        if indices is None:
            indices = torch.arange(len(y))
        decision = select_candidates(self.refresher.engine, self.policy, x, y, indices, self.epoch)
        for batch in self.batcher.add(x, y, indices, decision.keep, decision.weights):
            yield batch.x, batch.y

    def step(self) -> None:
        """Count an optimizer step; refresh the engine when due."""
        self.steps += 1
        if self.refresher is not None:
            self.refresher.after_step(self.model, self.steps)

    def new_epoch(self) -> None:
        """Tell epoch-aware policies (Stale-SB, InfoBatch) that a new epoch begins."""
        self.epoch += 1
