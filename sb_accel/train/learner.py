"""The model being trained and how it learns: its optimizer, the learning-rate schedule, mixed
precision, one training step on a batch of kept examples, and the test evaluation.

Learning-rate schedules are pure functions of training progress measured in epochs. Progress is
the fraction of the training set the loop has *passed over* (candidates seen), not optimizer steps:
selection strategies take fewer steps per epoch, and the paper runs every strategy on the same
epoch-based schedule.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, NamedTuple, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import TrainConfig
from ..data import ArrayDataset, test_batches
from ..models import create_model
from ..selection import TrainBatch
from .distributed import RankGroup, wrap_ddp
from .timer import PhaseTimer

__all__ = ["LRSchedule", "SCHEDULES", "Learner", "StepResult", "build_model", "build_optimizer"]

SCHEDULES = ("multistep", "cosine", "linear", "constant")
AUTOCAST_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # by TrainConfig.amp


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


def build_model(cfg: TrainConfig, num_classes: int, in_channels: int) -> nn.Module:
    """The registered model ``cfg.model`` (``cfg.width``, if set) for this many classes and input channels."""
    kwargs = {"width": cfg.width} if cfg.width else {}
    return create_model(cfg.model, num_classes=num_classes, in_channels=in_channels, **kwargs)


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """SGD; no weight decay on BatchNorm parameters and biases (common practice)."""
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.dim() <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum,
                           nesterov=cfg.nesterov and cfg.momentum > 0)


class StepResult(NamedTuple):
    """What one training step hands back to the loop."""

    per_example: torch.Tensor  # the batch's training losses (unweighted; the policy observes them)
    loss: torch.Tensor         # the weighted mean that was backpropagated (on the device, not read)
    lr: float                  # the learning rate the step used


class Learner:
    """The model, its SGD optimizer, LR schedule and AMP scaler: trains on the batches the selector
    hands out and evaluates on the test split. Built from the run's config on ``device`` in
    ``memory_format``; :meth:`distribute` wraps it in DistributedDataParallel for the training
    forwards (gradients averaged over the ranks)."""

    def __init__(self, cfg: TrainConfig, data: ArrayDataset, device: torch.device,
                 memory_format: torch.memory_format = torch.contiguous_format) -> None:
        self.device = device
        self.memory_format = memory_format
        self.model = build_model(cfg, data.num_classes, data.in_channels).to(device, memory_format=memory_format)
        self.train_model: nn.Module = self.model  # what the training forward runs (the DDP wrapper under DDP)
        self.optimizer = build_optimizer(cfg, self.model)
        self.schedule = LRSchedule(cfg.lr_schedule, cfg.lr, float(cfg.epochs), cfg.milestone_epochs, cfg.gamma,
                                   cfg.warmup_epochs)
        self.autocast_dtype = AUTOCAST_DTYPES[cfg.amp]
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
        self.label_smoothing = cfg.label_smoothing

    def distribute(self, group: Optional[RankGroup]) -> None:
        """Train through DistributedDataParallel over ``group`` (None: a single process, nothing to
        do). DDP broadcasts rank 0's weights now: call it after a resumption's weights are loaded."""
        if group is not None:
            self.train_model = wrap_ddp(self.model, group)

    def _autocast(self) -> Any:
        return torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None)

    def step(self, batch: TrainBatch, progress: float, timer: PhaseTimer) -> StepResult:
        """One optimizer step on ``batch`` (its per-example loss weights applied) at the learning
        rate of ``progress`` epochs; ``timer`` is switched through its forward, backward and
        optimizer phases."""
        timer.switch("train_forward")
        lr = self.schedule(min(progress, self.schedule.epochs))
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        with self._autocast():
            logits = self.train_model(batch.x)
        per_example = F.cross_entropy(logits.float(), batch.y, reduction="none", label_smoothing=self.label_smoothing)
        weighted = per_example * batch.weights.to(per_example.device)
        # A DDP rank with nothing left for a lockstep partial step still joins it with an empty batch.
        loss = weighted.mean() if len(batch) else weighted.sum()
        timer.switch("backward")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        timer.switch("optimizer")
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return StepResult(per_example, loss, lr)

    @torch.no_grad()
    def evaluate(self, data: ArrayDataset, batch_size: int) -> Dict[str, float]:
        """Accuracy and mean cross-entropy on ``data``'s test split (the model is left in train mode)."""
        model, device = self.model, self.device
        model.eval()
        correct = torch.zeros((), dtype=torch.long, device=device)
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        n = 0
        try:
            for x, y in test_batches(data, batch_size, device, self.memory_format):
                with self._autocast():
                    logits = model(x)
                loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").double()
                correct += (logits.argmax(1) == y).sum()
                n += len(y)
        finally:
            model.train()
        return {"test_acc": int(correct) / n, "test_loss": float(loss_sum) / n}

    def state_dict(self) -> Dict[str, Any]:
        """The model's, optimizer's and AMP scaler's state (the LR follows from the progress)."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
