"""Budget-matched comparison ("No Train No Gain", Kaddour et al., NeurIPS 2023), run fairly on a
shared machine.

For a wall-clock budget ``T`` the baseline is Traditional with its learning-rate schedule fully
decayed within ``T``, and every strategy gets ``T`` with its own schedule decayed within ``T``: its
epochs are chosen so that its measured epoch cost fills ``T`` (:func:`epochs_for_budget`), and its
whole schedule (warm-up included) is laid over those epochs. A strategy that only looks faster
because its baseline's schedule had not decayed yet gains nothing here.

The machine may be busy (other users, other jobs), so the runs being compared train
**interleaved in one process** (:func:`train_interleaved`): one epoch of each run in turn, each
run's clock paused while the others train, so a change of load hits all of them alike. The load
average is recorded at every round.
"""
from __future__ import annotations

import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from .config import TrainConfig
from .reporting.metrics import epochs_in_budget
from .reporting.runlog import load_run

__all__ = ["train_interleaved", "epochs_for_budget", "budget_config", "load_average", "BudgetComparison",
           "compare_on_budget"]


def load_average() -> Optional[float]:
    """The 1-minute load average (None where the OS has none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def train_interleaved(configs: Dict[str, TrainConfig], data: Any = None,
                      progress: Optional[Callable[[str, int, int], None]] = None) -> tuple[Dict[str, Dict[str, Any]], List[Optional[float]]]:
    """Train every config, one epoch of each in turn, in this process; returns the summaries by
    name and the load average seen at the start of every round.

    Each run's phase clock runs only during its own epochs, so its training time is its own even
    though the runs share the process. ``progress(name, epoch, epochs)`` is called after every epoch.
    """
    from .train import Trainer

    trainers = {}
    for name, cfg in configs.items():
        trainers[name] = Trainer(cfg, data=data, overwrite=True)  # its clock has counted the engine build
        trainers[name].timer.pause()
    loads: List[Optional[float]] = []
    summaries: Dict[str, Dict[str, Any]] = {}
    while len(summaries) < len(trainers):
        loads.append(load_average())
        for name, trainer in trainers.items():
            if name in summaries:
                continue
            trainer.timer.resume()
            trainer.train_epoch()
            if trainer.epoch >= trainer.cfg.epochs:
                summaries[name] = trainer.finish()
            trainer.timer.pause()
            if progress is not None:
                progress(name, trainer.epoch, trainer.cfg.epochs)
    return {name: summaries[name] for name in configs}, loads


def epochs_for_budget(budget: float, epoch_walls: Sequence[Sequence[float]]) -> int:
    """How many epochs of a strategy fill ``budget`` seconds of training, from the cumulative
    training time at each epoch end of its runs (one list per seed, averaged epoch by epoch): the
    measured epochs, then as many more as the mean later epoch fits (the first epoch may differ:
    SB primes on every example). At least one."""
    if not epoch_walls or not all(epoch_walls):
        raise ValueError("epochs_for_budget needs the epoch times of at least one run")
    depth = min(len(w) for w in epoch_walls)
    mean_walls = [statistics.fmean(w[i] for w in epoch_walls) for i in range(depth)]
    return epochs_in_budget(budget, mean_walls)


def budget_config(cfg: TrainConfig, epochs: int, run_dir: str) -> TrainConfig:
    """``cfg`` over ``epochs`` epochs with its whole schedule laid over them: the warm-up is
    scaled with the run, and milestones given in epochs (>= 1) are scaled too (fractions stay)."""
    stretch = epochs / cfg.epochs
    milestones = [m * stretch if m >= 1 else m for m in cfg.milestones]
    return cfg.replace(epochs=epochs, warmup_epochs=cfg.warmup_epochs * stretch, milestones=milestones,
                       run_dir=run_dir)


@dataclass
class BudgetComparison:
    """The two views of one comparison: every strategy on the same fixed schedule (the paper's
    view), then every strategy budget-matched to Traditional's training time."""

    fixed: Dict[str, Dict[str, Any]]     # "<strategy>-s<seed>" -> summary, fixed schedule
    budget: Dict[str, Dict[str, Any]]    # the same, budget-matched
    epochs: Dict[str, int]               # strategy -> epochs that fill the budget
    budget_seconds: float                # T: Traditional's mean training time on the fixed schedule
    loads: List[Optional[float]] = field(default_factory=list)   # load average at each round
    fixed_dirs: List[str] = field(default_factory=list)
    budget_dirs: List[str] = field(default_factory=list)


def compare_on_budget(base: TrainConfig, strategies: Dict[str, Dict[str, Any]], seeds: Sequence[int],
                      runs_dir: str | Path, data: Any = None, fixed_only: Sequence[str] = (),
                      progress: Optional[Callable[[str, int, int], None]] = None) -> BudgetComparison:
    """Both views, each trained interleaved (:func:`train_interleaved`).

    ``strategies`` maps a name to its TrainConfig overrides and must hold ``"traditional"``. The
    fixed-schedule view runs everything for ``base.epochs``; its Traditional runs set the budget
    ``T`` and every strategy's measured epoch times choose its epochs (:func:`epochs_for_budget`).
    The budget view runs Traditional again next to the others, so all of it shares one load;
    strategies in ``fixed_only`` are left out of it.
    """
    if "traditional" not in strategies:
        raise ValueError("a budget-matched comparison needs a 'traditional' strategy (its time is the budget)")
    runs_dir = Path(runs_dir)

    def configs(view: str, epochs: Dict[str, int]) -> Dict[str, TrainConfig]:
        out = {}
        for seed in seeds:
            for name, overrides in strategies.items():
                if name in epochs:
                    cfg = base.replace(**overrides, seed=seed)
                    out[f"{name}-s{seed}"] = budget_config(cfg, epochs[name], str(runs_dir / view / f"{name}-s{seed}"))
        return out

    fixed_cfgs = configs("fixed-schedule", {name: base.epochs for name in strategies})
    fixed, loads = train_interleaved(fixed_cfgs, data, progress)
    walls = {name: [[float(e["wall"]) for e in load_run(fixed_cfgs[f"{name}-s{s}"].run_dir).evals] for s in seeds]
             for name in strategies}
    budget = statistics.fmean(fixed[f"traditional-s{s}"]["wall"] for s in seeds)
    epochs = {name: (base.epochs if name == "traditional" else epochs_for_budget(budget, walls[name]))
              for name in strategies if name not in fixed_only}
    budget_cfgs = configs("budget", epochs)
    matched, more_loads = train_interleaved(budget_cfgs, data, progress)
    return BudgetComparison(fixed, matched, epochs, budget, loads + more_loads,
                            [c.run_dir for c in fixed_cfgs.values()], [c.run_dir for c in budget_cfgs.values()])
