"""ONNX Runtime sessions whose weight initializers are numpy buffers this package owns.

``SessionOptions.add_initializer(name, OrtValue)`` makes a session use the given tensor instead of
the graph's initializer of that name without copying it (ORT's C API: the buffer must outlive the
session). But ORT's graph optimizations (Conv+BatchNorm fusion, NCHWc weight reordering, even at
the BASIC level) read the weights from the *graph* at session creation, not from such buffers:
a buffer reaches the kernels only where no optimization derived something from it. Measured on
small_cnn, batch 128, 2 CPU threads, ONNX Runtime 1.32
(benchmarks/results/2026-11-25-x86_64-cpu2-selection/selection_throughput_small_cnn_b128_cpu.json;
a training step there takes 108 ms):

* **a new session per refresh** (``refresh_mode = "session"``, default). INT8: the session is
  opened over ORT's own level-ALL *optimized* graph (:func:`optimized_graph`; QLinearConv fused,
  layouts chosen) with optimizations off and the re-quantized weights attached: same per-batch
  speed, losses identical to a session over a graph holding the new weights (checked with changed
  weights at build: :func:`preoptimized_matches`). A cheap INT8 refresh costs 4.6 ms. FP32/FP16
  cannot do this (the fused and reordered weights get new names), so their refresh writes the
  graph and opens a fully optimizing session: 6.6 ms.
* **in place, one session for the whole run** (``"inplace"``): the new values copied into the
  attached buffers (a refresh costs 1.9 ms INT8, 1.1 ms FP32). It needs INT8 weight pre-packing
  off (``session.disable_prepacking``; the QLinearConv fusion itself keeps reading the buffers)
  and, for FP32/FP16, every graph optimization off. Per batch that costs INT8 14.4 -> 27.8 ms
  (~2x) and FP32 25.3 -> 70.7 ms (~2.8x). With ~3 selection batches per training step, in place
  loses ~40 ms per step to save ~2.7 ms.

So ``"session"`` is the default and ``"inplace"`` an option for settings with many refreshes per
selection batch. Both give the losses of a session built from the new weights, and an in-place
session computes from the buffers it was given (tests in tests/test_onnxruntime_engine.py).

Re-measured 2026-12-03 (small_cnn, channels_last, 2 threads, one process): a cheap INT8 refresh
4.4 ms in ``"session"`` mode (state_dict copy 0.3, re-quantization 0.8, session open 2.4) against
1.4 ms in place, but a selection batch of 128 then takes 33 ms instead of 15. Two ways to make the
session cheaper were tried and left out: ORT's global thread pools
(``set_global_thread_pool_sizes`` + ``use_per_session_threads = False``) are process-wide, and ORT
then refuses every session opened with per-session threads, including its own INT8 calibrator's
("use_per_session_threads must be false when using a global thread pool"); a shared environment
allocator (``create_and_register_allocator`` + ``session.use_env_allocators``) changed neither the
refresh (6.9 vs 6.7 ms) nor the first selection batch after it (19.9 vs 19.6 ms).

In the training loop (after an optimizer step, caches cold; small_cnn, 2 threads) the same cheap
INT8 refresh costs 6.4-8.4 ms: state_dict copy 1.0-1.3, re-quantization 1.3-2.0, session open
1.9-2.9 and the old session's teardown 1-2.7 (joining its thread pool). Sessions therefore open
over ORT-format bytes (:func:`ort_format`, -0.5 ms) without a memory arena
(:func:`~sb_accel.engines.ort_session.session_options`); deferring the teardown to after the next
batch saved 0.3 ms and was left out.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Mapping, Optional, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from .errors import EngineError

if TYPE_CHECKING:
    import onnxruntime

__all__ = ["SessionWeights", "initializer_arrays", "optimized_graph", "ort_format", "preoptimized_matches",
           "REFRESH_MODES"]

REFRESH_MODES = ("session", "inplace")


class SessionWeights:
    """Named numpy arrays a session reads in place, with the ``OrtValue`` s that wrap them (kept
    alive as long as this object: a session must not outlive the buffers it was given)."""

    def __init__(self, arrays: Mapping[str, np.ndarray]) -> None:
        import onnxruntime as ort

        self.arrays = {name: a if a.flags.c_contiguous and a.flags.writeable else np.array(a, order="C")
                       for name, a in arrays.items()}  # not copied: callers pass fresh arrays
        self.values = {name: ort.OrtValue.ortvalue_from_numpy(a) for name, a in self.arrays.items()}

    def attach(self, options: "onnxruntime.SessionOptions") -> None:
        """Make a session opened with ``options`` use these buffers for the initializers they name."""
        for name, value in self.values.items():
            options.add_initializer(name, value)

    def write(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Copy new values into the buffers (the session attached to them sees them at its next run).

        Raises:
            EngineError: a buffer's new value is missing or has another shape.
        """
        for name, target in self.arrays.items():
            value = arrays.get(name)
            if value is None or value.shape != target.shape:
                raise EngineError(f"the new weights have no {name!r} of shape {target.shape}: "
                                  "the model changed since the engine was built")
        for name, target in self.arrays.items():  # checked first: no half-written weights
            np.copyto(target, arrays[name], casting="unsafe")


