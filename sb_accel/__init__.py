"""sb_accel: Selective-Backprop whose selection passes run on reduced-precision inference engines.

Packages: ``selection`` (pure policy math), ``engines`` (torch / ONNX Runtime / TensorRT selection
engines), ``train`` (the selection driver and the loop), ``data``, ``models``, ``reporting``.
Top-level names are imported on first use, so ``import sb_accel.reporting`` (or ``sb-accel --help``)
does not pay for torch and the engines.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"
__all__ = ["SelectiveBackprop", "TrainConfig", "ConfigError", "BatchSelector", "select_batch", "__version__"]

_LAZY = {"SelectiveBackprop": ".api", "TrainConfig": ".config", "ConfigError": ".config",
         "BatchSelector": ".per_batch", "select_batch": ".per_batch"}

if TYPE_CHECKING:
    from .api import SelectiveBackprop
    from .config import ConfigError, TrainConfig
    from .per_batch import BatchSelector, select_batch


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
