"""The run's selector, built from its config: the selection policy, the selection engine with its
refresh schedule (calibrated and validated on a few training batches) and the
:class:`SelectionDriver` that runs them, with the sizes of its calls (:mod:`.candidates`)."""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn as nn

from ..config import TrainConfig
from ..data import ArrayDataset
from ..engines import EngineContext, EngineRefresher, default_schedule, load_recipe, parse_engine_spec
from ..selection import SelectionPolicy, StrategyOptions, create_strategy
from .candidates import candidate_batch_size, loss_history_size
from .distributed import RankGroup, per_rank
from .driver import SelectionDriver

__all__ = ["build_selector", "build_policy", "sample_batches", "build_refresher", "resolve_engine", "AUTO_ENGINES"]

# The fastest engine validated on each device kind (--engine auto). CUDA: eval forward + loss
# replayed from CUDA graphs in fp16 reads the live weights (no refresh, no staleness); on an H100 a
# ResNet-18 selection forward costs 6.9 us/example at batch 128 graph-replayed vs 14.3 eager fp32
# (ENGINES-NOTES.md). CPU: torch fp32 reads the live model; onnxruntime-int8 is faster per batch but
# pays per-step refreshes (see README).
AUTO_ENGINES = {"cuda": ("torch-graph", "fp16"), "cpu": ("torch", "fp32")}

Batch = Tuple[torch.Tensor, torch.Tensor]


def build_selector(cfg: TrainConfig, model: nn.Module, data: ArrayDataset, device: torch.device,
                   memory_format: torch.memory_format, group: Optional[RankGroup], rank_seed: int,
                   step: int = 0) -> Tuple[SelectionDriver, int]:
    """This rank's :class:`SelectionDriver` on ``device`` (its policy drawing from ``rank_seed``,
    under DDP with this rank's share of the batch), with the engine built from ``model`` as it is
    at optimizer step ``step``; and R,
    the loss history in effect: every selection call (all ranks' under a global DDP history) must
    fit in it twice (:func:`~.candidates.loss_history_size`)."""
    world_size = 1 if group is None else group.world_size
    batch_size = per_rank(cfg.batch_size, world_size, "batch_size")
    per_call = candidate_batch_size(cfg, world_size, 1, device)
    history = loss_history_size(cfg.history, per_call * (world_size if cfg.ddp_history == "global" else 1))
    policy_cfg = cfg.replace(history=history, batch_size=batch_size, seed=rank_seed)
    policy = build_policy(policy_cfg, len(data.y_train)).to(device)  # decisions where the losses are
    refresher = None
    if policy.needs_selection_forward:
        max_batch = candidate_batch_size(cfg, world_size, policy.candidate_multiplier, device)  # the most it may ask for
        samples = sample_batches(data, cfg.batch_size, device, memory_format)
        refresher = build_refresher(cfg, model, samples, device, max_batch, step)
    driver = SelectionDriver(policy, batch_size, refresher, end_of_epoch=cfg.end_of_epoch, num_epochs=cfg.epochs,
                             group=group, dataset_size=len(data.y_train), shared_history=cfg.ddp_history == "global",
                             forward_batch_size=per_call)
    return driver, history


def build_policy(cfg: TrainConfig, dataset_size: int) -> SelectionPolicy:
    """The registered strategy ``cfg.strategy``, wrapped in priming per ``cfg.prime_epochs``."""
    return create_strategy(cfg.strategy, StrategyOptions.from_mapping(cfg.to_dict()), batch_size=cfg.batch_size,
                           dataset_size=dataset_size)


def sample_batches(data: ArrayDataset, batch_size: int, device: torch.device, memory_format: torch.memory_format,
                   count: int = 4, seed: int = 1234) -> List[Batch]:
    """A fixed set of un-augmented training batches for engine calibration and validation."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data.y_train), generator=g)[: count * batch_size]
    x = data.normalize(data.x_train[idx].to(device)).contiguous(memory_format=memory_format)
    y = data.y_train[idx].to(device)
    return list(zip(x.split(batch_size), y.split(batch_size)))


def resolve_engine(engine: str, precision: str, device: torch.device) -> Tuple[str, Optional[str]]:
    """``(backend, precision)`` for the configured ``engine``/``precision`` on ``device``
    (``"auto"`` engine: :data:`AUTO_ENGINES`; ``"auto"`` precision: the backend's default, None)."""
    if engine == "auto":
        backend, default = AUTO_ENGINES.get(device.type, AUTO_ENGINES["cpu"])
        return backend, default if precision == "auto" else precision
    return engine, None if precision == "auto" else precision


def build_refresher(cfg: TrainConfig, model: nn.Module, samples: List[Batch], device: torch.device,
                    max_batch: int, step: int = 0) -> Optional[EngineRefresher]:
    """The configured selection engine, built by its model's recipe (``engines/recipes/<model>.toml``;
    a config value that names a recipe key wins), validated and wrapped in its refresh schedule."""
    options = {} if cfg.int8_recalibrate_every is None else {"recalibrate_every": cfg.int8_recalibrate_every}
    context = EngineContext(device=device, sample_batches=samples, threads=cfg.engine_threads or None,
                            max_batch=max_batch, recipe=load_recipe(cfg.model), options=options)
    if cfg.pipeline:  # the worker must not read weights the main thread is updating
        context.options["snapshot"] = True
    backend, precision = resolve_engine(cfg.engine, cfg.precision, device)
    schedule = default_schedule(parse_engine_spec(backend, precision)[0], device.type, cfg.refresh_every_steps,
                                cfg.refresh_every_epoch, cfg.refresh_validate_every)
    refresher = EngineRefresher.create(backend, model, context, schedule, precision=precision,
                                       background=cfg.refresh_background, fallback=cfg.engine_fallback)
    refresher.engine.snapshot_step = step
    return refresher
