"""torch.distributed for Selective-Backprop: the process group from the torchrun environment, the
DDP wrapper, and the few timed collectives the selection needs.

Launch: ``torchrun --nproc-per-node N -m sb_accel train ...``. torchrun sets ``WORLD_SIZE``,
``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init_distributed` reads them
and calls ``init_process_group``: NCCL on CUDA (device ``cuda:LOCAL_RANK``), gloo on the CPU. A
process group the caller initialised already is used as it is. Without either, it returns None
and the run is an ordinary single-process run.

Every collective here must be called by every rank, the same number of times, in the same order.
The trainer guarantees it by construction (docs/DISTRIBUTED.md): ranks have equal candidate counts,
so one loss gather and one readiness reduction per candidate batch line up; steps are taken in
lockstep, so collectives at step counts (logging, evaluation) line up; and the rest happens at
epoch ends. Each call's wall-clock is added to :attr:`RankGroup.seconds` under its kind, and the
DDP gradient all-reduce is timed by a comm hook (:func:`wrap_ddp`), so the communication share of
a step can be reported.
"""
from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel

from ..config import ConfigError
from ..device import resolve_device
from ..transfer import to_device

__all__ = ["RankGroup", "init_distributed", "wrap_ddp", "torchrun_env_present", "per_rank", "COMM_KINDS"]

# What RankGroup.seconds counts, one entry per kind of collective.
COMM_KINDS = ("loss_gather", "ready", "grad_allreduce", "counters", "tables", "buffers", "objects")

_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK")


def per_rank(size: int, world_size: int, name: str = "batch_size") -> int:
    """A global batch size divided over the ranks; it must divide evenly (:class:`ConfigError`)."""
    if size % world_size:
        raise ConfigError(f"{name}: {size} is the global batch and must divide evenly over the {world_size} "
                          f"processes; use a multiple of {world_size}, e.g. {max(size // world_size, 1) * world_size}")
    return size // world_size


def torchrun_env_present() -> bool:
    """Whether this process was started by torchrun (or another launcher setting its variables)."""
    return all(name in os.environ for name in _ENV)


