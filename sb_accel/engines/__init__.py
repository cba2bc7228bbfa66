"""Selection engines: torch (FP32/BF16/FP16), ONNX Runtime and TensorRT backends.

ONNX Runtime and TensorRT themselves are imported only when such an engine is built.
"""
from .base import (EngineContext, EngineError, SelectionEngine, create_engine, list_engines,
                   parse_engine_spec, register_engine)
from .export import ExportResult, export_loss_model
from .onnxruntime_backend import OnnxRuntimeEngine
from .quantize import QUANT_FORMATS, QuantizedModel, convert_to_fp16, quantize_int8
from .refresh import EngineRefresher, RefreshError, RefreshSchedule, Validation, check_engine, rank_correlation
from .tensorrt_backend import TensorRTEngine
from .torch_backend import TorchEngine, per_example_loss

__all__ = ["SelectionEngine", "EngineContext", "EngineError", "create_engine", "list_engines",
           "parse_engine_spec", "register_engine", "TorchEngine", "per_example_loss",
           "OnnxRuntimeEngine", "TensorRTEngine", "export_loss_model", "ExportResult", "quantize_int8",
           "QuantizedModel", "QUANT_FORMATS", "convert_to_fp16", "EngineRefresher", "RefreshSchedule",
           "RefreshError", "Validation", "check_engine", "rank_correlation"]