def initializer_arrays(graph: onnx.ModelProto, names: Sequence[str],
                       values: Optional[Mapping[str, np.ndarray]] = None) -> Dict[str, np.ndarray]:
    """``values`` (default: the graph's own initializers) for ``names``, each cast to the dtype of
    the graph's initializer of that name (FP16 graphs take FP16 weights)."""
    inits = {i.name: i for i in graph.graph.initializer}
    missing = [n for n in names if n not in inits or (values is not None and n not in values)]
    if missing:
        raise EngineError(f"the new weights have no {missing[:5]}: the model changed since the engine was built")
    out = {}
    for name in names:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(inits[name].data_type)
        value = numpy_helper.to_array(inits[name]) if values is None else values[name]
        if value.shape != tuple(inits[name].dims):
            raise EngineError(f"weight {name!r} has shape {value.shape}, the engine was built with "
                              f"{tuple(inits[name].dims)}")
        out[name] = np.array(value, dtype=dtype, order="C")  # a copy: the caller's arrays stay theirs
    return out


def optimized_graph(open_session: Callable[[Any], Any], folder: Path) -> onnx.ModelProto:
    """ORT's level-ALL optimized form of a graph, as ONNX.

    ``open_session(options_hook)`` opens a session over the graph with the engine's usual options
    after calling ``options_hook(options)``. The result is specific to this machine and ORT version
    (chosen kernels and layouts): use it in this process only.
    """
    return onnx.load_from_string(_saved_by_session(open_session, folder, ".onnx"))


def ort_format(open_session: Callable[[Any], Any], folder: Path) -> bytes:
    """The graph a session opened by ``open_session`` (as in :func:`optimized_graph`) serves, in
    ORT's own flatbuffer format, which ORT recognises when given the bytes. A session opens over it
    ~0.5 ms faster than over the same graph as ONNX (small_cnn INT8: no protobuf to parse); the
    attached weight buffers work alike. Specific to this ORT version: use it in this process only."""
    return _saved_by_session(open_session, folder, ".ort", {"session.save_model_format": "ORT"})


def _saved_by_session(open_session: Callable[[Any], Any], folder: Path, suffix: str,
                      config: Optional[Mapping[str, str]] = None) -> bytes:
    """The graph ORT writes through ``optimized_model_filepath`` (with session ``config`` entries)
    when ``open_session`` opens it, via a temporary file in ``folder`` that is removed."""
    fd, path = tempfile.mkstemp(prefix="ort-optimized-", suffix=suffix, dir=folder)
    os.close(fd)

    def hook(options: Any) -> None:
        options.optimized_model_filepath = path
        for key, value in (config or {}).items():
            options.add_session_config_entry(key, value)

    try:
        open_session(hook)
        return Path(path).read_bytes()
    finally:
        os.unlink(path)


def preoptimized_matches(run_reference: Callable[[Dict[str, np.ndarray]], np.ndarray],
                         run_preoptimized: Callable[[Dict[str, np.ndarray]], np.ndarray],
                         values: Mapping[str, np.ndarray]) -> bool:
    """Whether the optimized graph still takes every weight from the attached buffers: both runners
    get *changed* weights (each array scaled or negated), the reference written into the graph
    itself, and must agree exactly. An optimization that had folded a weight into a new constant
    would keep the old value and disagree."""
    changed = {}
    for name, a in values.items():
        if np.issubdtype(a.dtype, np.integer):
            info = np.iinfo(a.dtype)
            changed[name] = np.clip(-a.astype(np.int64), max(info.min, -127), info.max).astype(a.dtype)
        else:
            changed[name] = (a * 1.25).astype(a.dtype)
    return bool(np.array_equal(run_reference(changed), run_preoptimized(changed)))
