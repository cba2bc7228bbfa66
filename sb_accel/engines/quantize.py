"""INT8 static (QDQ) quantization of loss graphs, cheap weight re-quantization, FP16 conversion.

Quantization is ONNX Runtime's ``quantize_static`` with calibration on real training batches, in
one of two formats:

* ``"u8s8"``: activations uint8 asymmetric, weights int8 symmetric per channel. The fast format
  for ONNX Runtime on x86 CPUs with VNNI.
* ``"s8s8-symmetric"``: activations and weights int8 symmetric (zero point 0), biases left FP32:
  the explicit-quantization form TensorRT parses (it takes no int32 bias). Slower than FP32 on
  ONNX Runtime's CPU provider.

Before quantization the graph is prepared by :func:`prepare_for_quantization`: BatchNormalization
is folded into the preceding Conv and transposed weight initializers are materialised. Folding
here rather than in ``quant_pre_process``'s optimizer has one purpose: every quantized weight is
then a *known* function of ``state_dict`` entries, so :meth:`QuantizedModel.requantize_weights`
can take new training weights in numpy (fold, quantize per channel, re-quantize the int32 bias
with the kept activation scale) in tens of milliseconds instead of export plus calibration in
seconds. The activation scales stay those of the last calibration; engines recalibrate fully on a
slower schedule. The classifier and loss head after the last Conv stay FP32
(:func:`~sb_accel.engines.export.float_tail_nodes`).
"""
from __future__ import annotations

import abc
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Set, Tuple

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from .base import EngineError
from .export import INPUT_NAMES, assign_initializers, float_tail_nodes

__all__ = ["QUANT_FORMATS", "CALIBRATION_METHODS", "QuantizedModel", "quantize_int8", "prepare_for_quantization",
           "convert_to_fp16", "numpy_batches"]

QUANT_FORMATS = ("u8s8", "s8s8-symmetric")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
_QUANT_SUFFIX = "_quantized"  # what ORT's quantizer appends to a quantized initializer's name
_INT8_MAX = 127  # symmetric int8 range is [-127, 127] (ORT's quantizer leaves -128 unused)

NumpyBatch = Tuple[np.ndarray, np.ndarray]


