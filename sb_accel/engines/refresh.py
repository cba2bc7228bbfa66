"""When and how the selection engine takes the training model's new weights.

:class:`RefreshSchedule` is the pure rule (every ``K`` optimizer steps and/or every epoch);
:class:`EngineRefresher` applies it to an engine and reports each refresh as a RunLog event.
A live engine (torch reading the training model) is never refreshed.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import List, Optional

import torch.nn as nn

from .base import SelectionEngine

__all__ = ["RefreshSchedule", "EngineRefresher"]


@dataclass(frozen=True)
class RefreshSchedule:
    """Refresh every ``every_steps`` optimizer steps (0: never by steps) and/or at epoch ends."""

    every_steps: int = 0
    every_epoch: bool = True

    def __post_init__(self) -> None:
        if self.every_steps < 0:
            raise ValueError(f"refresh every_steps must be >= 0, got {self.every_steps}")

    def due_after_step(self, step: int) -> bool:
        return self.every_steps > 0 and step > 0 and step % self.every_steps == 0

    def due_after_epoch(self) -> bool:
        return self.every_epoch


class EngineRefresher:
    """Keeps ``engine`` up to date with the training model on ``schedule``."""

    def __init__(self, engine: SelectionEngine, schedule: RefreshSchedule = RefreshSchedule()) -> None:
        self.engine = engine
        self.schedule = schedule
        self.count = 0

    def after_step(self, model: nn.Module, step: int) -> List[dict]:
        """Call after optimizer step ``step``; returns RunLog events of any refresh done."""
        if self.engine.is_live or not self.schedule.due_after_step(step):
            return []
        return [self.refresh(model, step, reason="steps")]

    def after_epoch(self, model: nn.Module, step: int) -> List[dict]:
        if self.engine.is_live or not self.schedule.due_after_epoch():
            return []
        return [self.refresh(model, step, reason="epoch")]

    def refresh(self, model: nn.Module, step: int, reason: str = "manual") -> dict:
        start = time.perf_counter()
        self.engine.refresh(model)
        self.engine.snapshot_step = step
        self.count += 1
        return {"event": "refresh", "step": step, "reason": reason, "engine": self.engine.name,
                "seconds": time.perf_counter() - start, "count": self.count}

    def staleness(self, step: int) -> int:
        """Optimizer steps between the engine's snapshot and now (0 for a live engine)."""
        return 0 if self.engine.is_live else step - self.engine.snapshot_step

    def close(self) -> None:
        self.engine.close()