@dataclass
class RankGroup:
    """This process's place in the default process group, and timed collectives over it.

    ``device``: this rank's training device (``cuda:LOCAL_RANK`` on CUDA, else the CPU);
    ``comm_device``: where collective tensors live (the training device under NCCL, the CPU under gloo).
    ``seconds`` / ``calls``: time and count per kind of collective (``loss_gather``, ``ready``,
    ``counters``, ``tables``, ``objects``, ``grad_allreduce``; the last is in flight, measured from a
    bucket's launch to its completion, and overlaps the backward pass). Under NCCL a collective runs
    asynchronously on the device's stream, so it is timed with CUDA events there (resolved when
    ``seconds`` is read: at intervals and epoch ends); a host clock would time the launch and charge
    the wait to whichever call reads a result next. Under gloo: the host clock.
    """

    world_size: int
    rank: int
    local_rank: int
    device: torch.device
    comm_device: torch.device
    owns_group: bool = False
    calls: Dict[str, int] = field(default_factory=dict)
    _seconds: Dict[str, float] = field(default_factory=dict, repr=False)
    _in_flight: List[Tuple[str, Any, Any]] = field(default_factory=list, repr=False)  # (kind, start, end) events
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def joined(cls, device: torch.device) -> Optional["RankGroup"]:
        """This process's place in a process group someone else initialised (the user's script, a
        launcher), training on ``device``; None without one, or with one process."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return None
        comm = device if dist.get_backend() == "nccl" else torch.device("cpu")
        local = device.index if device.type == "cuda" and device.index is not None else 0
        return cls(dist.get_world_size(), dist.get_rank(), local, device, comm)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def seconds(self) -> Dict[str, float]:
        """Seconds per kind of collective so far (under NCCL: waits for the last timed one once)."""
        with self._lock:
            spans, self._in_flight = self._in_flight, []
        if spans:
            spans[-1][2].synchronize()
            for kind, start, end in spans:
                self._seconds[kind] = self._seconds.get(kind, 0.0) + start.elapsed_time(end) / 1000.0
        return self._seconds

    def mark(self) -> Any:
        """A point on the communication timeline: a CUDA event on the device's current stream under
        NCCL, else the host clock."""
        if self.comm_device.type != "cuda":
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record(torch.cuda.current_stream(self.comm_device))
        return event

    def add_span(self, kind: str, start: Any, end: Any) -> None:
        """Count one ``kind`` collective from mark ``start`` to mark ``end``."""
        with self._lock:  # the gradient all-reduce reports from the backend's thread
            if isinstance(start, float):
                self._seconds[kind] = self._seconds.get(kind, 0.0) + end - start
            else:
                self._in_flight.append((kind, start, end))
            self.calls[kind] = self.calls.get(kind, 0) + 1

    @contextmanager
    def timed(self, kind: str) -> Iterator[None]:
        start = self.mark()
        try:
            yield
        finally:
            self.add_span(kind, start, self.mark())

    def close(self) -> None:
        """Destroy the process group if :func:`init_distributed` created it."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False

    # --- tensors --------------------------------------------------------------------------------
    def gather_losses(self, local: torch.Tensor) -> Tuple[torch.Tensor, int]:
        """Every rank's losses concatenated in rank order (float64, on the communication device)
        and where this rank's start.

        A :data:`sb_accel.selection.history.Gather` hook: every rank must pass the same number of
        losses (the trainer's candidate batches are equal on every rank).
        """
        with self.timed("loss_gather"):
            mine = local.to(self.comm_device, torch.float64)
            parts = [torch.empty_like(mine) for _ in range(self.world_size)]
            dist.all_gather(parts, mine)
            return torch.cat(parts), self.rank * local.numel()

    def _reduce(self, values: Sequence[float], op: dist.ReduceOp, kind: str) -> List[float]:
        with self.timed(kind):
            # to the device pinned and asynchronously; reading the result back is the one sync (NCCL)
            t = to_device(torch.tensor(list(values), dtype=torch.float64), self.comm_device)
            dist.all_reduce(t, op=op)
            return t.tolist()

    def min_int(self, value: int, kind: str = "ready") -> int:
        return int(self._reduce([value], dist.ReduceOp.MIN, kind)[0])

    def max_int(self, value: int, kind: str = "ready") -> int:
        return int(self._reduce([value], dist.ReduceOp.MAX, kind)[0])

    def sum(self, values: Sequence[float], kind: str = "counters") -> List[float]:
        """Element-wise sums over the ranks (float64: exact for counts below 2**53)."""
        return self._reduce(values, dist.ReduceOp.SUM, kind)

    def mean_max(self, values: Dict[str, float], kind: str = "counters") -> Tuple[Dict[str, float], Dict[str, float]]:
        """Mean and max over the ranks of each value (the same keys on every rank)."""
        keys = sorted(values)
        sums = self._reduce([values[k] for k in keys], dist.ReduceOp.SUM, kind)
        maxima = self._reduce([values[k] for k in keys], dist.ReduceOp.MAX, kind)
        return ({k: s / self.world_size for k, s in zip(keys, sums)}, dict(zip(keys, maxima)))

    def gather_rows(self, rows: torch.Tensor, kind: str = "tables") -> List[torch.Tensor]:
        """Every rank's ``(k_r, c)`` float64 rows (``k_r`` may differ), as a list in rank order."""
        with self.timed(kind):
            count = torch.tensor([rows.shape[0]], dtype=torch.long, device=self.comm_device)
            counts = [torch.empty_like(count) for _ in range(self.world_size)]
            dist.all_gather(counts, count)
            sizes = [int(c) for c in counts]
            padded = torch.zeros((max(sizes), rows.shape[1]), dtype=torch.float64, device=self.comm_device)
            padded[: rows.shape[0]] = rows.to(self.comm_device, torch.float64)
            parts = [torch.empty_like(padded) for _ in range(self.world_size)]
            dist.all_gather(parts, padded)
            return [p[:n] for p, n in zip(parts, sizes)]

    def sync_buffers(self, model: nn.Module) -> None:
        """Give every rank rank 0's buffers (BatchNorm running statistics). DDP broadcasts them at
        the start of every training forward; a step's own update makes them differ until the next."""
        with self.timed("buffers"):
            for buffer in model.buffers():
                dist.broadcast(buffer.data, src=0)

    # --- Python objects -------------------------------------------------------------------------
    def gather_objects(self, obj: Any) -> Optional[List[Any]]:
        """Every rank's ``obj`` on rank 0 (a list in rank order); None on the other ranks."""
        with self.timed("objects"):
            out: Optional[List[Any]] = [None] * self.world_size if self.is_main else None
            dist.gather_object(obj, out, dst=0)
            return out

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        with self.timed("objects"):
            box = [obj if self.is_main else None]
            dist.broadcast_object_list(box, src=0)
            return box[0]


