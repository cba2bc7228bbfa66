"""The training loop and what it needs: phase timer, LR schedules, checkpoints."""
from .checkpoint import load_checkpoint, save_checkpoint
from .schedule import LRSchedule
from .timer import PHASES, PhaseTimer
from .trainer import Trainer

__all__ = ["Trainer", "PhaseTimer", "PHASES", "LRSchedule", "save_checkpoint", "load_checkpoint"]
