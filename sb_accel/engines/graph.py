"""The loss graph's contract with the engines: its I/O names, weights by ``state_dict`` name, and
the FP32 tail that reduced-precision graphs keep.

Every exported loss graph (:mod:`.export`) takes ``images`` (float32 NCHW) and ``labels`` (int64)
and returns ``loss`` (float32, one value per example); its initializers are named by the model's
``state_dict`` keys, so new training weights are written in by name (:func:`assign_initializers`).
"""
from __future__ import annotations

import os
from typing import Dict, List, Mapping, Optional, Union

import numpy as np
import onnx
import torch
import torch.nn as nn
from onnx import numpy_helper

from ..files import atomic_write
from .errors import EngineError

__all__ = ["INPUT_NAMES", "OUTPUT_NAME", "float_tail_nodes", "state_dict_arrays", "assign_initializers",
           "save_onnx_atomic"]

INPUT_NAMES = ("images", "labels")
OUTPUT_NAME = "loss"


def float_tail_nodes(proto: onnx.ModelProto) -> List[str]:
    """Names of the nodes after the last Conv: classifier, loss head and anything between.

    Reduced-precision graphs keep these in FP32. They cost a negligible share of a CNN's FLOPs,
    but quantizing or halving the logits shifts every loss and reorders near-ties, which is
    exactly what selection ranks. Nodes are in topological order as exported.
    """
    nodes = list(proto.graph.node)
    convs = [i for i, n in enumerate(nodes) if n.op_type == "Conv"]
    if not convs:
        raise EngineError("reduced-precision loss graphs need a convolutional model (no Conv node found)")
    for i, node in enumerate(nodes):
        if not node.name:  # names are how quantizers and converters are told what to skip
            node.name = f"{node.op_type}_{i}"
    return [n.name for n in nodes[convs[-1] + 1:]]


def state_dict_arrays(model_or_state: Union[nn.Module, Mapping[str, torch.Tensor]]) -> Dict[str, np.ndarray]:
    """Floating-point ``state_dict`` entries as C-contiguous float32 numpy arrays (host copies).

    C order matters: channels_last weights would otherwise give strided arrays whose bytes are not
    in the NCHW order ONNX initializers use. numpy makes the copy, in this thread: torch's
    ``contiguous()`` splits each small copy over its intra-op threads, and on a busy CPU every one
    waits for a descheduled thread (small_cnn, 2 threads, load ~5 on 2 cores: 31-91 ms per call
    against ~1 ms; the same at low load), every refresh.
    """
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    return {k: np.array(v.detach().to("cpu", torch.float32).numpy(), order="C")
            for k, v in state.items() if v.is_floating_point()}


def assign_initializers(proto: onnx.ModelProto, arrays: Mapping[str, np.ndarray],
                        names: Optional[List[str]] = None) -> None:
    """Overwrite initializers of ``proto`` by name (cast to each initializer's own dtype, e.g. FP16).

    Args:
        names: which initializers to update (default: every initializer named in ``arrays``).

    Raises:
        EngineError: a requested name is missing from ``arrays`` or has a different shape.
    """
    by_name = {init.name: init for init in proto.graph.initializer}
    for name in names if names is not None else [n for n in by_name if n in arrays]:
        if name not in arrays:
            raise EngineError(f"the new weights have no {name!r}: the model changed since the engine was built")
        init = by_name[name]
        value = arrays[name]
        if tuple(init.dims) != value.shape:
            raise EngineError(f"weight {name!r} has shape {value.shape}, the engine was built with {tuple(init.dims)}")
        dtype = onnx.helper.tensor_dtype_to_np_dtype(init.data_type)
        init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(value, dtype=dtype), name))


def save_onnx_atomic(proto: onnx.ModelProto, path: Union[str, os.PathLike]) -> None:
    """Write ``proto`` so that readers see either the old file or the complete new one."""
    atomic_write(path, proto.SerializeToString())
