"""The engine over the exported loss graph that ONNX Runtime and TensorRT share.

:class:`OnnxEngine` does everything up to the runtime: it exports the model with its loss head
(:mod:`.export`, validated against PyTorch), makes the graph for the precision (FP32 as exported,
FP16 with an FP32 tail, INT8 QDQ calibrated on ``context.sample_batches``), keeps the FP32 graph
whose initializers are the ``state_dict`` weights, and runs the refresh schedule. A subclass only
opens and runs its runtime: :meth:`_load` a graph from scratch (an ORT session, a TensorRT build),
:meth:`_reload` new weights of the same graph (a new session, a TensorRT refit).

Refresh (``n`` counts refreshes, ``N`` is the backend's ``rebuild_every_key`` recipe key)::

    rebuild  if rebuild=True, or N > 0 and n % N == 0, or the runtime refuses the cheap reload: FP32
             graph <- new weights, graph for the precision made again (INT8 recalibrated), loaded
             from scratch.
    cheap    otherwise: new weights written into the served graph (INT8 re-quantized in numpy with
           the kept activation scales), reloaded.

A backend whose by-name weights are already exact may make its rebuild a weight write too
(ONNX Runtime FP32/FP16: no re-conversion to FP16).

Artifacts (the FP32 ONNX file, the graph for the precision, caches of the runtime) go to the
keyed folder ``cache_dir/<key>/`` (:func:`~sb_accel.engines.cache.artifact_dir`).
"""
from __future__ import annotations

import abc
from pathlib import Path
from typing import ClassVar, List, Optional

import onnx
import torch
import torch.nn as nn

from .base import EngineContext, SelectionEngine
from .cache import artifact_dir, device_name
from .errors import EngineError
from .export import export_loss_model
from .fp16 import convert_to_fp16
from .graph import assign_initializers, save_onnx_atomic, state_dict_arrays
from .quantize import QuantizedModel, numpy_batches, quantize_int8

__all__ = ["OnnxEngine"]


