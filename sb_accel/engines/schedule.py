"""When a snapshot engine takes the training model's new weights: a pure rule, no engines."""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RefreshSchedule"]


@dataclass(frozen=True)
class RefreshSchedule:
    """Refresh every ``every_steps`` optimizer steps (0: never by steps) and/or at epoch ends.

    ``validate_every``: with validation on, check every N-th cheap step refresh against PyTorch
    (1: all). Full refreshes (rebuilds, INT8 recalibrations) and refreshes for other reasons (epoch
    end, selection resuming after priming) are always checked; exact ones (the weights copied into
    a PyTorch module as they are) never: they cannot go wrong in a way a check would see.
    Refreshing every step makes the check (a torch forward and an engine forward on a small batch)
    the largest part of a cheap refresh; checking every N-th bounds a broken refresh to N - 1
    steps of selection, which only chooses examples and never touches the gradients.
    """

    every_steps: int = 0
    every_epoch: bool = True
    validate_every: int = 1

    def __post_init__(self) -> None:
        if self.every_steps < 0:
            raise ValueError(f"refresh every_steps must be >= 0, got {self.every_steps}")
        if self.validate_every < 1:
            raise ValueError(f"refresh validate_every must be >= 1, got {self.validate_every}")

    def validates(self, count: int, kind: str, reason: str) -> bool:
        """Whether refresh number ``count`` (1-based) of ``kind`` done for ``reason`` is checked."""
        if kind == "exact":
            return False
        return kind != "cheap" or reason != "steps" or count % self.validate_every == 0

    def due_after_step(self, step: int) -> bool:
        return self.every_steps > 0 and step > 0 and step % self.every_steps == 0

    def due_after_epoch(self) -> bool:
        return self.every_epoch
