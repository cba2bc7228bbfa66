"""sb_accel: Selective-Backprop whose selection passes run on reduced-precision inference engines.

Packages: ``selection`` (pure policy math), ``engines`` (torch / ONNX Runtime / TensorRT selection
engines), ``train`` (the loop, phase timer), ``data``, ``models``, ``reporting``.
"""
from .api import SelectiveBackprop
from .config import ConfigError, TrainConfig

__version__ = "0.1.0"
__all__ = ["SelectiveBackprop", "TrainConfig", "ConfigError", "__version__"]
