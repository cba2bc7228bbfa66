"""The training loop of Selective-Backprop (paper Alg. 1): the loop and nothing else.

candidate batches (data) -> :class:`SelectionDriver` (selection forwards, policy, backprop batcher,
engine refresh) -> train step (forward, backward, optimizer) -> driver.observe, timed phase by phase
by the :class:`PhaseTimer` and logged through the :class:`RunLogger`. Construction of the parts
lives in ``factory`` and ``engine_setup``, the run directory and checkpoints in ``checkpoint``.
"""
from __future__ import annotations

import contextlib
import random
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..config import ConfigError, TrainConfig
from ..data import AUGMENT_PRESETS, ArrayDataset, Augment, CandidateLoader, load_dataset
from ..device import resolve_device
from ..files import atomic_write_json
from ..reporting.runlog import RunLog
from ..selection import TrainBatch
from .checkpoint import CONFIG_NAME, prepare_run_dir, save_checkpoint
from .divergence import DivergenceGuard
from .driver import ScoredCandidates, SelectionDriver
from .engine_setup import build_refresher, sample_batches
from .evaluation import evaluate
from .factory import build_model, build_optimizer, build_policy, build_schedule
from .pipeline import SelectionPipeline
from .progress import Progress
from .run_logger import RunLogger
from .timer import PhaseTimer

__all__ = ["Trainer"]

# Settings that may differ between a run and its resumption without changing its meaning.
RESUMABLE_CHANGES = frozenset({"epochs", "run_dir", "threads", "engine_threads", "log_every_steps", "data_dir",
                               "progress", "eval_every_steps", "checkpoint"})
_COUNTERS = ("epoch", "step", "progress", "backprops", "last_acc")


