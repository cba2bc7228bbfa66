"""The training loop of Selective-Backprop (paper Alg. 1), composed from its parts:

candidate batch -> selection engine (losses) -> policy (keep mask) -> backprop batcher ->
train step (forward, backward, optimizer) -> engine refresher, all timed by the PhaseTimer and
logged to the RunLog. The Trainer holds no selection math and no backend-specific code.
"""
from __future__ import annotations

import contextlib
import math
import random
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..config import ConfigError, TrainConfig
from ..data import AUGMENT_PRESETS, ArrayDataset, Augment, CandidateLoader, load_dataset, test_batches
from ..device import resolve_device
from ..engines import EngineContext
from ..files import atomic_write_json
from ..engines.refresh import EngineRefresher, RefreshSchedule
from ..reporting.runlog import LOG_NAME, RunLog
from ..selection import BackpropBatcher, TrainBatch
from .checkpoint import load_checkpoint, save_checkpoint
from .factory import build_model, build_optimizer, build_policy, build_schedule
from .pipeline import SelectionPipeline
from .selection_step import Decision, ScoredCandidates, decide, score_candidates
from .timer import PhaseTimer

__all__ = ["Trainer"]


class Trainer:
    """Runs one configured training job end to end; ``fit()`` returns the summary event.

    Args:
        config: the run's configuration.
        data: a dataset already in memory (default: ``load_dataset(config.dataset)``).
        resume: continue from ``<run_dir>/checkpoint.pt`` if it exists.
        overwrite: start afresh even if ``run_dir`` holds an earlier run's log.
    """

    def __init__(self, config: TrainConfig, data: Optional[ArrayDataset] = None, resume: bool = False,
                 overwrite: bool = False) -> None:
        self.cfg = cfg = config
        self.device = resolve_device(cfg.device)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        _seed_everything(cfg.seed)
        self.run_dir = Path(cfg.run_dir)
        checkpoint = load_checkpoint(self.run_dir) if resume else None
        if not resume and (self.run_dir / LOG_NAME).exists():
            if not overwrite:
                raise ConfigError(f"run_dir: {self.run_dir} already holds a run; pass --resume to continue "
                                  "it, --overwrite to replace it, or choose another --run-dir")
            for name in (LOG_NAME, "checkpoint.pt"):
                (self.run_dir / name).unlink(missing_ok=True)

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
        self.policy = build_policy(cfg, len(data.y_train))
        self.batcher = BackpropBatcher(cfg.batch_size, cfg.end_of_epoch)
        self.autocast_dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.amp]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.amp == "fp16")
        self.timer = PhaseTimer(self.device)
        self.log = RunLog(self.run_dir)

        # Counters (all checkpointed).
        self.epoch = 0
        self.step = 0
        self.progress = 0.0          # epochs' worth of candidates passed over (drives the LR)
        self.candidates = 0
        self.forwards = 0            # selection-pass forwards
        self.backprops = 0           # examples backpropagated
        self._interval = self._new_interval()
        self.last_acc = float("nan")
        self.pipeline: Optional[SelectionPipeline] = None
        self.selection_background = 0.0  # seconds the pipeline's worker spent selecting

        self.timer.start()
        if checkpoint is not None:
            self._restore(checkpoint)
        with self.timer.phase("refresh"):  # building the first engine is a real cost of the method
            self.refresher = self._build_refresher()
        if checkpoint is None:
            self.log.write("config", config=cfg.to_dict(), policy=repr(self.policy), engine=self.refresher.engine.name,
                           device=str(self.device), torch=torch.__version__, threads=torch.get_num_threads(),
                           dataset_size=len(data.y_train), parameters=sum(p.numel() for p in self.model.parameters()))
            atomic_write_json(self.run_dir / "config.json", cfg.to_dict())

    # --- construction helpers -------------------------------------------------------------
    def _build_refresher(self) -> EngineRefresher:
        cfg = self.cfg
        context = EngineContext(
            device=self.device, sample_batches=self._sample_batches(), threads=cfg.engine_threads or None,
            cache_dir=str(Path("engines") / "cache"),
            max_batch=max(self.selection_batch_size(e) for e in range(cfg.epochs)),
            options={"recalibrate_every": cfg.int8_recalibrate_every})
        if cfg.pipeline:  # the worker must not read weights the main thread is updating
            context.options["snapshot"] = True
        refresher = EngineRefresher.create(
            cfg.engine, self.model, context, RefreshSchedule(cfg.refresh_every_steps, cfg.refresh_every_epoch,
                                         cfg.refresh_validate_every),
            precision=cfg.precision, background=cfg.refresh_background, fallback=cfg.engine_fallback)
        refresher.engine.snapshot_step = self.step
        return refresher

    def _sample_batches(self, count: int = 4) -> list:
        """A fixed set of un-augmented training batches for engine calibration and validation."""
        g = torch.Generator().manual_seed(1234)
        idx = torch.randperm(len(self.data.y_train), generator=g)[: count * self.cfg.batch_size]
        x = self.data.normalize(self.data.x_train[idx].to(self.device)).contiguous(memory_format=self.memory_format)
        y = self.data.y_train[idx].to(self.device)
        return list(zip(x.split(self.cfg.batch_size), y.split(self.cfg.batch_size)))

    def selection_batch_size(self, epoch: int) -> int:
        return self.cfg.selection_batch_size or self.cfg.batch_size * self.policy.candidates_per_batch(epoch)

    # --- the loop ----------------------------------------------------------------------------
    def fit(self) -> Dict[str, Any]:
        cfg = self.cfg
        bar = _progress(cfg.progress, total=cfg.epochs * len(self.loader), initial=self.epoch * len(self.loader))
        try:
            while self.epoch < cfg.epochs:
                self._run_epoch(bar)
                self.epoch += 1
                self._end_epoch()
        finally:
            bar.close()
        return self._finish()

    def _run_epoch(self, bar) -> None:
        cfg, epoch = self.cfg, self.epoch
        self.policy.on_epoch_start(epoch, cfg.epochs)
        n = len(self.loader)
        batches = self.loader.epoch(self.selection_batch_size(epoch))
        if cfg.pipeline:
            self.pipeline = SelectionPipeline(batches, lambda: self.refresher.engine, self.policy, epoch, cfg.pipeline_depth)
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
                    scored = None if candidate is None else score_candidates(self.refresher.engine, self.policy, *candidate, epoch)
                if scored is None:
                    break
                decision = decide(self.policy, scored, epoch)
                self._count_selection(scored, decision)
                for batch in self.batcher.add(scored.x, scored.y, scored.indices, decision.keep, decision.weights):
                    self._train_step(batch)
                self.progress += len(scored.indices) / n
                bar.update(len(scored.indices))
        finally:
            if self.pipeline is not None:
                self.pipeline.close()
                self.selection_background += self.pipeline.busy_seconds
                self.pipeline = None
        for batch in self.batcher.end_epoch():
            self._train_step(batch)
        self.timer.switch("other")
        bar.set_postfix(acc=f"{self.last_acc:.3f}", sel=f"{self.backprops / max(self.candidates, 1):.2f}")

    def _count_selection(self, scored: ScoredCandidates, decision: Decision) -> None:
        self.forwards += scored.forwards
        self.candidates += len(scored.indices)
        self._interval["candidates"] += len(scored.indices)
        self._interval["kept"] += int(decision.keep.sum())

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
        self.timer.switch("selection")  # policy bookkeeping on the training losses
        self.policy.observe(batch.indices, per_example.detach(), self.epoch)
        self.step += 1
        self.backprops += len(batch)
        self._interval["loss_sum"] += loss.detach() * len(batch)
        self._interval["examples"] += len(batch)
        self.timer.switch("refresh")
        with self._engine_lock():
            for event in self.refresher.after_step(self.model, self.step):
                self.log.write(**event)
        self.timer.switch("other")
        if self.step % cfg.log_every_steps == 0:
            self._log_interval(lr)
        if cfg.eval_every_steps and self.step % cfg.eval_every_steps == 0:
            self.evaluate()

    def _engine_lock(self):
        """Engine changes must not race the pipeline's worker."""
        return self.pipeline.lock if self.pipeline is not None else contextlib.nullcontext()

    def _log_interval(self, lr: float) -> None:
        iv = self._interval
        mean_loss = float(iv["loss_sum"]) / max(iv["examples"], 1)  # the one host sync per interval
        if not math.isfinite(mean_loss):
            raise FloatingPointError(
                f"training loss became {mean_loss} at step {self.step} (epoch {self.epoch}): the run diverged. "
                f"Lower --lr (now {self.cfg.lr}) or add --warmup-epochs; the last good checkpoint is in "
                f"{self.run_dir} (resume with --resume after changing the config file).")
        self.log.write("interval", epoch=self.epoch, step=self.step, wall=self._wall(), train_loss=mean_loss,
                       lr=lr, candidates=self.candidates, forwards=self.forwards, backprops=self.backprops,
                       selectivity=iv["kept"] / max(iv["candidates"], 1),
                       staleness=self.refresher.staleness(self.step))
        self._interval = self._new_interval()

    def _new_interval(self) -> Dict[str, Any]:
        """Counters of one logging interval; the loss sum stays on the device (no per-step sync)."""
        return {"loss_sum": torch.zeros((), device=self.device), "examples": 0, "candidates": 0, "kept": 0}

    def _wall(self) -> float:
        totals = self.timer.totals()
        return sum(totals.values()) - totals["eval"]

    @torch.no_grad()
    def evaluate(self) -> Dict[str, Any]:
        """Test accuracy and loss; logged as an ``eval`` event."""
        with self.timer.phase("eval"):
            self.model.eval()
            correct, loss_sum, n = 0, 0.0, 0
            for x, y in test_batches(self.data, self.cfg.batch_size, self.device, self.memory_format):
                with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
                    logits = self.model(x)
                loss_sum += float(F.cross_entropy(logits.float(), y, reduction="sum"))
                correct += int((logits.argmax(1) == y).sum())
                n += len(y)
            self.model.train()
        acc = correct / n
        self.last_acc = acc
        return self.log.write("eval", epoch=self.progress, step=self.step, wall=self._wall(), test_acc=acc,
                              test_error=1.0 - acc, test_loss=loss_sum / n, backprops=self.backprops,
                              forwards=self.forwards, candidates=self.candidates, phases=self.timer.totals())

    def _end_epoch(self) -> None:
        with self.timer.phase("refresh"):
            for event in self.refresher.after_epoch(self.model, self.step):
                self.log.write(**event)
        if not self.cfg.eval_every_steps or self.step % self.cfg.eval_every_steps:
            self.evaluate()
        self.log.write("epoch", epoch=self.epoch, step=self.step, wall=self._wall(), candidates=self.candidates,
                       forwards=self.forwards, backprops=self.backprops, pending=self.batcher.pending(),
                       selection_background=self.selection_background, phases=self.timer.totals())
        if self.cfg.checkpoint:
            save_checkpoint(self._state(), self.run_dir)

    def _finish(self) -> Dict[str, Any]:
        phases = self.timer.totals()
        summary = self.log.write(
            "summary", epochs=self.epoch, step=self.step, test_acc=self.last_acc, wall=self._wall(),
            wall_total=sum(phases.values()), candidates=self.candidates, forwards=self.forwards,
            backprops=self.backprops, selectivity=self.backprops / max(self.candidates, 1),
            untrained_remainder=self.batcher.pending(), phases=phases,
            selection_background=self.selection_background, engine=self.refresher.engine.name,
            refreshes=self.refresher.count)
        self.refresher.close()
        self.log.close()
        return summary

    # --- checkpoint / resume -----------------------------------------------------------------
    def _state(self) -> Dict[str, Any]:
        return {"config": self.cfg.to_dict(), "epoch": self.epoch, "step": self.step, "progress": self.progress,
                "candidates": self.candidates, "forwards": self.forwards, "backprops": self.backprops,
                "last_acc": self.last_acc, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(), "policy": self.policy.state_dict(),
                "batcher": self.batcher.state_dict(), "loader_rng": self.loader.generator.get_state(),
                "phases": self.timer.totals()}

    def _restore(self, state: Dict[str, Any]) -> None:
        saved = {k: v for k, v in state["config"].items() if k not in _RESUMABLE_CHANGES}
        now = {k: v for k, v in self.cfg.to_dict().items() if k not in _RESUMABLE_CHANGES}
        changed = sorted(k for k in now if saved.get(k) != now[k])
        if changed:
            raise ConfigError(f"cannot resume {self.run_dir}: config differs from the checkpoint in {changed}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.policy.load_state_dict(state["policy"])
        self.batcher.load_state_dict(state["batcher"], self.device)
        self.loader.generator.set_state(state["loader_rng"])
        for key in ("epoch", "step", "progress", "candidates", "forwards", "backprops", "last_acc"):
            setattr(self, key, state[key])
        self.timer.load_totals(state["phases"])
        self.log.write("resume", epoch=self.epoch, step=self.step)


# Settings that may differ between a run and its resumption without changing its meaning.
_RESUMABLE_CHANGES = {"epochs", "progress", "run_dir", "threads", "engine_threads", "log_every_steps", "data_dir"}


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _progress(enabled: bool, total: int, initial: int):
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, disable=not enabled or None, unit="ex", unit_scale=True,
                dynamic_ncols=True, leave=False)
