"""One eval-mode forward + per-example loss captured into a CUDA graph at a fixed batch size.

Why graphs: below ~256 examples a ResNet-18 selection forward on an H100 is kernel-launch bound
(~2.4 ms whatever the size); replaying a captured graph issues the same kernels with one launch
(batch 128 FP16: 6.9 us per example replayed vs 17.3 us eager).

What a capture bakes in, and what it does not: a graph records kernels with the *addresses* of
the tensors they read. Parameters and BatchNorm buffers are read where they live, so an optimizer
step or a running-stat update done in place is seen by the next replay; a tensor that is
reallocated (``model.to(...)`` that converts, ``load_state_dict(assign=True)``, ``p.data = ...``)
is not, so the engine records every parameter's address (:func:`pointer_table`) and re-captures
when one moved (:func:`pointers_unchanged`). Python control flow, the module's ``training`` flag
and autocast are fixed at capture: the engine captures in eval mode under the autocast of its
precision, and replays whatever mode the model is in afterwards.

Capture follows torch's rules (CUDA semantics notes, ``torch.cuda.graph``): warm-up iterations on
a side stream first (cuDNN/cuBLAS plans, lazy initialisation and ``torch.compile`` happen there,
not during capture), then capture on that same stream (libraries cache handles per stream), one
memory pool shared by the buckets of an engine (replays never overlap: they run in order on the
caller's stream), autocast with its weight cache off (cached casts would outlive the capture).
Nothing here runs without CUDA; CPU tests substitute a stand-in with a graph's semantics
(``tests/test_torch_graph_engine.py``, ``StandInGraphEngine``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Tuple

import torch
import torch.nn as nn

__all__ = ["CapturedBatch", "capture_bucket", "pointer_table", "pointers_unchanged",
           "input_memory_format"]

Forward = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Pointers = List[Tuple[dict, str, torch.Tensor, int]]


@dataclass
class CapturedBatch:
    """Static buffers of one bucket and how to run it: fill ``x[:k]``/``y[:k]``, ``replay()``, read
    ``out[:k]`` (overwritten by the next replay)."""

    x: torch.Tensor
    y: torch.Tensor
    out: torch.Tensor
    replay: Callable[[], Any]
    graph: Optional[Any] = None  # the torch.cuda.CUDAGraph; holds the captured kernels and pool memory


def capture_bucket(forward: Forward, x: torch.Tensor, y: torch.Tensor, pool: Any, stream: Any,
                   warmup: int = 3) -> CapturedBatch:
    """Warm ``forward(x, y)`` up on ``stream``, then capture it there into a new CUDA graph whose
    intermediates come from ``pool`` (``torch.cuda.graph_pool_handle()``, shared by an engine's buckets)."""
    current = torch.cuda.current_stream(x.device)
    stream.wait_stream(current)  # the static buffers were filled on the current stream
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            forward(x, y)
    current.wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    # thread_local: CUDA work that another thread (a data loader, a logger) queues meanwhile does
    # not invalidate this capture.
    with torch.cuda.graph(graph, pool=pool, stream=stream, capture_error_mode="thread_local"):
        out = forward(x, y)
    return CapturedBatch(x, y, out, graph.replay, graph)


def pointer_table(model: nn.Module) -> Pointers:
    """Every parameter and buffer of ``model`` with the dict that holds it and its address, for
    :func:`pointers_unchanged` (~20 us per call on ResNet-18's 122 tensors, cheap enough per call)."""
    table: Pointers = []
    for module in model.modules():
        for store in (module._parameters, module._buffers):
            table.extend((store, name, t, t.data_ptr()) for name, t in store.items() if t is not None)
    return table


def pointers_unchanged(table: Pointers) -> bool:
    """True while every tensor of the table is still the module's and still at its address."""
    return all(store.get(name) is t and t.data_ptr() == ptr for store, name, t, ptr in table)


def input_memory_format(model: nn.Module) -> torch.memory_format:
    """channels_last if the model's convolution weights are (the Trainer's default layout), else
    contiguous: the static input buffer is laid out like the batches the model expects."""
    for p in model.parameters():
        if p.dim() == 4 and not p.is_contiguous() and p.is_contiguous(memory_format=torch.channels_last):
            return torch.channels_last
    return torch.contiguous_format
