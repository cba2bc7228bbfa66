"""Selective-Backprop (Jiang et al. 2019, "Accelerating Deep Learning by Focusing on the Biggest
Losers", Alg. 1-2).

Each candidate ``i`` with selection-pass loss ``L_i`` is kept with probability

    p_i = max(floor, CDF_R(L_i) ** beta),

where ``CDF_R`` is the empirical CDF of the last ``R`` losses. With percentiles uniform on
``[0, 1]``, ``E[U ** beta] = 1 / (beta + 1)``, so a target selectivity ``s`` means
``beta = 1 / s - 1`` (33% -> beta = 2).
"""
from __future__ import annotations

from typing import Optional

import torch

from .base import ForwardMask, SelectionPolicy, generator_on
from .history import LossHistory
from .registry import DEFAULTS, StrategyOptions, register_strategy

__all__ = ["SelectiveBackpropPolicy", "beta_for_selectivity", "keep_probability"]


def beta_for_selectivity(selectivity: float) -> float:
    """``beta = 1/s - 1``: the exponent whose expected keep rate on uniform percentiles is ``s``."""
    if not 0.0 < selectivity <= 1.0:
        raise ValueError(f"selectivity must be in (0, 1], got {selectivity}")
    return 1.0 / selectivity - 1.0


def keep_probability(percentiles: torch.Tensor, beta: float, floor: float = 0.0) -> torch.Tensor:
    """``max(floor, percentile ** beta)``."""
    return percentiles.pow(beta).clamp_min(floor)


class SelectiveBackpropPolicy(SelectionPolicy):
    """Keep each example with probability ``CDF_R(loss) ** beta`` (Bernoulli, seeded).

    Args:
        selectivity: expected kept fraction; sets ``beta = 1/s - 1``. Give this or ``beta``.
        beta: the exponent directly.
        history: ``R``, how many recent losses the CDF is taken over (authors' code: 1024).
        floor: minimum keep probability (authors' ``sampling_min``).
        history_mode: ``"batch"`` (authors' code) or ``"sequential"`` (paper Alg. 2).
        seed: seed of the generator for the Bernoulli draws.
    """

    name = "sb"
    needs_selection_forward = True

    def __init__(self, selectivity: Optional[float] = DEFAULTS.selectivity, beta: Optional[float] = DEFAULTS.beta,
                 history: int = DEFAULTS.history, floor: float = DEFAULTS.floor,
                 history_mode: str = DEFAULTS.history_mode, seed: int = DEFAULTS.seed) -> None:
        if beta is None:
            if selectivity is None:
                raise ValueError("give selectivity or beta")
            beta = beta_for_selectivity(selectivity)
        if beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        if not 0.0 <= floor <= 1.0:
            raise ValueError(f"floor must be in [0, 1], got {floor}")
        self.beta = float(beta)
        self.floor = float(floor)
        self.history = LossHistory(history, history_mode)
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def selectivity(self) -> float:
        return 1.0 / (self.beta + 1.0)

    def to(self, device: torch.device | str) -> "SelectiveBackpropPolicy":
        super().to(device)
        self.history.to(self.device)
        self.generator = generator_on(self.generator, self.device, self.seed)
        return self

    def requires_forward(self, indices: torch.Tensor, epoch: int) -> ForwardMask:
        return True

    def probabilities(self, losses: torch.Tensor) -> torch.Tensor:
        """Update the history with ``losses`` and return their keep probabilities. The caller has
        checked that they are finite (the selection driver, for every strategy)."""
        return keep_probability(self.history.update_and_cdf(losses), self.beta, self.floor)

    def select(self, losses: torch.Tensor, indices: torch.Tensor, epoch: int) -> torch.Tensor:
        probs = self.probabilities(losses)
        return torch.rand(probs.shape, generator=self.generator, dtype=torch.float64, device=self.device) < probs

    def state_dict(self) -> dict:
        return {"history": self.history.state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.history.load_state_dict(state["history"])
        self.generator.set_state(state["generator"])

    def __repr__(self) -> str:
        return (f"SelectiveBackpropPolicy(beta={self.beta:.4g}, history={self.history.size}, "
                f"floor={self.floor}, mode={self.history.mode!r})")


@register_strategy("sb", prime_epochs=1)
def _build(options: StrategyOptions, dataset_size: Optional[int], batch_size: int) -> SelectiveBackpropPolicy:
    return SelectiveBackpropPolicy(**options.sb_arguments())
