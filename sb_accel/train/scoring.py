"""The functional core of selection: one candidate batch scored (the selection forwards the policy
asks for) and decided (keep mask, loss weights). :class:`~sb_accel.train.driver.SelectionDriver`
adds the state around it; the pipelined worker (:mod:`sb_accel.train.pipeline`) calls
:func:`score_candidates` from its own thread.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from ..engines import SelectionEngine
from ..selection import SelectionPolicy
from ..selection.base import ForwardMask
from ..transfer import to_device

__all__ = ["ScoredCandidates", "Decision", "score_candidates", "decide", "nan_losses", "rows_of"]


@dataclass
class ScoredCandidates:
    """A candidate batch with the selection losses the policy asked for."""

    x: torch.Tensor
    y: torch.Tensor
    indices: torch.Tensor
    losses: torch.Tensor    # float32 (any device), NaN where the policy asked for no fresh loss
    forwards: int           # selection-pass forwards run


@dataclass
class Decision:
    """What the policy decided for a scored candidate batch."""

    keep: Optional[torch.Tensor]       # bool, one per candidate (on the policy's device); None: all kept
    weights: Optional[torch.Tensor]    # per-candidate loss weights, or None


def score_candidates(engine: Optional[SelectionEngine], policy: SelectionPolicy, x: torch.Tensor, y: torch.Tensor,
                     indices: torch.Tensor, epoch: int, need: Optional[ForwardMask] = None) -> ScoredCandidates:
    """Run the selection pass on the candidates ``policy`` asks for (others get a NaN loss).

    ``need``: the policy's ``requires_forward`` answer when the caller has it already (``True`` /
    ``False`` for a mask it has read: all or none), so that it is neither asked nor read twice."""
    need = policy.requires_forward(indices, epoch) if need is None else need
    forwards = _count(need, len(indices))
    if forwards and engine is None:
        raise RuntimeError(f"{policy!r} asked for selection forwards but the driver has no engine")
    if forwards == len(indices):  # the losses stay where the engine made them (no host round trip)
        return ScoredCandidates(x, y, indices, engine.losses(x, y).float(), forwards)
    losses = nan_losses(len(indices), policy.device)
    if forwards:
        rows = need.nonzero().squeeze(1)
        on_x = to_device(rows, x.device)
        losses[to_device(rows, losses.device)] = engine.losses(x[on_x], y[on_x]).float().to(losses.device)
    return ScoredCandidates(x, y, indices, losses, forwards)


def _count(need: ForwardMask, candidates: int) -> int:
    """How many candidates a ``requires_forward`` answer asks a forward for (a mask: a host read)."""
    if isinstance(need, bool):
        return candidates if need else 0
    return int(need.sum())


def nan_losses(n: int, device: torch.device) -> torch.Tensor:
    """``n`` NaN losses: "no fresh loss" for candidates the policy asked no forward for."""
    return torch.full((n,), float("nan"), dtype=torch.float32, device=device)


def decide(policy: SelectionPolicy, scored: ScoredCandidates, epoch: int) -> Decision:
    """The policy's keep mask and loss weights for ``scored`` (no mask when the policy keeps every
    candidate of the epoch: nothing to read back from the device)."""
    keep = None if policy.keeps_all(epoch) else policy.select(scored.losses, scored.indices, epoch)
    return Decision(keep, policy.loss_weights(scored.indices, epoch))


def rows_of(x: torch.Tensor, y: torch.Tensor, indices: torch.Tensor,
            rows: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``x, y, indices`` restricted to ``rows`` (row numbers on any device)."""
    on_device = to_device(rows, x.device)
    return x[on_device], y[on_device], indices[to_device(rows, indices.device)]
