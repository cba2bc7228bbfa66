"""Kath18 baseline: loss-based importance sampling (Katharopoulos & Fleuret, ICML 2018, "Not All
Samples Are Created Equal"), configured as Jiang et al. 2019 ran it (§5.1).

From a pre-sampled candidate batch of ``B = multiplier * b`` examples (their code: 3b), draw the
training batch of ``b`` examples with probability proportional to the selection-pass loss,
``p_i = L_i / sum_j L_j``, with **no** importance reweighting.

"Variable starting": importance sampling is switched on only once it pays. With ``p`` the
normalised scores and ``u = 1/B``, the expected variance reduction is

    tau = (1 - ||p - u||^2 / ||p||^2) ** -1/2,

tracked as an exponential moving average (momentum ``alpha``); sampling is uniform until the
average exceeds ``tau_th = (B + 3b) / (3b)``, the break-even point of the extra forward passes.
Until then ``b`` of the ``B`` candidates are taken uniformly at random.

Kath18 decides on the host (its variance EMA switches the sampler, a branch on a value): on a GPU it
reads each pre-sample's losses back once; its state is a float and a CPU generator.

Deviation: the draw is without replacement (a keep mask cannot hold duplicates); with
``B = 3b`` this changes little and keeps every training batch at exactly ``b`` distinct examples.
"""
from __future__ import annotations

from typing import Optional

import torch

from .base import ForwardMask, SelectionPolicy
from .registry import StrategyOptions, register_strategy

__all__ = ["Kath18", "variance_reduction"]


def variance_reduction(scores: torch.Tensor) -> float:
    """``tau`` for the given importance scores (1.0 for uniform scores)."""
    p = scores.to(torch.float64)
    total = p.sum()
    if total <= 0:
        return 1.0
    p = p / total
    u = 1.0 / p.numel()
    ratio = ((p - u) ** 2).sum() / (p ** 2).sum()
    return float((1.0 - ratio).clamp_min(1e-12) ** -0.5)


class Kath18(SelectionPolicy):
    """Keep exactly ``batch_size`` of each ``multiplier * batch_size`` candidates.

    Args:
        batch_size: training batch size ``b``.
        multiplier: pre-sampling factor (``B = multiplier * b``; their code: 3).
        tau_threshold: switch-on threshold; default ``(B + 3b) / (3b)``.
        alpha: EMA momentum of ``tau``.
        seed: generator seed.
    """

    name = "kath18"
    needs_selection_forward = True

    def __init__(self, batch_size: int, multiplier: int = 3, tau_threshold: Optional[float] = None,
                 alpha: float = 0.9, seed: int = 0) -> None:
        if batch_size < 1 or multiplier < 1:
            raise ValueError("Kath18 needs batch_size >= 1 and multiplier >= 1")
        self.batch_size = batch_size
        self.candidate_multiplier = multiplier
        presample = multiplier * batch_size
        self.tau_threshold = (tau_threshold if tau_threshold is not None
                              else (presample + 3 * batch_size) / (3 * batch_size))
        self.alpha = alpha
        self.tau = 1.0
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def importance_sampling(self) -> bool:
        return self.tau > self.tau_threshold

    def requires_forward(self, indices: torch.Tensor, epoch: int) -> ForwardMask:
        return True

    def select(self, losses: torch.Tensor, indices: torch.Tensor, epoch: int) -> torch.Tensor:
        scores = losses.detach().to("cpu", torch.float64)
        if not torch.isfinite(scores).all():
            raise FloatingPointError("Kath18 got NaN/inf selection losses: the model has diverged "
                                     "(lower --lr or add --warmup-epochs)")
        n = scores.numel()
        keep = torch.zeros(n, dtype=torch.bool)
        take = min(self.batch_size, n)
        if self.importance_sampling and scores.sum() > 0:
            chosen = torch.multinomial(scores.clamp_min(1e-12), take, replacement=False,
                                       generator=self.generator)
        else:
            chosen = torch.randperm(n, generator=self.generator)[:take]
        keep[chosen] = True
        # tau is updated after the draw, as in their code: this batch's scores decide the next.
        self.tau = self.alpha * self.tau + (1 - self.alpha) * variance_reduction(scores)
        return keep

    def state_dict(self) -> dict:
        return {"tau": self.tau, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.tau = float(state["tau"])
        self.generator.set_state(state["generator"])

    def __repr__(self) -> str:
        return (f"Kath18(batch_size={self.batch_size}, multiplier={self.candidate_multiplier}, "
                f"tau_threshold={self.tau_threshold:.3g})")


@register_strategy("kath18")
def _build(options: StrategyOptions, dataset_size: Optional[int], batch_size: int) -> Kath18:
    return Kath18(batch_size, multiplier=options.kath18_multiplier, seed=options.seed)
