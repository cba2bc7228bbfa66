"""The arithmetic of the reports: time to a target error, speedups, seed aggregates, Pareto frontier.

Pure functions over parsed RunLogs (:class:`~sb_accel.reporting.runlog.Run`): no I/O and no
plotting, so every number in ``report.md`` can be tested exactly on synthetic logs.

Definitions (the paper's Table 1, Figs. 6, 7, 14):

* A run's *final* error and wall-clock are those of its last ``eval`` event (so a run cut short
  still has a final point, and the point is one that was actually measured).
* *Time to target* is the ``wall`` of the first ``eval`` whose ``test_error`` is at most the target
  (``wall`` excludes evaluation time); ``None`` if no eval reaches it.
* Targets are multiples (1.1x, 1.2x, 1.4x) of the baseline configuration's final error; the
  *speedup* of a configuration is the baseline's time to a target divided by its own.
* Seeds of one configuration (:func:`~sb_accel.reporting.grouping.group_runs`) are aggregated:
  mean and sample standard deviation, and a time to target only if every seed reached it.

Which runs are compared (status, one dataset, seed groups): :mod:`sb_accel.reporting.grouping`.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .grouping import RunGroup
from .runlog import Run

__all__ = ["TARGET_MULTIPLIERS", "epochs_in_budget", "final_eval", "final_error", "final_wall", "time_to_target",
           "eval_at_target", "speedup", "mean_std", "TargetResult", "GroupSummary", "summarize_group",
           "speedup_table", "pareto_frontier"]

TARGET_MULTIPLIERS = (1.1, 1.2, 1.4)

# Test errors are fractions k/n of the test set, computed as 1 - acc, and targets are products of
# them with 1.1 etc.: a tie in exact arithmetic may land on either side after float rounding, so a
# tie counts as reached within this relative tolerance.
_TIE_TOLERANCE = 1e-9


def epochs_in_budget(budget: float, epoch_walls: Sequence[float]) -> int:
    """How many epochs fit into ``budget`` seconds of training, predicted from a run's cumulative
    training wall-clock at the end of each of its epochs (``epoch_walls``, at least one).

    The measured epochs count as measured; every further epoch is predicted to cost as much as the
    mean of the measured ones after the first (the first may differ: SB primes on every example),
    or as the first if only one was measured. At least one epoch.
    """
    if not epoch_walls:
        raise ValueError("epochs_in_budget needs the wall-clock of at least one epoch")
    walls = list(epoch_walls)
    fitting = sum(1 for w in walls if w <= budget)
    if fitting < len(walls):
        return max(fitting, 1)
    per_epoch = (walls[-1] - walls[0]) / (len(walls) - 1) if len(walls) > 1 else walls[0]
    if per_epoch <= 0:
        return len(walls)
    return len(walls) + int(math.floor((budget - walls[-1]) / per_epoch + 1e-9))


def final_eval(run: Run) -> Dict[str, Any]:
    """The last ``eval`` event of ``run``; ``ValueError`` if it has none."""
    evals = run.evals
    if not evals:
        raise ValueError(f"{run.run_dir}: the run log has no eval event yet (it must finish at least one epoch)")
    return evals[-1]


def final_error(run: Run) -> float:
    return float(final_eval(run)["test_error"])


def final_wall(run: Run) -> float:
    return float(final_eval(run)["wall"])


def eval_at_target(run: Run, target: float) -> Optional[Dict[str, Any]]:
    """The first ``eval`` event whose test error is at most ``target``, or ``None``."""
    for e in run.evals:
        if e["test_error"] <= target * (1.0 + _TIE_TOLERANCE):
            return e
    return None


def time_to_target(run: Run, target: float, x: str = "wall") -> Optional[float]:
    """``x`` (``"wall"`` seconds, or ``"backprops"``) of the first eval at or below ``target``."""
    e = eval_at_target(run, target)
    return None if e is None else float(e[x])


def speedup(baseline_time: Optional[float], time: Optional[float]) -> Optional[float]:
    """``baseline_time / time``; ``None`` unless both reached the target."""
    if baseline_time is None or time is None:
        return None
    return baseline_time / time


def mean_std(values: Sequence[float]) -> Tuple[float, Optional[float]]:
    """Mean and sample standard deviation (``None`` for a single value: no spread to speak of)."""
    if not values:
        raise ValueError("mean_std of no values")
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else None)


@dataclass
class TargetResult:
    """One configuration against one target error."""

    multiplier: float
    target: float
    reached: int                        # seeds that reached the target
    runs: int                           # seeds in the configuration
    time_mean: Optional[float] = None   # only if every seed reached it
    time_std: Optional[float] = None
    backprops_mean: Optional[float] = None
    speedup: Optional[float] = None     # baseline's mean time / this mean time

    @property
    def all_reached(self) -> bool:
        return self.reached == self.runs


@dataclass
class GroupSummary:
    """A configuration's aggregate over its seeds."""

    label: str
    runs: int
    seeds: List[Any]
    run_dirs: List[str]
    final_error_mean: float
    final_error_std: Optional[float]
    wall_mean: float
    wall_std: Optional[float]
    backprops_mean: float
    targets: List[TargetResult] = field(default_factory=list)


