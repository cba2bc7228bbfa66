"""What a distributed run logs and saves: rank 0 writes, every rank contributes.

* **RunLog**: only rank 0 writes ``log.jsonl`` (the other ranks log into a :class:`NullRunLog`).
  Counters in ``interval``, ``eval``, ``epoch`` and ``summary`` events are sums over the ranks
  (``candidates``, ``forwards``, ``backprops``, selectivity, training loss). Phase times: ``phases``
  is the mean over the ranks (it still adds up to the mean wall-clock), ``phases_max`` the maximum;
  ``wall`` and ``wall_total`` are the maximum (the run is as slow as its slowest rank). So
  ``sb-accel report`` reads a distributed run like any other.
* **Engine events** (build, failed refresh, fallback, validated refresh or rebuild) of ranks > 0 are
  tagged with their ``rank`` and forwarded to rank 0 at every interval and epoch end; routine
  unvalidated cheap refreshes are logged for rank 0 only.
* **Checkpoints**: every rank's own state (its policy with the SB history and generator, its
  batcher and lockstep queue, loader and sampler generators, phase and communication times) is
  gathered to rank 0, which writes one checkpoint. Rank 0's state sits at the top level, as in a
  single-process checkpoint; the others' under ``ranks``, their per-example tables (identical on
  every rank after the epoch's synchronisation) replaced by a reference to rank 0's.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from ..config import ConfigError
from .checkpoint import load_checkpoint, prepare_run_dir
from .distributed import COMM_KINDS, RankGroup
from .run_logger import RunLogger
from .tables import ExampleTables, fill_shared

__all__ = ["NullRunLog", "DistributedRunLogger", "across_ranks", "combine_evaluations", "distributed_fields",
           "prepare_run_dir_on_ranks", "gather_rank_states", "rank_state", "on_host"]


class NullRunLog:
    """The RunLog of ranks > 0: accepts events, writes nothing."""

    offset = 0

    def write(self, event: str, **fields: Any) -> Dict[str, Any]:
        return {"event": event, "time": time.time(), **fields}

    def close(self) -> None:
        pass


class DistributedRunLogger(RunLogger):
    """:class:`RunLogger` whose intervals sum the ranks' counters and which forwards the ranks'
    engine events to rank 0. Every rank must call :meth:`interval` and :meth:`flush_ranks` at the
    same points (the trainer does: at step counts, which the ranks reach in lockstep)."""

    def __init__(self, log: Any, device: torch.device, group: RankGroup) -> None:
        super().__init__(log, device)
        self.group = group
        self._buffered: List[Dict[str, Any]] = []

    def engine_events(self, events: List[Dict[str, Any]]) -> None:
        """Log engine events with this rank's number (ranks > 0: at the next flush)."""
        for event in events:
            tagged = {**event, "rank": self.group.rank}
            if self.group.is_main:
                self.write(**tagged)
            elif _worth_forwarding(tagged):
                self._buffered.append({"time": time.time(), **tagged})

    def flush_ranks(self) -> None:
        """Write the other ranks' buffered engine events (a collective)."""
        gathered = self.group.gather_objects(self._buffered)
        self._buffered = []
        for events in gathered or []:
            for event in events:
                self.write(**event)

    def interval(self, driver: Any, **fields: Any) -> Dict[str, Any]:
        """An ``interval`` event over all ranks: counters and ``backprops`` summed, the mean
        training loss over every rank's examples."""
        loss, examples, candidates, kept, forwards, backprops = self.group.sum(
            [float(self._loss_sum), self._examples, driver.candidates, driver.kept, driver.forwards,
             fields.pop("backprops", 0)])
        self._loss_sum = torch.full((), loss, device=self.device)  # a fill, not a copy from pageable memory
        self._examples = int(examples)
        self.flush_ranks()
        return super().interval(_Counts(int(candidates), int(kept), int(forwards)), backprops=int(backprops), **fields)


class _Counts:
    """The driver counters :meth:`RunLogger.interval` reads, summed over the ranks."""

    def __init__(self, candidates: int, kept: int, forwards: int) -> None:
        self.candidates, self.kept, self.forwards = candidates, kept, forwards


def _worth_forwarding(event: Dict[str, Any]) -> bool:
    return event.get("event") != "refresh" or bool(event.get("validated")) or event.get("kind") == "rebuild"


