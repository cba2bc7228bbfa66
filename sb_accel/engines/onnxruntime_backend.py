"""ONNX Runtime selection engine: FP32, FP16 or INT8 (static QDQ) loss graphs on CPU or CUDA.

Build and the refresh schedule are :class:`~sb_accel.engines.onnx_engine.OnnxEngine`'s; this
module opens and runs sessions. Refresh never re-exports:

* ``"cheap"`` (every refresh but the scheduled rebuilds): FP32/FP16 weights by ``state_dict``
  name (exact), INT8 weights re-quantized in numpy with the kept activation scales. With
  ``refresh_mode = "session"`` (default) a new session takes them, swapped in one assignment so a
  ``losses`` call running in another thread finishes on the old one: INT8 sessions are opened over
  ORT's own optimized graph (kept in ORT's flatbuffer format, which opens faster) with the new
  weights attached as numpy buffers (``add_initializer``, :mod:`.ort_weights`; no graph is
  rewritten or serialised), FP32/FP16 ones over the graph with the
  weights written in. With ``"inplace"`` the values are copied into the buffers of the run's one
  session (slower per batch: see :mod:`.ort_weights`).
* ``"rebuild"``: every ``recalibrate_every`` refreshes, or forced: INT8 recalibrated, any precision
  served from scratch.

small_cnn, batch 128, 2 threads (benchmarks/results/2026-11-25-x86_64-cpu2-selection/; a training
step 108 ms): a cheap INT8 refresh costs 4.6 ms, an FP32 one 6.6 ms (its optimizations need the
weights in the graph), a recalibration 0.23 s. CIFAR ResNet-18:
INT8 u8s8 ~135 ms/batch, FP32 ~490, FP16 ~500 (the CPU provider gains nothing from FP16), torch
FP32 channels_last ~720. An INT8 rebuild (recalibration) runs ORT's calibrator, whose session uses ORT's
default thread pool, not ``threads``.

Recipe keys used (:mod:`~sb_accel.engines.recipes`; ``context.options`` overrides them):
``exporter``, ``opset``, ``quant_format`` (``"u8s8"``: fastest on x86 CPUs, or
``"s8s8-symmetric"``), ``calibration_method``, ``calibration_rows``, ``recalibrate_every`` (0: only
when the refresher's check of a cheap refresh fails; 1: every refresh), ``refresh_mode``. Option
``provider``: ``"auto"`` (CUDA when the training device is CUDA and ORT has it, else CPU), ``"cpu"``
or ``"cuda"`` (copies the initializers to the GPU per session: ``"inplace"`` is refused there).
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import onnx
import torch

from .base import EngineContext
from .errors import EngineError
from .graph import INPUT_NAMES, OUTPUT_NAME, assign_initializers
from .onnx_engine import OnnxEngine
from .ort_session import run_onnx, session_options
from .ort_weights import (REFRESH_MODES, SessionWeights, initializer_arrays, optimized_graph, ort_format,
                          preoptimized_matches)

__all__ = ["OnnxRuntimeEngine"]

_PROVIDERS = ("auto", "cpu", "cuda")


class OnnxRuntimeEngine(OnnxEngine):
    """Per-example losses from an ONNX Runtime session over the exported loss graph.

    Attributes:
        refresh_kind: ``"cheap"`` (new weights written, INT8 re-quantized with the previous
            activation scales) or ``"rebuild"`` (served from scratch; INT8 recalibrated) for the last refresh.
        refresh_mode: ``"session"`` or ``"inplace"`` (module docstring).
        preoptimized: True while INT8 sessions are opened over ORT's optimized graph.
    """

    backend = "onnxruntime"
    precisions = ("fp32", "fp16", "int8")
    rebuild_every_key = "recalibrate_every"

    # --- runtime ------------------------------------------------------------------------------
    def _start_runtime(self, context: EngineContext) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise EngineError("the onnxruntime engine needs ONNX Runtime: pip install onnxruntime "
                              "(or 'sb-accel[gpu]' for CUDA)") from exc
        self._providers, self._stream, self.device = _choose_providers(
            ort, str(context.options.get("provider", "auto")), self.device)
        self.refresh_mode = str(context.setting("refresh_mode"))
        if self.refresh_mode not in REFRESH_MODES:
            raise EngineError(f"onnxruntime refresh_mode must be one of {REFRESH_MODES}, got {self.refresh_mode!r}")
        if self.refresh_mode == "inplace" and self._stream is not None:
            raise EngineError("refresh_mode 'inplace' needs ONNX Runtime's CPU provider (the CUDA provider copies "
                              "the weights to the GPU when a session opens); use 'session'")
        self._served: Optional[Tuple[Any, SessionWeights]] = None
        self._graph_stale = False  # the served weights are newer than the graph proto's
        self.preoptimized = False
        if self.precision == "fp16" and self._stream is None:
            warnings.warn("onnxruntime-fp16 on the CPU provider is no faster than FP32 (measured on CIFAR ResNet-18) "
                          "and less exact; use onnxruntime-int8 (fastest on CPU) or onnxruntime-fp32", stacklevel=5)

    def _refreshed_names(self) -> List[str]:
        """The initializers a cheap refresh writes."""
        return self._quantized.refreshed_names if self._quantized is not None else list(self._weights)

    def _open(self, data: bytes, weights: Optional[SessionWeights], optimized: bool = False,
              hook: Optional[Callable[[Any], None]] = None) -> Any:
        """A session over the serialised graph ``data`` reading ``weights``; ``optimized``: the graph is
        already ORT-optimized (open it with optimizations off)."""
        import onnxruntime as ort

        options = session_options(self.threads)
        if self.refresh_mode == "inplace":  # nothing may copy or transform the buffers at creation
            options.add_session_config_entry("session.disable_prepacking", "1")
            if self._quantized is None:  # Conv+BN fusion and NCHWc reordering copy FP32/FP16 weights
                optimized = True
        if optimized:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        if weights is not None:
            weights.attach(options)
        if hook is not None:
            hook(options)
        try:
            return ort.InferenceSession(data, options, providers=self._providers)
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
            raise EngineError(f"onnxruntime could not open the {self.precision} loss graph: {exc}") from exc

    def _load(self, graph: onnx.ModelProto) -> None:
        """Serve ``graph`` from scratch (its own weights)."""
        self._data = graph.SerializeToString()
        self._graph_stale = False
        may_preoptimize = self.refresh_mode == "session" and self._quantized is not None and self._stream is None
        weights = (SessionWeights(initializer_arrays(graph, self._refreshed_names()))
                   if self.refresh_mode == "inplace" or may_preoptimize else None)
        self.preoptimized = may_preoptimize and self._preoptimize(weights)
        self._serve(weights if self.refresh_mode == "inplace" or self.preoptimized else None)

    def _preoptimize(self, weights: SessionWeights) -> bool:
        """Serve ORT's optimized form of the graph if it still takes every refreshed weight from the
        buffers: checked against sessions over graphs holding *changed* weights (an optimization that
        had derived a constant from a weight would disagree). False: keep the plain graph."""
        plain = self._data
        optimized = optimized_graph(lambda hook: self._open(plain, None, hook=hook), self.artifacts)
        if set(weights.arrays) - {i.name for i in optimized.graph.initializer} - self._quantized.bias_scales:
            return False  # an optimization consumed a weight we refresh
        onnx_bytes = optimized.SerializeToString()
        data = ort_format(lambda hook: self._open(onnx_bytes, None, optimized=True, hook=hook), self.artifacts)
        rows = {INPUT_NAMES[0]: self._calibration[0][0][:8], INPUT_NAMES[1]: self._calibration[0][1][:8]}

        def reference(values: Dict[str, np.ndarray]) -> np.ndarray:
            graph = onnx.ModelProto()
            graph.CopyFrom(self._graph)
            assign_initializers(graph, values)
            return self._open(graph.SerializeToString(), None).run([OUTPUT_NAME], rows)[0]

        def candidate(values: Dict[str, np.ndarray]) -> np.ndarray:
            return self._open(data, SessionWeights(values), optimized=True).run([OUTPUT_NAME], rows)[0]

        if not preoptimized_matches(reference, candidate, weights.arrays):
            return False
        self._data = data
        return True

    def _serve(self, weights: Optional[SessionWeights]) -> None:
        """Open a session over ``self._data`` (reading ``weights`` where given) and swap it in."""
        session = self._open(self._data, weights, self.preoptimized)
        self._served = (session, weights)  # one assignment: a concurrent losses() keeps what it read

    def _refresh_cheap(self, arrays: dict) -> bool:
        if self.refresh_mode == "session" and not self.preoptimized:
            self._write_weights(arrays)  # ORT's optimizations read the weights from the graph, not from buffers
            self._data = self._graph.SerializeToString()
            self._serve(None)
            return True
        if self._quantized is not None:
            values = self._quantized.quantized_arrays(arrays)
        else:
            values = initializer_arrays(self._graph, self._weights, arrays)
        if self.refresh_mode == "inplace":
            self._served[1].write(values)
        else:
            self._serve(SessionWeights(values))
        self._graph_stale = True
        return True

    def _rebuild(self, arrays: dict) -> None:
        if self.precision == "int8":
            super()._rebuild(arrays)  # recalibrate
        else:  # FP32/FP16 weights by name are already exact; no re-conversion
            assign_initializers(self._graph, arrays, self._weights)
            self._load(self._graph)

    @property
    def onnx_model(self) -> onnx.ModelProto:
        """The graph being served, with the weights of the last refresh."""
        if self._graph_stale:
            assign_initializers(self._graph, self._served[1].arrays)
            self._graph_stale = False
        return self._graph

    @property
    def session(self) -> Any:
        """The ``InferenceSession`` serving now."""
        return self._served[0]

    # --- SelectionEngine ----------------------------------------------------------------------
    @torch.no_grad()
    def losses(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        session = self._served[0]  # one read: a concurrent refresh swaps the attribute, not the session
        if self._stream is None:
            return torch.from_numpy(run_onnx(session, x, y)).to(x.device)
        return self._losses_cuda(session, x, y)

    def _losses_cuda(self, session: Any, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        origin = x.device
        x = x.to(self.device, torch.float32).contiguous()
        y = y.to(self.device, torch.int64).contiguous()
        out = torch.empty(len(y), dtype=torch.float32, device=self.device)
        binding = session.io_binding()
        index = self.device.index or 0
        binding.bind_input(INPUT_NAMES[0], "cuda", index, np.float32, tuple(x.shape), x.data_ptr())
        binding.bind_input(INPUT_NAMES[1], "cuda", index, np.int64, tuple(y.shape), y.data_ptr())
        binding.bind_output(OUTPUT_NAME, "cuda", index, np.float32, tuple(out.shape), out.data_ptr())
        self._stream.wait_stream(torch.cuda.current_stream(self.device))
        # run_with_iobinding synchronises ORT's stream before returning (ORT's default), so the
        # losses are complete and x, y, out may be reused or freed by torch's allocator afterwards.
        session.run_with_iobinding(binding)
        return out.to(origin)

    def close(self) -> None:
        self._served = None


def _choose_providers(ort: Any, provider: str, device: torch.device) -> Tuple[list, Optional[torch.cuda.Stream],
                                                                              torch.device]:
    """Returns (ORT providers, dedicated CUDA stream or None for CPU, device the losses live on)."""
    if provider not in _PROVIDERS:
        raise EngineError(f"onnxruntime provider must be one of {_PROVIDERS}, got {provider!r}")
    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if provider == "cuda" and not (has_cuda and torch.cuda.is_available()):
        raise EngineError("provider 'cuda' needs onnxruntime-gpu and a CUDA device: pip install 'sb-accel[gpu]' "
                          "(it replaces the CPU onnxruntime package), or use provider 'cpu'")
    if not (provider == "cuda" or (provider == "auto" and device.type == "cuda" and has_cuda)):
        if device.type == "cuda" and provider == "auto":
            warnings.warn("training on CUDA but this onnxruntime has no CUDA provider: selection runs on the CPU "
                          "with host copies (pip install 'sb-accel[gpu]' for onnxruntime-gpu)", stacklevel=6)
        return ["CPUExecutionProvider"], None, device
    if device.type != "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    # ORT enqueues its kernels on this stream; losses() orders it after torch's current stream.
    stream = torch.cuda.Stream(device)
    cuda = {"device_id": device.index or 0, "user_compute_stream": str(stream.cuda_stream)}
    return [("CUDAExecutionProvider", cuda), "CPUExecutionProvider"], stream, device
