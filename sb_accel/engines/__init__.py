"""Selection engines: torch (FP32/BF16/FP16), ONNX Runtime and TensorRT backends."""
from .base import (EngineContext, EngineError, SelectionEngine, create_engine, list_engines,
                   parse_engine_spec, register_engine)
from .torch_backend import TorchEngine, per_example_loss

__all__ = ["SelectionEngine", "EngineContext", "EngineError", "create_engine", "list_engines",
           "parse_engine_spec", "register_engine", "TorchEngine", "per_example_loss"]
