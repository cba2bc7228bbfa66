"""Shuffled candidate batches from an in-memory dataset, augmented and normalised on the device."""
from __future__ import annotations

from typing import Iterator, Tuple

import torch

from ..transfer import to_device
from .augment import Augment
from .array_dataset import ArrayDataset, DataError

__all__ = ["CandidateLoader", "test_batches", "check_run_fits"]

Candidate = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class CandidateLoader:
    """Iterates ``(x, y, indices)`` over a fresh permutation of the training set each epoch.

    All randomness (permutation, augmentation) comes from one CPU generator, checkpointed with the run.
    """

    def __init__(self, data: ArrayDataset, augment: Augment, device: torch.device | str = "cpu",
                 seed: int = 0, memory_format: torch.memory_format = torch.contiguous_format) -> None:
        self.data = data
        self.memory_format = memory_format
        self.augment = augment
        self.device = torch.device(device)
        self.generator = torch.Generator().manual_seed(seed)
        # Keep the uint8 training set where the model is: one host->device copy per run, not per batch.
        self.x = data.x_train.to(self.device)
        self.y = data.y_train.to(self.device)

    def __len__(self) -> int:
        return len(self.y)

    def epoch(self, batch_size: int) -> Iterator[Candidate]:
        """One pass over a new permutation in batches of ``batch_size`` (the last may be smaller)."""
        yield from self.batches(torch.randperm(len(self.y), generator=self.generator), batch_size)

    def batches(self, indices: torch.Tensor, batch_size: int) -> Iterator[Candidate]:
        """Candidate batches of the examples ``indices`` (host), in that order (the last may be smaller)."""
        if self.device.type == "cuda":
            indices = indices.pin_memory()  # every slice's copy to the GPU is then asynchronous
        for idx in indices.split(batch_size):
            yield self.batch(idx)

    def batch(self, idx: torch.Tensor) -> Candidate:
        """The candidate batch of examples ``idx`` (host indices), augmented on the device."""
        dev_idx = to_device(idx, self.device)
        return self.prepare(self.x[dev_idx]), self.y[dev_idx], idx

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        x = self.augment.apply(images, self.data.normalize, self.generator)
        return x.contiguous(memory_format=self.memory_format)


def test_batches(data: ArrayDataset, batch_size: int = 128, device: torch.device | str = "cpu",
                 memory_format: torch.memory_format = torch.contiguous_format) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """The test split, normalised, in order."""
    for start in range(0, len(data.y_test), batch_size):  # pinned, asynchronous copies: no stall per batch on a GPU
        x = data.normalize(to_device(data.x_test[start:start + batch_size], device))
        yield x.contiguous(memory_format=memory_format), to_device(data.y_test[start:start + batch_size], device)


def check_run_fits(batch_size: int, num_train: int) -> None:
    """Refuse a run whose training batch is larger than its training set.

    Training steps are taken on full batches of ``batch_size`` kept examples, so with fewer than
    ``batch_size`` training examples no step would ever happen and the run would "succeed" with an
    untrained model. Call it with the number of training examples the run really uses (after
    ``train_subset``). Raises :class:`~sb_accel.data.DataError` (a usage error, exit status 2).
    """
    if num_train < 1:
        raise DataError("the run has no training examples: check --dataset and --train-subset")
    if batch_size > num_train:
        raise DataError(f"batch_size: {batch_size} is larger than the {num_train} training examples of this run, so "
                        "no full training batch can ever be formed and the run would make no optimizer step: use "
                        f"--batch-size {num_train} or less, or more training examples (--train-subset)")