def summarize_group(group: RunGroup, targets: Sequence[Tuple[float, float]]) -> GroupSummary:
    """Aggregate ``group`` over its seeds; ``targets`` are ``(multiplier, target error)`` pairs."""
    err_mean, err_std = mean_std([final_error(r) for r in group.runs])
    wall_mean, wall_std = mean_std([final_wall(r) for r in group.runs])
    backprops = statistics.fmean(float(final_eval(r)["backprops"]) for r in group.runs)
    summary = GroupSummary(group.label, len(group.runs), group.seeds, [str(r.run_dir) for r in group.runs],
                           err_mean, err_std, wall_mean, wall_std, backprops)
    for multiplier, target in targets:
        hits = [eval_at_target(r, target) for r in group.runs]
        reached = [e for e in hits if e is not None]
        result = TargetResult(multiplier, target, len(reached), len(group.runs))
        if result.all_reached:
            result.time_mean, result.time_std = mean_std([float(e["wall"]) for e in reached])
            result.backprops_mean = statistics.fmean(float(e["backprops"]) for e in reached)
        summary.targets.append(result)
    return summary


def speedup_table(groups: Sequence[RunGroup], baseline: RunGroup,
                  multipliers: Sequence[float] = TARGET_MULTIPLIERS) -> List[GroupSummary]:
    """Every group's times to ``multipliers`` x the baseline's mean final error, and speedups.

    A speedup is a number only where the baseline and every seed of the group reached the target.
    """
    base_error = statistics.fmean(final_error(r) for r in baseline.runs)
    targets = [(m, m * base_error) for m in multipliers]
    base = summarize_group(baseline, targets)
    table = []
    for group in groups:
        summary = base if group is baseline else summarize_group(group, targets)
        for result, base_result in zip(summary.targets, base.targets):
            result.speedup = speedup(base_result.time_mean, result.time_mean)
        table.append(summary)
    return table


def pareto_frontier(points: Sequence[Tuple[float, float]]) -> List[int]:
    """Indices of the points no other point dominates, both coordinates to be minimised.

    A point is dominated if another is no worse in both coordinates and better in one; identical
    points do not dominate each other, so all of them stay. Points with a NaN are never on the
    frontier. Indices are returned in ascending order of the first coordinate (then the second).
    """
    valid = [i for i, (a, b) in enumerate(points) if not (math.isnan(a) or math.isnan(b))]
    frontier = []
    for i in valid:
        a, b = points[i]
        dominated = any(points[j][0] <= a and points[j][1] <= b and (points[j][0] < a or points[j][1] < b)
                        for j in valid)
        if not dominated:
            frontier.append(i)
    return sorted(frontier, key=lambda i: points[i])
