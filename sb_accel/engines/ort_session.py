"""ONNX Runtime sessions over a loss graph, set up to run beside a training loop.

ONNX Runtime is imported inside the functions: importing this module loads nothing heavy.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import numpy as np
import torch

from .graph import INPUT_NAMES, OUTPUT_NAME

if TYPE_CHECKING:
    import onnxruntime

__all__ = ["session_options", "run_onnx"]


def session_options(threads: Optional[int] = None) -> "onnxruntime.SessionOptions":
    """ONNX Runtime session options for selection next to a training loop.

    One inter-op thread, ``threads`` intra-op threads (None: ORT default) and no spin-waiting, so
    idle ORT workers do not steal cores from training between selection calls.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # No per-session memory arena: a snapshot engine opens a session per refresh, and each new arena
    # page-faults its activations in again on the first batch (+1.3 ms) while the old session's frees
    # its own (+1 ms; small_cnn INT8 measured standalone, within the noise in the training loop).
    # Without it glibc reuses the freed blocks; batches are no slower (small_cnn and ResNet-18 INT8,
    # batch 128, 2 threads, measured interleaved).
    options.enable_cpu_mem_arena = False
    options.log_severity_level = 3  # errors only: ORT warns about every unused initializer it removes
    return options


def run_onnx(session: "onnxruntime.InferenceSession", x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """Per-example losses from a loss graph on the CPU (host copies if the tensors are on a GPU)."""
    feeds = {INPUT_NAMES[0]: x.detach().to("cpu", torch.float32).contiguous().numpy(),
             INPUT_NAMES[1]: y.detach().to("cpu", torch.int64).contiguous().numpy()}
    return session.run([OUTPUT_NAME], feeds)[0]
