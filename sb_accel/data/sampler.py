"""Each rank's share of an epoch: one shuffled order for all ranks, a disjoint slice for each.

Under distributed training every rank holds the whole (in-memory) training set and draws the same
permutation of it each epoch from a generator seeded with the run's seed (the ranks' generators
stay equal because each draws exactly one permutation per epoch). Rank ``r`` of ``W`` takes every
``W``-th position from ``r`` (``perm[r::W]``, as :class:`torch.utils.data.DistributedSampler`), so
the shards are disjoint and reshuffled every epoch.

Remainder rule: **drop**. The last ``size % W`` positions of the permutation are left out, so every
rank has exactly ``size // W`` candidates (equal candidate counts are what keeps the ranks'
collectives in step) and no example is a candidate twice in an epoch. The dropped examples are a
fresh random choice each epoch (fewer than ``W`` of them: at most 63 of CIFAR-10's 50,000 on 64
ranks), so over the epochs every example is a candidate equally often.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict

import torch

from .array_dataset import ArrayDataset

__all__ = ["DistributedEpochSampler", "shard_test_split"]


class DistributedEpochSampler:
    """Per-epoch shards of ``range(size)`` for rank ``rank`` of ``world_size``.

    Args:
        size: number of training examples.
        world_size: number of ranks.
        rank: this rank, in ``[0, world_size)``.
        seed: seed of the permutation generator; must be the same on every rank.
        shuffle: False: the dataset's own order every epoch (no permutation drawn).
    """

    def __init__(self, size: int, world_size: int = 1, rank: int = 0, seed: int = 0, shuffle: bool = True) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        if size < world_size:
            raise ValueError(f"{size} training examples cannot be split over {world_size} ranks")
        self.size = size
        self.world_size = world_size
        self.rank = rank
        self.shuffle = shuffle
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        """Candidates of this rank per epoch (the same on every rank)."""
        return self.size // self.world_size

    def epoch(self) -> torch.Tensor:
        """Draw the next epoch's permutation; this rank's dataset indices, in order."""
        order = torch.randperm(self.size, generator=self.generator) if self.shuffle else torch.arange(self.size)
        return order[self.rank:len(self) * self.world_size:self.world_size]

    def state_dict(self) -> Dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])


def shard_test_split(data: ArrayDataset, world_size: int, rank: int) -> ArrayDataset:
    """``data`` with only every ``world_size``-th test example from ``rank`` (the training split,
    and so the normalisation statistics, unchanged): each rank evaluates its share and the ranks
    sum correct answers and losses."""
    return dataclasses.replace(data, x_test=data.x_test[rank::world_size], y_test=data.y_test[rank::world_size])
