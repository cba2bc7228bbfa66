"""Engine specs (``"onnxruntime-int8"``) to backends, importing a backend only when it is used.

The built-in backends are listed by *module name* with their precisions, so parsing or listing
specs imports nothing and building ``torch-fp32`` never loads ONNX. Other backends join with
:func:`register_engine`. Arrows run one way: this module imports :mod:`.base` and, on demand,
the backend modules; backends import :mod:`.base` and never this module.
"""
from __future__ import annotations

import importlib
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Type, TypeVar

import torch.nn as nn

from .base import EngineContext, SelectionEngine
from .errors import EngineError, EngineSpecError

__all__ = ["register_engine", "create_engine", "list_engines", "parse_engine_spec", "BUILTIN_BACKENDS"]

# backend -> (module, class, precisions; the first precision is the default)
BUILTIN_BACKENDS: Dict[str, Tuple[str, str, Tuple[str, ...]]] = {
    "torch": (f"{__package__}.torch_backend", "TorchEngine", ("fp32", "bf16", "fp16")),
    "torch-graph": (f"{__package__}.torch_graph", "TorchGraphEngine", ("fp16", "bf16", "fp32")),
    "onnxruntime": (f"{__package__}.onnxruntime_backend", "OnnxRuntimeEngine", ("fp32", "fp16", "int8")),
    "tensorrt": (f"{__package__}.tensorrt_backend", "TensorRTEngine", ("fp16", "int8", "fp8")),
}
# What a package outside sb_accel installs by name stands only in this table.
_REGISTERED: Dict[str, Tuple[Callable[..., SelectionEngine], Tuple[str, ...]]] = {}

E = TypeVar("E", bound=Type[SelectionEngine])


def register_engine(backend: str, precisions: Sequence[str]) -> Callable[[E], E]:
    """Class decorator: ``cls(model, precision, context)`` builds the engine ``backend-precision``
    (a name already taken, built-in ones included, is replaced)."""
    def wrap(cls: E) -> E:
        _REGISTERED[backend] = (cls, tuple(precisions))
        return cls
    return wrap


def _precisions(backend: str) -> Tuple[str, ...]:
    if backend in _REGISTERED:
        return _REGISTERED[backend][1]
    return BUILTIN_BACKENDS[backend][2]


def _backends() -> List[str]:
    return sorted(set(BUILTIN_BACKENDS) | set(_REGISTERED))


def list_engines() -> List[str]:
    """Every ``backend-precision`` spec known (availability is checked when building)."""
    return [f"{b}-{p}" for b in _backends() for p in _precisions(b)]


def parse_engine_spec(spec: str, precision: Optional[str] = None) -> Tuple[str, str]:
    """``"onnxruntime-int8"`` or (``"onnxruntime"``, ``"int8"``) -> ``("onnxruntime", "int8")``.

    Backend names may contain ``-`` (``"torch-graph-fp16"``): a spec that is a backend name is
    taken whole (``"torch-graph"`` -> its default precision), otherwise the last ``-`` splits it.
    """
    if precision is None and "-" in spec and spec not in _backends():
        spec, precision = spec.rsplit("-", 1)
    if spec not in _backends():
        raise EngineSpecError(f"unknown engine backend {spec!r}; choose one of: {', '.join(_backends())}")
    precisions = _precisions(spec)
    precision = precision or precisions[0]
    if precision not in precisions:
        raise EngineSpecError(f"engine {spec!r} has no precision {precision!r}; choose one of: {', '.join(precisions)}")
    return spec, precision


def engine_class(backend: str) -> Callable[..., SelectionEngine]:
    """The class that builds ``backend``, importing its module now if it is a built-in one.

    Raises:
        EngineError: the backend module needs a package that is not installed.
    """
    if backend in _REGISTERED:
        return _REGISTERED[backend][0]
    module_name, class_name, _ = BUILTIN_BACKENDS[backend]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.startswith(__package__):
            raise
        raise EngineError(f"the {backend} engine needs the {exc.name!r} package, which is not installed: "
                          f"pip install {exc.name.split('.')[0]}") from exc
    return getattr(module, class_name)


def create_engine(spec: str, model: nn.Module, context: Optional[EngineContext] = None,
                  precision: Optional[str] = None) -> SelectionEngine:
    """Build the engine ``spec`` (e.g. ``"torch-fp32"``, ``"onnxruntime-int8"``) from ``model``."""
    backend, precision = parse_engine_spec(spec, precision)
    return engine_class(backend)(model, precision, context or EngineContext())
