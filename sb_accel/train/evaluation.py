"""Test-set evaluation of the training model."""
from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data import ArrayDataset, test_batches

__all__ = ["evaluate"]


@torch.no_grad()
def evaluate(model: nn.Module, data: ArrayDataset, batch_size: int, device: torch.device,
             memory_format: torch.memory_format, autocast_dtype: Optional[torch.dtype] = None) -> Dict[str, float]:
    """Accuracy and mean cross-entropy on the test split (the model is left in train mode)."""
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    n = 0
    try:
        for x, y in test_batches(data, batch_size, device, memory_format):
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                logits = model(x)
            loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").double()
            correct += (logits.argmax(1) == y).sum()
            n += len(y)
    finally:
        model.train()
    return {"test_acc": int(correct) / n, "test_loss": float(loss_sum) / n}
