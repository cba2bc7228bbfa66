"""Model zoo: importing this package registers every model with :mod:`.registry`."""
from __future__ import annotations

import torch.nn as nn

from . import densenet, mobilenetv2, resnet, small_cnn, wide_resnet  # noqa: F401  (registers models)
from .registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model", "count_parameters"]


def count_parameters(model: nn.Module) -> int:
    """Number of parameters of ``model`` (trainable or not; buffers excluded)."""
    return sum(p.numel() for p in model.parameters())
