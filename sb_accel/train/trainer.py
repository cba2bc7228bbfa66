"""The training loop of Selective-Backprop (paper Alg. 1): the loop and nothing else.

candidate batches (data) -> :class:`SelectionDriver` (selection forwards, policy, backprop batcher,
engine refresh) -> train step (forward, backward, optimizer) -> driver.observe, timed phase by phase
by the :class:`PhaseTimer` and logged through the :class:`RunLogger` (parts built in ``factory``,
``engine_setup``, ``candidates``; run directory and checkpoints in ``checkpoint``, ``run_state``).

Under torchrun the same config trains with DistributedDataParallel: ``batch_size`` is the global
batch, ranks select from their shards against one loss history and step in lockstep, and rank 0
writes the log and the checkpoint (``distributed``, ``ranks``, docs/DISTRIBUTED.md).
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

import torch
import torch.nn.functional as F

from ..config import TrainConfig
from ..data import ArrayDataset
from ..device import resolve_device
from ..reporting.runlog import RunLog
from ..selection import TrainBatch
from .candidates import candidate_batch_size, candidate_source, loss_history_size, training_data
from .checkpoint import check_resumable, prepare_run_dir, save_checkpoint
from .distributed import RankGroup, init_distributed, per_rank, wrap_ddp
from .divergence import DivergenceGuard, check_finite_weights, divergence_hint
from .driver import SelectionDriver
from .engine_setup import build_refresher, sample_batches
from .evaluation import evaluate
from .factory import build_model, build_optimizer, build_policy, build_schedule, seed_everything
from .pipeline import SelectionPipeline
from .progress import Progress
from .ranks import (DistributedRunLogger, NullRunLog, across_ranks, combine_evaluations, distributed_fields,
                    prepare_run_dir_on_ranks, rank_state)
from .run_logger import RunLogger
from .run_state import checkpoint_state, restore_training_state
from .timer import PhaseTimer

__all__ = ["Trainer"]


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
        self.rank = 0 if self.group is None else self.group.rank
        self.world_size = 1 if self.group is None else self.group.world_size
        self.device = resolve_device(cfg.device) if self.group is None else self.group.device
        self.batch_size = per_rank(cfg.batch_size, self.world_size, "batch_size")
        self.ddp_history = cfg.ddp_history
        self.run_dir = Path(cfg.run_dir)
        checkpoint = (prepare_run_dir(self.run_dir, resume, overwrite) if self.group is None
                      else prepare_run_dir_on_ranks(self.group, self.run_dir, resume, overwrite))
        if checkpoint is not None:
            check_resumable(checkpoint["config"], cfg, self.run_dir)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        seed_everything(cfg.seed)

        self.data = data = training_data(cfg, data)
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        # Under DDP: one permutation for all ranks (the sampler), augmentation and selection draws per rank.
        rank_seed = cfg.seed if self.group is None else cfg.seed + 1 + self.rank
        self.source, self.eval_data = candidate_source(cfg, data, self.device, self.memory_format, rank_seed,
                                                       self.group)
        self.model = build_model(cfg, data.num_classes, data.in_channels).to(self.device, memory_format=self.memory_format)
        self.optimizer = build_optimizer(cfg, self.model)
        self.schedule = build_schedule(cfg)
        self.autocast_dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.amp]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.amp == "fp16")
        self.timer = PhaseTimer(self.device)
        # A host read of the NaN flag per step costs nothing on CPU; on CUDA read it once per interval.
        self.guard = DivergenceGuard(self.device, 1 if self.device.type == "cpu" else cfg.log_every_steps)

        self.epoch = 0
        self.step = 0
        self.progress = 0.0          # epochs' worth of candidates passed over (drives the LR)
        self.backprops = 0           # examples backpropagated
        self.last_acc = float("nan")
        self.pipeline: Optional[SelectionPipeline] = None
        self.selection_background = 0.0  # seconds the pipeline's worker spent selecting

        # R, in effect: every selection call (all ranks' under a global DDP history) must fit in it twice
        self.history = loss_history_size(cfg.history, self._candidate_batch(1) * (
            self.world_size if self.group is not None and self.ddp_history == "global" else 1))
        policy_cfg = cfg.replace(history=self.history)
        policy = build_policy(policy_cfg if self.group is None
                              else policy_cfg.replace(batch_size=self.batch_size, seed=rank_seed),
                              len(data.y_train)).to(self.device)  # decisions where the losses are
        self.timer.start()
        if checkpoint is not None:  # the weights first: the engine is built (and calibrated) from them
            restore_training_state(self, checkpoint)
        # DDP broadcasts rank 0's weights now and averages the gradients in every backward.
        self.train_model = self.model if self.group is None else wrap_ddp(self.model, self.group)
        with self.timer.phase("refresh"):  # building the first engine is a real cost of the method
            refresher = None
            if policy.needs_selection_forward:
                max_batch = self._candidate_batch(policy.candidate_multiplier)  # the most it may ask for
                samples = sample_batches(data, cfg.batch_size, self.device, self.memory_format)
                refresher = build_refresher(cfg, self.model, samples, self.device, max_batch, self.step)
        self.driver = SelectionDriver(policy, self.batch_size, refresher, end_of_epoch=cfg.end_of_epoch,
                                      num_epochs=cfg.epochs, group=self.group, dataset_size=len(data.y_train),
                                      shared_history=self.ddp_history == "global",
                                      forward_batch_size=self._candidate_batch(1))
        self.guard.watch(self.driver.selection_losses.check)  # on a GPU: read with the training loss's
        # The run directory is written only now that everything is built: a failed set-up leaves nothing.
        run_log = (RunLog(self.run_dir, truncate_at=checkpoint["log_offset"] if checkpoint else None)
                   if self.rank == 0 else NullRunLog())
        self.log = (RunLogger(run_log, self.device) if self.group is None
                    else DistributedRunLogger(run_log, self.device, self.group))
        if checkpoint is not None:
            self.driver.load_state_dict(rank_state(checkpoint, self.rank, self.world_size)["driver"], self.device)
            self.log.write("resume", epoch=self.epoch, step=self.step)
        else:
            ddp = {} if self.group is None else {"world_size": self.world_size, "ddp_history": self.ddp_history,
                                                 "batch_size_per_rank": self.batch_size}
            self.log.start(cfg, self.run_dir if self.rank == 0 else None, policy=repr(policy),
                           engine=self.driver.engine_name, device=str(self.device), dataset_size=len(data.y_train),
                           loss_history=self.history,
                           parameters=sum(p.numel() for p in self.model.parameters()), **ddp)
        self.log.engine_events(self.driver.after_step(self.model, self.step))  # the engine build event
        if checkpoint is None:  # so that --resume works from the first step on
            self._save_checkpoint()

    def _candidate_batch(self, multiplier: int) -> int:
        return candidate_batch_size(self.cfg, self.world_size, multiplier, self.device)

    def selection_batch_size(self, epoch: int) -> int:
        """This rank's candidate-batch size in ``epoch``."""
        return self._candidate_batch(self.driver.candidates_per_batch(epoch))

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
        if cfg.pipeline:  # the worker yields ScoredCandidates instead of (x, y, indices)
            self.pipeline = SelectionPipeline(batches, lambda: driver.engine, driver.policy, self.epoch,
                                              cfg.pipeline_depth, self.device)
            batches = iter(self.pipeline)
        try:
            while True:
                self.timer.switch("selection" if cfg.pipeline else "data")  # pipeline: waiting for the worker
                candidate = next(batches, None)
                if candidate is None:
                    break
                self.timer.switch("selection")
                self._train_on(driver.submit(candidate) if cfg.pipeline else driver.select(*candidate))
                count = len(candidate.indices if cfg.pipeline else candidate[2])
                self.progress += count / n
                bar.update(count)
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
        """Train on each batch the driver yields (its work between them is timed as selection)."""
        for batch in batches:
            self._train_step(batch)
            self.timer.switch("selection")

    def _train_step(self, batch: TrainBatch) -> None:
        cfg = self.cfg
        self.timer.switch("train_forward")
        lr = self.schedule(min(self.progress, float(cfg.epochs)))
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            logits = self.train_model(batch.x)
        per_example = F.cross_entropy(logits.float(), batch.y, reduction="none", label_smoothing=cfg.label_smoothing)
        weighted = per_example * batch.weights.to(per_example.device)
        # A DDP rank with nothing left for a lockstep partial step still joins it with an empty batch.
        loss = weighted.mean() if len(batch) else weighted.sum()
        self.timer.switch("backward")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.timer.switch("optimizer")
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        self.backprops += len(batch)
        self.timer.switch("bookkeeping")
        self.driver.observe(batch, per_example)
        self.guard.update(loss, self.step)
        self.log.add_loss(loss, len(batch))
        self.timer.switch("refresh")
        with self._engine_lock():
            self.log.engine_events(self.driver.after_step(self.model, self.step))
        self.timer.switch("other")
        self.guard.check(self.step, hint=divergence_hint(self.cfg.lr, self.run_dir))
        if self.step % cfg.log_every_steps == 0:
            self.log.interval(self.driver, epoch=self.epoch, step=self.step, wall=self._wall(), lr=lr,
                              backprops=self.backprops, staleness=self.driver.staleness(self.step))
        if cfg.eval_every_steps and self.step % cfg.eval_every_steps == 0:
            self.evaluate()

    def _engine_lock(self):
        """Engine changes must not race the pipeline's worker."""
        return self.pipeline.lock if self.pipeline is not None else contextlib.nullcontext()

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
            result = evaluate(self.model, self.eval_data, self.cfg.batch_size, self.device, self.memory_format,
                              self.autocast_dtype)
            if self.group is not None:  # each rank evaluated its share of the test split
                result = combine_evaluations(self.group, result, len(self.eval_data.y_test))
        self.last_acc = result["test_acc"]
        t = self._totals()
        return self.log.write("eval", epoch=self.progress, step=self.step, wall=t["wall"],
                              test_error=1.0 - result["test_acc"], backprops=t["backprops"], forwards=t["forwards"],
                              candidates=t["candidates"], phases=t["phases"], **result)

    def _end_epoch(self) -> None:
        self.guard.check(self.step, force=True, hint=divergence_hint(self.cfg.lr, self.run_dir))
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

    def _save_checkpoint(self) -> None:
        if self.cfg.checkpoint:
            check_finite_weights(self.model, self.step, divergence_hint(self.cfg.lr, self.run_dir))
            state = checkpoint_state(self)  # under DDP a collective: every rank takes part
            if self.rank == 0:
                save_checkpoint(state, self.run_dir)

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
