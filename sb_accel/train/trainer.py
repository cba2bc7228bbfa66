"""The training loop of Selective-Backprop (paper Alg. 1), composed of a few named parts.

    source    candidate batches of each epoch (:mod:`.candidates`)
    driver    the selector: selection forwards, policy, backprop batcher, engine refresh (:mod:`.selector`)
    learner   the model, optimizer, LR schedule and AMP: one training step, the test evaluation (:mod:`.learner`)
    timer     where the wall-clock goes, phase by phase (:mod:`.timer`)
    guard     NaN/inf detection without a per-step sync (:mod:`.divergence`)
    run       the run directory: log file, config, checkpoints, resume (:mod:`.run_directory`)
    log       the run's events over all ranks (:mod:`.progress`)
    group     the ranks under torchrun (:mod:`.distributed`; None in one process)

The Trainer holds the loop and its counters; a checkpoint is its :meth:`~Trainer.state_dict`, made
of the parts' own. Under torchrun the same config trains with DistributedDataParallel:
``batch_size`` is the global batch, ranks select from their shards against one loss history and
step in lockstep, and rank 0 writes the log and the checkpoint (docs/DISTRIBUTED.md).
"""
from __future__ import annotations

import contextlib
import random
from typing import Any, Dict, Iterator, Optional

import numpy as np
import torch

from ..config import TrainConfig
from ..data import ArrayDataset, dataset_fingerprint
from ..device import resolve_device
from ..selection import TrainBatch
from .candidates import candidate_batch_size, candidate_source, training_data
from .distributed import RankGroup, init_distributed, per_rank
from .divergence import DivergenceGuard, check_finite_weights, divergence_hint
from .learner import Learner
from .pipeline import SelectionPipeline
from .progress import DistributedRunLogger, Progress, RunLogger, across_ranks, combine_evaluations, distributed_fields
from .run_directory import RunDirectory
from .selector import build_selector
from .timer import PhaseTimer

__all__ = ["Trainer"]

# What each rank of a distributed run holds for itself in a checkpoint (the rest is shared).
RANK_STATE = ("backprops", "selection_background", "driver", "source", "phases", "comm_seconds", "comm_calls")


