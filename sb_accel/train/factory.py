"""Builds the pieces a run is composed of from its TrainConfig (policy, model, optimizer)."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..config import TrainConfig
from ..models import create_model
from ..selection import InfoBatch, Kath18, Primed, SelectionPolicy, SelectiveBackprop, StaleSB, Traditional
from .schedule import LRSchedule

__all__ = ["build_policy", "build_model", "build_optimizer", "build_schedule"]


def build_policy(cfg: TrainConfig, dataset_size: int) -> SelectionPolicy:
    """The selection policy of ``cfg.strategy``, wrapped in priming if ``prime_epochs > 0``."""
    sb_args = dict(selectivity=cfg.selectivity, beta=cfg.beta, history=cfg.history, floor=cfg.floor,
                   history_mode=cfg.history_mode, seed=cfg.seed)
    policy: SelectionPolicy
    if cfg.strategy == "traditional":
        policy = Traditional()
    elif cfg.strategy == "sb":
        policy = SelectiveBackprop(**sb_args)
    elif cfg.strategy == "stale-sb":
        policy = StaleSB(dataset_size, n=cfg.stale_n, **sb_args)
    elif cfg.strategy == "kath18":
        policy = Kath18(cfg.batch_size, multiplier=cfg.kath18_multiplier, seed=cfg.seed)
    else:
        policy = InfoBatch(dataset_size, prune_ratio=cfg.infobatch_ratio, anneal=cfg.infobatch_anneal, seed=cfg.seed)
    prime = cfg.resolved_prime_epochs
    return Primed(policy, prime) if prime > 0 else policy


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
