"""Export a model plus a per-example cross-entropy head to ONNX, checked against PyTorch.

The exported graph takes ``images`` (float32 NCHW, dynamic batch) and ``labels`` (int64) and
returns ``loss`` (float32, one value per example), so every backend computes exactly what the
selection policy consumes and the head (LogSoftmax, GatherElements, Neg) stays in the graph.

Engines refresh their weights by name, so the graph must not depend on the weight values: its
initializers are exactly the model's ``state_dict`` keys, BatchNormalization stays a node, and no
two parameters are merged. The legacy TorchScript exporter gives that with constant folding off
and ``keep_initializers_as_inputs=True`` (which is what disables its de-duplication of equal
initializers: freshly initialised BatchNorm weights are all ones and would be merged into one);
the dynamo exporter gives it with ``optimize=False``. :func:`export_loss_model` checks the property
by exporting a second, perturbed copy of the model.
"""
from __future__ import annotations

import copy
import io
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Tuple, Union

import numpy as np
import onnx
import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import EngineError
from .graph import INPUT_NAMES, OUTPUT_NAME, save_onnx_atomic
from .ort_session import run_onnx, session_options
from .torch_backend import eval_mode

__all__ = ["LossHead", "ExportResult", "export_loss_model", "EXPORTERS"]

EXPORTERS = ("legacy", "dynamo")
# The wrapper's attribute name: exported initializers are "model.<key>" and get this prefix removed.
_PREFIX = "model."


