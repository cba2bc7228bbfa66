"""What a run writes to its RunLog: training-loss intervals, evaluations, epochs, the summary.

The training-loss sum stays on the device between interval events (one host read per interval,
none per step); selectivity per interval comes from the driver's cumulative counters.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from ..config import TrainConfig
from ..files import atomic_write_json
from ..reporting.runlog import RunLog
from ..config import CONFIG_NAME
from .driver import SelectionDriver

__all__ = ["RunLogger"]


class RunLogger:
    """Writes the events of one training run."""

    def __init__(self, log: RunLog, device: torch.device) -> None:
        self.log = log
        self.device = device
        self._reset({"candidates": 0, "kept": 0})

    def _reset(self, marks: Dict[str, int]) -> None:
        self._loss_sum = torch.zeros((), device=self.device)
        self._examples = 0
        self._marks = marks

    def add_loss(self, mean_loss: torch.Tensor, examples: int) -> None:
        """Account one training batch's mean loss (no host sync)."""
        self._loss_sum += mean_loss.detach() * examples
        self._examples += examples

    def interval(self, driver: SelectionDriver, **fields: Any) -> Dict[str, Any]:
        """An ``interval`` event: mean training loss and selectivity since the last one."""
        candidates = driver.candidates - self._marks["candidates"]
        kept = driver.kept - self._marks["kept"]
        record = self.log.write("interval", train_loss=float(self._loss_sum) / max(self._examples, 1),
                                selectivity=kept / max(candidates, 1), candidates=driver.candidates,
                                forwards=driver.forwards, **fields)
        self._reset({"candidates": driver.candidates, "kept": driver.kept})
        return record

    def write(self, event: str, **fields: Any) -> Dict[str, Any]:
        return self.log.write(event, **fields)

    def start(self, cfg: TrainConfig, run_dir: Optional[Path], **fields: Any) -> None:
        """The ``config`` event (the resolved config, versions, threads) and, given ``run_dir``, its
        ``config.json`` (what ``--resume`` starts from)."""
        self.log.write("config", config=cfg.to_dict(), torch=torch.__version__, threads=torch.get_num_threads(),
                       **fields)
        if run_dir is not None:
            atomic_write_json(run_dir / CONFIG_NAME, cfg.to_dict())

    def engine_events(self, events: List[Dict[str, Any]]) -> None:
        """Log the events an engine refresher returned (build, refresh, fallback)."""
        for event in events:
            self.write(**event)

    def close(self) -> None:
        self.log.close()