class Trainer:
    """Runs one configured training job end to end; ``fit()`` returns the summary event.

    Under torchrun (or in a process group the caller initialised) every rank constructs a Trainer
    with the same config and calls ``fit()``; every rank returns the same summary.

    Args:
        config: the run's configuration.
        data: a dataset already in memory (default: ``load_dataset(config.dataset)``).
        resume: continue from ``<run_dir>/checkpoint.pt`` (an error if there is none).
        overwrite: start afresh even if ``run_dir`` holds an earlier run's log.
    """

    def __init__(self, config: TrainConfig, data: Optional[ArrayDataset] = None, resume: bool = False,
                 overwrite: bool = False) -> None:
        self.cfg = cfg = config
        self.group: Optional[RankGroup] = init_distributed(cfg.device)
        self.rank, self.world_size = (0, 1) if self.group is None else (self.group.rank, self.group.world_size)
        self.device = resolve_device(cfg.device) if self.group is None else self.group.device
        self.run = RunDirectory(cfg, self.group, resume, overwrite)  # refused before anything is loaded or built
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        _seed_everything(cfg.seed)

        self.data = training_data(cfg, data)
        memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        # Under DDP: one permutation for all ranks (the sampler), augmentation and selection draws per rank.
        rank_seed = cfg.seed if self.group is None else cfg.seed + 1 + self.rank
        self.source, self.eval_data = candidate_source(cfg, self.data, self.device, memory_format, rank_seed, self.group)
        self.learner = Learner(cfg, self.data, self.device, memory_format)
        self.timer = PhaseTimer(self.device)
        # A host read of the NaN flag per step costs nothing on CPU; on CUDA read it once per interval.
        self.guard = DivergenceGuard(self.device, 1 if self.device.type == "cpu" else cfg.log_every_steps)
        self.epoch = 0
        self.step = 0
        self.progress = 0.0          # epochs' worth of candidates passed over (drives the LR)
        self.backprops = 0           # examples backpropagated
        self.last_acc = float("nan")
        self.selection_background = 0.0  # seconds the pipeline's worker spent selecting
        self.pipeline: Optional[SelectionPipeline] = None

        self.timer.start()
        state = self.run.resume_state(dataset_fingerprint(self.data))
        if state is not None:  # before the selector: its engine is built (and calibrated) from these weights
            self.load_state_dict(state)
        self.learner.distribute(self.group)
        with self.timer.phase("refresh"):  # building the first engine is a real cost of the method
            self.driver, self.history = build_selector(cfg, self.model, self.data, self.device, memory_format,
                                                       self.group, rank_seed, self.step)
        if state is not None:
            self.driver.load_state_dict(state["driver"], self.device)
        self.guard.watch(self.driver.selection_losses.check)  # on a GPU: read with the training loss's

        # The run directory is written only now that everything is built: a failed set-up leaves nothing.
        log = self.run.open_log()
        self.log = RunLogger(log, self.device) if self.group is None else DistributedRunLogger(log, self.device, self.group)
        if state is not None:
            self.log.write("resume", epoch=self.epoch, step=self.step)
        else:
            self._log_start()
        self.log.engine_events(self.driver.after_step(self.model, self.step))  # the engine build event
        if state is None:  # so that --resume works from the first step on
            self._save_checkpoint()

    @property
    def model(self) -> torch.nn.Module:
        """The model being trained (the learner's)."""
        return self.learner.model

    def _log_start(self) -> None:
        """The ``config`` event of a new run, then its ``config.json``."""
        ddp = {} if self.group is None else {"world_size": self.world_size, "ddp_history": self.cfg.ddp_history,
                                             "batch_size_per_rank": per_rank(self.cfg.batch_size, self.world_size)}
        self.log.start(self.cfg, policy=repr(self.driver.policy), engine=self.driver.engine_name,
                       device=str(self.device), dataset_size=len(self.data.y_train), loss_history=self.history,
                       parameters=sum(p.numel() for p in self.model.parameters()), **ddp)
        self.run.save_config()

    # --- run state ------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """The run's state for a checkpoint: the dataset's fingerprint, the loop's counters and the
        parts' own state dicts (learner, driver, candidate source, timer; under DDP the
        communication counters). The keys in :data:`RANK_STATE` differ between ranks."""
        state = {"dataset": dataset_fingerprint(self.data), "epoch": self.epoch, "step": self.step,
                 "progress": self.progress, "last_acc": self.last_acc, **self.learner.state_dict(),
                 "backprops": self.backprops, "selection_background": self.selection_background,
                 "driver": self.driver.state_dict(), "source": self.source.state_dict(), "phases": self.timer.state_dict()}
        if self.group is not None:
            state.update(comm_seconds=dict(self.group.seconds), comm_calls=dict(self.group.calls))
        return state

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Continue from ``state`` (:meth:`state_dict`), all but the driver's: a resumed Trainer
        builds its driver from the restored weights and step, then loads ``state["driver"]``."""
        self.learner.load_state_dict(state)
        self.epoch, self.step, self.progress, self.last_acc = (state[k] for k in ("epoch", "step", "progress", "last_acc"))
        self.backprops = state["backprops"]
        self.selection_background = state["selection_background"]
        self.source.load_state_dict(state["source"])
        self.timer.load_state_dict(state["phases"])
        if self.group is not None:
            self.group.seconds.update(state["comm_seconds"])
            self.group.calls.update(state["comm_calls"])

    def _save_checkpoint(self) -> None:
        if self.cfg.checkpoint:
            check_finite_weights(self.model, self.step, self._divergence_hint())
            # under DDP a collective: every rank takes part
            self.run.save(self.state_dict(), own=RANK_STATE, tables=self.driver.tables)

    # --- the loop -------------------------------------------------------------------------------
    def selection_batch_size(self, epoch: int) -> int:
        """This rank's candidate-batch size in ``epoch``."""
        return candidate_batch_size(self.cfg, self.world_size, self.driver.candidates_per_batch(epoch), self.device)

    def fit(self) -> Dict[str, Any]:
        cfg = self.cfg
        n = len(self.source)
        bar = Progress(cfg.progress and self.rank == 0, total=cfg.epochs * n, initial=self.epoch * n)
        try:
            while self.epoch < cfg.epochs:
                self.train_epoch(bar)
        finally:
            bar.close()
        return self.finish()

    def train_epoch(self, bar: Optional[Progress] = None) -> None:
        """Train, evaluate and checkpoint the next epoch. :meth:`fit` calls it until the last epoch;
        a caller that interleaves several runs in one process calls it (between ``timer.resume()``
        and ``timer.pause()``), then :meth:`finish`."""
        bar = bar or Progress(False, total=0)
        try:
            self._run_epoch(bar)
            self.epoch += 1
            self._end_epoch()
        except FloatingPointError as exc:  # divergence, seen in the training or the selection losses
            self.log.write("diverged", epoch=self.epoch, step=self.step, error=str(exc))
            raise
        bar.epoch_done(self.epoch, self.cfg.epochs, acc=f"{self.last_acc:.4f}", steps=self.step,
                       kept=f"{self.backprops / max(self.driver.candidates, 1):.2f}")

    def _run_epoch(self, bar: Progress) -> None:
        cfg, driver = self.cfg, self.driver
        driver.start_epoch(self.epoch)
        n = len(self.source)
        batches: Iterator = self.source.epoch(self.selection_batch_size(self.epoch))
        if cfg.pipeline:  # the worker yields ScoredBatches instead of (x, y, indices)
            self.pipeline = SelectionPipeline(batches, driver.score, cfg.pipeline_depth, self.device)
            batches = iter(self.pipeline)
        try:
            while True:
                self.timer.switch("selection" if cfg.pipeline else "data")  # pipeline: waiting for the worker
                candidate = next(batches, None)
                if candidate is None:
                    break
                # The driver selects lazily, as _train_on asks it for batches: that time is "selection".
                self.timer.switch("selection")
                scored = candidate if cfg.pipeline else driver.score(*candidate)
                self._train_on(driver.submit(scored))
                self.progress += scored.candidates / n
                bar.update(scored.candidates)
        finally:
            if self.pipeline is not None:
                self.pipeline.close()
                self.selection_background += self.pipeline.busy_seconds
                self.pipeline = None
        self.timer.switch("selection")
        self._train_on(driver.end_epoch())
        driver.finish_epoch()
        self.timer.switch("other")

    def _train_on(self, batches: Iterator[TrainBatch]) -> None:
        """Train on each batch the driver yields (its work between them, scoring and batching the
        candidates, is timed as selection)."""
        for batch in batches:
            self._train_step(batch)
            self.timer.switch("selection")

    def _train_step(self, batch: TrainBatch) -> None:
        cfg = self.cfg
        result = self.learner.step(batch, self.progress, self.timer)
        self.step += 1
        self.backprops += len(batch)
        self.timer.switch("bookkeeping")
        self.driver.observe(batch, result.per_example)
        self.guard.update(result.loss, self.step)
        self.log.add_loss(result.loss, len(batch))
        self.timer.switch("refresh")
        with self._engine_lock():
            self.log.engine_events(self.driver.after_step(self.model, self.step))
        self.timer.switch("other")
        self.guard.check(self.step, hint=self._divergence_hint())
        if self.step % cfg.log_every_steps == 0:
            self.log.interval(self.driver, epoch=self.epoch, step=self.step, wall=self._wall(), lr=result.lr,
                              backprops=self.backprops, staleness=self.driver.staleness(self.step))
        if cfg.eval_every_steps and self.step % cfg.eval_every_steps == 0:
            self.evaluate()

    def _engine_lock(self):
        """Engine changes must not race the pipeline's worker."""
        return self.pipeline.lock if self.pipeline is not None else contextlib.nullcontext()

    def _divergence_hint(self) -> str:
        return divergence_hint(self.cfg.lr, self.run.path)

    def _wall(self) -> float:
        totals = self.timer.totals()
        return sum(totals.values()) - totals["eval"]

    def _totals(self) -> Dict[str, Any]:
        """Counters, phase times and wall-clock so far; under DDP over all ranks (counters summed,
        ``phases`` the mean and ``phases_max`` the max over the ranks, ``wall`` the max)."""
        d = self.driver
        counts = {"candidates": d.candidates, "forwards": d.forwards, "backprops": self.backprops,
                  "pending": d.pending(), "dropped": d.dropped}
        return across_ranks(self.group, counts, self.timer.totals())

    def evaluate(self) -> Dict[str, Any]:
        """Test accuracy and loss; logged as an ``eval`` event."""
        with self.timer.phase("eval"):
            result = self.learner.evaluate(self.eval_data, self.cfg.batch_size)
            if self.group is not None:  # each rank evaluated its share of the test split
                result = combine_evaluations(self.group, result, len(self.eval_data.y_test))
        self.last_acc = result["test_acc"]
        t = self._totals()
        return self.log.write("eval", epoch=self.progress, step=self.step, wall=t["wall"],
                              test_error=1.0 - result["test_acc"], backprops=t["backprops"], forwards=t["forwards"],
                              candidates=t["candidates"], phases=t["phases"], **result)

    def _end_epoch(self) -> None:
        self.guard.check(self.step, force=True, hint=self._divergence_hint())
        if self.group is not None:  # one model everywhere: for the engines, the evaluation and the checkpoint
            self.group.sync_buffers(self.model)
        with self.timer.phase("refresh"):
            self.log.engine_events(self.driver.after_epoch(self.model, self.step))
        if not self.cfg.eval_every_steps or self.step % self.cfg.eval_every_steps:
            self.evaluate()
        t = self._totals()
        self.log.write("epoch", epoch=self.epoch, step=self.step, wall=t["wall"], candidates=t["candidates"],
                       forwards=t["forwards"], backprops=t["backprops"], pending=t["pending"],
                       selection_background=self.selection_background, phases=t["phases"], **self._ddp_fields(t))
        self._save_checkpoint()

    def _ddp_fields(self, totals: Dict[str, Any]) -> Dict[str, Any]:
        """What a distributed run adds to epoch and summary events (:func:`distributed_fields`)."""
        return {} if self.group is None else distributed_fields(self.group, self.log, totals)

    def finish(self) -> Dict[str, Any]:
        """Write the summary event, close the engine and the log; returns the summary."""
        d = self.driver
        t = self._totals()
        summary = self.log.write(
            "summary", epochs=self.epoch, step=self.step, test_acc=self.last_acc, wall=t["wall"],
            wall_total=t["wall_total"], candidates=t["candidates"], forwards=t["forwards"],
            backprops=t["backprops"], selectivity=t["backprops"] / max(t["candidates"], 1),
            untrained_remainder=t["pending"], phases=t["phases"],
            selection_background=self.selection_background, engine=self.driver.engine_name,
            refreshes=0 if d.refresher is None else d.refresher.count, **self._ddp_fields(t))
        d.close()
        self.log.close()
        if self.group is not None:
            self.group.close()
        return summary


def _seed_everything(seed: int) -> None:
    """Python's, numpy's and torch's global generators (the run's own generators are seeded separately)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