def init_distributed(device: str = "auto", timeout: Optional[timedelta] = None) -> Optional[RankGroup]:
    """The :class:`RankGroup` of this process, initialising the process group from the torchrun
    environment if needed; None for a single-process run.

    ``device`` is the run's device setting: on CUDA each rank takes ``cuda:LOCAL_RANK`` and NCCL,
    on the CPU gloo. An explicit ``cuda:N`` is refused under more than one process (ambiguous).
    """
    initialised = dist.is_available() and dist.is_initialized()
    if not initialised and not torchrun_env_present():
        return None
    if not dist.is_available():
        raise ConfigError("torchrun started this process but this PyTorch build has no torch.distributed")
    resolved = resolve_device(device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    world_size = dist.get_world_size() if initialised else int(os.environ["WORLD_SIZE"])
    if resolved.type == "cuda":
        if device.startswith("cuda:") and world_size > 1:
            raise ConfigError(f"device: {device!r} under torchrun; use --device cuda (each rank takes cuda:LOCAL_RANK)")
        if not device.startswith("cuda:"):
            resolved = torch.device("cuda", local_rank)
        torch.cuda.set_device(resolved)
    if not initialised:
        backend = "nccl" if resolved.type == "cuda" else "gloo"
        kwargs = {"timeout": timeout} if timeout is not None else {}
        dist.init_process_group(backend, **kwargs)
    backend = dist.get_backend()
    if backend == "nccl" and resolved.type != "cuda":
        raise ConfigError("the process group uses NCCL but the run is on the CPU; use --device cuda or gloo")
    comm_device = resolved if backend == "nccl" else torch.device("cpu")
    return RankGroup(dist.get_world_size(), dist.get_rank(), local_rank, resolved, comm_device,
                     owns_group=not initialised)


def wrap_ddp(model: nn.Module, group: RankGroup) -> DistributedDataParallel:
    """``model`` in DistributedDataParallel (rank 0's weights broadcast now, gradients averaged in
    ``backward``), with the gradient all-reduce timed into ``group.seconds["grad_allreduce"]``.

    Timed from a bucket's launch to its completion callback: on gloo with the host clock, on NCCL
    with CUDA events (the callback runs on the stream the all-reduce completes on).
    """
    ddp = DistributedDataParallel(model, device_ids=[group.device.index] if group.device.type == "cuda" else None)

    def timed_allreduce(state, bucket):  # unannotated: DDP checks annotations, which are strings here
        start = group.mark()

        def done(fut: torch.futures.Future) -> torch.Tensor:
            group.add_span("grad_allreduce", start, group.mark())
            return fut.value()

        return default_hooks.allreduce_hook(None, bucket).then(done)

    ddp.register_comm_hook(None, timed_allreduce)
    return ddp