class LossHead(nn.Module):
    """``(images, labels) -> per-example cross-entropy``, written with ops every backend parses."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        log_probs = F.log_softmax(self.model(images), dim=1)
        return -log_probs.gather(1, labels.unsqueeze(1)).squeeze(1)


@dataclass(frozen=True)
class ExportResult:
    """An exported, validated loss graph.

    Attributes:
        path: where the ONNX file was written.
        seconds: wall-clock of export plus checks.
        max_abs_error: largest |loss_onnxruntime - loss_torch| / max(1, |loss_torch|) over the validation rows.
        model: the graph in memory (initializer names are the model's ``state_dict`` keys).
    """

    path: Path
    seconds: float
    max_abs_error: float
    model: onnx.ModelProto = field(repr=False, compare=False)


def export_loss_model(model: nn.Module, path: Union[str, os.PathLike], sample: Tuple[torch.Tensor, torch.Tensor], *,
                      exporter: str = "legacy", opset: int = 17, tolerance: float = 1e-3, validate_rows: int = 32,
                      check_stable: bool = True) -> ExportResult:
    """Export ``model`` with a per-example loss head to ``path`` and validate it with ONNX Runtime.

    Args:
        model: the classifier (left in the train/eval mode it was in; exported in eval mode).
        path: destination ``.onnx`` file, written atomically.
        sample: a real batch ``(x, y)``; it traces the graph and validates the export.
        exporter: ``"legacy"`` (TorchScript, ~0.1-0.6 s) or ``"dynamo"`` (torch.export, 2-5 s).
        opset: ONNX opset for the legacy exporter (dynamo picks its own).
        tolerance: largest accepted |loss difference| / max(1, |loss|) against PyTorch on the
            validation rows.
        validate_rows: how many rows of ``sample`` to validate on (a batch of 1 is checked too).
        check_stable: export a perturbed copy as well and require the same graph, proving that
            initializer names and nodes do not depend on weight values (so refresh by name works).

    Raises:
        EngineError: unknown exporter, initializers that are not ``state_dict`` keys, a graph that
            changes with the weights, or losses that disagree with PyTorch.
    """
    if exporter not in EXPORTERS:
        raise EngineError(f"unknown ONNX exporter {exporter!r}; choose one of {EXPORTERS}")
    start = time.perf_counter()
    x, y = sample
    x = x[:max(2, validate_rows)].contiguous()  # 2 rows at least, so no size-1 dim gets specialised
    y = y[:len(x)]
    proto = _export_proto(model, x, y, exporter, opset)
    foreign = sorted({init.name for init in proto.graph.initializer} - set(model.state_dict()))
    if foreign:
        other = "dynamo" if exporter == "legacy" else "legacy"
        raise EngineError(f"the {exporter} exporter produced initializers that are not state_dict keys "
                          f"({foreign[:5]}{'...' if len(foreign) > 5 else ''}); weights could not be refreshed "
                          f"by name. Try exporter={other!r}.")
    if check_stable:
        _check_stable(model, proto, x, y, exporter, opset)
    max_error = _validate(model, proto, x, y, tolerance)
    path = Path(path)
    save_onnx_atomic(proto, path)
    return ExportResult(path, time.perf_counter() - start, max_error, proto)


def _export_proto(model: nn.Module, x: torch.Tensor, y: torch.Tensor, exporter: str, opset: int) -> onnx.ModelProto:
    head = LossHead(model)
    try:  # in eval mode: BatchNorm with running statistics, dropout off
        with eval_mode(head), warnings.catch_warnings(), torch.no_grad():
            # Both exporters warn about their own deprecations on every call; nothing actionable.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx")
            if exporter == "legacy":
                buffer = io.BytesIO()
                torch.onnx.export(head, (x, y), buffer, dynamo=False, input_names=list(INPUT_NAMES),
                                  output_names=[OUTPUT_NAME], opset_version=opset, do_constant_folding=False,
                                  keep_initializers_as_inputs=True,
                                  dynamic_axes={n: {0: "batch"} for n in (*INPUT_NAMES, OUTPUT_NAME)})
                proto = onnx.load_from_string(buffer.getvalue())
            else:
                batch = torch.export.Dim("batch", min=1, max=1 << 16)
                program = torch.onnx.export(head, (x, y), dynamo=True, optimize=False, verbose=False,
                                            input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME],
                                            dynamic_shapes={"images": {0: batch}, "labels": {0: batch}})
                proto = program.model_proto
    except Exception as exc:  # the exporters raise many types; the user needs the model and the cause
        raise EngineError(f"ONNX export ({exporter}) of {type(model).__name__} failed: {exc}") from exc
    _strip_initializer_inputs(proto)
    _rename_prefixed(proto)
    return proto


def _strip_initializer_inputs(proto: onnx.ModelProto) -> None:
    # keep_initializers_as_inputs lists weights as graph inputs; runtimes treat such initializers
    # as overridable defaults and will not fold BatchNorm into Conv. Only the real inputs stay.
    weights = {init.name for init in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in weights]
    del proto.graph.input[:]
    proto.graph.input.extend(inputs)


def _rename_prefixed(proto: onnx.ModelProto) -> None:
    """``model.layer.weight`` -> ``layer.weight``: names become the model's own state_dict keys."""
    renames = {init.name: init.name[len(_PREFIX):] for init in proto.graph.initializer if init.name.startswith(_PREFIX)}
    for init in proto.graph.initializer:
        init.name = renames.get(init.name, init.name)
    for node in proto.graph.node:
        for i, name in enumerate(node.input):
            if name in renames:
                node.input[i] = renames[name]
    for info in proto.graph.value_info:
        info.name = renames.get(info.name, info.name)


def _check_stable(model: nn.Module, proto: onnx.ModelProto, x: torch.Tensor, y: torch.Tensor,
                  exporter: str, opset: int) -> None:
    perturbed = copy.deepcopy(model)
    with torch.no_grad():
        for tensor in perturbed.state_dict().values():
            if tensor.is_floating_point():  # distinct random values: nothing left to de-duplicate or fold
                tensor.copy_(torch.rand_like(tensor) + 0.5)
    other = _export_proto(perturbed, x, y, exporter, opset)
    if _signature(other) != _signature(proto):
        raise EngineError(f"the {exporter} ONNX export of {type(model).__name__} changes with the weight values "
                          "(initializers merged or folded), so engines cannot refresh weights by name. "
                          "Try the other exporter (exporter='dynamo' or 'legacy').")


def _signature(proto: onnx.ModelProto) -> Tuple[List[str], List[Tuple[str, Tuple[str, ...]]]]:
    initializers = sorted(init.name for init in proto.graph.initializer)
    weights = set(initializers)
    nodes = [(n.op_type, tuple(i for i in n.input if i in weights)) for n in proto.graph.node]
    return initializers, nodes


def _validate(model: nn.Module, proto: onnx.ModelProto, x: torch.Tensor, y: torch.Tensor, tolerance: float) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(proto.SerializeToString(), session_options(), providers=["CPUExecutionProvider"])
    with eval_mode(model), torch.no_grad():
        expected = F.cross_entropy(model(x).float(), y, reduction="none").cpu().numpy()
    got = run_onnx(session, x, y)
    single = run_onnx(session, x[:1], y[:1])  # the batch dimension really is dynamic
    # FP32 rounding grows with the loss: losses above 1 (a young ResNet-18 in eval mode reaches 1e5)
    # are compared relative to their size
    scale = np.maximum(np.abs(expected), 1.0)
    error = float(max((np.abs(got - expected) / scale).max(), (np.abs(single - expected[:1]) / scale[:1]).max()))
    if not np.isfinite(error) or error > tolerance:
        raise EngineError(f"exported ONNX graph of {type(model).__name__} disagrees with PyTorch: "
                          f"max |loss difference| / max(1, |loss|) {error:.3g} > tolerance {tolerance:g}")
    return error
