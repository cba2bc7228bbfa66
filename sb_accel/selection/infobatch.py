"""InfoBatch (Qin et al., ICLR 2024, "InfoBatch: Lossless Training Speed Up by Unbiased Dynamic
Data Pruning"), as its reference code (NUS-HPC-AI-Lab/InfoBatch, ``infobatch/infobatch.py``) runs it.

Each example's score is its last *training* loss (no extra forward pass). At the start of each
pruning epoch the examples scored below the mean are "well learned"; of them a random
``floor(keep_ratio * count)`` are kept (drawn without replacement) and the rest are pruned for the
epoch, and the kept well-learned examples' losses are scaled by ``1 / keep_ratio`` so the expected
gradient is unchanged. ``keep_ratio = 1 - prune_ratio`` clamped to ``[0.1, 1]`` as the reference
does (a prune ratio of 0.95 keeps 10% with weight 10, not 5% with weight 20).

Annealing: from epoch ``floor(delta * E)`` on (``delta = 1 - anneal``, 0-based epochs, ``E`` the
run's epochs) every example is trained, unscaled; a run of unknown length never anneals. The reference's sampler counts one reset at its
construction, so its epoch ``e`` prunes while ``e + 1 <= delta * E``: the first full epoch is
``floor(delta * E)``, e.g. epoch 7 of 8 and epoch 8 of 10 for ``delta = 0.875``.

Differences from the reference: examples never scored yet are neither counted in the mean nor
pruned (the reference starts every score at 3.0); the annealing epochs train unscaled (the
reference resets the weights only when ``delta * E`` is a whole number and otherwise keeps the
last pruning epoch's weights); pruned examples are still loaded as candidates and dropped (the
reference's sampler skips them), which costs only data loading.
"""
from __future__ import annotations

import math
from typing import Dict, Optional

import torch

from ..transfer import to_device
from .base import SelectionPolicy, generator_on
from .registry import DEFAULTS, StrategyOptions, register_strategy

__all__ = ["InfoBatch", "MIN_KEEP_RATIO"]

MIN_KEEP_RATIO = 0.1  # the reference's clamp: keep_ratio = min(1, max(0.1, 1 - prune_ratio))


