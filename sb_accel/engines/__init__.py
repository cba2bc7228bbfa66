"""Selection engines: torch (FP32/BF16/FP16; eager, or CUDA graphs over the live model), ONNX Runtime
and TensorRT backends, their build recipes and artifact cache, and the refresher that keeps a
snapshot engine up to date.

Every public name is importable from here, but loaded on first use (PEP 562): ``import
sb_accel.engines`` loads none of its modules, and ONNX, ONNX Runtime and TensorRT are imported
only when an engine that needs them is built or a name from their modules is asked for.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Dict, List

if TYPE_CHECKING:
    from .base import EngineContext, SelectionEngine
    from .cache import artifact_dir, cache_key
    from .errors import EngineError, EngineSpecError
    from .export import ExportResult, export_loss_model
    from .fp16 import convert_to_fp16
    from .onnxruntime_backend import OnnxRuntimeEngine
    from .quantize import QUANT_FORMATS, QuantizedModel, quantize_int8
    from .recipes import load_recipe
    from .refresher import EngineRefresher, RefreshError
    from .registry import create_engine, list_engines, parse_engine_spec, register_engine
    from .schedule import CADENCES, RefreshSchedule, default_schedule
    from .tensorrt_backend import TensorRTEngine
    from .torch_backend import TorchEngine, per_example_loss
    from .torch_graph import TorchGraphEngine
    from .validation import DEFAULT_TOLERANCES, Tolerance, Validation, check_engine, rank_correlation

# public name -> the module (relative to this package) that defines it
_EXPORTS: Dict[str, str] = {
    "EngineContext": "base", "SelectionEngine": "base", "EngineError": "errors", "EngineSpecError": "errors",
    "create_engine": "registry", "list_engines": "registry", "parse_engine_spec": "registry",
    "register_engine": "registry",
    "TorchEngine": "torch_backend", "per_example_loss": "torch_backend", "TorchGraphEngine": "torch_graph",
    "OnnxRuntimeEngine": "onnxruntime_backend", "TensorRTEngine": "tensorrt_backend",
    "export_loss_model": "export", "ExportResult": "export",
    "quantize_int8": "quantize", "QuantizedModel": "quantize", "QUANT_FORMATS": "quantize",
    "convert_to_fp16": "fp16",
    "EngineRefresher": "refresher", "RefreshError": "refresher", "RefreshSchedule": "schedule",
    "default_schedule": "schedule", "CADENCES": "schedule",
    "Validation": "validation", "check_engine": "validation", "rank_correlation": "validation",
    "DEFAULT_TOLERANCES": "validation", "Tolerance": "validation",
    "load_recipe": "recipes", "cache_key": "cache", "artifact_dir": "cache",
}

__all__ = [  # a literal, for linters and type checkers; tests check it equals _EXPORTS
    "EngineContext", "SelectionEngine", "EngineError", "EngineSpecError", "create_engine", "list_engines", "parse_engine_spec",
    "register_engine", "TorchEngine", "per_example_loss", "TorchGraphEngine", "OnnxRuntimeEngine", "TensorRTEngine",
    "export_loss_model", "ExportResult", "quantize_int8", "QuantizedModel", "QUANT_FORMATS", "convert_to_fp16",
    "EngineRefresher", "RefreshError", "RefreshSchedule", "default_schedule", "CADENCES", "Validation", "check_engine", "rank_correlation",
    "DEFAULT_TOLERANCES", "Tolerance", "load_recipe", "cache_key", "artifact_dir",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(__all__))
