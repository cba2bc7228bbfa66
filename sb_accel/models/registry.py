"""Model registry (timm style): ``@register_model`` a factory, ``create_model(name, ...)``."""
from __future__ import annotations

from typing import Callable, Dict, List

import torch.nn as nn

__all__ = ["register_model", "create_model", "list_models"]

_REGISTRY: Dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def wrap(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = factory
        return factory
    return wrap


def list_models() -> List[str]:
    return sorted(_REGISTRY)


def create_model(name: str, num_classes: int = 10, in_channels: int = 3, **kwargs) -> nn.Module:
    """Build a registered model; unknown names raise with the list of known ones."""
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}") from None
    try:
        return factory(num_classes=num_classes, in_channels=in_channels, **kwargs)
    except TypeError as exc:
        if kwargs and "unexpected keyword" in str(exc):
            raise ValueError(f"model {name!r} does not take {sorted(kwargs)}: {exc}") from None
        raise
