"""Kath18 baseline: loss-based importance sampling (Katharopoulos & Fleuret, ICML 2018, "Not All
Samples Are Created Equal"), as their code (idiap/importance-sampling: ``ImportanceTraining``,
``ConditionalStartSampler``, ``ModelSampler``, ``VarianceReductionCondition``) runs it and as Jiang
et al. 2019 configured it (§5.1: variable starting, loss as the score, no bias reweighting).

"Variable starting": until importance sampling pays, training is plain SGD on uniform batches of
``b`` examples with **no** scoring forwards; the expected variance reduction

    tau = (1 - ||g - u||^2 / ||g||^2) ** -1/2,   g = scores / sum(scores),  u = 1/len(scores),

is tracked as an exponential moving average (momentum ``alpha``, starting at 0) of the *training*
losses of each trained batch. Once it exceeds ``tau_th = (B + 3b) / (3b)`` (their eq. 29; 2 for
``B = 3b``), each step pre-samples ``B = multiplier * b`` candidates, scores them with a selection
forward, updates ``tau`` from those scores instead, and draws the ``b`` examples to train on **with
replacement** with probability ``p_i = L_i / sum_j L_j`` (a drawn twice is trained twice). If
``tau`` falls back below the threshold, sampling is uniform again.

No importance weights: the SB paper's Kath18 ran "with no bias reweighting" (§5.1), so every
drawn example's loss counts once, as in SB; this is what the SB paper compared against.

Differences from their code, both forced by an epoch-based loader: candidates come from the
epoch's permutation instead of being drawn from the dataset with replacement; and the sampler's
mode is decided at each epoch's start from the current ``tau`` (their code decides per step), so
that the loader can be told the candidate-batch size (``b`` or ``B``) for the whole epoch.
``replacement=False`` draws ``b`` distinct candidates instead (an option, not their rule).

Everything stays on the policy's device: the draw, ``tau`` and its update; ``tau`` is read back
once per epoch (the mode switch), so a GPU run reads nothing per candidate batch.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..transfer import to_device
from .base import ForwardMask, SelectionPolicy, generator_on
from .registry import DEFAULTS, StrategyOptions, register_strategy

__all__ = ["Kath18", "variance_reduction"]


def variance_reduction(scores: torch.Tensor) -> torch.Tensor:
    """``tau`` for the given importance scores, as a 0-dim float64 tensor (1 for uniform scores,
    and for all-zero scores as their code)."""
    s = scores.detach().to(torch.float64)
    total = s.sum()
    u = 1.0 / s.numel()
    g = torch.where(total > 0, s / total.clamp_min(1e-300), torch.full_like(s, u))
    ratio = ((g - u) ** 2).sum() / (g ** 2).sum()
    return (1.0 - ratio).clamp_min(1e-12).rsqrt()


class Kath18(SelectionPolicy):
    """Uniform batches of ``b`` until importance sampling pays, then ``b`` drawn from ``B``.

    Args:
        batch_size: training batch size ``b``.
        multiplier: pre-sampling factor once sampling is on (``B = multiplier * b``; their code: 3).
        tau_threshold: switch-on threshold; default ``(B + 3b) / (3b)``.
        alpha: EMA momentum of ``tau`` (their code: 0.9).
        replacement: draw with replacement (their code); False: ``b`` distinct candidates.
        seed: generator seed.
    """

    name = "kath18"
    needs_selection_forward = True
    uses_training_losses = True  # tau follows the training losses until sampling is on

    def __init__(self, batch_size: int, multiplier: int = DEFAULTS.kath18_multiplier,
                 tau_threshold: Optional[float] = None, alpha: float = 0.9,
                 replacement: bool = DEFAULTS.kath18_replacement, seed: int = DEFAULTS.seed) -> None:
        if batch_size < 1 or multiplier < 1:
            raise ValueError("Kath18 needs batch_size >= 1 and multiplier >= 1")
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"Kath18 alpha must be in [0, 1), got {alpha}")
        self.batch_size = batch_size
        self.candidate_multiplier = multiplier
        presample = multiplier * batch_size
        self.tau_threshold = (tau_threshold if tau_threshold is not None
                              else (presample + 3 * batch_size) / (3 * batch_size))
        self.alpha = alpha
        self.replacement = replacement
        self.seed = seed
        self.tau = torch.zeros((), dtype=torch.float64)
        self.sampling = False   # importance sampling in the open epoch (decided at its start)
        self.epoch = -1         # the open epoch
        self.generator = torch.Generator().manual_seed(seed)

    def to(self, device: torch.device | str) -> "Kath18":
        super().to(device)
        self.tau = self.tau.to(self.device)
        self.generator = generator_on(self.generator, self.device, self.seed)
        return self

    def _tau_passes(self) -> bool:
        return bool(self.tau > self.tau_threshold)  # a host read: once per epoch

    @property
    def importance_sampling(self) -> bool:
        """Whether the next epoch would start with importance sampling on."""
        return self._tau_passes()

    def on_epoch_start(self, epoch: int, num_epochs: Optional[int]) -> None:
        self.epoch = epoch
        self.sampling = self._tau_passes()

    def candidates_per_batch(self, epoch: int) -> int:
        """``multiplier`` while importance sampling is on, else 1 (uniform batches of ``b``); for an
        epoch not started yet, what it would be if it started now."""
        on = self.sampling if epoch == self.epoch else self._tau_passes()
        return self.candidate_multiplier if on else 1

    def requires_forward(self, indices: torch.Tensor, epoch: int) -> ForwardMask:
        return self.sampling

    def select(self, losses: torch.Tensor, indices: torch.Tensor, epoch: int) -> torch.Tensor:
        """Before switch-on: a bool mask keeping ``b`` candidates uniformly (all of a batch of
        ``b``). Sampling with replacement: how often each candidate was drawn (int64 counts summing
        to ``b``); without replacement: a bool mask."""
        n = indices.numel()
        take = min(self.batch_size, n)
        if not self.sampling:
            if n <= self.batch_size:
                return torch.ones(n, dtype=torch.bool, device=self.device)
            chosen = torch.randperm(n, generator=self.generator, device=self.device)[:take]
            return torch.zeros(n, dtype=torch.bool, device=self.device).index_fill_(0, chosen, True)
        scores = to_device(losses.detach(), self.device, torch.float64)
        self._update_tau(scores)  # their code: the pre-sample's scores, before the draw
        # all-zero scores: a uniform draw; a NaN/inf one (the caller reports it) weighs nothing, so the
        # draw stays defined until then
        weights = torch.where(torch.isfinite(scores), scores, torch.zeros_like(scores)).clamp_min(1e-12)
        chosen = torch.multinomial(weights, take, replacement=self.replacement, generator=self.generator)
        if self.replacement:  # counts by index_add_, not bincount: bincount reads its maximum back on a GPU
            return torch.zeros(n, dtype=torch.long, device=self.device).index_add_(0, chosen, torch.ones_like(chosen))
        return torch.zeros(n, dtype=torch.bool, device=self.device).index_fill_(0, chosen, True)

    def observe(self, indices: torch.Tensor, losses: torch.Tensor, epoch: int) -> None:
        if not self.sampling:  # their ConditionalStartSampler.update: training scores until switched on
            self._update_tau(to_device(losses.detach(), self.device, torch.float64))

    def _update_tau(self, scores: torch.Tensor) -> None:
        if scores.numel():
            self.tau = self.alpha * self.tau + (1 - self.alpha) * variance_reduction(scores)

    def state_dict(self) -> dict:
        return {"tau": self.tau.clone(), "sampling": self.sampling, "epoch": self.epoch,
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.tau = torch.as_tensor(state["tau"], dtype=torch.float64).to(self.device, copy=True)
        self.sampling = bool(state["sampling"])
        self.epoch = int(state["epoch"])
        self.generator.set_state(state["generator"])

    def __repr__(self) -> str:
        draw = "" if self.replacement else ", replacement=False"
        return (f"Kath18(batch_size={self.batch_size}, multiplier={self.candidate_multiplier}, "
                f"tau_threshold={self.tau_threshold:.3g}{draw})")


@register_strategy("kath18")
def _build(options: StrategyOptions, dataset_size: Optional[int], batch_size: int) -> Kath18:
    return Kath18(batch_size, multiplier=options.kath18_multiplier, replacement=options.kath18_replacement,
                  seed=options.seed)
