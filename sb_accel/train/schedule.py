"""Learning-rate schedules as pure functions of training progress measured in epochs.

Progress is the fraction of the training set the loop has *passed over* (candidates seen), not
optimizer steps: selection strategies take fewer steps per epoch, and the paper runs every
strategy on the same epoch-based schedule.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Tuple

__all__ = ["LRSchedule", "SCHEDULES"]

SCHEDULES = ("multistep", "cosine", "linear", "constant")


@dataclass(frozen=True)
class LRSchedule:
    """``lr(progress)`` for ``progress`` in epochs (a float in ``[0, epochs]``).

    * ``multistep``: ``base * gamma ** (number of milestones <= progress)`` (paper §5.1).
    * ``cosine``: ``base * (1 + cos(pi * t)) / 2`` with ``t = progress / epochs``.
    * ``linear``: decay linearly to 0 at ``epochs``.
    * ``constant``: ``base``.

    Each may start with ``warmup`` epochs of linear warm-up from 0.
    """

    kind: str = "multistep"
    base: float = 0.1
    epochs: float = 200.0
    milestones: Tuple[float, ...] = field(default=(60.0, 120.0, 160.0))
    gamma: float = 0.2
    warmup: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ValueError(f"unknown lr schedule {self.kind!r}; choose one of: {', '.join(SCHEDULES)}")
        if self.base <= 0 or not math.isfinite(self.base):
            raise ValueError(f"learning rate must be positive and finite, got {self.base}")
        if self.epochs <= 0:
            raise ValueError(f"epochs must be > 0, got {self.epochs}")
        if self.warmup < 0 or self.warmup >= self.epochs:
            raise ValueError(f"warmup must be in [0, epochs), got {self.warmup}")

    def __call__(self, progress: float) -> float:
        if progress < self.warmup:
            return self.base * progress / self.warmup
        if self.kind == "constant":
            return self.base
        if self.kind == "multistep":
            return self.base * self.gamma ** sum(progress >= m for m in self.milestones)
        t = min(max((progress - self.warmup) / (self.epochs - self.warmup), 0.0), 1.0)
        if self.kind == "cosine":
            return self.base * 0.5 * (1.0 + math.cos(math.pi * t))
        return self.base * (1.0 - t)

    def scaled_to(self, epochs: float) -> "LRSchedule":
        """The same shape stretched to ``epochs`` (milestones and warm-up scale proportionally)."""
        f = epochs / self.epochs
        return LRSchedule(self.kind, self.base, epochs, tuple(m * f for m in self.milestones),
                          self.gamma, self.warmup * f)
