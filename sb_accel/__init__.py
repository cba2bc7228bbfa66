"""sb_accel: Selective-Backprop whose selection passes run on reduced-precision inference engines.

Packages: ``selection`` (pure policy math), ``engines`` (torch / ONNX Runtime / TensorRT selection
engines), ``train`` (the selection driver and the loop), ``data``, ``models``, ``reporting``.
Top-level names are imported on first use, so ``import sb_accel.reporting`` (or ``sb-accel --help``)
does not pay for torch and the engines.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"
__all__ = ["SelectiveLoader", "per_example_loss", "causal_lm_loss", "BatchSelector", "select_batch",
           "SelectiveBackprop", "TrainConfig", "ConfigError", "__version__"]

_LAZY = {"SelectiveLoader": ".selective_loader", "per_example_loss": ".adapters", "causal_lm_loss": ".adapters",
         "BatchSelector": ".per_batch", "select_batch": ".per_batch",
         "SelectiveBackprop": ".api", "TrainConfig": ".config", "ConfigError": ".config"}

if TYPE_CHECKING:
    from .adapters import causal_lm_loss, per_example_loss
    from .api import SelectiveBackprop
    from .selective_loader import SelectiveLoader
    from .config import ConfigError, TrainConfig
    from .per_batch import BatchSelector, select_batch


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