class InfoBatch(SelectionPolicy):
    """Unbiased random pruning of well-learned examples, decided once per epoch.

    Args:
        dataset_size: number of training examples.
        prune_ratio: fraction of the well-learned examples pruned each pruning epoch (the kept
            fraction is clamped to at least 0.1).
        anneal: ``1 - delta``, the final fraction of epochs that train on everything (paper: 0.125).
        seed: generator seed.
    """

    name = "infobatch"
    uses_training_losses = True

    def __init__(self, dataset_size: int, prune_ratio: float = DEFAULTS.infobatch_ratio,
                 anneal: float = DEFAULTS.infobatch_anneal, seed: int = DEFAULTS.seed) -> None:
        if not 0.0 <= prune_ratio <= 1.0:
            raise ValueError(f"InfoBatch prune_ratio must be in [0, 1], got {prune_ratio}")
        if not 0.0 <= anneal <= 1.0:
            raise ValueError(f"InfoBatch anneal must be in [0, 1], got {anneal}")
        self.prune_ratio = prune_ratio
        self.keep_ratio = min(1.0, max(MIN_KEEP_RATIO, 1.0 - prune_ratio))
        self.anneal = anneal
        self.scores = torch.full((dataset_size,), float("nan"), dtype=torch.float64)
        self.pruned = torch.zeros(dataset_size, dtype=torch.bool)       # this epoch's pruned examples
        self.upweighted = torch.zeros(dataset_size, dtype=torch.bool)   # kept well-learned: weight 1/keep_ratio
        self.pruning = False
        self.num_epochs: Optional[int] = None  # the run's length, told at each epoch's start (None: unknown)
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)

    def to(self, device: torch.device | str) -> "InfoBatch":
        super().to(device)
        self.scores = self.scores.to(self.device)
        self.pruned = self.pruned.to(self.device)
        self.upweighted = self.upweighted.to(self.device)
        self.generator = generator_on(self.generator, self.device, self.seed)
        return self

    @staticmethod
    def first_full_epoch(num_epochs: int, anneal: float) -> int:
        """The reference's first annealing epoch, ``floor((1 - anneal) * num_epochs)`` (0-based)."""
        return math.floor((1.0 - anneal) * num_epochs + 1e-9)  # 1e-9: 0.875 * 8 is 7, not 6.999...

    def on_epoch_start(self, epoch: int, num_epochs: Optional[int]) -> None:
        self.num_epochs = num_epochs
        self.pruning = not self.keeps_all(epoch)
        self.pruned.zero_()
        self.upweighted.zero_()
        seen = ~torch.isnan(self.scores)
        if not self.pruning or not bool(seen.any()):
            return
        # Once per epoch (host reads are fine here): the well-learned examples, and which of them stay.
        well_learned = seen & (self.scores < self.scores[seen].mean())
        count = int(well_learned.sum())
        keep = math.floor(self.keep_ratio * count)
        keys = torch.rand(len(self.scores), generator=self.generator, dtype=torch.float64, device=self.device)
        order = torch.where(well_learned, keys, torch.full_like(keys, 2.0)).argsort()  # well-learned first, shuffled
        self.upweighted[order[:keep]] = True
        self.pruned[order[keep:count]] = True

    def keeps_all(self, epoch: int) -> bool:
        """The annealing epochs train on everything: the driver then reads no keep mask back."""
        return self.num_epochs is not None and epoch >= self.first_full_epoch(self.num_epochs, self.anneal)

    def select(self, losses: torch.Tensor, indices: torch.Tensor, epoch: int) -> torch.Tensor:
        if not self.pruning:
            return torch.ones(indices.numel(), dtype=torch.bool, device=self.device)
        return ~self.pruned[to_device(indices, self.device)]

    def loss_weights(self, indices: torch.Tensor, epoch: int) -> Optional[torch.Tensor]:
        if not self.pruning:
            return None
        scaled = torch.full((), 1.0 / self.keep_ratio, dtype=torch.float32, device=self.device)
        return torch.where(self.upweighted[to_device(indices, self.device)], scaled, torch.ones_like(scaled))

    def observe(self, indices: torch.Tensor, losses: torch.Tensor, epoch: int) -> None:
        self.scores[to_device(indices, self.device)] = to_device(losses, self.device, torch.float64)

    def example_tables(self) -> Dict[str, torch.Tensor]:
        """The scores only: under DDP every rank prunes with its own draw (``pruned``, ``upweighted``)."""
        return {"scores": self.scores}

    def state_dict(self) -> dict:
        return {"scores": self.scores.clone(), "pruned": self.pruned.clone(), "upweighted": self.upweighted.clone(),
                "pruning": self.pruning, "num_epochs": self.num_epochs, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.scores = state["scores"].to(self.device, copy=True)
        self.pruned = state["pruned"].to(self.device, copy=True)
        self.upweighted = state["upweighted"].to(self.device, copy=True)
        self.pruning = bool(state["pruning"])
        self.num_epochs = state.get("num_epochs")
        self.generator.set_state(state["generator"])

    def __repr__(self) -> str:
        return f"InfoBatch(prune_ratio={self.prune_ratio}, keep_ratio={self.keep_ratio:.3g}, anneal={self.anneal})"


@register_strategy("infobatch", needs_dataset_size=True)
def _build(options: StrategyOptions, dataset_size: Optional[int], batch_size: int) -> InfoBatch:
    return InfoBatch(dataset_size, prune_ratio=options.infobatch_ratio, anneal=options.infobatch_anneal,
                     seed=options.seed)
