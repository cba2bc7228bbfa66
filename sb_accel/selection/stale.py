"""Stale-SB (Jiang et al. 2019, §3.3, §5.3): reuse each example's last loss for ``n`` epochs.

An example needs a fresh selection pass only when its cached loss is ``n`` or more epochs old
(or it has none); otherwise SB's rule ``CDF_R(L) ** beta`` is applied to the cached loss. The
ages are per example: examples that are backpropagated get their cached loss refreshed from the
training forward (as in the authors' code), so the dataset does not move in lockstep. ``n = 1``
is plain SB.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..transfer import to_device
from .base import ForwardMask
from .registry import StrategyOptions, register_strategy
from .selective_backprop import SelectiveBackpropPolicy

__all__ = ["StaleSB"]


class StaleSB(SelectiveBackpropPolicy):
    """SB with a per-example loss cache of at most ``n`` epochs' age.

    Args:
        n: maximum age (in epochs) of a loss that may be reused; 1 means never reuse.
        dataset_size: number of training examples (the cache is indexed by dataset index).
        Other arguments as :class:`SelectiveBackpropPolicy`.
    """

    name = "stale-sb"
    uses_training_losses = True

    def __init__(self, dataset_size: int, n: int = 3, selectivity: Optional[float] = 0.33,
                 beta: Optional[float] = None, history: int = 1024, floor: float = 0.0,
                 history_mode: str = "batch", seed: int = 0) -> None:
        super().__init__(selectivity, beta, history, floor, history_mode, seed)
        if n < 1:
            raise ValueError(f"Stale-SB n must be >= 1, got {n}")
        self.n = n
        self.cached_loss = torch.full((dataset_size,), float("nan"), dtype=torch.float64)
        self.loss_epoch = torch.full((dataset_size,), -(10 ** 9), dtype=torch.long)

    def to(self, device: torch.device | str) -> "StaleSB":
        super().to(device)
        self.cached_loss = self.cached_loss.to(self.device)
        self.loss_epoch = self.loss_epoch.to(self.device)
        return self

    def requires_forward(self, indices: torch.Tensor, epoch: int) -> ForwardMask:
        return (epoch - self.loss_epoch[to_device(indices, self.device)]) >= self.n

    def select(self, losses: torch.Tensor, indices: torch.Tensor, epoch: int) -> torch.Tensor:
        idx = to_device(indices, self.device)
        losses = to_device(losses, self.device, torch.float64)
        fresh = ~torch.isnan(losses)
        # written with where, not a boolean index: no host sync on a GPU
        merged = torch.where(fresh, losses, self.cached_loss[idx])
        self.cached_loss[idx] = merged
        self.loss_epoch[idx] = torch.where(fresh, torch.full_like(idx, epoch), self.loss_epoch[idx])
        if not self.deferred_checks and torch.isnan(merged).any():  # else check_finite() reports it
            raise RuntimeError("Stale-SB got no loss for an example it did not ask a forward for; "
                               "the trainer must run requires_forward() before select()")
        return super().select(merged, indices, epoch)

    def observe(self, indices: torch.Tensor, losses: torch.Tensor, epoch: int) -> None:
        idx = to_device(indices, self.device)
        self.cached_loss[idx] = to_device(losses, self.device, torch.float64)
        self.loss_epoch[idx] = epoch

    def state_dict(self) -> dict:
        return {**super().state_dict(), "cached_loss": self.cached_loss.clone(),
                "loss_epoch": self.loss_epoch.clone()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.cached_loss = state["cached_loss"].to(self.device, copy=True)
        self.loss_epoch = state["loss_epoch"].to(self.device, copy=True)

    def __repr__(self) -> str:
        return f"StaleSB(n={self.n}, beta={self.beta:.4g}, history={self.history.size})"


@register_strategy("stale-sb", prime_epochs=1, needs_dataset_size=True)
def _build(options: StrategyOptions, dataset_size: Optional[int], batch_size: int) -> StaleSB:
    return StaleSB(dataset_size, n=options.stale_n, **options.sb_arguments())
