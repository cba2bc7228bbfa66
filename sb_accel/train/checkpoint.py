"""Checkpoints, written atomically (:func:`sb_accel.files.atomic_write`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

import torch

from ..files import atomic_write

__all__ = ["save_checkpoint", "load_checkpoint", "CHECKPOINT_NAME"]

CHECKPOINT_NAME = "checkpoint.pt"


def save_checkpoint(state: Dict[str, Any], run_dir: str | Path) -> Path:
    path = Path(run_dir) / CHECKPOINT_NAME
    return atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(run_dir: str | Path) -> Optional[Dict[str, Any]]:
    path = Path(run_dir) / CHECKPOINT_NAME
    if not path.is_file():
        return None
    # Our own checkpoints hold generator states and config dicts, not only tensors.
    return torch.load(path, map_location="cpu", weights_only=False)
