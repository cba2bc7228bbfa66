"""Pipelined selection (paper §3.3): a background thread prepares the next candidate batches and
runs their selection passes while the main thread trains.

The worker fetches a candidate batch, asks the policy which candidates need a fresh loss, and runs
the engine on those; the main thread then lets the policy decide (policy state stays single-
threaded apart from ``requires_forward``, which only reads it). ONNX Runtime and PyTorch release
the GIL inside their kernels, so the two overlap. The engine must be a snapshot, never the live
model being trained, and anything that changes the engine (a refresh) must hold :attr:`lock`.

Timing stays honest: the worker's busy time is reported separately (``busy_seconds``); the
trainer's ``selection`` phase then only holds the time it actually waited for the queue.
"""
from __future__ import annotations

import queue
import threading
import time
from typing import Callable, Iterator, Optional, Tuple

import torch

from ..engines import SelectionEngine
from ..selection import SelectionPolicy
from .driver import ScoredCandidates, score_candidates

__all__ = ["SelectionPipeline"]


_DONE = object()


class SelectionPipeline:
    """Runs ``score_candidates`` for one epoch's candidate batches in a worker thread.

    Args:
        batches: the epoch's candidate batches ``(x, y, indices)``.
        engine: a callable returning the engine to use now (the refresher may swap it).
        policy: the selection policy (only ``requires_forward`` is called from the worker).
        epoch: the epoch number.
        depth: how many scored batches may wait in the queue.
    """

    def __init__(self, batches: Iterator[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
                 engine: Callable[[], SelectionEngine], policy: SelectionPolicy, epoch: int, depth: int = 2) -> None:
        self.lock = threading.Lock()
        self.busy_seconds = 0.0
        self._queue: "queue.Queue[object]" = queue.Queue(maxsize=depth)
        self._error: Optional[BaseException] = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, args=(batches, engine, policy, epoch),
                                        name="sb-selection", daemon=True)
        self._thread.start()

    def _work(self, batches, engine, policy, epoch) -> None:
        try:
            for x, y, idx in batches:
                start = time.perf_counter()
                with self.lock:
                    scored = score_candidates(engine(), policy, x, y, idx, epoch)
                self.busy_seconds += time.perf_counter() - start
                while not self._stop.is_set():
                    try:
                        self._queue.put(scored, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
        except BaseException as exc:  # re-raised in the main thread
            self._error = exc
        self._queue.put(_DONE)

    def __iter__(self) -> Iterator[ScoredCandidates]:
        while True:
            item = self._queue.get()
            if item is _DONE:
                if self._error is not None:
                    raise self._error
                return
            yield item  # type: ignore[misc]

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get_nowait()
            except queue.Empty:
                pass
            self._thread.join(timeout=0.05)