# --------------------------------------------------------------------------------------------
# Graph preparation: BatchNorm folding and transposed weights, as recorded derivations
# --------------------------------------------------------------------------------------------
class _Derivation(abc.ABC):
    """Prepared-graph initializers computed from ``state_dict`` arrays."""

    @property
    @abc.abstractmethod
    def outputs(self) -> Tuple[str, ...]:
        """Names of the initializers :meth:`compute` returns."""

    @abc.abstractmethod
    def compute(self, a: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """The derived arrays from the arrays they depend on."""


@dataclass(frozen=True)
class _FoldedConv(_Derivation):
    """``Conv(W, b) -> BatchNormalization(gamma, beta, mean, var, eps)`` as one Conv."""

    weight: str
    bias: Optional[str]
    gamma: str
    beta: str
    mean: str
    var: str
    eps: float
    out_weight: str
    out_bias: str

    @property
    def outputs(self) -> Tuple[str, ...]:
        return self.out_weight, self.out_bias

    def compute(self, a: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        scale = a[self.gamma] / np.sqrt(a[self.var] + np.float32(self.eps))
        bias = a[self.bias] if self.bias else np.zeros_like(a[self.beta])
        weight = a[self.weight] * scale.reshape(-1, *([1] * (a[self.weight].ndim - 1)))
        return {self.out_weight: weight.astype(np.float32),
                self.out_bias: (a[self.beta] + (bias - a[self.mean]) * scale).astype(np.float32)}


@dataclass(frozen=True)
class _Transposed(_Derivation):
    """``Transpose(W, perm)`` of a weight (the legacy exporter's bias-free Linear) as a tensor."""

    source: str
    perm: Tuple[int, ...]
    out: str

    @property
    def outputs(self) -> Tuple[str, ...]:
        return (self.out,)

    def compute(self, a: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        return {self.out: np.ascontiguousarray(a[self.source].transpose(self.perm))}


def prepare_for_quantization(proto: onnx.ModelProto) -> Tuple[onnx.ModelProto, List[_Derivation]]:
    """Fold Conv+BatchNormalization pairs and weight Transposes; returns the graph and how each new
    initializer is computed from the old ones (so new weights can be folded the same way later)."""
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    graph = model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    consumers: Dict[str, List[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    derivations: List[_Derivation] = []
    removed: List[onnx.NodeProto] = []
    taken = set(inits)  # a weight shared by two Convs is folded for the first only
    for node in graph.node:
        if node.op_type == "Conv" and len(consumers.get(node.output[0], [])) == 1:
            bn = consumers[node.output[0]][0]
            bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
            foldable = (bn.op_type == "BatchNormalization" and node.output[0] not in outputs
                        and f"{node.input[1]}.bn_folded" not in taken
                        and all(i in inits for i in [node.input[1], *bn.input[1:5]] + ([bias] if bias else [])))
            if not foldable:
                continue
            eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
            fold = _FoldedConv(node.input[1], bias, *bn.input[1:5], eps=eps, out_weight=f"{node.input[1]}.bn_folded",
                               out_bias=f"{node.input[1]}.bn_folded_bias")
            derivations.append(fold)
            taken.update(fold.outputs)
            del node.input[1:]
            node.input.extend([fold.out_weight, fold.out_bias])
            node.output[0] = bn.output[0]
            removed.append(bn)
        elif (node.op_type == "Transpose" and node.input[0] in inits and node.output[0] not in outputs
              and f"{node.input[0]}.transposed" not in taken):
            perm = next((tuple(a.ints) for a in node.attribute if a.name == "perm"),
                        tuple(reversed(range(inits[node.input[0]].ndim))))
            derivation = _Transposed(node.input[0], perm, f"{node.input[0]}.transposed")
            derivations.append(derivation)
            taken.update(derivation.outputs)
            for consumer in consumers.get(node.output[0], []):
                for i, name in enumerate(consumer.input):
                    if name == node.output[0]:
                        consumer.input[i] = derivation.out
            removed.append(node)
    for node in removed:
        graph.node.remove(node)
    derived = _derive(inits, derivations)
    graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in derived.items())
    used = {name for node in graph.node for name in node.input}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return model, derivations


def _derive(arrays: Mapping[str, np.ndarray], derivations: Sequence[_Derivation]) -> Dict[str, np.ndarray]:
    out: Dict[str, np.ndarray] = {}
    for d in derivations:
        out.update(d.compute(arrays))
    return out


# --------------------------------------------------------------------------------------------
# Quantization
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _WeightEntry:
    source: str       # float tensor in the prepared graph
    quantized: str    # its int8 initializer
    scale: str
    axis: Optional[int]


@dataclass(frozen=True)
class _BiasEntry:
    source: str
    quantized: str    # int32 initializer
    scale: str        # = input scale * weight scale
    input_scale: str
    weight_scale: str


@dataclass
class QuantizedModel:
    """A QDQ graph plus what :meth:`requantize_weights` needs to refresh its weights in numpy.

    Attributes:
        model: the quantized graph (updated in place by :meth:`requantize_weights`).
        format: one of :data:`QUANT_FORMATS`.
        seconds: how long preparation, calibration and quantization took.
        unmapped: weight-derived tensors the cheap path cannot recompute (empty for supported CNNs).
    """

    model: onnx.ModelProto
    format: str
    seconds: float
    derivations: List[_Derivation] = field(repr=False)
    weights: List[_WeightEntry] = field(repr=False)
    biases: List[_BiasEntry] = field(repr=False)
    floats: List[str] = field(repr=False)
    unmapped: List[str] = field(default_factory=list)

    def requantize_weights(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Quantize new ``state_dict`` arrays into the graph, keeping the activation scales.

        Reproduces ``quantize_static``'s weight and bias quantization exactly for the given
        activation scales (symmetric per-channel int8 weights, int32 bias with scale
        input_scale * weight_scale), so the result equals a full re-quantization whose calibration
        happened to return the old activation ranges.

        Raises:
            EngineError: the graph has weight-derived tensors this path cannot map, or the new
                weights lack a tensor the graph needs.
        """
        if self.unmapped:
            raise EngineError(f"cheap INT8 refresh cannot recompute {self.unmapped[:5]}; recalibrate on every refresh "
                              "(options={'recalibrate_every': 1})")
        try:
            tensors = dict(arrays)
            tensors.update(_derive(arrays, self.derivations))
        except KeyError as exc:
            raise EngineError(f"the new weights have no {exc.args[0]!r}: the model changed since quantization"
                              ) from None
        inits = {i.name: i for i in self.model.graph.initializer}
        scales: Dict[str, np.ndarray] = {}
        for w in self.weights:
            q, scale = _quantize_weight(tensors[w.source], w.axis)
            _put(inits[w.quantized], q)
            _put(inits[w.scale], scale.reshape(numpy_helper.to_array(inits[w.scale]).shape))
            scales[w.scale] = scale
        for b in self.biases:
            x_scale = numpy_helper.to_array(inits[b.input_scale]).astype(np.float32)
            w_scale = scales.get(b.weight_scale, numpy_helper.to_array(inits[b.weight_scale]))
            bias_scale = (x_scale * w_scale).astype(np.float32)
            q = np.round(tensors[b.source].astype(np.float64) / bias_scale.astype(np.float64))
            info = np.iinfo(np.int32)
            _put(inits[b.quantized], np.clip(q, info.min, info.max).astype(np.int32))
            _put(inits[b.scale], bias_scale.reshape(-1))
        assign_initializers(self.model, tensors, self.floats)


def _put(init: onnx.TensorProto, value: np.ndarray) -> None:
    init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(value), init.name))


def _quantize_weight(w: np.ndarray, axis: Optional[int]) -> Tuple[np.ndarray, np.ndarray]:
    """Symmetric int8: scale = max|w| / 127 per channel (1 where a channel is all zero)."""
    w = w.astype(np.float32)
    reduce = tuple(i for i in range(w.ndim) if i != axis) if axis is not None else None
    absmax = np.abs(w).max(axis=reduce, keepdims=True)
    # (max - min) / (qmax - qmin) over [-absmax, absmax] and [-127, 127], in float64 as ORT does,
    # so the stored float32 scale is bit-identical to quantize_static's.
    scale = (absmax.astype(np.float64) * 2 / (2 * _INT8_MAX)).astype(np.float32)
    scale = np.where(scale < np.finfo(np.float32).tiny, np.float32(1.0), scale)
    q = np.clip(np.round(w / scale), -_INT8_MAX - 1, _INT8_MAX).astype(np.int8)
    return q, scale.reshape(-1) if axis is not None else scale.reshape(())


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
                  method: str = "minmax", preprocess: bool = False,
                  calibration_cache: Optional[Path] = None) -> QuantizedModel:
    """Static QDQ INT8 quantization of a loss graph from :func:`~sb_accel.engines.export.export_loss_model`.

    Args:
        proto: the FP32 loss graph (initializers named by ``state_dict`` keys).
        calibration: ``(images, labels)`` numpy batches of real training data.
        fmt: ``"u8s8"`` (ONNX Runtime CPU) or ``"s8s8-symmetric"`` (TensorRT).
        method: activation calibration, ``"minmax"`` (default: fast, good with a few hundred
            images), ``"entropy"`` or ``"percentile"`` (slower, clip outliers).
        preprocess: run ORT's ``quant_pre_process`` shape inference first (its graph optimizer is
            skipped: folding is done by :func:`prepare_for_quantization`). Off by default: for the
            CNNs here it gave the same graph and speed (``quantize_static`` infers shapes itself)
            and cost ~0.3 s more on ResNet-18.
        calibration_cache: a JSON file of activation ranges (ORT's format): written after
            calibrating, or, if it exists, used instead of calibrating.

    Raises:
        EngineError: unknown format or method, no calibration data, or a quantizer failure.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

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
            if preprocess:
                quant_pre_process(str(source), str(source), skip_optimization=True)
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
    weight_names = {i.name for i in proto.graph.initializer} | {n for d in derivations for n in d.outputs}
    weights, biases, floats, unmapped = _refresh_plan(quantized, weight_names)
    return QuantizedModel(quantized, fmt, time.perf_counter() - start, derivations, weights, biases, floats, unmapped)


def _refresh_plan(model: onnx.ModelProto, weight_names: Set[str]
                  ) -> Tuple[List[_WeightEntry], List[_BiasEntry], List[str], List[str]]:
    """Find, in a QDQ graph, every initializer that derives from the weights and how to recompute it.

    Returns (int8 weights, int32 biases, weights left in float, weight tensors not covered).
    """
    inits = {i.name: i for i in model.graph.initializer}
    dq_by_output = {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
    weights: List[_WeightEntry] = []
    biases: List[_BiasEntry] = []
    covered = set()
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in inits:
            continue
        name = node.input[0]
        source = name[: -len(_QUANT_SUFFIX)] if name.endswith(_QUANT_SUFFIX) else None
        if source not in weight_names:
            continue
        dtype = inits[name].data_type
        if dtype == onnx.TensorProto.INT8:
            per_channel = len(inits[node.input[1]].dims) > 0
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1) if per_channel else None
            weights.append(_WeightEntry(source, name, node.input[1], axis))
            covered.add(source)
        elif dtype == onnx.TensorProto.INT32:
            consumer = next(n for n in model.graph.node if node.output[0] in n.input)
            x_dq, w_dq = dq_by_output.get(consumer.input[0]), dq_by_output.get(consumer.input[1])
            if x_dq is not None and w_dq is not None:
                biases.append(_BiasEntry(source, name, node.input[1], x_dq.input[1], w_dq.input[1]))
                covered.add(source)
    floats = [name for name in inits if name in weight_names]
    covered.update(floats)
    used_weights = {n for node in model.graph.node for n in node.input} | {
        i[: -len(_QUANT_SUFFIX)] for i in inits if i.endswith(_QUANT_SUFFIX)}
    unmapped = sorted((used_weights & weight_names) - covered)
    return weights, biases, floats, unmapped


# --------------------------------------------------------------------------------------------
# FP16
# --------------------------------------------------------------------------------------------
def convert_to_fp16(proto: onnx.ModelProto) -> onnx.ModelProto:
    """FP16 copy of a loss graph; inputs, outputs, classifier and loss head stay FP32.

    Initializer names are kept, so :func:`~sb_accel.engines.export.assign_initializers` refreshes
    the FP16 graph from FP32 weights (it casts to each initializer's dtype).
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.ModelProto()
    model.CopyFrom(proto)
    keep = float_tail_nodes(model)
    try:
        return convert_float_to_float16(model, keep_io_types=True, node_block_list=keep)
    except Exception as exc:
        raise EngineError(f"FP16 conversion of the loss graph failed: {exc}") from exc
