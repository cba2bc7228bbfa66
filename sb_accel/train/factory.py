"""Builds the pieces a run is composed of from its TrainConfig (policy, model, optimizer, LR schedule)."""
from __future__ import annotations

import random

import numpy as np
import torch
import torch.nn as nn

from ..config import TrainConfig
from ..models import create_model
from ..selection import SelectionPolicy, StrategyOptions, create_strategy
from .schedule import LRSchedule

__all__ = ["build_policy", "build_model", "build_optimizer", "build_schedule", "seed_everything"]


def build_policy(cfg: TrainConfig, dataset_size: int) -> SelectionPolicy:
    """The registered strategy ``cfg.strategy``, wrapped in priming per ``cfg.prime_epochs``."""
    return create_strategy(cfg.strategy, StrategyOptions.from_mapping(cfg.to_dict()), batch_size=cfg.batch_size,
                           dataset_size=dataset_size)


def build_model(cfg: TrainConfig, num_classes: int, in_channels: int) -> nn.Module:
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


def build_schedule(cfg: TrainConfig) -> LRSchedule:
    return LRSchedule(cfg.lr_schedule, cfg.lr, float(cfg.epochs), cfg.milestone_epochs, cfg.gamma, cfg.warmup_epochs)


def seed_everything(seed: int) -> None:
    """Python's, numpy's and torch's global generators (the run's own generators are seeded separately)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
