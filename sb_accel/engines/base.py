"""The selection-engine interface: per-example losses from a snapshot of the training model.

A backend is a :class:`SelectionEngine` subclass with ``losses(x, y)`` and ``refresh(model)``;
:mod:`.registry` maps engine specs such as ``"onnxruntime-int8"`` to backends. Everything a backend
may need beyond the model travels in an :class:`EngineContext`, including the build recipe
(:mod:`.recipes`) whose values explicit ``options`` override.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn as nn

from .errors import EngineError
from .recipes import resolve_recipe

__all__ = ["SelectionEngine", "EngineContext", "EngineError"]

Batch = Tuple[torch.Tensor, torch.Tensor]


@dataclass
class EngineContext:
    """What a backend may need beyond the model.

    Attributes:
        device: where the training model and the candidate batches live.
        sample_batches: a few real training batches (normalised, on ``device``) for export,
            INT8 calibration and validation.
        threads: CPU threads the engine may use (None: backend default).
        cache_dir: root of the engine cache; a backend writes its ONNX files, plans and timing
            caches under ``cache_dir/<key>/`` (:func:`~sb_accel.engines.cache.artifact_dir`).
        max_batch: largest candidate batch the engine must accept.
        options: backend settings. A key that is also a recipe key (e.g. ``"recalibrate_every"``)
            overrides the recipe; others (``"provider"``, ``"snapshot"``) are runtime choices.
        recipe: the model's build recipe, as :func:`~sb_accel.engines.recipes.load_recipe` returns
            it (``{section: {key: value}}``); empty: the built-in defaults.
    """

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    sample_batches: List[Batch] = field(default_factory=list)
    threads: Optional[int] = None
    cache_dir: str = "engines/cache"
    max_batch: int = 512
    options: Dict[str, object] = field(default_factory=dict)
    recipe: Dict[str, Dict[str, Any]] = field(default_factory=dict)

    def resolved_recipe(self) -> Dict[str, Dict[str, Any]]:
        """The recipe every engine built from this context follows: built-in defaults, then
        ``recipe``, then the ``options`` that name recipe keys."""
        return resolve_recipe(self.recipe, self.options)

    def setting(self, key: str) -> Any:
        """One recipe value by its key (e.g. ``"calibration_rows"``), ``options`` first."""
        return _lookup(self.resolved_recipe(), key)


def _lookup(recipe: Mapping[str, Mapping[str, Any]], key: str) -> Any:
    for section in recipe.values():
        if key in section:
            return section[key]
    raise KeyError(f"no recipe key {key!r}")


class SelectionEngine(abc.ABC):
    """Computes per-example losses for selection on a snapshot of the model.

    ``losses(x, y)`` returns a float32 tensor of shape ``(len(y),)``. ``refresh(model)`` brings the
    snapshot up to date with the live training model; ``snapshot_step`` is the optimizer step of the
    weights it holds (set by whoever refreshes it), so staleness can be logged.

    ``refresh_kind`` says what the last refresh was: ``"exact"`` (the weights copied as they are
    into the module that serves: a PyTorch snapshot; nothing a check could find wrong, so never
    validated), ``"cheap"`` (the fast path of a converted engine: weights written into what is
    served, INT8 re-quantized with the kept activation scales, FP32/FP16 weights by name, a TensorRT
    refit) or ``"rebuild"`` (served from scratch: INT8 recalibrated, engine rebuilt, session reopened
    from the graph). Backends without a cheap path leave it ``"rebuild"``; the refresher validates
    every rebuild and every N-th cheap one. (Logs written before these names call a rebuild
    ``"full"``: :func:`~sb_accel.reporting.runlog.refresh_kind` reads both.)

    ``refresh_detail`` says why the last refresh went as it did when that is news (a refused
    TensorRT refit and the weights it reported missing); the refresher logs it with the event.

    ``precisions`` lists what the backend builds (the registry's table must agree).
    """

    backend: str = ""
    precisions: ClassVar[Tuple[str, ...]] = ()
    precision: str = ""
    snapshot_step: int = 0
    refresh_kind: str = "rebuild"
    refresh_detail: str = ""

    @property
    def name(self) -> str:
        return f"{self.backend}-{self.precision}"

    @abc.abstractmethod
    def losses(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-example cross-entropy losses (float32, shape ``(N,)``)."""

    @abc.abstractmethod
    def refresh(self, model: nn.Module, rebuild: bool = False) -> None:
        """Take the current weights of ``model``.

        Backends with a cheap approximate path (INT8 re-quantization with the old activation
        scales, TensorRT refit) use it when they can; ``rebuild=True`` forces a rebuild.
        """

    @property
    def calibrated(self) -> bool:
        """True if a cheap refresh keeps what was calibrated on earlier weights (INT8/FP8 activation
        scales), so that after many steps without refreshes (a priming epoch) a rebuild is due."""
        return False

    @property
    def is_live(self) -> bool:
        """True if the engine reads the live model and never goes stale."""
        return False

    def close(self) -> None:
        """Release backend resources."""
