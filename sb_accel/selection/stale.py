"""Stale-SB (Jiang et al. 2019, §3.3, §5.3): selection passes only every ``n``-th epoch.

As published: every ``n``-th epoch (``epoch % n == 0``) every example gets a fresh selection pass;
the ``n - 1`` epochs in between apply SB's rule ``CDF_R(L) ** beta`` to each example's most recent
loss, with no selection pass. An epoch is all-fresh or all-stale. ``n = 1`` is plain SB.

The authors' code (angelajiang/SelectiveBackprop, ``lib/fp_selectors.py`` ``StaleSelector``,
``lib/forwardproppers.py``, ``lib/backproppers.py``) does the same with a per-example counter:
it counts the epochs since the example's last selection pass, runs a pass once it reaches ``n``
(or when there is no loss yet) and resets it only there. Its priming epoch runs the selection
passes, so they fall on epochs 0, n, 2n, ...; here priming trains on everything without selection
passes and its training losses fill the cache, so the fresh epochs are the same. Its cached loss is
overwritten by the training loss of a backpropagated example (``backproppers.py``:
``em.metadata["loss"] = ...``) without touching the counter: so does :meth:`StaleSB.observe`.

An example with no loss yet (e.g. one left untrained at the end of priming) gets a selection pass
whatever the epoch, as in their code.

An earlier version of this module reset an example's age whenever it was backpropagated (its
training loss counted as a fresh selection pass), which gives the hardest examples, trained most
often, almost no selection passes. It was dropped, as no measurement shows it better: in the only
one made (Fashion-MNIST, 2000 examples, 3 epochs, 3 seeds) both rules reached 47.07% +- 5.39, since
with ``n = 3`` they differ only from epoch 3 on (a longer comparison was not affordable then).
"""
from __future__ import annotations

from typing import Dict, Optional

import torch

from ..transfer import to_device
from .base import ForwardMask
from .registry import DEFAULTS, StrategyOptions, register_strategy
from .selective_backprop import SelectiveBackpropPolicy

__all__ = ["StaleSB"]

_NEVER = -(10 ** 9)  # "no loss yet": older than any age limit


class StaleSB(SelectiveBackpropPolicy):
    """SB that reuses each example's last loss between selection-pass epochs.

    Args:
        dataset_size: number of training examples (the cache is indexed by dataset index).
        n: selection passes every ``n``-th epoch (epochs ``0, n, 2n, ...``); 1 means every epoch (plain SB).
        Other arguments as :class:`SelectiveBackpropPolicy`.
    """

    name = "stale-sb"
    uses_training_losses = True

    def __init__(self, dataset_size: int, n: int = DEFAULTS.stale_n, selectivity: Optional[float] = DEFAULTS.selectivity,
                 beta: Optional[float] = DEFAULTS.beta, history: int = DEFAULTS.history, floor: float = DEFAULTS.floor,
                 history_mode: str = DEFAULTS.history_mode, seed: int = DEFAULTS.seed) -> None:
        super().__init__(selectivity, beta, history, floor, history_mode, seed)
        if n < 1:
            raise ValueError(f"Stale-SB n must be >= 1, got {n}")
        self.n = n
        self.cached_loss = torch.full((dataset_size,), float("nan"), dtype=torch.float64)
        self.loss_epoch = torch.full((dataset_size,), _NEVER, dtype=torch.long)  # epoch of its last selection pass
        self.all_cached = False  # every example had a loss at the epoch's start (read once per epoch)

    def to(self, device: torch.device | str) -> "StaleSB":
        super().to(device)
        self.cached_loss = self.cached_loss.to(self.device)
        self.loss_epoch = self.loss_epoch.to(self.device)
        return self

    def fresh_epoch(self, epoch: int) -> bool:
        """Whether ``epoch`` gives every example a selection pass (the published schedule)."""
        return epoch % self.n == 0

    def on_epoch_start(self, epoch: int, num_epochs: Optional[int]) -> None:
        self.all_cached = not bool(torch.isnan(self.cached_loss).any())  # one host read per epoch

    def requires_forward(self, indices: torch.Tensor, epoch: int) -> ForwardMask:
        if self.fresh_epoch(epoch):
            return True
        if self.all_cached:  # a plain "none": no mask to read back from a GPU
            return False
        return torch.isnan(self.cached_loss[to_device(indices, self.device)])

    def select(self, losses: torch.Tensor, indices: torch.Tensor, epoch: int) -> torch.Tensor:
        """SB's rule on each candidate's fresh loss, or its cached one where ``losses`` is NaN: the
        caller gives a fresh loss to every candidate :meth:`requires_forward` asked for (the
        selection driver does), so every candidate has one or the other."""
        idx = to_device(indices, self.device)
        losses = to_device(losses, self.device, torch.float64)
        fresh = ~torch.isnan(losses)
        # written with where, not a boolean index: no host sync on a GPU
        merged = torch.where(fresh, losses, self.cached_loss[idx])
        self.cached_loss[idx] = merged
        self.loss_epoch[idx] = torch.where(fresh, torch.full_like(idx, epoch), self.loss_epoch[idx])
        return super().select(merged, indices, epoch)

    def observe(self, indices: torch.Tensor, losses: torch.Tensor, epoch: int) -> None:
        idx = to_device(indices, self.device)
        self.cached_loss[idx] = to_device(losses, self.device, torch.float64)  # the schedule is unchanged

    def example_tables(self) -> Dict[str, torch.Tensor]:
        return {"cached_loss": self.cached_loss, "loss_epoch": self.loss_epoch}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "cached_loss": self.cached_loss.clone(),
                "loss_epoch": self.loss_epoch.clone(), "all_cached": self.all_cached}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.cached_loss = state["cached_loss"].to(self.device, copy=True)
        self.loss_epoch = state["loss_epoch"].to(self.device, copy=True)
        self.all_cached = bool(state.get("all_cached", False))

    def __repr__(self) -> str:
        return f"StaleSB(n={self.n}, beta={self.beta:.4g}, history={self.history.size})"


@register_strategy("stale-sb", prime_epochs=1, needs_dataset_size=True)
def _build(options: StrategyOptions, dataset_size: Optional[int], batch_size: int) -> StaleSB:
    return StaleSB(dataset_size, n=options.stale_n, **options.sb_arguments())
