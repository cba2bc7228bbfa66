"""Selection policies and bookkeeping: pure, device-agnostic, no I/O.

Importing this package registers every strategy (:func:`create_strategy`, :func:`list_strategies`).
"""
from .base import Primed, SelectionPolicy
from .batcher import BackpropBatcher, TrainBatch
from .history import LossHistory
from .registry import (DEFAULTS, StrategyInfo, StrategyOptions, create_strategy, list_strategies, priming_epochs,
                       register_strategy, strategy_info)
# Each policy module registers its strategy; the order here is the order of list_strategies().
from .traditional import Traditional  # noqa: I001
from .selective_backprop import SelectiveBackpropPolicy, beta_for_selectivity, keep_probability
from .stale import StaleSB
from .kath18 import Kath18, variance_reduction
from .infobatch import InfoBatch

__all__ = ["SelectionPolicy", "Traditional", "Primed", "SelectiveBackpropPolicy", "StaleSB", "Kath18",
           "InfoBatch", "LossHistory", "BackpropBatcher", "TrainBatch", "beta_for_selectivity",
           "keep_probability", "variance_reduction", "StrategyOptions", "DEFAULTS", "StrategyInfo", "create_strategy",
           "list_strategies", "priming_epochs", "register_strategy", "strategy_info"]
