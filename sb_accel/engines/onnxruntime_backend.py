"""ONNX Runtime selection engine: FP32, FP16 or INT8 (static QDQ) loss graphs on CPU or CUDA.

Build and refresh are :class:`~sb_accel.engines.onnx_engine.OnnxEngine`'s; this module opens and
runs sessions. Refresh never re-exports: FP32 and FP16 weights are written into the graph by
``state_dict`` name (always exact: a ``"full"`` refresh); INT8 weights are re-quantized in numpy
keeping the activation scales (``"cheap"``), with a full recalibration every ``recalibrate_every``
refreshes. Either way a new session is opened and swapped in one assignment, so a ``losses`` call
running in another thread finishes on the old session. On CIFAR ResNet-18 (2 CPU threads) a
refresh costs ~0.2 s in FP32 (0.06 s serialising the graph, 0.1 s opening the session; ORT's
``add_initializer`` overrides would save only the serialisation) and ~0.08 s as a cheap INT8
re-quantization, against ~1.5 s for a checked re-export alone and ~3-4 s for a recalibration.

Recipe keys used (:mod:`~sb_accel.engines.recipes`; ``context.options`` overrides them):
``exporter``, ``opset``, ``quant_format`` (``"u8s8"``: fastest on x86 CPUs, or
``"s8s8-symmetric"``), ``calibration_method``, ``calibration_rows``, ``recalibrate_every`` (0: only
when the refresher's check of a cheap refresh fails; 1: every refresh; on small_cnn a cheap refresh
costs 10 ms and a recalibration 224 ms, benchmarks/selection_throughput.py --model small_cnn, 2
threads). Option ``provider``: ``"auto"`` (CUDA when the training device is CUDA and ORT has it,
else CPU), ``"cpu"`` or ``"cuda"``.

Measured on CIFAR ResNet-18, batch 128, 2 AVX-512-VNNI cores (benchmarks/selection_throughput.py):
INT8 u8s8 ~135 ms/batch, FP32 ~490, FP16 ~500 (the CPU provider gains nothing from FP16), torch
FP32 channels_last ~720. A full INT8 recalibration runs ORT's calibrator, whose session uses ORT's
default thread pool, not ``threads``.
"""
from __future__ import annotations

import warnings
from typing import Any, Optional, Tuple

import numpy as np
import onnx
import torch

from .base import EngineContext
from .errors import EngineError
from .graph import INPUT_NAMES, OUTPUT_NAME
from .onnx_engine import OnnxEngine
from .ort_session import run_onnx, session_options

__all__ = ["OnnxRuntimeEngine"]

_PROVIDERS = ("auto", "cpu", "cuda")


class OnnxRuntimeEngine(OnnxEngine):
    """Per-example losses from an ONNX Runtime session over the exported loss graph.

    Attributes:
        refresh_kind: ``"full"`` (weights exact, or INT8 recalibrated) or ``"cheap"`` (INT8
            weights re-quantized with the previous activation scales) for the last refresh.
    """

    backend = "onnxruntime"
    precisions = ("fp32", "fp16", "int8")
    cheap_precisions = ("int8",)
    full_every_key = "recalibrate_every"

    # --- runtime ------------------------------------------------------------------------------
    def _start_runtime(self, context: EngineContext) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise EngineError("the onnxruntime engine needs ONNX Runtime: pip install onnxruntime "
                              "(or 'sb-accel[gpu]' for CUDA)") from exc
        self._providers, self._stream, self.device = _choose_providers(
            ort, str(context.options.get("provider", "auto")), self.device)
        if self.precision == "fp16" and self._stream is None:
            warnings.warn("onnxruntime-fp16 on the CPU provider is no faster than FP32 (measured on CIFAR ResNet-18) "
                          "and less exact; use onnxruntime-int8 (fastest on CPU) or onnxruntime-fp32", stacklevel=5)

    def _load(self, graph: onnx.ModelProto) -> None:
        import onnxruntime as ort

        try:
            session = ort.InferenceSession(graph.SerializeToString(), session_options(self.threads),
                                           providers=self._providers)
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
            raise EngineError(f"onnxruntime could not open the {self.precision} loss graph: {exc}") from exc
        self._session = session  # one assignment: a concurrent losses() keeps the session it read

    def _reload(self, graph: onnx.ModelProto) -> bool:
        self._load(graph)  # a session is opened on the new graph either way
        return True

    def _refresh_full(self, arrays: dict) -> None:
        if self.precision == "int8":
            super()._refresh_full(arrays)  # recalibrate
        else:  # FP32/FP16 weights by name are already exact; no re-conversion
            self._write_weights(arrays)
            self._load(self._graph)

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

    def close(self) -> None:
        self._session = None


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
