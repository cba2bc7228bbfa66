"""Where a rank's candidate batches come from: the whole shuffled training set (one process), or
this rank's slice of one shared permutation (DDP, :class:`DistributedEpochSampler`)."""
from __future__ import annotations

from typing import Any, Dict, Iterator, Optional, Tuple

import torch

from ..config import ConfigError, TrainConfig
from ..data import (AUGMENT_PRESETS, ArrayDataset, Augment, CandidateLoader, check_run_fits, check_subsets,
                    load_dataset)
from ..data.loader import Candidate
from ..data.sampler import DistributedEpochSampler, shard_test_split
from .distributed import RankGroup, per_rank

__all__ = ["CandidateSource", "training_data", "candidate_source", "candidate_batch_size", "selection_call_size",
           "loss_history_size"]


def training_data(cfg: TrainConfig, data: Optional[ArrayDataset] = None) -> ArrayDataset:
    """The run's dataset (``data``, or loaded by name), cut to its subsets; refuses a subset or a
    batch larger than the training split (never capped silently)."""
    data = data or load_dataset(cfg.dataset, cfg.data_dir, cfg.download)
    check_subsets(data, cfg.train_subset, cfg.test_subset)
    if cfg.train_subset or cfg.test_subset:
        data = data.subset(cfg.train_subset or None, cfg.test_subset or None, seed=cfg.seed)
    check_run_fits(cfg.batch_size, len(data.y_train))
    return data


class CandidateSource:
    """Candidate batches ``(x, y, indices)`` of successive epochs, with their random state."""

    def __init__(self, loader: CandidateLoader, sampler: Optional[DistributedEpochSampler] = None) -> None:
        self.loader = loader
        self.sampler = sampler

    def __len__(self) -> int:
        """Candidates per epoch on this rank."""
        return len(self.loader) if self.sampler is None else len(self.sampler)

    def epoch(self, batch_size: int) -> Iterator[Candidate]:
        """This rank's candidate batches of the next epoch."""
        if self.sampler is None:
            return self.loader.epoch(batch_size)
        return self.loader.batches(self.sampler.epoch(), batch_size)

    def state_dict(self) -> Dict[str, Any]:
        state: Dict[str, Any] = {"loader_rng": self.loader.generator.get_state()}
        if self.sampler is not None:
            state["sampler"] = self.sampler.state_dict()
        return state

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.loader.generator.set_state(state["loader_rng"])
        if self.sampler is not None:
            self.sampler.load_state_dict(state["sampler"])


def candidate_source(cfg: TrainConfig, data: ArrayDataset, device: torch.device, memory_format: torch.memory_format,
                     seed: int, group: Optional[RankGroup] = None) -> Tuple[CandidateSource, ArrayDataset]:
    """This rank's candidate source (augmented on ``device``) and its share of the test split."""
    augment = AUGMENT_PRESETS.get(data.name, Augment()) if cfg.augment == "preset" else Augment()
    loader = CandidateLoader(data, augment, device, seed=seed, memory_format=memory_format)
    if group is None:
        return CandidateSource(loader), data
    sampler = DistributedEpochSampler(len(data.y_train), group.world_size, group.rank, seed=cfg.seed)
    return CandidateSource(loader, sampler), shard_test_split(data, group.world_size, group.rank)


# Selection batch on CUDA when not configured: below ~256 examples a selection forward is kernel-launch
# bound (~2.4 ms whatever its size), at 1024 a ResNet-18 fp16 forward costs 5.2 us/example eager vs
# 14.3 at 128 fp32 (H100, ENGINES-NOTES.md).
CUDA_SELECTION_BATCH = 1024


def candidate_batch_size(cfg: TrainConfig, world_size: int, multiplier: int,
                         device: Optional[torch.device] = None) -> int:
    """This rank's candidate-batch size: ``selection_batch_size`` (global); else on CUDA
    :data:`CUDA_SELECTION_BATCH` for policies that decide per example (multiplier 1), else the batch
    size times the policy's candidate multiplier (Kath18 pre-samples 3x); divided over the ranks."""
    if cfg.selection_batch_size:
        return per_rank(cfg.selection_batch_size, world_size, "selection_batch_size")
    return selection_call_size(per_rank(cfg.batch_size, world_size, "batch_size"), multiplier, device, world_size)


def selection_call_size(batch_size: int, multiplier: int, device: Optional[torch.device] = None,
                        world_size: int = 1) -> int:
    """Candidates per selection call on one rank of ``world_size``, for a per-rank training batch of
    ``batch_size``: on CUDA at least :data:`CUDA_SELECTION_BATCH` (over the ranks) for policies that
    decide per example, else ``multiplier`` training batches."""
    if device is not None and device.type == "cuda" and multiplier == 1:
        return max(CUDA_SELECTION_BATCH // world_size, batch_size)
    return batch_size * multiplier


def loss_history_size(requested: int, per_call: int) -> int:
    """R, the number of recent losses SB's CDF is taken over, for selection calls that each add
    ``per_call`` losses (the selection batch; under DDP with a global history, all ranks' together).

    ``requested`` 0: twice ``per_call`` and at least 1024 (the authors' R), so that the CDF always
    covers earlier batches as well as the current one. An explicit R below ``per_call`` is refused
    (:class:`ConfigError`): the CDF would cover only part of the batch it scores.
    """
    if not requested:
        return max(1024, 2 * per_call)
    if requested < per_call:
        raise ConfigError(f"history: R={requested} is smaller than one selection call ({per_call} losses), so SB's "
                          f"loss CDF would not even cover the batch it scores; use --history {2 * per_call} (or 0: "
                          f"automatic), or a smaller --selection-batch-size")
    return requested