class Trainer:
    """Runs one configured training job end to end; ``fit()`` returns the summary event.

    Args:
        config: the run's configuration.
        data: a dataset already in memory (default: ``load_dataset(config.dataset)``).
        resume: continue from ``<run_dir>/checkpoint.pt`` (an error if there is none).
        overwrite: start afresh even if ``run_dir`` holds an earlier run's log.
    """

    def __init__(self, config: TrainConfig, data: Optional[ArrayDataset] = None, resume: bool = False,
                 overwrite: bool = False) -> None:
        self.cfg = cfg = config
        self.device = resolve_device(cfg.device)
        self.run_dir = Path(cfg.run_dir)
        checkpoint = prepare_run_dir(self.run_dir, resume, overwrite)
        if checkpoint is not None:
            _check_resumable(checkpoint["config"], cfg, self.run_dir)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        _seed_everything(cfg.seed)

        data = data or load_dataset(cfg.dataset, cfg.data_dir, cfg.download)
        if cfg.train_subset or cfg.test_subset:
            data = data.subset(cfg.train_subset or None, cfg.test_subset or None, seed=cfg.seed)
        self.data = data
        augment = AUGMENT_PRESETS.get(data.name, Augment()) if cfg.augment == "preset" else Augment()
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.loader = CandidateLoader(data, augment, self.device, seed=cfg.seed, memory_format=self.memory_format)
        self.model = build_model(cfg, data.num_classes, data.in_channels).to(self.device, memory_format=self.memory_format)
        self.optimizer = build_optimizer(cfg, self.model)
        self.schedule = build_schedule(cfg)
        self.autocast_dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.amp]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.amp == "fp16")
        self.timer = PhaseTimer(self.device)
        # A host read of the NaN flag per step costs nothing on CPU; on CUDA read it once per interval.
        self.guard = DivergenceGuard(self.device, 1 if self.device.type == "cpu" else cfg.log_every_steps)
        self.log = RunLogger(RunLog(self.run_dir, truncate_at=checkpoint["log_offset"] if checkpoint else None),
                             self.device)

        self.epoch = 0
        self.step = 0
        self.progress = 0.0          # epochs' worth of candidates passed over (drives the LR)
        self.backprops = 0           # examples backpropagated
        self.last_acc = float("nan")
        self.pipeline: Optional[SelectionPipeline] = None
        self.selection_background = 0.0  # seconds the pipeline's worker spent selecting

        policy = build_policy(cfg, len(data.y_train))
        self.timer.start()
        if checkpoint is not None:  # the weights first: the engine is built (and calibrated) from them
            self._restore_training_state(checkpoint)
        with self.timer.phase("refresh"):  # building the first engine is a real cost of the method
            refresher = None
            if policy.needs_selection_forward:
                max_batch = max(cfg.selection_batch_size or cfg.batch_size * policy.candidates_per_batch(e)
                                for e in range(cfg.epochs))
                samples = sample_batches(data, cfg.batch_size, self.device, self.memory_format)
                refresher = build_refresher(cfg, self.model, samples, self.device, max_batch, self.step)
        self.driver = SelectionDriver(policy, cfg.batch_size, refresher, end_of_epoch=cfg.end_of_epoch,
                                      num_epochs=cfg.epochs)
        if checkpoint is not None:
            self.driver.load_state_dict(checkpoint["driver"], self.device)
            self.log.write("resume", epoch=self.epoch, step=self.step)
        else:
            self.log.write("config", config=cfg.to_dict(), policy=repr(policy), engine=self._engine_name(),
                           device=str(self.device), torch=torch.__version__, threads=torch.get_num_threads(),
                           dataset_size=len(data.y_train), parameters=sum(p.numel() for p in self.model.parameters()))
            atomic_write_json(self.run_dir / CONFIG_NAME, cfg.to_dict())
        self._log_events(self.driver.after_step(self.model, self.step))  # the engine build event

    def _engine_name(self) -> Optional[str]:
        return None if self.driver.engine is None else self.driver.engine.name

    def selection_batch_size(self, epoch: int) -> int:
        return self.cfg.selection_batch_size or self.cfg.batch_size * self.driver.candidates_per_batch(epoch)

    # --- the loop ----------------------------------------------------------------------------
    def fit(self) -> Dict[str, Any]:
        cfg = self.cfg
        n = len(self.loader)
        bar = Progress(cfg.progress, total=cfg.epochs * n, initial=self.epoch * n)
        try:
            while self.epoch < cfg.epochs:
                self._run_epoch(bar)
                self.epoch += 1
                self._end_epoch()
                bar.epoch_done(self.epoch, cfg.epochs, acc=f"{self.last_acc:.4f}", steps=self.step,
                               kept=f"{self.backprops / max(self.driver.candidates, 1):.2f}")
        finally:
            bar.close()
        return self._finish()

    def _run_epoch(self, bar: Progress) -> None:
        cfg, driver = self.cfg, self.driver
        driver.start_epoch(self.epoch)
        n = len(self.loader)
        batches = self.loader.epoch(self.selection_batch_size(self.epoch))
        if cfg.pipeline:
            self.pipeline = SelectionPipeline(batches, lambda: driver.engine, driver.policy, self.epoch,
                                              cfg.pipeline_depth)
            scored_batches: Iterator[ScoredCandidates] = iter(self.pipeline)
        try:
            while True:
                if cfg.pipeline:
                    self.timer.switch("selection")  # only the time spent waiting for the worker
                    scored = next(scored_batches, None)
                else:
                    self.timer.switch("data")
                    candidate = next(batches, None)
                    self.timer.switch("selection")
                    scored = None if candidate is None else driver.score(*candidate)
                if scored is None:
                    break
                for batch in driver.submit(scored):
                    self._train_step(batch)
                self.progress += len(scored.indices) / n
                bar.update(len(scored.indices))
        finally:
            if self.pipeline is not None:
                self.pipeline.close()
                self.selection_background += self.pipeline.busy_seconds
                self.pipeline = None
        for batch in driver.end_epoch():
            self._train_step(batch)
        driver.finish_epoch()
        self.timer.switch("other")

    def _train_step(self, batch: TrainBatch) -> None:
        cfg = self.cfg
        self.timer.switch("train_forward")
        lr = self.schedule(min(self.progress, float(cfg.epochs)))
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            logits = self.model(batch.x)
        per_example = F.cross_entropy(logits.float(), batch.y, reduction="none", label_smoothing=cfg.label_smoothing)
        loss = (per_example * batch.weights.to(per_example.device)).mean()
        self.timer.switch("backward")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.timer.switch("optimizer")
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        self.backprops += len(batch)
        self.timer.switch("selection")  # policy bookkeeping on the training losses
        self.driver.observe(batch, per_example)
        self.guard.update(loss, self.step)
        self.log.add_loss(loss, len(batch))
        self.timer.switch("refresh")
        with self._engine_lock():
            self._log_events(self.driver.after_step(self.model, self.step))
        self.timer.switch("other")
        self.guard.check(self.step, hint=self._divergence_hint())
        if self.step % cfg.log_every_steps == 0:
            self.log.interval(self.driver, epoch=self.epoch, step=self.step, wall=self._wall(), lr=lr,
                              backprops=self.backprops, staleness=self.driver.staleness(self.step))
        if cfg.eval_every_steps and self.step % cfg.eval_every_steps == 0:
            self.evaluate()

    def _divergence_hint(self) -> str:
        saved = (f"the last good checkpoint in {self.run_dir} is kept" if (self.run_dir / "checkpoint.pt").exists()
                 else "no checkpoint was written yet")
        return (f"Lower --lr (now {self.cfg.lr}), add --warmup-epochs, or try --amp off; {saved} "
                "(continue it with --resume --lr ...).")

    def _engine_lock(self):
        """Engine changes must not race the pipeline's worker."""
        return self.pipeline.lock if self.pipeline is not None else contextlib.nullcontext()

    def _log_events(self, events) -> None:
        for event in events:
            self.log.write(**event)

    def _wall(self) -> float:
        totals = self.timer.totals()
        return sum(totals.values()) - totals["eval"]

    def evaluate(self) -> Dict[str, Any]:
        """Test accuracy and loss; logged as an ``eval`` event."""
        with self.timer.phase("eval"):
            result = evaluate(self.model, self.data, self.cfg.batch_size, self.device, self.memory_format,
                              self.autocast_dtype)
        self.last_acc = result["test_acc"]
        d = self.driver
        return self.log.write("eval", epoch=self.progress, step=self.step, wall=self._wall(),
                              test_error=1.0 - result["test_acc"], backprops=self.backprops, forwards=d.forwards,
                              candidates=d.candidates, phases=self.timer.totals(), **result)

    def _end_epoch(self) -> None:
        self.guard.check(self.step, force=True, hint=self._divergence_hint())
        with self.timer.phase("refresh"):
            self._log_events(self.driver.after_epoch(self.model, self.step))
        if not self.cfg.eval_every_steps or self.step % self.cfg.eval_every_steps:
            self.evaluate()
        d = self.driver
        self.log.write("epoch", epoch=self.epoch, step=self.step, wall=self._wall(), candidates=d.candidates,
                       forwards=d.forwards, backprops=self.backprops, pending=d.batcher.pending(),
                       selection_background=self.selection_background, phases=self.timer.totals())
        if self.cfg.checkpoint:
            save_checkpoint(self._state(), self.run_dir)

    def _finish(self) -> Dict[str, Any]:
        phases = self.timer.totals()
        d = self.driver
        summary = self.log.write(
            "summary", epochs=self.epoch, step=self.step, test_acc=self.last_acc, wall=self._wall(),
            wall_total=sum(phases.values()), candidates=d.candidates, forwards=d.forwards,
            backprops=self.backprops, selectivity=self.backprops / max(d.candidates, 1),
            untrained_remainder=d.batcher.pending(), phases=phases,
            selection_background=self.selection_background, engine=self._engine_name(),
            refreshes=0 if d.refresher is None else d.refresher.count)
        d.close()
        self.log.close()
        return summary

    # --- checkpoint / resume -----------------------------------------------------------------
    def _state(self) -> Dict[str, Any]:
        return {"config": self.cfg.to_dict(), **{k: getattr(self, k) for k in _COUNTERS},
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(), "driver": self.driver.state_dict(),
                "loader_rng": self.loader.generator.get_state(), "phases": self.timer.totals(),
                "selection_background": self.selection_background, "log_offset": self.log.log.offset}

    def _restore_training_state(self, state: Dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.loader.generator.set_state(state["loader_rng"])
        for key in _COUNTERS:
            setattr(self, key, state[key])
        self.selection_background = state["selection_background"]
        self.timer.load_totals(state["phases"])


def _check_resumable(saved: Dict[str, Any], cfg: TrainConfig, run_dir: Path) -> None:
    now = cfg.to_dict()
    changed = sorted(k for k in now if k not in RESUMABLE_CHANGES and saved.get(k) != now[k])
    if changed:
        raise ConfigError(f"cannot resume {run_dir}: config differs from the checkpoint in {changed} "
                          f"(only {', '.join(sorted(RESUMABLE_CHANGES))} may change on resume)")


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
