"""How many candidates a policy is expected to keep, known before the epoch: what fixes the
selecting loader's steps per epoch in advance (pure math on the policies' parameters)."""
from __future__ import annotations

import torch

from .base import Primed, SelectionPolicy
from .infobatch import InfoBatch
from .kath18 import Kath18
from .selective_backprop import SelectiveBackpropPolicy

__all__ = ["expected_share", "sb_keep_share"]


def sb_keep_share(beta: float, floor: float = 0.0) -> float:
    """``E[max(floor, U ** beta)]`` for ``U`` uniform on [0, 1] (SB's percentiles):
    ``floor * floor**(1/beta) + (1 - floor**((beta + 1)/beta)) / (beta + 1)``; ``1/(beta + 1)`` without a floor."""
    if beta == 0 or floor >= 1:
        return 1.0
    if floor <= 0:
        return 1.0 / (beta + 1.0)
    cut = floor ** (1.0 / beta)  # percentiles below this are kept with probability floor
    return floor * cut + (1.0 - cut ** (beta + 1.0)) / (beta + 1.0)


def expected_share(policy: SelectionPolicy, epoch: int, num_epochs: int) -> float:
    """The expected fraction of ``epoch``'s candidates ``policy`` keeps (1.0 for a policy it does not know).

    Primed epochs keep everything; SB and Stale-SB :func:`sb_keep_share`; Kath18 one training batch
    per pre-sample; InfoBatch ``1 - r * (share of examples below the mean score)`` while it prunes
    (read from its scores now: a host read once per epoch; before any score: 1 in the first epoch,
    ``1 - r/2`` after)."""
    if isinstance(policy, Primed):
        if policy.priming(epoch):
            return 1.0
        policy = policy.policy
    if isinstance(policy, SelectiveBackpropPolicy):
        return sb_keep_share(policy.beta, policy.floor)
    if isinstance(policy, Kath18):
        return 1.0 / policy.candidate_multiplier
    if isinstance(policy, InfoBatch):
        if epoch >= num_epochs * (1.0 - policy.anneal):
            return 1.0
        seen = policy.scores[~torch.isnan(policy.scores)]
        if not seen.numel():  # unseen examples are all kept; once seen, about half are below the mean
            return 1.0 if epoch == 0 else 1.0 - policy.prune_ratio * 0.5
        below = float((seen < seen.mean()).double().sum()) / policy.scores.numel()
        return 1.0 - policy.prune_ratio * below
    return 1.0
