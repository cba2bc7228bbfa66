"""Moving small tensors between the host and the training device without stalling it.

A plain ``.to("cuda")`` of a pageable host tensor makes the host wait for the copy; per candidate
batch such waits add up (the augmentation's random draws, dataset indices). Pinned memory and
``non_blocking=True`` let the copy queue behind the GPU's work instead. The other way round a
non-blocking copy could be read before it lands, so copies to the host stay blocking.
"""
from __future__ import annotations

from typing import Optional

import torch

__all__ = ["to_device"]


def to_device(t: torch.Tensor, device: torch.device | str, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """``t`` (detached) on ``device`` as ``dtype``: host->GPU asynchronously from pinned memory,
    anything else as a plain (blocking where it must be) copy; no copy when nothing changes."""
    device = torch.device(device)
    t = t.detach()
    if t.device.type == "cpu" and device != t.device:  # host -> accelerator
        if not t.is_pinned():
            t = t.pin_memory()
        return t.to(device, dtype, non_blocking=True)
    return t.to(device, dtype)
