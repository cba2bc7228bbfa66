"""InfoBatch (Qin et al., ICLR 2024, "InfoBatch: Lossless Training Speed Up by Unbiased Dynamic
Data Pruning").

Each example's score is its last-seen *training* loss (no extra forward pass). At the start of
each epoch the threshold is the mean score; an example below it is pruned with probability
``r``, and kept below-mean examples have their loss scaled by ``1 / (1 - r)`` so the expected
gradient is unchanged. The last ``anneal`` fraction of epochs trains on the full data unscaled.
Examples never seen yet count as above the mean (always kept).
"""
from __future__ import annotations

from typing import Optional

import torch

from ..transfer import to_device
from .base import SelectionPolicy, generator_on
from .registry import StrategyOptions, register_strategy

__all__ = ["InfoBatch"]


class InfoBatch(SelectionPolicy):
    """Unbiased random pruning of well-learned examples.

    Args:
        dataset_size: number of training examples.
        prune_ratio: ``r``, the chance a below-mean example is dropped this epoch.
        anneal: fraction of final epochs that train on everything (paper: 0.125).
        seed: generator seed.
    """

    name = "infobatch"
    uses_training_losses = True

    def __init__(self, dataset_size: int, prune_ratio: float = 0.5, anneal: float = 0.125,
                 seed: int = 0) -> None:
        if not 0.0 <= prune_ratio < 1.0:
            raise ValueError(f"InfoBatch prune_ratio must be in [0, 1), got {prune_ratio}")
        if not 0.0 <= anneal <= 1.0:
            raise ValueError(f"InfoBatch anneal must be in [0, 1], got {anneal}")
        self.prune_ratio = prune_ratio
        self.anneal = anneal
        self.scores = torch.full((dataset_size,), float("nan"), dtype=torch.float64)
        self.threshold = float("inf")
        self.pruning = False
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)

    def to(self, device: torch.device | str) -> "InfoBatch":
        super().to(device)
        self.scores = self.scores.to(self.device)
        self.generator = generator_on(self.generator, self.device, self.seed)
        return self

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        self.pruning = epoch < num_epochs * (1.0 - self.anneal)
        seen = self.scores[~torch.isnan(self.scores)]  # once per epoch: a host read is fine here
        self.threshold = float(seen.mean()) if seen.numel() else float("inf")

    def _well_learned(self, indices: torch.Tensor) -> torch.Tensor:
        scores = self.scores[to_device(indices, self.device)]
        return ~torch.isnan(scores) & (scores < self.threshold)

    def select(self, losses: torch.Tensor, indices: torch.Tensor, epoch: int) -> torch.Tensor:
        if not self.pruning:
            return torch.ones(indices.numel(), dtype=torch.bool, device=self.device)
        drop = torch.rand(indices.numel(), generator=self.generator, dtype=torch.float64,
                          device=self.device) < self.prune_ratio
        return ~(self._well_learned(indices) & drop)

    def loss_weights(self, indices: torch.Tensor, epoch: int) -> Optional[torch.Tensor]:
        if not self.pruning:
            return None
        scaled = torch.full((), 1.0 / (1.0 - self.prune_ratio), dtype=torch.float32, device=self.device)
        return torch.where(self._well_learned(indices), scaled, torch.ones_like(scaled))

    def observe(self, indices: torch.Tensor, losses: torch.Tensor, epoch: int) -> None:
        self.scores[to_device(indices, self.device)] = to_device(losses, self.device, torch.float64)

    def state_dict(self) -> dict:
        return {"scores": self.scores.clone(), "threshold": self.threshold, "pruning": self.pruning,
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.scores = state["scores"].to(self.device, copy=True)
        self.threshold = float(state["threshold"])
        self.pruning = bool(state["pruning"])
        self.generator.set_state(state["generator"])

    def __repr__(self) -> str:
        return f"InfoBatch(prune_ratio={self.prune_ratio}, anneal={self.anneal})"


@register_strategy("infobatch", needs_dataset_size=True)
def _build(options: StrategyOptions, dataset_size: Optional[int], batch_size: int) -> InfoBatch:
    return InfoBatch(dataset_size, prune_ratio=options.infobatch_ratio, anneal=options.infobatch_anneal,
                     seed=options.seed)
