"""Atomic checkpoints: write to a temporary file in the same directory, then rename over."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Optional

import torch

__all__ = ["save_checkpoint", "load_checkpoint", "CHECKPOINT_NAME"]

CHECKPOINT_NAME = "checkpoint.pt"


def save_checkpoint(state: Dict[str, Any], run_dir: str | Path) -> Path:
    path = Path(run_dir) / CHECKPOINT_NAME
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def load_checkpoint(run_dir: str | Path) -> Optional[Dict[str, Any]]:
    path = Path(run_dir) / CHECKPOINT_NAME
    if not path.is_file():
        return None
    # Our own checkpoints hold generator states and config dicts, not only tensors.
    return torch.load(path, map_location="cpu", weights_only=False)
