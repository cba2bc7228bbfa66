"""``torch-graph``: the GPU selection engine built from torch itself, CUDA graphs over the live model.

Why it exists: TensorRT and onnxruntime-gpu cannot be installed on the lent GPUs, and eager torch
selection is launch bound below ~256 examples. Measured on an H100 (ResNet-18, CIFAR-10), selection
forward + per-example loss per example: batch 128 FP32 eager 14.3 us, FP16 CUDA-graph replay 6.9 us;
batch 1024 FP16 eager 5.2 us, under ``torch.compile`` (inductor, ~100 s to compile) 3.3 us.

How: at build, for each bucket of the recipe's ``selection.bucket_sizes`` (:mod:`.buckets`) the
eval-mode forward + loss of the *training model itself* is captured into a CUDA graph
(:mod:`.cuda_graphs`); a ``losses`` call copies its batch into the static input buffer of the
smallest bucket that holds it (larger batches are split), replays, and copies out the losses.
The graphs read the parameters and BatchNorm buffers by address, and the optimizer updates them in
place: a refresh costs nothing and staleness is always 0 (``is_live``). If a parameter or buffer is
reallocated, the next call re-captures (and warns once). Build time (capture, compile, cuDNN plan
search in the warm-up) is recorded by the refresher's ``engine_build`` event, outside timed phases.

Options (recipe keys, ``context.options`` overrides them): ``bucket_sizes``; ``compile``: ``"off"``
(default), ``"default"`` or ``"max-autotune-no-cudagraphs"`` (``torch.compile`` of the model before
capture, one specialised compile per bucket; the modes that use CUDA graphs themselves are refused).
``options={"snapshot": True}`` captures a private copy instead, refreshed by copying the weights in
place (for selection in another thread). A ``losses`` call is not re-entrant (static buffers).
"""
from __future__ import annotations

import contextlib
import copy
import time
import warnings
from collections.abc import Mapping
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from torch.utils._pytree import tree_flatten, tree_unflatten

from .base import EngineContext, SelectionEngine
from .buckets import plan_buckets, usable_buckets
from .cuda_graphs import (CapturedBatch, capture_bucket, input_memory_format, pointer_table,
                          pointers_unchanged)
from .errors import EngineError
from .torch_backend import eval_mode, per_example_loss

__all__ = ["TorchGraphEngine", "COMPILE_MODES", "CPU_REFUSAL"]

_AUTOCAST = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": None}
COMPILE_MODES = ("off", "default", "max-autotune-no-cudagraphs")
CPU_REFUSAL = "torch-graph needs CUDA; use torch-fp32 / onnxruntime-int8 on CPU"
WARMUP_ITERATIONS = 3  # torch.cuda.make_graphed_callables' default


