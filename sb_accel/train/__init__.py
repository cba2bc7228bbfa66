"""The training loop and its parts: the selection driver, the learner (model, optimizer, LR
schedule), the phase timer, the run directory with its checkpoints."""
from .driver import SelectionDriver
from .learner import LRSchedule
from .run_directory import load_checkpoint, save_checkpoint
from .timer import PHASES, PhaseTimer
from .trainer import Trainer

__all__ = ["Trainer", "SelectionDriver", "PhaseTimer", "PHASES", "LRSchedule", "save_checkpoint", "load_checkpoint"]
