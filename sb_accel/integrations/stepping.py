"""A :class:`sb_accel.SelectiveLoader` as a framework's training data: epochs that close after their
last optimizer step."""
from __future__ import annotations

from typing import Any, Iterator, Optional

from ..selective_loader import SelectiveLoader

__all__ = ["FrameworkLoader"]


class FrameworkLoader:
    """The selecting loader as a framework's training data.

    Lightning and the Hugging Face Trainer stop reading an epoch after ``len()`` batches instead of
    asking for the end, so the loader would never learn that the last step was taken (it counts the
    step, refreshes its engine and closes the epoch when it is resumed). The integrations call
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
