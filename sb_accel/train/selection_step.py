"""One selection step: engine losses for the candidates that need them, then the policy decides."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..engines import SelectionEngine
from ..selection import SelectionPolicy

__all__ = ["ScoredCandidates", "Decision", "score_candidates", "decide", "select_candidates"]


@dataclass
class ScoredCandidates:
    x: torch.Tensor
    y: torch.Tensor
    indices: torch.Tensor
    losses: torch.Tensor    # float32 CPU, NaN where the policy asked for no fresh loss
    forwards: int           # selection-pass forwards run


@dataclass
class Decision:
    keep: torch.Tensor                 # bool, one per candidate (CPU)
    weights: Optional[torch.Tensor]    # per-candidate loss weights, or None


def score_candidates(engine: SelectionEngine, policy: SelectionPolicy, x: torch.Tensor, y: torch.Tensor,
                     indices: torch.Tensor, epoch: int) -> ScoredCandidates:
    """Run the selection pass on the candidates ``policy`` asks for (others get a NaN loss)."""
    need = policy.requires_forward(indices, epoch)
    losses = torch.full((len(indices),), float("nan"), dtype=torch.float32)
    forwards = int(need.sum())
    if forwards == len(indices):
        losses = engine.losses(x, y).float().cpu()
    elif forwards:
        rows = need.nonzero().squeeze(1)
        dev_rows = rows.to(x.device)
        losses[rows] = engine.losses(x[dev_rows], y[dev_rows]).float().cpu()
    return ScoredCandidates(x, y, indices, losses, forwards)


def decide(policy: SelectionPolicy, scored: ScoredCandidates, epoch: int) -> Decision:
    keep = policy.select(scored.losses, scored.indices, epoch)
    return Decision(keep, policy.loss_weights(scored.indices, epoch))


def select_candidates(engine: SelectionEngine, policy: SelectionPolicy, x: torch.Tensor, y: torch.Tensor,
                      indices: torch.Tensor, epoch: int) -> Decision:
    """Score then decide, in one call."""
    return decide(policy, score_candidates(engine, policy, x, y, indices, epoch), epoch)
