"""Strategy registry: a name (``"sb"``, ``"stale-sb"``, ...) -> a ready selection policy.

Each policy module registers a small factory next to its class, so adding a strategy is one file
plus its import in ``selection/__init__.py``. The registry is the one list of strategies: the run
configuration validates against it, the command line offers it (``sb-accel list-strategies``, shell
completion), and the Trainer (from a ``TrainConfig``) and the drop-in API (from keyword arguments)
both build policies here, from one :class:`~sb_accel.strategy_options.StrategyOptions` (the knobs'
defaults, :data:`~sb_accel.strategy_options.DEFAULTS`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

from ..strategy_options import DEFAULTS, StrategyOptions
from .base import Primed, SelectionPolicy

__all__ = ["StrategyOptions", "DEFAULTS", "StrategyInfo", "register_strategy", "create_strategy", "list_strategies",
           "strategy_info", "priming_epochs"]


Factory = Callable[[StrategyOptions, Optional[int], int], SelectionPolicy]


@dataclass(frozen=True)
class StrategyInfo:
    """A registered strategy: its factory and what it needs from the caller."""

    name: str
    factory: Factory
    prime_epochs: int = 0            # default priming epochs (full-data training first)
    needs_dataset_size: bool = False  # keeps per-example state indexed by dataset index


_STRATEGIES: Dict[str, StrategyInfo] = {}


def register_strategy(name: str, *, prime_epochs: int = 0, needs_dataset_size: bool = False):
    """Decorator for ``factory(options, dataset_size, batch_size) -> SelectionPolicy``: registers the
    strategy ``name``, which trains on everything for its first ``prime_epochs`` epochs unless the
    options say otherwise, and needs the number of training examples if ``needs_dataset_size``."""
    def wrap(factory: Factory) -> Factory:
        if name in _STRATEGIES:
            raise ValueError(f"strategy {name!r} is registered twice")
        _STRATEGIES[name] = StrategyInfo(name, factory, prime_epochs, needs_dataset_size)
        return factory
    return wrap


def list_strategies() -> List[str]:
    """Registered strategy names, in registration order."""
    return list(_STRATEGIES)


def strategy_info(name: str) -> StrategyInfo:
    if name not in _STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose one of: {', '.join(_STRATEGIES)}")
    return _STRATEGIES[name]


def create_strategy(name: str, options: StrategyOptions = DEFAULTS, *, batch_size: int,
                    dataset_size: Optional[int] = None) -> SelectionPolicy:
    """The policy ``name`` built from ``options``, wrapped in :class:`Primed` when it primes.

    Args:
        name: a registered strategy (:func:`list_strategies`).
        options: the strategies' knobs.
        batch_size: the training batch size (Kath18 keeps exactly one batch per pre-sample).
        dataset_size: number of training examples; required by strategies that remember examples
            across epochs (Stale-SB, InfoBatch).
    """
    info = strategy_info(name)
    if info.needs_dataset_size and not dataset_size:
        raise ValueError(f"strategy {name!r} keeps a value per training example: pass dataset_size "
                         "(the number of training examples) and the examples' dataset indices")
    policy = info.factory(options, dataset_size, batch_size)
    prime = priming_epochs(name, options.prime_epochs)
    return Primed(policy, prime) if prime > 0 else policy


def priming_epochs(name: str, requested: Optional[int] = None) -> int:
    """Epochs of full-data training before ``name`` selects: ``requested``, or the strategy's default."""
    return strategy_info(name).prime_epochs if requested is None else requested
