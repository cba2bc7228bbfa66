"""INT8 static (QDQ) quantization of loss graphs, calibrated on real training batches.

Quantization is ONNX Runtime's ``quantize_static`` in one of two formats:

* ``"u8s8"``: activations uint8 asymmetric, weights int8 symmetric per channel. The fast format
  for ONNX Runtime on x86 CPUs with VNNI.
* ``"s8s8-symmetric"``: activations and weights int8 symmetric (zero point 0), biases left FP32:
  the explicit-quantization form TensorRT parses (it takes no int32 bias). Slower than FP32 on
  ONNX Runtime's CPU provider.

The graph is first prepared by :func:`~sb_accel.engines.fold.prepare_for_quantization` (BatchNorm
folded, transposes materialised), and the result comes with the plan of the cheap weight refresh
(:class:`~sb_accel.engines.requantize.QuantizedModel`). The classifier and loss head after the last
Conv stay FP32 (:func:`~sb_accel.engines.graph.float_tail_nodes`).
"""
from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import onnx
import torch

from .errors import EngineError
from .fold import prepare_for_quantization
from .graph import INPUT_NAMES, float_tail_nodes
from .requantize import QuantizedModel

__all__ = ["QUANT_FORMATS", "CALIBRATION_METHODS", "QuantizedModel", "quantize_int8", "numpy_batches"]

QUANT_FORMATS = ("u8s8", "s8s8-symmetric")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")

NumpyBatch = Tuple[np.ndarray, np.ndarray]


class _DropQuantizerAdvice(logging.Filter):
    """Drops the warnings ORT's quantizer logs on the root logger at every call (advice to run
    pre-processing, per-tensor fallbacks) while :func:`quantize_int8` runs; errors pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or "onnxruntime" not in record.pathname


_QUANTIZER_ADVICE = _DropQuantizerAdvice()


class _BatchReader:
    """ORT calibration data reader over in-memory numpy batches (one pass)."""

    def __init__(self, batches: Sequence[NumpyBatch]) -> None:
        self._it: Iterator[NumpyBatch] = iter(batches)

    def get_next(self) -> Optional[Dict[str, np.ndarray]]:
        batch = next(self._it, None)
        return None if batch is None else {INPUT_NAMES[0]: batch[0], INPUT_NAMES[1]: batch[1]}


def numpy_batches(batches: Sequence[Tuple[torch.Tensor, torch.Tensor]], rows: int, chunk: int = 32) -> List[NumpyBatch]:
    """Host copies of up to ``rows`` examples from torch batches, in chunks of ``chunk`` rows
    (calibration memory grows with the chunk: every activation of the graph is kept)."""
    out: List[NumpyBatch] = []
    left = rows
    for x, y in batches:
        x = x[:left].detach().to("cpu").float().contiguous().numpy()
        y = y[:left].detach().to("cpu").long().contiguous().numpy()
        out.extend((x[i:i + chunk], y[i:i + chunk]) for i in range(0, len(x), chunk))
        left -= len(x)
        if left <= 0:
            break
    return out


def quantize_int8(proto: onnx.ModelProto, calibration: Sequence[NumpyBatch], fmt: str = "u8s8", *,
                  method: str = "minmax", calibration_cache: Optional[Path] = None) -> QuantizedModel:
    """Static QDQ INT8 quantization of a loss graph from :func:`~sb_accel.engines.export.export_loss_model`.

    Args:
        proto: the FP32 loss graph (initializers named by ``state_dict`` keys).
        calibration: ``(images, labels)`` numpy batches of real training data.
        fmt: ``"u8s8"`` (ONNX Runtime CPU) or ``"s8s8-symmetric"`` (TensorRT).
        method: activation calibration, ``"minmax"`` (default: fast, good with a few hundred
            images), ``"entropy"`` or ``"percentile"`` (slower, clip outliers).
        calibration_cache: a JSON file of activation ranges (ORT's format): written after
            calibrating, or, if it exists, used instead of calibrating.

    Raises:
        EngineError: unknown format or method, no calibration data, or a quantizer failure.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if fmt not in QUANT_FORMATS:
        raise EngineError(f"unknown INT8 format {fmt!r}; choose one of {QUANT_FORMATS}")
    if method not in CALIBRATION_METHODS:
        raise EngineError(f"unknown calibration method {method!r}; choose one of {CALIBRATION_METHODS}")
    if not calibration:
        raise EngineError("INT8 quantization needs calibration batches (EngineContext.sample_batches is empty)")
    start = time.perf_counter()
    prepared, derivations = prepare_for_quantization(proto)
    exclude = float_tail_nodes(prepared)
    symmetric = fmt == "s8s8-symmetric"
    extra = {
        "ActivationSymmetric": symmetric,
        "WeightSymmetric": True,
        # ORT may widen a weight's scale when its int32 bias would overflow; that couples weight
        # scales to activation scales and bias values, which the cheap refresh does not model.
        "QDQDisableWeightAdjustForInt32Bias": True,
        "QuantizeBias": not symmetric,
    }
    calibrate = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                 "percentile": CalibrationMethod.Percentile}[method]
    with tempfile.TemporaryDirectory(prefix="sb-accel-quant-") as tmp:
        source = Path(tmp) / "prepared.onnx"
        target = Path(tmp) / "quantized.onnx"
        onnx.save(prepared, source)
        root = logging.getLogger()
        root.addFilter(_QUANTIZER_ADVICE)
        try:
            # calibration_cache_path is recent (passed only when used, for older ONNX Runtimes)
            cache = {"calibration_cache_path": calibration_cache} if calibration_cache is not None else {}
            quantize_static(str(source), str(target), _BatchReader(calibration), quant_format=QuantFormat.QDQ,
                            per_channel=True, reduce_range=False,
                            activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                            weight_type=QuantType.QInt8, nodes_to_exclude=exclude, calibrate_method=calibrate,
                            extra_options=extra, **cache)
        except Exception as exc:  # ORT raises ValueError/RuntimeError/onnx errors alike
            raise EngineError(f"INT8 quantization ({fmt}, {method}) failed: {exc}") from exc
        finally:
            root.removeFilter(_QUANTIZER_ADVICE)
        quantized = onnx.load(target)
    return QuantizedModel.plan(quantized, fmt, time.perf_counter() - start, derivations,
                               {i.name for i in proto.graph.initializer})
