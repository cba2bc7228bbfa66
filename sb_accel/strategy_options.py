"""Every selection strategy's knobs and their defaults, in one place (:class:`StrategyOptions`).

Torch-free, so that the run configuration and ``sb-accel train --help`` read the defaults without
loading the policies. The strategy registry (:mod:`sb_accel.selection.registry`) builds a policy
from these options and holds what differs per strategy (its default priming epochs, whether it
needs the dataset size); the policies' constructors, the run configuration and the drop-in API take
their defaults from :data:`DEFAULTS`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Dict, Optional

__all__ = ["StrategyOptions", "DEFAULTS"]


@dataclass(frozen=True)
class StrategyOptions:
    """Every strategy's knobs, with the defaults of the paper and the authors' code.

    ``prime_epochs=None`` means the strategy's registered default
    (``@register_strategy(..., prime_epochs=...)``; ``sb-accel list-strategies`` shows them).
    """

    selectivity: Optional[float] = 0.33
    beta: Optional[float] = None
    history: int = 1024
    floor: float = 0.0
    history_mode: str = "batch"
    stale_n: int = 3
    kath18_multiplier: int = 3
    kath18_replacement: bool = True
    infobatch_ratio: float = 0.5
    infobatch_anneal: float = 0.125
    prime_epochs: Optional[int] = None
    seed: int = 0

    @classmethod
    def from_mapping(cls, values: Dict[str, object]) -> "StrategyOptions":
        """The options named in ``values`` (other keys, e.g. the rest of a TrainConfig, are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    def sb_arguments(self) -> Dict[str, object]:
        """Keyword arguments of :class:`~sb_accel.selection.SelectiveBackpropPolicy` and its subclasses."""
        return dict(selectivity=self.selectivity, beta=self.beta, history=self.history, floor=self.floor,
                    history_mode=self.history_mode, seed=self.seed)


DEFAULTS = StrategyOptions()
