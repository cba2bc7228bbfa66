"""Selection policies and bookkeeping: pure, device-agnostic, no I/O."""
from .base import Primed, SelectionPolicy, Traditional
from .batcher import BackpropBatcher, TrainBatch
from .history import LossHistory
from .infobatch import InfoBatch
from .kath18 import Kath18, variance_reduction
from .selective_backprop import SelectiveBackprop, beta_for_selectivity, keep_probability
from .stale import StaleSB

__all__ = ["SelectionPolicy", "Traditional", "Primed", "SelectiveBackprop", "StaleSB", "Kath18",
           "InfoBatch", "LossHistory", "BackpropBatcher", "TrainBatch", "beta_for_selectivity",
           "keep_probability", "variance_reduction"]
