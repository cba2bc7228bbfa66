"""Pipelined selection (paper §3.3): a background thread prepares the next candidate batches and
runs their selection passes while the main thread trains.

The worker fetches a candidate batch and runs the driver's ``score`` on it (the policy's
``requires_forward``, which only reads its state, and the selection forwards, gathered as in a
serial run: :class:`~sb_accel.train.scoring.SelectionForwards`); the main thread then lets the
policy decide (``SelectionDriver.submit``), so the decisions are a serial run's. ONNX Runtime and
PyTorch release the GIL inside their kernels, so the two overlap. The engine must be a snapshot, never the live
model being trained, and anything that changes the engine (a refresh) must hold :attr:`lock`.

On CUDA one thread is not enough: kernels queued on the same stream run one after the other
whatever thread queued them. The worker therefore queues its work (the candidate batch's
augmentation and the selection forward) on a stream of its own, so it runs beside the training
kernels. The ordering between the streams is explicit: the worker waits for its batch's kernels
before it hands the batch over and lets go of the engine (so a refresh never overwrites weights a
queued forward still reads; only the worker thread blocks), a refresh records an event on the
training stream that the worker's next forward waits for, and every tensor handed over is marked
as used by the training stream (``record_stream``) so the allocator does not reuse its memory early.

Timing stays honest: the worker's busy time is reported separately (``busy_seconds``); the
trainer's ``selection`` phase then only holds the time it actually waited for the queue.
"""
from __future__ import annotations

import contextlib
import queue
import threading
import time
from typing import Callable, Iterator, Optional, Tuple

import torch

from .scoring import ScoredBatch

__all__ = ["SelectionPipeline"]


_DONE = object()


class _Streams:
    """The worker's CUDA stream beside the training stream, and the hand-over between them."""

    def __init__(self, device: torch.device) -> None:
        self.training = torch.cuda.current_stream(device)  # the main thread's stream
        self.side = torch.cuda.Stream(device)
        self.engine_changed: Optional[torch.cuda.Event] = None

    def adopt(self, scored: ScoredBatch) -> None:
        """The training stream takes over ``scored``'s tensors (made, and finished, on the side stream)."""
        for part in scored.parts:
            for t in (part.x, part.y, part.indices, part.losses):
                if t.is_cuda:
                    t.record_stream(self.training)


class _EngineLock:
    """The lock around the engine. The main thread holds it to change the engine (``with lock:``);
    on CUDA its release records where the training stream is, and the worker's next use waits for
    that point on its own stream. The worker's use ends when its kernels have finished."""

    def __init__(self, streams: Optional[_Streams]) -> None:
        self._lock = threading.Lock()
        self._streams = streams

    def __enter__(self) -> "_EngineLock":
        self._lock.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._streams is not None:
            self._streams.engine_changed = torch.cuda.Event()
            self._streams.engine_changed.record(self._streams.training)
        self._lock.release()

    @contextlib.contextmanager
    def held_by_worker(self) -> Iterator[None]:
        with self._lock:
            streams = self._streams
            if streams is None:
                yield
                return
            if streams.engine_changed is not None:
                streams.side.wait_event(streams.engine_changed)
            yield
            streams.side.synchronize()  # blocks the worker only


Candidates = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class SelectionPipeline:
    """Runs ``score`` for one epoch's candidate batches in a worker thread; iterating it yields a
    :class:`ScoredBatch` per candidate batch, in order, with every part's selection forward done.

    Args:
        batches: the epoch's candidate batches ``(x, y, indices)``.
        score: a candidate batch's selection forwards (``SelectionDriver.score``); the worker
            runs its lazy parts before handing the batch over.
        depth: how many scored batches may wait in the queue.
        device: the training device; on CUDA the worker's kernels go on a stream of their own.
    """

    def __init__(self, batches: Iterator[Candidates], score: Callable[[torch.Tensor, torch.Tensor, torch.Tensor],
                 ScoredBatch], depth: int = 2, device: torch.device | str = "cpu") -> None:
        device = torch.device(device)
        self._streams = _Streams(device) if device.type == "cuda" else None
        self.lock = _EngineLock(self._streams)
        self.busy_seconds = 0.0
        self._queue: "queue.Queue[object]" = queue.Queue(maxsize=depth)
        self._error: Optional[BaseException] = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, args=(batches, score),
                                        name="sb-selection", daemon=True)
        self._thread.start()

    def _work(self, batches: Iterator[Candidates], score: Callable[..., ScoredBatch]) -> None:
        try:
            with self._on_side_stream():
                for x, y, idx in batches:
                    start = time.perf_counter()
                    with self.lock.held_by_worker():
                        lazy = score(x, y, idx)
                        scored = ScoredBatch(lazy.candidates, list(lazy.parts))
                    self.busy_seconds += time.perf_counter() - start
                    if not self._hand_over(scored):
                        return
        except BaseException as exc:  # re-raised in the main thread
            self._error = exc
        self._queue.put(_DONE)

    def _on_side_stream(self):
        return contextlib.nullcontext() if self._streams is None else torch.cuda.stream(self._streams.side)

    def _hand_over(self, scored: ScoredBatch) -> bool:
        """Queue ``scored`` for the main thread; False once the pipeline is closed."""
        while not self._stop.is_set():
            try:
                self._queue.put(scored, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[ScoredBatch]:
        while True:
            item = self._queue.get()
            if item is _DONE:
                if self._error is not None:
                    raise self._error
                return
            if self._streams is not None:
                self._streams.adopt(item)  # type: ignore[arg-type]
            yield item  # type: ignore[misc]

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get_nowait()
            except queue.Empty:
                pass
            self._thread.join(timeout=0.05)
