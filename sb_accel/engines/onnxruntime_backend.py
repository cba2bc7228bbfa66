"""ONNX Runtime selection engine: FP32, FP16 or INT8 (static QDQ) loss graphs on CPU or CUDA.

Build: export the model with its loss head (:mod:`.export`), then convert to FP16 or quantize to
INT8 with calibration on ``context.sample_batches`` (:mod:`.quantize`), then open a session.

Refresh never re-exports: new weights are written into the in-memory graph by ``state_dict`` name
(FP16 graphs are cast on the way; INT8 graphs are re-quantized in numpy keeping the activation
scales, with a full recalibration every ``recalibrate_every`` refreshes) and a new session is
opened. The session reference is swapped in one assignment, so a ``losses`` call running in
another thread finishes on the old session. On CIFAR ResNet-18 (2 CPU threads) a refresh costs
~0.2 s in FP32 (0.06 s serialising the graph, 0.1 s opening the session; ORT's
``add_initializer`` overrides would save only the serialisation) and ~0.08 s as a cheap INT8
re-quantization, against ~1.5 s for a checked re-export alone and ~3-4 s for a recalibration.

``context.options`` understood here:
    ``quant_format``: ``"u8s8"`` (default; fastest on x86 CPUs) or ``"s8s8-symmetric"``.
    ``recalibrate_every``: full INT8 recalibration every N refreshes (default 100; 0: only when
        the refresher's check of a cheap refresh fails; 1: every refresh). On small_cnn a cheap
        refresh costs 10 ms and a recalibration 224 ms (benchmarks/selection_throughput.py
        --model small_cnn, 2 threads).
    ``calibration_method``: ``"minmax"`` (default), ``"entropy"`` or ``"percentile"``.
    ``calibration_rows``: examples used for calibration (default 256).
    ``provider``: ``"auto"`` (CUDA when the training device is CUDA and ORT has it, else CPU),
        ``"cpu"`` or ``"cuda"``.
    ``exporter``: ``"legacy"`` (default) or ``"dynamo"``.

Measured on CIFAR ResNet-18, batch 128, 2 AVX-512-VNNI cores (benchmarks/selection_throughput.py):
INT8 u8s8 ~135 ms/batch, FP32 ~490, FP16 ~500 (the CPU provider gains nothing from FP16), torch
FP32 channels_last ~720. A full INT8 recalibration runs ORT's calibrator, whose session uses ORT's
default thread pool, not ``threads``.
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any, Optional, Tuple

import numpy as np
import onnx
import torch
import torch.nn as nn

from .base import EngineContext, EngineError, SelectionEngine, register_engine
from .export import (INPUT_NAMES, OUTPUT_NAME, assign_initializers, export_loss_model, run_onnx, save_onnx_atomic,
                     session_options, state_dict_arrays)
from .quantize import QuantizedModel, convert_to_fp16, numpy_batches, quantize_int8

__all__ = ["OnnxRuntimeEngine"]

_PRECISIONS = ("fp32", "fp16", "int8")
_PROVIDERS = ("auto", "cpu", "cuda")


@register_engine("onnxruntime", precisions=_PRECISIONS)
class OnnxRuntimeEngine(SelectionEngine):
    """Per-example losses from an ONNX Runtime session over the exported loss graph.

    Attributes:
        refresh_kind: ``"full"`` (weights exact, or INT8 recalibrated) or ``"cheap"`` (INT8
            weights re-quantized with the previous activation scales) for the last refresh.
        build_seconds: time to export, convert or quantize, and open the first session.
    """

    backend = "onnxruntime"

    def __init__(self, model: nn.Module, precision: str = "fp32", context: Optional[EngineContext] = None) -> None:
        context = context or EngineContext()
        if precision not in _PRECISIONS:
            raise EngineError(f"onnxruntime engine precision must be one of {list(_PRECISIONS)}, got {precision!r}")
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise EngineError("the onnxruntime engine needs ONNX Runtime: pip install onnxruntime "
                              "(or 'sb-accel[gpu]' for CUDA)") from exc
        if not context.sample_batches:
            raise EngineError("the onnxruntime engine needs EngineContext.sample_batches (a few real training "
                              "batches) to export and validate the graph, and to calibrate INT8")
        start = time.perf_counter()
        options = context.options
        self.precision = precision
        self.device = torch.device(context.device)
        self.threads = context.threads
        self.quant_format = str(options.get("quant_format", "u8s8"))
        self.calibration_method = str(options.get("calibration_method", "minmax"))
        self.recalibrate_every = int(options.get("recalibrate_every", 100))
        if self.recalibrate_every < 0:
            raise EngineError(f"recalibrate_every must be >= 0, got {self.recalibrate_every}")
        self._refreshes = 0
        self._providers, self._stream, self.device = _choose_providers(ort, str(options.get("provider", "auto")),
                                                                        self.device)
        if precision == "fp16" and self._stream is None:
            warnings.warn("onnxruntime-fp16 on the CPU provider is no faster than FP32 (measured on CIFAR ResNet-18) "
                          "and less exact; use onnxruntime-int8 (fastest on CPU) or onnxruntime-fp32", stacklevel=3)

        stem = Path(context.cache_dir) / type(model).__name__.lower()
        exported = export_loss_model(model, stem.with_suffix(".onnx"), context.sample_batches[0],
                                     exporter=str(options.get("exporter", "legacy")))
        self._float = exported.model
        self._weights = [init.name for init in self._float.graph.initializer]
        self._calibration = (numpy_batches(context.sample_batches, int(options.get("calibration_rows", 256)))
                             if precision == "int8" else [])
        self._quantized: Optional[QuantizedModel] = None
        if precision == "int8":
            self._quantize()
            if self._quantized.unmapped and self.recalibrate_every != 1:
                raise EngineError(f"cheap INT8 refresh cannot map {self._quantized.unmapped[:5]} of "
                                  f"{type(model).__name__}; pass options={{'recalibrate_every': 1}}")
            self._graph = self._quantized.model
        elif precision == "fp16":
            self._graph = convert_to_fp16(self._float)
        else:
            self._graph = self._float
        if precision != "fp32":
            save_onnx_atomic(self._graph, stem.with_name(f"{stem.name}.{precision}.onnx"))  # for inspection
        self._session = self._open(self._graph)
        self.build_seconds = time.perf_counter() - start

    # --- construction -------------------------------------------------------------------------
    def _quantize(self) -> None:
        self._quantized = quantize_int8(self._float, self._calibration, self.quant_format,
                                        method=self.calibration_method)

    def _open(self, graph: onnx.ModelProto) -> Any:
        import onnxruntime as ort

        try:
            return ort.InferenceSession(graph.SerializeToString(), session_options(self.threads),
                                        providers=self._providers)
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
            raise EngineError(f"onnxruntime could not open the {self.precision} loss graph: {exc}") from exc

    # --- SelectionEngine ----------------------------------------------------------------------
    @torch.no_grad()
    def losses(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        session = self._session  # one read: a concurrent refresh swaps the attribute, not the session
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

    def refresh(self, model: nn.Module, full: bool = False) -> None:
        arrays = state_dict_arrays(model)
        if self.precision == "int8":
            self._refreshes += 1
            if full or (self.recalibrate_every and self._refreshes % self.recalibrate_every == 0):
                assign_initializers(self._float, arrays, self._weights)
                self._quantize()
                kind = "full"
            else:
                self._quantized.requantize_weights(arrays)
                kind = "cheap"
            self._graph = self._quantized.model
        else:
            assign_initializers(self._graph, arrays, self._weights)
            kind = "full"
        self._session = self._open(self._graph)
        self.refresh_kind = kind

    def close(self) -> None:
        self._session = None

    @property
    def onnx_model(self) -> onnx.ModelProto:
        """The graph being served (FP32, FP16 or QDQ INT8)."""
        return self._graph


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
                          "with host copies (pip install 'sb-accel[gpu]' for onnxruntime-gpu)", stacklevel=4)
        return ["CPUExecutionProvider"], None, device
    if device.type != "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    # ORT enqueues its kernels on this stream; losses() orders it after torch's current stream.
    stream = torch.cuda.Stream(device)
    cuda = {"device_id": device.index or 0, "user_compute_stream": str(stream.cuda_stream)}
    return [("CUDAExecutionProvider", cuda), "CPUExecutionProvider"], stream, device
