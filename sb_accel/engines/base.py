"""The selection-engine interface: per-example losses from a snapshot of the training model.

A backend is a class with ``losses(x, y)`` and ``refresh(model)`` registered under a name with
:func:`register_engine`; :func:`create_engine` builds one from ``(backend, precision)``. Optional
backends (TensorRT) import their libraries inside their constructors, so importing this package
never needs them.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

__all__ = ["SelectionEngine", "EngineContext", "EngineError", "register_engine", "create_engine",
           "list_engines", "parse_engine_spec"]

Batch = Tuple[torch.Tensor, torch.Tensor]


class EngineError(RuntimeError):
    """An engine cannot be built, refreshed or validated; the message says what to do."""


@dataclass
class EngineContext:
    """What a backend may need beyond the model.

    Attributes:
        device: where the training model and the candidate batches live.
        sample_batches: a few real training batches (normalised, on ``device``) for export,
            INT8 calibration and validation.
        threads: CPU threads the engine may use (None: backend default).
        cache_dir: where engines, ONNX files and timing caches are kept.
        max_batch: largest candidate batch the engine must accept.
        options: backend-specific settings.
    """

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    sample_batches: List[Batch] = field(default_factory=list)
    threads: Optional[int] = None
    cache_dir: str = "engines/cache"
    max_batch: int = 512
    options: Dict[str, object] = field(default_factory=dict)


class SelectionEngine(abc.ABC):
    """Computes per-example losses for selection on a snapshot of the model.

    ``losses(x, y)`` returns a float32 tensor of shape ``(len(y),)``. ``refresh(model)`` brings the
    snapshot up to date with the live training model; ``snapshot_step`` is the optimizer step of the
    weights it holds (set by whoever refreshes it), so staleness can be logged.

    ``refresh_kind`` says what the last refresh was: ``"full"`` (exact weights; INT8 recalibrated;
    engine rebuilt) or ``"cheap"`` (an approximate fast path: INT8 weights re-quantized with the
    kept activation scales, a TensorRT refit). Backends without a cheap path leave it ``"full"``.
    """

    backend: str = ""
    precision: str = ""
    snapshot_step: int = 0
    refresh_kind: str = "full"

    @property
    def name(self) -> str:
        return f"{self.backend}-{self.precision}"

    @abc.abstractmethod
    def losses(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-example cross-entropy losses (float32, shape ``(N,)``)."""

    @abc.abstractmethod
    def refresh(self, model: nn.Module, full: bool = False) -> None:
        """Take the current weights of ``model``.

        Backends with a cheap approximate path (INT8 re-quantization with the old activation
        scales, TensorRT refit) use it when they can; ``full=True`` forces the exact rebuild.
        """

    @property
    def is_live(self) -> bool:
        """True if the engine reads the live model and never goes stale."""
        return False

    def close(self) -> None:
        """Release backend resources."""


_BACKENDS: Dict[str, Tuple[Callable[..., SelectionEngine], Sequence[str]]] = {}


def register_engine(backend: str, precisions: Sequence[str]):
    """Class decorator: ``cls(model, precision, context)`` builds the engine."""
    def wrap(cls):
        _BACKENDS[backend] = (cls, tuple(precisions))
        return cls
    return wrap


def list_engines() -> List[str]:
    """Every ``backend-precision`` spec known (availability is checked when building)."""
    _load_builtin_backends()
    return [f"{b}-{p}" for b, (_, ps) in sorted(_BACKENDS.items()) for p in ps]


def parse_engine_spec(spec: str, precision: Optional[str] = None) -> Tuple[str, str]:
    """``"onnxruntime-int8"`` or (``"onnxruntime"``, ``"int8"``) -> ``("onnxruntime", "int8")``."""
    _load_builtin_backends()
    if precision is None and "-" in spec:
        spec, precision = spec.rsplit("-", 1)
    if spec not in _BACKENDS:
        raise EngineError(f"unknown engine backend {spec!r}; choose one of: {', '.join(sorted(_BACKENDS))}")
    precisions = _BACKENDS[spec][1]
    precision = precision or precisions[0]
    if precision not in precisions:
        raise EngineError(f"engine {spec!r} has no precision {precision!r}; choose one of: {', '.join(precisions)}")
    return spec, precision


def create_engine(spec: str, model: nn.Module, context: Optional[EngineContext] = None,
                  precision: Optional[str] = None) -> SelectionEngine:
    """Build the engine ``spec`` (e.g. ``"torch-fp32"``, ``"onnxruntime-int8"``) from ``model``."""
    backend, precision = parse_engine_spec(spec, precision)
    cls = _BACKENDS[backend][0]
    return cls(model, precision, context or EngineContext())


def _load_builtin_backends() -> None:
    # Imported for their @register_engine side effect; each defers its heavy imports.
    from . import torch_backend  # noqa: F401
    for optional in ("onnxruntime_backend", "tensorrt_backend"):
        try:
            __import__(f"{__package__}.{optional}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__package__}.{optional}":
                raise