class TorchGraphEngine(SelectionEngine):
    """Per-example losses replayed from CUDA graphs captured on the training model.

    Attributes:
        buckets: the batch sizes captured.
        captures: how many times the graphs were captured (1 after the build; more means the
            model's tensors were reallocated).
        capture_seconds: time spent capturing (and compiling), all captures.
    """

    backend = "torch-graph"
    precisions = tuple(_AUTOCAST)
    refresh_kind = "exact"  # a snapshot refresh copies the weights as they are
    capture = staticmethod(capture_bucket)  # CPU tests substitute a stand-in (StandInGraphEngine)

    def __init__(self, model: nn.Module, precision: str = "fp16", context: Optional[EngineContext] = None) -> None:
        context = context or EngineContext()
        if precision not in _AUTOCAST:
            raise EngineError(f"torch-graph precision must be one of {list(_AUTOCAST)}, got {precision!r}")
        self.device = self._check_device(model, context)
        self.precision = precision
        self.compile_mode = str(context.setting("compile"))
        if self.compile_mode not in COMPILE_MODES:
            raise EngineError(f"torch-graph compile must be one of {COMPILE_MODES}, got {self.compile_mode!r} "
                              "(modes that use CUDA graphs themselves cannot be captured again)")
        self.buckets = usable_buckets(context.setting("bucket_sizes"), int(context.max_batch))
        self.snapshot = bool(context.options.get("snapshot", False))
        self.model = copy.deepcopy(model).eval() if self.snapshot else model
        self._module: Any = self.model if self.compile_mode == "off" else torch.compile(
            self.model, mode=self.compile_mode, dynamic=False)
        self._graphs: Dict[int, CapturedBatch] = {}
        self._structure_graphs: Dict[int, Tuple[CapturedBatch, List[torch.Tensor]]] = {}  # batch_losses' buckets
        self._structure_key: Optional[tuple] = None
        self._image_shape: Optional[Tuple[int, ...]] = None
        self._pointers: list = []
        self._warned = False
        self.captures = 0
        self.capture_seconds = 0.0
        if context.sample_batches:  # else at the first call
            self._capture_all(tuple(context.sample_batches[0][0].shape[1:]))

    def _check_device(self, model: nn.Module, context: EngineContext) -> torch.device:
        """The CUDA device the model lives on; :data:`CPU_REFUSAL` anywhere else."""
        param = next(model.parameters(), None)
        if not torch.cuda.is_available() or torch.device(context.device).type != "cuda" or (
                param is not None and param.device.type != "cuda"):
            raise EngineError(CPU_REFUSAL)
        return param.device if param is not None else torch.device(context.device)

    @property
    def is_live(self) -> bool:
        return not self.snapshot

    # --- capture ------------------------------------------------------------------------------
    def _forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """What a graph captures: the eval-mode forward under the precision's autocast (its weight
        cache off: cached casts would outlive the capture) and the FP32 per-example loss."""
        with torch.no_grad(), eval_mode(self.model):
            with self._autocast(x.device):
                logits = self._module(x)
            return per_example_loss(logits, y)

    def _capture_all(self, image_shape: Tuple[int, ...]) -> None:
        """Capture every bucket for images of ``image_shape`` (in eval mode: :meth:`_forward`)."""
        self._graphs = {}  # the old graphs (if any) go before the new ones take memory
        memory_format = input_memory_format(self.model) if len(image_shape) == 3 else torch.contiguous_format

        def inputs(bucket: int) -> Tuple[Callable, torch.Tensor, torch.Tensor]:
            x = torch.zeros((bucket, *image_shape), device=self.device).contiguous(memory_format=memory_format)
            return self._forward, x, torch.zeros(bucket, dtype=torch.int64, device=self.device)

        self._graphs = {bucket: graph for bucket, (graph, _) in self._capture_buckets(inputs).items()}
        self._image_shape = image_shape

    def _capture_buckets(self, inputs: Callable[[int], Tuple[Callable, torch.Tensor, torch.Tensor]]
                         ) -> Dict[int, Tuple[CapturedBatch, Any]]:
        """``inputs(bucket) -> (forward, x, y)``: static buffers and what to capture on them, for each
        bucket; returns each bucket's graph with its ``inputs``."""
        start = time.perf_counter()
        cuda = self.device.type == "cuda"
        pool = torch.cuda.graph_pool_handle() if cuda else None
        stream = torch.cuda.Stream(self.device) if cuda else None
        device = torch.cuda.device(self.device) if cuda else contextlib.nullcontext()
        graphs: Dict[int, Tuple[CapturedBatch, Any]] = {}
        try:
            with device:  # streams, pool and capture on the model's GPU, whichever is current
                for bucket in self.buckets:
                    made = inputs(bucket)
                    graphs[bucket] = (self.capture(made[0], made[1], made[2], pool, stream, WARMUP_ITERATIONS), made)
        except RuntimeError as exc:  # a host sync or data-dependent control flow in the model's forward
            raise EngineError(f"torch-graph could not capture {type(self.model).__name__}'s forward in a CUDA graph "
                              f"({exc}); use torch-{self.precision} (eager) instead") from exc
        self._pointers = pointer_table(self.model)
        self.captures += 1
        self.capture_seconds += time.perf_counter() - start
        return graphs

    def _autocast(self, device: torch.device) -> Any:
        dtype = _AUTOCAST[self.precision]
        # FP32 turns autocast off explicitly: a capture triggered inside the caller's autocast
        # region (an AMP training loop) must not inherit its dtype.
        return (torch.autocast(device.type, enabled=False) if dtype is None else
                torch.autocast(device.type, dtype=dtype, cache_enabled=False))

    def _ensure_captured(self, image_shape: Tuple[int, ...]) -> None:
        if self._image_shape == image_shape and pointers_unchanged(self._pointers):
            return
        first = self._image_shape is None
        self._capture_all(image_shape)
        if not first and not self._warned:
            self._warned = True
            warnings.warn(f"torch-graph re-captured its CUDA graphs ({self.capture_seconds / self.captures:.2f} s): "
                          "the model's parameters or buffers were reallocated (model.to() that converts, "
                          "load_state_dict(assign=True), p.data = ...) or the image shape changed; update tensors "
                          "in place to avoid this", stacklevel=3)

    # --- SelectionEngine ----------------------------------------------------------------------
    @torch.no_grad()
    def losses(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = torch.empty(len(y), dtype=torch.float32, device=self.device)
        if len(y):
            self._ensure_captured(tuple(x.shape[1:]))
        for start, stop, bucket in plan_buckets(len(y), self.buckets):
            graph, rows = self._graphs[bucket], stop - start
            graph.x[:rows].copy_(x[start:stop])
            graph.y[:rows].copy_(y[start:stop])
            graph.replay()
            out[start:stop].copy_(graph.out[:rows])
        return out.to(x.device)

    @torch.no_grad()
    def batch_losses(self, batch: Any, forward: Callable[[nn.Module, Any], Any],
                     loss_fn: Callable[[Any, Any], torch.Tensor]) -> torch.Tensor:
        """The per-example loss hook, replayed: ``loss_fn(forward(model, batch), batch)`` for a batch
        structure of tensors (dicts of token ids, tuples) captured per bucket on static buffers of its
        leaves' shapes (re-captured when the structure, a leaf's shape past the batch dimension, the
        functions or the model's tensors change). ``forward`` and ``loss_fn`` must be capturable: no
        host reads, no shape that depends on values."""
        leaves, spec = tree_flatten(_plain_containers(batch))
        if not leaves or not all(torch.is_tensor(t) for t in leaves):
            raise EngineError("torch-graph scores batches whose every part is a tensor; use torch-"
                              f"{self.precision} (eager) for this batch")
        n = leaves[0].shape[0]
        key = (spec, tuple((tuple(t.shape[1:]), t.dtype) for t in leaves), forward, loss_fn)
        if key != self._structure_key or not pointers_unchanged(self._pointers):
            self._capture_structure(key, leaves, spec, forward, loss_fn)
        out = torch.empty(n, dtype=torch.float32, device=self.device)
        for start, stop, bucket in plan_buckets(n, self.buckets):
            graph, static = self._structure_graphs[bucket]
            rows = stop - start
            for buffer, leaf in zip(static, leaves):
                buffer[:rows].copy_(leaf[start:stop])
            graph.replay()
            out[start:stop].copy_(graph.out[:rows])
        return out

    def _capture_structure(self, key: tuple, leaves: List[torch.Tensor], spec: Any,
                           forward: Callable[[nn.Module, Any], Any], loss_fn: Callable[[Any, Any], torch.Tensor]) -> None:
        self._structure_graphs = {}

        def run(static: List[torch.Tensor]) -> torch.Tensor:
            batch = tree_unflatten(static, spec)
            with torch.no_grad(), eval_mode(self.model):
                with self._autocast(self.device):
                    output = forward(self._module, batch)
                return loss_fn(output, batch).float()

        def inputs(bucket: int) -> Tuple[Callable, torch.Tensor, torch.Tensor]:
            static = [torch.zeros((bucket, *t.shape[1:]), dtype=t.dtype, device=self.device) for t in leaves]
            return (lambda _x, _y: run(static)), static[0], static

        captured = self._capture_buckets(inputs)
        self._structure_graphs = {bucket: (graph, made[2]) for bucket, (graph, made) in captured.items()}
        self._structure_key = key

    def refresh(self, model: nn.Module, rebuild: bool = False) -> None:
        """Live: nothing to do. Snapshot: the new weights copied into the captured tensors in place."""
        if not self.snapshot:
            return
        source = model.state_dict()
        with torch.no_grad():
            for name, tensor in self.model.state_dict(keep_vars=True).items():
                if name not in source or source[name].shape != tensor.shape:
                    raise EngineError(f"the new weights have no {name!r} of shape {tuple(tensor.shape)}: "
                                      "the model changed since the engine was built")
                tensor.copy_(source[name])

    def close(self) -> None:
        """Wait for queued replays before their graphs and memory pool go."""
        if (self._graphs or self._structure_graphs) and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self._graphs = {}
        self._structure_graphs = {}


def _plain_containers(batch: Any) -> Any:
    """``batch`` with every mapping as a dict (a Hugging Face ``BatchEncoding`` is not a pytree node)."""
    if isinstance(batch, Mapping):
        return {k: _plain_containers(v) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)) and not hasattr(batch, "_fields"):
        return type(batch)(_plain_containers(v) for v in batch)
    return batch