class OnnxEngine(SelectionEngine):
    """Per-example losses from a runtime that serves the exported loss graph.

    Class attributes a backend sets:
        precisions: what it builds; the first is the default.
        rebuild_every_key: the recipe key of its rebuild interval.
        int8_format: its fixed INT8 format (None: the recipe's ``quant_format``).

    Attributes:
        device: where the engine runs (set by :meth:`_start_runtime`).
        artifacts: the keyed cache folder of this model, recipe and device.
        rebuild_every: a rebuild every this many refreshes (0: only when forced or refused).
    """

    rebuild_every_key: ClassVar[str] = ""
    int8_format: ClassVar[Optional[str]] = None

    def __init__(self, model: nn.Module, precision: Optional[str] = None,
                 context: Optional[EngineContext] = None) -> None:
        context = context or EngineContext()
        precision = precision or self.precisions[0]
        if precision not in self.precisions:
            raise EngineError(f"{self.backend} engine precision must be one of {list(self.precisions)}, "
                              f"got {precision!r}")
        self.precision = precision
        self.device = torch.device(context.device)
        self.threads = context.threads
        if not context.sample_batches:
            raise EngineError(f"the {self.backend} engine needs EngineContext.sample_batches (a few real training "
                              "batches) to export and validate the graph, and to calibrate INT8")
        self._start_runtime(context)
        self.rebuild_every = int(context.setting(self.rebuild_every_key))
        if self.rebuild_every < 0:
            raise EngineError(f"{self.rebuild_every_key} must be >= 0, got {self.rebuild_every}")
        self.calibration_method = str(context.setting("calibration_method"))
        self.quant_format = self.int8_format or str(context.setting("quant_format"))
        self._refreshes = 0

        self.artifacts = artifact_dir(context.cache_dir, model, context.resolved_recipe(), device_name(self.device))
        self._stem = self.artifacts / type(model).__name__.lower()
        exported = export_loss_model(model, self._stem.with_suffix(".onnx"), context.sample_batches[0],
                                     exporter=str(context.setting("exporter")), opset=int(context.setting("opset")))
        self._float = exported.model
        self._weights: List[str] = [init.name for init in self._float.graph.initializer]
        calibrated = precision not in ("fp32", "fp16")
        self._calibration = (numpy_batches(context.sample_batches, int(context.setting("calibration_rows")))
                             if calibrated else [])
        self._quantized: Optional[QuantizedModel] = None
        self._graph = self._make_graph()
        if self._quantized is not None and self._quantized.unmapped and self.rebuild_every != 1:
            raise EngineError(f"cheap INT8 refresh cannot map {self._quantized.unmapped[:5]} of "
                              f"{type(model).__name__}; pass options={{'{self.rebuild_every_key}': 1}}")
        if precision != "fp32":
            save_onnx_atomic(self._graph, self.graph_path)  # what the runtime serves, for inspection
        self._load(self._graph)

    # --- what a runtime provides ------------------------------------------------------------
    @abc.abstractmethod
    def _start_runtime(self, context: EngineContext) -> None:
        """Import the runtime and check it can serve here (raise :class:`EngineError` if not);
        may move ``self.device`` to where the engine runs. ``context.sample_batches`` is not empty."""

    @abc.abstractmethod
    def _load(self, graph: onnx.ModelProto) -> None:
        """Serve ``graph`` from scratch (after the build, and after a rebuild)."""

    def _reload(self, graph: onnx.ModelProto) -> bool:
        """Serve the new weights of the graph being served; False if the runtime refuses (default:
        no such path, every refresh is a rebuild)."""
        return False

    # --- graphs -------------------------------------------------------------------------------
    @property
    def graph_path(self) -> Path:
        """Where the graph for this precision is written (the FP32 graph: ``<model>.onnx``)."""
        return self._stem.with_name(f"{self._stem.name}.{self.precision}.onnx")

    @property
    def onnx_model(self) -> onnx.ModelProto:
        """The graph being served (FP32, FP16 or QDQ INT8)."""
        return self._graph

    def _make_graph(self) -> onnx.ModelProto:
        """The graph for this precision from the current FP32 graph (calibrating INT8)."""
        if self.precision == "fp32":
            return self._float
        if self.precision == "fp16":
            return convert_to_fp16(self._float)
        if self.precision == "int8":
            self._quantized = quantize_int8(self._float, self._calibration, self.quant_format,
                                            method=self.calibration_method)
            return self._quantized.model
        raise EngineError(f"{self.backend} has no graph for precision {self.precision!r}")

    def _write_weights(self, arrays: dict) -> None:
        """New weights into the served graph without recalibrating: by name (cast for FP16), or
        INT8 re-quantized with the kept activation scales."""
        if self._quantized is not None:
            self._quantized.requantize_weights(arrays)
            self._graph = self._quantized.model
        else:
            assign_initializers(self._graph, arrays, self._weights)

    def _remake_graph(self, arrays: dict) -> None:
        """New weights into the FP32 graph, and the graph for this precision made from it again."""
        assign_initializers(self._float, arrays, self._weights)
        self._graph = self._make_graph()

    # --- refresh ------------------------------------------------------------------------------
    @property
    def calibrated(self) -> bool:
        return self.precision in ("int8", "fp8")

    def refresh(self, model: nn.Module, rebuild: bool = False) -> None:
        arrays = state_dict_arrays(model)
        self._refreshes += 1
        self.refresh_detail = ""
        due = rebuild or (self.rebuild_every > 0 and self._refreshes % self.rebuild_every == 0)
        cheap = not due and self._refresh_cheap(arrays)
        if not cheap:
            self._rebuild(arrays)
        self.refresh_kind = "cheap" if cheap else "rebuild"

    def _refresh_cheap(self, arrays: dict) -> bool:
        self._write_weights(arrays)
        return self._reload(self._graph)

    def _rebuild(self, arrays: dict) -> None:
        self._remake_graph(arrays)
        self._load(self._graph)

