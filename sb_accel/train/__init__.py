"""The training loop and what it needs: the selection driver, phase timer, LR schedules, checkpoints."""
from .checkpoint import load_checkpoint, save_checkpoint
from .driver import SelectionDriver
from .schedule import LRSchedule
from .timer import PHASES, PhaseTimer
from .trainer import Trainer

__all__ = ["Trainer", "SelectionDriver", "PhaseTimer", "PHASES", "LRSchedule", "save_checkpoint", "load_checkpoint"]
