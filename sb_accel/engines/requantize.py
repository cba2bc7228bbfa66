"""The cheap INT8 refresh: new training weights quantized into a QDQ graph in numpy.

:meth:`QuantizedModel.requantize_weights` reproduces ``quantize_static``'s weight and bias
quantization for the activation scales of the last calibration:

* weights, symmetric int8 per output channel ``c``: ``s_c = max|W_c| / 127``,
  ``q = clip(round(W / s_c), -128, 127)``;
* biases, int32: ``s_b = s_x * s_c`` (input activation scale times weight scale),
  ``q_b = round(b / s_b)``.

so its result equals a full re-quantization whose calibration happened to return the old
activation ranges, at tens of milliseconds instead of seconds (ResNet-18: ~0.07 s against ~5 s
for export and recalibration). Weights that BatchNorm was folded into are first folded the same way
(:mod:`.fold`). The activation scales go stale as training moves; engines recalibrate fully on a
slower schedule.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Set, Tuple

import numpy as np
import onnx
from onnx import numpy_helper

from .errors import EngineError
from .fold import Derivation, derive
from .graph import assign_initializers

__all__ = ["QuantizedModel"]

_QUANT_SUFFIX = "_quantized"  # what ORT's quantizer appends to a quantized initializer's name
_INT8_MAX = 127  # symmetric int8 range is [-127, 127] (ORT's quantizer leaves -128 unused)


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
        format: one of :data:`~sb_accel.engines.quantize.QUANT_FORMATS`.
        seconds: how long preparation, calibration and quantization took.
        unmapped: weight-derived tensors the cheap path cannot recompute (empty for supported CNNs).
    """

    model: onnx.ModelProto
    format: str
    seconds: float
    derivations: List[Derivation] = field(repr=False)
    weights: List[_WeightEntry] = field(repr=False)
    biases: List[_BiasEntry] = field(repr=False)
    floats: List[str] = field(repr=False)
    unmapped: List[str] = field(default_factory=list)

    @classmethod
    def plan(cls, model: onnx.ModelProto, fmt: str, seconds: float, derivations: List[Derivation],
             float_names: Set[str]) -> "QuantizedModel":
        """Wrap a QDQ graph from ``quantize_static`` with its refresh plan.

        Args:
            float_names: the FP32 graph's initializer names (the ``state_dict`` weights).
        """
        weight_names = set(float_names) | {n for d in derivations for n in d.outputs}
        weights, biases, floats, unmapped = _refresh_plan(model, weight_names)
        return cls(model, fmt, seconds, derivations, weights, biases, floats, unmapped)

    def requantize_weights(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Quantize new ``state_dict`` arrays into the graph, keeping the activation scales.

        Reproduces ``quantize_static``'s weight and bias quantization exactly for the given
        activation scales (symmetric per-channel int8 weights, int32 bias with scale
        input_scale * weight_scale), so the result equals a full re-quantization whose calibration
        happened to return the old activation ranges.

        Raises:
            EngineError: see :meth:`quantized_arrays`.
        """
        assign_initializers(self.model, self.quantized_arrays(arrays))

    def quantized_arrays(self, arrays: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """What :meth:`requantize_weights` writes, as numpy arrays by initializer name (each in its
        initializer's dtype and shape), without touching the graph: for a runtime that takes
        initializers from buffers (ONNX Runtime's ``add_initializer``).

        Raises:
            EngineError: the graph has weight-derived tensors this path cannot map, or the new
                weights lack a tensor the graph needs.
        """
        if self.unmapped:
            raise EngineError(f"cheap INT8 refresh cannot recompute {self.unmapped[:5]}; recalibrate on every refresh "
                              "(options={'recalibrate_every': 1})")
        try:
            tensors = dict(arrays)
            tensors.update(derive(arrays, self.derivations))
        except KeyError as exc:
            raise EngineError(f"the new weights have no {exc.args[0]!r}: the model changed since quantization"
                              ) from None
        inits = {i.name: i for i in self.model.graph.initializer}
        out: Dict[str, np.ndarray] = {}
        for w in self.weights:
            if tensors[w.source].shape != tuple(inits[w.quantized].dims):
                raise EngineError(f"weight {w.source!r} has shape {tensors[w.source].shape}, the engine was built "
                                  f"with {tuple(inits[w.quantized].dims)}")
            q, scale = _quantize_weight(tensors[w.source], w.axis)
            out[w.quantized] = q
            out[w.scale] = scale.reshape(tuple(inits[w.scale].dims))
        for b in self.biases:
            x_scale = self._activation_scale(inits, b.input_scale)
            w_scale = out[b.weight_scale] if b.weight_scale in out else numpy_helper.to_array(inits[b.weight_scale])
            bias_scale = (x_scale * w_scale.reshape(-1)).astype(np.float32)
            q = np.round(tensors[b.source].astype(np.float64) / bias_scale.astype(np.float64))
            info = np.iinfo(np.int32)
            out[b.quantized] = np.clip(q, info.min, info.max).astype(np.int32)
            out[b.scale] = bias_scale.reshape(tuple(inits[b.scale].dims))
        for name in self.floats:
            if name not in tensors:
                raise EngineError(f"the new weights have no {name!r}: the model changed since quantization")
            out[name] = np.ascontiguousarray(tensors[name], dtype=np.float32)
        return out

    def _activation_scale(self, inits: Mapping[str, onnx.TensorProto], name: str) -> np.ndarray:
        """An activation scale as float32, read from the graph once (only a recalibration, which
        makes a new plan, changes it)."""
        cache = self.__dict__.setdefault("_activation_scales", {})
        if name not in cache:
            cache[name] = numpy_helper.to_array(inits[name]).astype(np.float32)
        return cache[name]

    @property
    def refreshed_names(self) -> List[str]:
        """The initializers :meth:`quantized_arrays` returns."""
        return ([n for w in self.weights for n in (w.quantized, w.scale)]
                + [n for b in self.biases for n in (b.quantized, b.scale)] + list(self.floats))

    @property
    def bias_scales(self) -> Set[str]:
        """Initializers of int32 bias scales: ONNX Runtime's QLinearConv fusion drops them (the
        kernel uses input scale x weight scale), so an optimized graph need not hold them."""
        return {b.scale for b in self.biases}


def _quantize_weight(w: np.ndarray, axis: Optional[int]) -> Tuple[np.ndarray, np.ndarray]:
    """Symmetric int8: scale = max|w| / 127 per channel (1 where a channel is all zero)."""
    w = w.astype(np.float32, copy=False)
    reduce = tuple(i for i in range(w.ndim) if i != axis) if axis is not None else None
    absmax = np.maximum(w.max(axis=reduce, keepdims=True), -w.min(axis=reduce, keepdims=True))
    # (max - min) / (qmax - qmin) over [-absmax, absmax] and [-127, 127], in float64 as ORT does,
    # so the stored float32 scale is bit-identical to quantize_static's.
    scale = (absmax.astype(np.float64) * 2 / (2 * _INT8_MAX)).astype(np.float32)
    scale[scale < np.finfo(np.float32).tiny] = 1.0
    q = w / scale  # one temporary, rounded and clipped in place (a refresh runs every step)
    np.rint(q, out=q)
    np.clip(q, -_INT8_MAX - 1, _INT8_MAX, out=q)
    return q.astype(np.int8), scale.reshape(-1) if axis is not None else scale.reshape(())


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
