"""The budget-matched view ("No Train No Gain", Kaddour et al. 2023): every configuration had the
baseline's training time ``T`` with its own learning-rate schedule decayed within it; what counts
is the accuracy at the end of ``T`` and how soon each reached 1.1x / 1.2x the budget-tuned
baseline's error. Built from the same per-configuration summaries as the speedup table."""
from __future__ import annotations

import statistics
from typing import List, Sequence

from .grouping import RunGroup
from .metrics import GroupSummary, final_eval, mean_std
from .tables import format_table

__all__ = ["budget_table", "BUDGET_NOTE"]

BUDGET_NOTE = ("Budget-matched (Kaddour et al. 2023, \"No Train No Gain\"): the baseline's mean training time is "
               "the budget T, its learning-rate schedule fully decayed within T; every other configuration ran as "
               "many epochs as its measured epoch cost fits into T, with its own schedule decayed within them. "
               "\"share of T\" is a run's training time over T (load changes and rounding to whole epochs make it "
               "differ from 1); accuracy is the final one, at the end of the run.")


def budget_table(groups: Sequence[RunGroup], summaries: Sequence[GroupSummary], baseline: RunGroup) -> str:
    """Configuration, epochs, training time (share of T), final accuracy (change vs the baseline)
    and time to each target, mean ± sample std over the seeds."""
    index = list(groups).index(baseline)
    budget = summaries[index].wall_mean
    base_acc = statistics.fmean(final_eval(r)["test_acc"] for r in baseline.runs)
    rows: List[list] = []
    for group, s in zip(groups, summaries):
        acc, acc_std = mean_std([final_eval(r)["test_acc"] for r in group.runs])
        epochs = sorted({int(r.config.get("epochs", 0)) for r in group.runs})
        cells = [s.label + (" (baseline)" if group is baseline else ""), s.runs, "/".join(map(str, epochs)),
                 f"{s.wall_mean:.1f}" + (f" ± {s.wall_std:.1f}" if s.wall_std is not None else ""),
                 f"{s.wall_mean / budget:.2f}",
                 f"{100 * acc:.2f}%" + (f" ± {100 * acc_std:.2f}" if acc_std is not None else ""),
                 f"{100 * (acc - base_acc):+.2f}"]
        for t in s.targets:
            if not t.all_reached:
                cells.append("not reached" if t.runs == 1 else f"{t.reached}/{t.runs} reached")
            else:
                spread = f" ± {t.time_std:.1f}" if t.time_std is not None else ""
                cells.append(f"{t.time_mean:.1f}{spread} s")
        rows.append(cells)
    heads = ["configuration", "seeds", "epochs", "train s", "share of T", "final accuracy", "vs baseline (points)"]
    heads += [f"to {t.multiplier:g}x ({100 * t.target:.2f}%)" for t in summaries[0].targets]
    return format_table(rows, heads)
