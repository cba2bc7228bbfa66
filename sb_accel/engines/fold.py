"""Graph preparation for INT8: BatchNorm folded into Conv, transposed weights materialised, each
new initializer recorded as a :class:`Derivation` of ``state_dict`` entries.

Folding here rather than in ``quant_pre_process``'s optimizer has one purpose: every quantized
weight is then a *known* function of ``state_dict`` entries, so the cheap refresh
(:meth:`~sb_accel.engines.requantize.QuantizedModel.requantize_weights`) can fold new training
weights in numpy exactly as the graph was folded. For ``Conv(W, b)`` followed by
``BatchNormalization(gamma, beta, mean, var, eps)``::

    s  = gamma / sqrt(var + eps)            (per output channel)
    W' = W * s                              (scaled along the output-channel axis)
    b' = beta + (b - mean) * s              (b = 0 for a bias-free Conv)
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import onnx
from onnx import numpy_helper

__all__ = ["Derivation", "prepare_for_quantization", "derive"]


class Derivation(abc.ABC):
    """Prepared-graph initializers computed from ``state_dict`` arrays."""

    @property
    @abc.abstractmethod
    def outputs(self) -> Tuple[str, ...]:
        """Names of the initializers :meth:`compute` returns."""

    @abc.abstractmethod
    def compute(self, a: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """The derived arrays from the arrays they depend on."""


@dataclass(frozen=True)
class _FoldedConv(Derivation):
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
        return {self.out_weight: weight.astype(np.float32, copy=False),
                self.out_bias: (a[self.beta] + (bias - a[self.mean]) * scale).astype(np.float32, copy=False)}


@dataclass(frozen=True)
class _Transposed(Derivation):
    """``Transpose(W, perm)`` of a weight (the legacy exporter's bias-free Linear) as a tensor."""

    source: str
    perm: Tuple[int, ...]
    out: str

    @property
    def outputs(self) -> Tuple[str, ...]:
        return (self.out,)

    def compute(self, a: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        return {self.out: np.ascontiguousarray(a[self.source].transpose(self.perm))}


def prepare_for_quantization(proto: onnx.ModelProto) -> Tuple[onnx.ModelProto, List[Derivation]]:
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
    derivations: List[Derivation] = []
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
    derived = derive(inits, derivations)
    graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in derived.items())
    used = {name for node in graph.node for name in node.input}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return model, derivations


def derive(arrays: Mapping[str, np.ndarray], derivations: Sequence[Derivation]) -> Dict[str, np.ndarray]:
    """Every derived initializer from ``state_dict`` arrays (a missing source raises KeyError)."""
    out: Dict[str, np.ndarray] = {}
    for d in derivations:
        out.update(d.compute(arrays))
    return out
