"""How a framework's training loop steps through a :class:`sb_accel.SelectiveLoader`: the run's
planned step count (what LR schedules are built from) and epochs that close after their last step."""
from __future__ import annotations

from typing import Any, Iterator, Optional

from ..selection.expected_share import expected_share
from ..selective_loader import SelectiveLoader

__all__ = ["planned_steps", "FrameworkLoader"]


def planned_steps(loader: SelectiveLoader, epochs: int) -> int:
    """Optimizer steps ``loader`` is expected to yield over ``epochs`` epochs from its start:
    ``round(sum over epochs of expected kept share x examples per rank / batch_size)``.

    The loader fixes each epoch's length from what it has kept so far, so its epochs add up to this
    total up to the chance in the kept counts (a batch or so)."""
    world = 1 if loader.group is None else loader.group.world_size
    per_rank = loader.dataset_size / world
    kept = sum(expected_share(loader.policy, epoch, epochs) for epoch in range(epochs)) * per_rank
    return max(epochs, int(round(kept / loader.batch_size)))


class FrameworkLoader:
    """The selecting loader as a framework's training data.

    Lightning and the Hugging Face Trainer stop reading an epoch after ``len()`` batches instead of
    asking for the end, so the loader would never learn that the last step was taken (the step is
    counted, and the epoch closed, when the loader is resumed). The integrations call
    :meth:`step_taken` after every optimizer step; after the epoch's last planned batch it resumes
    the loader, which closes the epoch.
    """

    def __init__(self, loader: SelectiveLoader) -> None:
        self.loader = loader
        self._epoch: Optional[Iterator[Any]] = None
        self._handed = 0
        self._planned = 0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        self._epoch = iter(self.loader)
        self._planned, self._handed = len(self.loader), 0
        for batch in self._epoch:
            self._handed += 1
            yield batch

    def step_taken(self) -> None:
        """Close the loader's epoch if the batch just trained was its last."""
        if self._epoch is None or self._handed < self._planned:
            return
        epoch, self._epoch = self._epoch, None
        if next(epoch, None) is not None:
            raise RuntimeError(f"the selecting loader yielded more than the {self._planned} batches it planned")
