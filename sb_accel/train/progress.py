"""What a run reports about its progress: the events of its RunLog (training-loss intervals,
evaluations, epochs, the summary) and the terminal's progress bar.

The training-loss sum stays on the device between interval events (one host read per interval,
none per step); selectivity per interval comes from the driver's cumulative counters.

Under DistributedDataParallel only rank 0 writes the log (:class:`~.run_directory.RunDirectory`)
and every rank contributes:

* Counters in ``interval``, ``eval``, ``epoch`` and ``summary`` events are sums over the ranks
  (``candidates``, ``forwards``, ``backprops``, selectivity, training loss). Phase times: ``phases``
  is the mean over the ranks (it still adds up to the mean wall-clock), ``phases_max`` the maximum;
  ``wall`` and ``wall_total`` are the maximum (the run is as slow as its slowest rank). So
  ``sb-accel report`` reads a distributed run like any other.
* Engine events (build, failed refresh, fallback, validated or full refresh) of ranks > 0 are
  tagged with their ``rank`` and forwarded to rank 0 at every interval and epoch end; routine
  unvalidated cheap refreshes are logged for rank 0 only.
"""
from __future__ import annotations

import sys
import time
from typing import Any, Dict, List, Optional, TextIO

import torch

from ..config import TrainConfig
from .distributed import COMM_KINDS, RankGroup
from .driver import SelectionDriver

__all__ = ["RunLogger", "DistributedRunLogger", "Progress", "across_ranks", "combine_evaluations",
           "distributed_fields"]


class RunLogger:
    """Writes the events of one training run to ``log`` (a RunLog)."""

    def __init__(self, log: Any, device: torch.device) -> None:
        self.log = log
        self.device = device
        self._reset({"candidates": 0, "kept": 0})

    def _reset(self, marks: Dict[str, int]) -> None:
        self._loss_sum = torch.zeros((), device=self.device)
        self._examples = 0
        self._marks = marks

    def add_loss(self, mean_loss: torch.Tensor, examples: int) -> None:
        """Account one training batch's mean loss (no host sync)."""
        self._loss_sum += mean_loss.detach() * examples
        self._examples += examples

    def interval(self, driver: SelectionDriver, **fields: Any) -> Dict[str, Any]:
        """An ``interval`` event: mean training loss and selectivity since the last one."""
        candidates = driver.candidates - self._marks["candidates"]
        kept = driver.kept - self._marks["kept"]
        record = self.log.write("interval", train_loss=float(self._loss_sum) / max(self._examples, 1),
                                selectivity=kept / max(candidates, 1), candidates=driver.candidates,
                                forwards=driver.forwards, **fields)
        self._reset({"candidates": driver.candidates, "kept": driver.kept})
        return record

    def write(self, event: str, **fields: Any) -> Dict[str, Any]:
        return self.log.write(event, **fields)

    def start(self, cfg: TrainConfig, **fields: Any) -> None:
        """The ``config`` event: the resolved config, versions, threads and ``fields``."""
        self.log.write("config", config=cfg.to_dict(), torch=torch.__version__, threads=torch.get_num_threads(),
                       **fields)

    def engine_events(self, events: List[Dict[str, Any]]) -> None:
        """Log the events an engine refresher returned (build, refresh, fallback)."""
        for event in events:
            self.write(**event)

    def close(self) -> None:
        self.log.close()


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
    return event.get("event") != "refresh" or bool(event.get("validated")) or event.get("kind") == "full"


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
    rank's), from each rank's :meth:`~sb_accel.train.learner.Learner.evaluate` result."""
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


class Progress:
    """Progress on the terminal, counted in candidates: a tqdm bar on a TTY, elsewhere (logs, CI,
    pipes) one line at each epoch end."""

    def __init__(self, enabled: bool, total: int, initial: int = 0, stream: Optional[TextIO] = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self._bar: Any = None
        if enabled and self.stream.isatty():
            from tqdm.auto import tqdm
            self._bar = tqdm(total=total, initial=initial, unit="ex", unit_scale=True, dynamic_ncols=True,
                             leave=False, file=self.stream)

    def update(self, examples: int) -> None:
        if self._bar is not None:
            self._bar.update(examples)

    def epoch_done(self, epoch: int, epochs: int, **stats: Any) -> None:
        text = " ".join(f"{k}={v}" for k, v in stats.items())
        if self._bar is not None:
            self._bar.set_postfix_str(text)
        elif self.enabled:
            print(f"epoch {epoch}/{epochs} {text}", file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