def across_ranks(group: Optional[RankGroup], counts: Dict[str, float], phases: Dict[str, float],
                 eval_phase: str = "eval") -> Dict[str, Any]:
    """``counts`` summed over the ranks, ``phases`` averaged (``phases_max``: the maximum), and the
    training wall-clock ``wall`` (all phases but evaluation) and ``wall_total`` as the maximum.
    Without ``group``: this process's numbers (no ``phases_max``)."""
    total = sum(phases.values())
    wall = total - phases.get(eval_phase, 0.0)
    if group is None:
        return {**counts, "phases": phases, "wall": wall, "wall_total": total}
    summed = dict(zip(counts, group.sum(list(counts.values()))))
    mean, maxima = group.mean_max({**{f"phase.{k}": v for k, v in phases.items()}, "wall": wall, "wall_total": total})
    return {**{k: int(v) for k, v in summed.items()},
            "phases": {k: mean[f"phase.{k}"] for k in phases}, "phases_max": {k: maxima[f"phase.{k}"] for k in phases},
            "wall": maxima["wall"], "wall_total": maxima["wall_total"]}


def combine_evaluations(group: RankGroup, result: Dict[str, float], examples: int) -> Dict[str, float]:
    """The test accuracy and loss over all ranks' shares of the test split (``examples``: this
    rank's), from each rank's :func:`~sb_accel.train.evaluation.evaluate` result."""
    correct, loss_sum, total = group.sum([round(result["test_acc"] * examples), result["test_loss"] * examples,
                                          examples])
    return {"test_acc": int(correct) / int(total), "test_loss": loss_sum / total}


def distributed_fields(group: RankGroup, log: DistributedRunLogger, totals: Dict[str, Any]) -> Dict[str, Any]:
    """What a distributed run adds to its ``epoch`` and ``summary`` events: the world size, the
    per-phase maximum over the ranks, the communication per collective kind (mean and max seconds
    per rank, calls) and its share of the wall-clock; the other ranks' engine events are written."""
    log.flush_ranks()
    mean, maxima = group.mean_max({k: group.seconds.get(k, 0.0) for k in COMM_KINDS})
    return {"world_size": group.world_size, "phases_max": totals["phases_max"], "dropped": totals["dropped"],
            "comm": {"seconds_mean": mean, "seconds_max": maxima, "calls": {k: group.calls.get(k, 0) for k in COMM_KINDS}},
            "comm_share": sum(mean.values()) / max(totals["wall_total"], 1e-9)}


def prepare_run_dir_on_ranks(group: RankGroup, run_dir: Path, resume: bool, overwrite: bool) -> Optional[Dict[str, Any]]:
    """:func:`~sb_accel.train.checkpoint.prepare_run_dir` on rank 0 (it may refuse the directory:
    every rank then raises the same error); the other ranks read the checkpoint to resume from the
    same directory (on a filesystem all nodes share)."""
    checkpoint, error = None, None
    if group.is_main:
        try:
            checkpoint = prepare_run_dir(run_dir, resume, overwrite)
        except Exception as exc:  # noqa: BLE001 - raised on every rank below
            error = exc
    error = group.broadcast_object(error)
    if error is not None:
        raise error
    return load_checkpoint(run_dir) if resume and not group.is_main else checkpoint


def gather_rank_states(group: RankGroup, state: Dict[str, Any], tables: Optional[ExampleTables]) -> Optional[List[Any]]:
    """Every rank's ``state`` on rank 0 for the checkpoint's ``ranks`` entry (rank 0's own is None:
    it is the checkpoint's top level); None on the other ranks."""
    mine = None if group.is_main else (tables.strip(state) if tables is not None else state)
    return group.gather_objects(on_host(mine))


def on_host(obj: Any) -> Any:
    """``obj`` with every tensor in it (through dicts, lists, tuples) copied to the CPU. An object
    collective pickles a tensor with its device: a rank's CUDA tensor would make rank 0 open a
    context on that rank's GPU, or fail where each process sees only its own GPU."""
    if torch.is_tensor(obj):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: on_host(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(on_host(v) for v in obj)
    return obj


def rank_state(checkpoint: Dict[str, Any], rank: int, world_size: int) -> Dict[str, Any]:
    """This rank's part of ``checkpoint`` (the top level for rank 0 and single-process runs)."""
    saved = int(checkpoint.get("world_size", 1))
    if saved != world_size:
        raise ConfigError(f"the checkpoint was written by {saved} process(es) but this run has {world_size}; "
                          f"resume with the same number (torchrun --nproc-per-node {saved}, or one process)")
    return checkpoint if rank == 0 else fill_shared(checkpoint["ranks"][rank], checkpoint)
