"""Which runs a report compares, and how: a run's status, one test set, and seed groups.

Pure functions over parsed RunLogs (:class:`~sb_accel.reporting.runlog.Run`), no I/O:

* A run's *status* (:func:`run_status`) is ``diverged`` (a non-finite training or test loss, or a
  ``diverged`` event), ``unfinished`` (no ``summary`` event: crashed, interrupted or still
  running) or ``finished``. Reports mark the first two and never take them as a baseline silently.
* Errors are comparable only on one test set: runs of different datasets are refused
  (:func:`check_same_dataset`).
* Runs whose configs differ only in the seed (and in settings that do not change what is measured,
  :data:`NON_CONFIG_FIELDS`) are seeds of one configuration (:func:`group_runs`).
"""
from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Dict, List, Sequence

from .runlog import Run

__all__ = ["NON_CONFIG_FIELDS", "FINISHED", "UNFINISHED", "DIVERGED", "run_status", "group_status",
           "describe_status", "check_same_dataset", "RunGroup", "group_runs"]

# Settings that change neither the training nor its timing: runs differing only in these (and the
# seed) are repetitions of one configuration.
NON_CONFIG_FIELDS = frozenset({"seed", "run_dir", "data_dir", "download", "progress", "log_every_steps",
                               "checkpoint"})

FINISHED, UNFINISHED, DIVERGED = "finished", "unfinished", "diverged"


def _finite(value: Any) -> bool:
    """A logged number that is finite (the RunLog writes NaN and infinities as ``null``)."""
    return isinstance(value, (int, float)) and math.isfinite(value)


def run_status(run: Run) -> str:
    """:data:`DIVERGED` if the log has a ``diverged`` event or a non-finite (or ``null``) training
    loss of an interval or test loss of an eval; else :data:`UNFINISHED` without a ``summary``
    event; else :data:`FINISHED`."""
    for e in run.events:
        kind = e.get("event")
        if kind == "diverged" or (kind == "interval" and "train_loss" in e and not _finite(e["train_loss"])) \
                or (kind == "eval" and "test_loss" in e and not _finite(e["test_loss"])):
            return DIVERGED
    return FINISHED if run.summary is not None else UNFINISHED


def group_status(runs: Sequence[Run]) -> str:
    """The worst status among ``runs``: diverged, then unfinished, then finished."""
    statuses = {run_status(r) for r in runs}
    for status in (DIVERGED, UNFINISHED):
        if status in statuses:
            return status
    return FINISHED


def describe_status(runs: Sequence[Run]) -> str:
    """``finished``, ``diverged`` or ``unfinished`` for one run or a group that agrees; otherwise
    the counts, e.g. ``1 diverged, 2 finished``."""
    counts = Counter(run_status(r) for r in runs)
    if len(counts) == 1:
        return next(iter(counts))
    return ", ".join(f"{counts[s]} {s}" for s in (DIVERGED, UNFINISHED, FINISHED) if counts[s])


def check_same_dataset(runs: Sequence[Run]) -> None:
    """``ValueError`` if ``runs`` were trained on different datasets: their test errors (and so any
    speedup to a target error) are not comparable. The message lists the runs per dataset."""
    by_dataset: Dict[str, List[str]] = {}
    for run in runs:
        name = str(run.config.get("dataset", "?"))
        key = name if name.endswith(".npz") else name.lower().replace("-", "_")
        by_dataset.setdefault(key, []).append(str(run.run_dir))
    if len(by_dataset) > 1:
        listing = "; ".join(f"{name}: {', '.join(dirs)}" for name, dirs in by_dataset.items())
        first = next(iter(by_dataset.values()))
        raise ValueError(f"the runs are on different datasets ({listing}); test errors and speedups compare "
                         "only runs on one test set: report each dataset on its own, e.g. "
                         f"sb-accel report {' '.join(first)}")


@dataclass
class RunGroup:
    """Runs of one configuration (seeds), in the order given."""

    label: str
    config: Dict[str, Any]
    runs: List[Run] = field(default_factory=list)

    @property
    def seeds(self) -> List[Any]:
        return [r.config.get("seed") for r in self.runs]


def _config_key(run: Run) -> str:
    return json.dumps({k: v for k, v in run.config.items() if k not in NON_CONFIG_FIELDS}, sort_keys=True)


def group_runs(runs: Sequence[Run]) -> List[RunGroup]:
    """Group runs whose configs differ only in the seed and :data:`NON_CONFIG_FIELDS`.

    Groups keep the order of their first run. Labels come from :attr:`Run.label`; groups that would
    share a label get the config fields that tell them apart appended, e.g. ``sb (selectivity=0.5)``,
    or, if more than two fields differ (runs of unrelated experiments), their first run directory.
    """
    groups: Dict[str, RunGroup] = {}
    for run in runs:
        key = _config_key(run)
        if key not in groups:
            config = {k: v for k, v in run.config.items() if k not in NON_CONFIG_FIELDS}
            groups[key] = RunGroup(run.label, config)
        groups[key].runs.append(run)
    ordered = list(groups.values())
    for label in {g.label for g in ordered}:
        clash = [g for g in ordered if g.label == label]
        if len(clash) < 2:
            continue
        keys = sorted({k for g in clash for k in g.config})
        differing = [k for k in keys if len({json.dumps(g.config.get(k)) for g in clash}) > 1]
        for g in clash:
            if len(differing) <= 2:
                g.label = f"{label} ({', '.join(f'{k}={_setting(g.config.get(k))}' for k in differing)})"
            else:
                g.label = f"{label} ({g.runs[0].run_dir})"
    return ordered


def _setting(value: Any) -> str:
    """A config value for a label: floats to 4 significant digits (1.1666666 -> 1.167)."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)
