"""``sb-accel report``: the paper's comparisons (Table 1, Figs. 1, 6, 7, 10, 14) for the user's runs.

Input is only the RunLogs (``<run_dir>/log.jsonl``). :func:`build_report` refuses runs of different
datasets, skips runs without an eval (with a note), groups the runs into configurations (seeds
aggregated), picks the baseline (a finished one where it can; a diverged or unfinished baseline is
flagged in a warning) and computes everything; every table marks diverged and unfinished runs;
:meth:`Report.tables` renders the terminal tables and :meth:`Report.write` writes ``report.md``,
``report.json`` and the plots (PNG and SVG) into an output directory.
"""
from __future__ import annotations

import dataclasses
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ..files import atomic_write_json, staged_directory
from .budget import BUDGET_NOTE, budget_table
from .grouping import (DIVERGED, FINISHED, RunGroup, check_same_dataset, describe_status, group_runs, group_status,
                       run_status)
from .metrics import (TARGET_MULTIPLIERS, GroupSummary, TargetResult, eval_at_target, final_error, pareto_frontier,
                      speedup_table)
from .plots import plot_error_curves, plot_pareto, plot_phases
from .runlog import LOG_NAME, PHASES, Run, load_run
from .tables import format_table, phase_table

__all__ = ["collect_run_dirs", "load_runs", "choose_baseline", "baseline_warning", "Report", "build_report"]


def collect_run_dirs(paths: Sequence[str | Path]) -> List[Path]:
    """Run directories named by ``paths``: each path is a run directory (holds ``log.jsonl``) or a
    directory whose immediate subdirectories are (e.g. ``runs/demo`` with ``sb/`` and
    ``traditional/``). Raises ``FileNotFoundError`` for a path that is neither."""
    found: List[Path] = []
    for path in map(Path, paths):
        if (path / LOG_NAME).is_file():
            found.append(path)
            continue
        children = sorted(p for p in path.iterdir() if (p / LOG_NAME).is_file()) if path.is_dir() else []
        if not children:
            raise FileNotFoundError(f"{path}: no {LOG_NAME} in it or in its subdirectories; pass run "
                                    "directories written by sb-accel train")
        found.extend(children)
    return list(dict.fromkeys(found))


def load_runs(paths: Sequence[str | Path]) -> List[Run]:
    """Parsed runs of :func:`collect_run_dirs` (``paths``)."""
    return [load_run(d) for d in collect_run_dirs(paths)]


def choose_baseline(groups: Sequence[RunGroup], spec: Optional[str] = None) -> tuple[RunGroup, str]:
    """The baseline configuration and a note saying how it was chosen.

    ``spec`` is a run directory (its configuration is the baseline), a configuration label as
    printed, or a strategy name that names one configuration. Without ``spec``: the Traditional
    configuration (the first finished one, if several), else the first finished configuration;
    a diverged or unfinished one only if nothing else fits (:func:`baseline_warning` says so).
    ``ValueError`` if ``spec`` matches nothing or is ambiguous.
    """
    if spec is None:
        traditional = [g for g in groups if g.config.get("strategy") == "traditional"]
        finished = [g for g in traditional if group_status(g.runs) == FINISHED]
        if len(traditional) == 1:
            return traditional[0], "the Traditional configuration"
        if finished:
            return finished[0], f"the first finished of {len(traditional)} Traditional configurations"
        if traditional:
            return traditional[0], f"the first of {len(traditional)} Traditional configurations"
        finished = [g for g in groups if group_status(g.runs) == FINISHED]
        first = (finished or list(groups))[0]
        which = "first" if first is groups[0] else "first finished"
        return first, f"the {which} configuration given (no Traditional run among the inputs)"
    as_path = Path(spec).resolve()
    for g in groups:
        if any(r.run_dir.resolve() == as_path for r in g.runs):
            return g, f"--baseline {spec}"
    by_label = [g for g in groups if g.label == spec] or [g for g in groups if g.config.get("strategy") == spec]
    if len(by_label) == 1:
        return by_label[0], f"--baseline {spec}"
    why = "matches several configurations" if by_label else "matches no run directory, label or strategy"
    raise ValueError(f"baseline {spec!r} {why}; choose a run directory or one of: "
                     f"{', '.join(repr(g.label) for g in groups)}")


def baseline_warning(baseline: RunGroup) -> Optional[str]:
    """A warning if the baseline has diverged or unfinished runs (``None`` if all finished)."""
    status = group_status(baseline.runs)
    if status == FINISHED:
        return None
    why = ("its training loss became NaN/inf, so its final error is that of a broken model"
           if status == DIVERGED else "its log has no summary (crashed, interrupted or still running), so its "
           "final error is that of its last eval")
    return (f"the baseline {baseline.label!r} is {describe_status(baseline.runs)}: {why}; the targets and speedups "
            "below are relative to it. Pass --baseline to choose a finished configuration.")


def _mean_phases(phase_dicts: Sequence[Dict[str, float]]) -> Dict[str, float]:
    return {p: statistics.fmean(d.get(p, 0.0) for d in phase_dicts) for p in PHASES}


def _pm(mean: float, std: Optional[float], scale: float = 1.0, digits: int = 1) -> str:
    """``mean ± std`` (scaled), or ``mean`` when there is no spread."""
    text = f"{scale * mean:.{digits}f}"
    return text if std is None else f"{text} ± {scale * std:.{digits}f}"


def _target_cell(result: TargetResult) -> str:
    if not result.all_reached:
        return "not reached" if result.runs == 1 else f"{result.reached}/{result.runs} reached"
    time = f"{_pm(result.time_mean, result.time_std)} s"
    if result.speedup is None:
        return f"{time}, baseline not reached"
    return f"{result.speedup:.2f}x ({time})"


@dataclass
class Report:
    """Everything ``report.md`` shows, computed from the runs."""

    groups: List[RunGroup]
    baseline: RunGroup
    baseline_note: str
    multipliers: List[float]
    summaries: List[GroupSummary]          # one per group, same order
    phases: List[Dict[str, float]]         # mean seconds per phase over each group's seeds
    phases_to_target: List[Optional[Dict[str, float]]]  # up to the largest target; None: not all seeds reached it
    frontier: List[int]                    # indices of groups on the Pareto frontier (diverged ones excluded)
    notes: List[str] = dataclasses.field(default_factory=list)     # runs skipped, and the baseline warning
    budget: bool = False                   # the runs are budget-matched to the baseline's training time

    @property
    def baseline_error(self) -> float:
        return statistics.fmean(final_error(r) for r in self.baseline.runs)

    @property
    def targets(self) -> List[tuple]:
        return [(t.multiplier, t.target) for t in self.summaries[0].targets]

    # --- text --------------------------------------------------------------------------------
    def tables(self) -> Dict[str, str]:
        """Terminal tables: ``runs``, ``speedup``, ``phases``, ``pareto`` (and ``budget``)."""
        runs_rows = [[str(r.run_dir), g.label, r.config.get("seed"), f"{r.evals[-1]['epoch']:.2f}",
                      f"{100 * r.evals[-1]['test_error']:.2f}%", f"{r.evals[-1]['wall']:.1f}", r.evals[-1]["backprops"],
                      run_status(r)]
                     for g in self.groups for r in g.runs]
        statuses = [describe_status(g.runs) for g in self.groups]
        speed_rows = [[self._marked(s.label, i), s.runs, f"{_pm(s.final_error_mean, s.final_error_std, 100, 2)}%",
                       _pm(s.wall_mean, s.wall_std)] + [_target_cell(t) for t in s.targets] + [statuses[i]]
                      for i, s in enumerate(self.summaries)]
        target_heads = [f"to {t.multiplier:g}x ({100 * t.target:.2f}%)" for t in self.summaries[0].targets]
        pareto_rows = [[s.label, _pm(s.wall_mean, s.wall_std), f"{_pm(s.final_error_mean, s.final_error_std, 100, 2)}%",
                        "yes" if i in self.frontier else ("no (diverged)" if group_status(g.runs) == DIVERGED else "")]
                       for i, (g, s) in enumerate(zip(self.groups, self.summaries))]
        budget = {"budget": budget_table(self.groups, self.summaries, self.baseline)} if self.budget else {}
        return {
            **budget,
            "runs": format_table(runs_rows, ["run", "configuration", "seed", "epochs", "final error", "train s",
                                             "backprops", "status"]),
            "speedup": format_table(speed_rows, ["configuration", "seeds", "final error", "train s"] + target_heads
                                    + ["status"]),
            "phases": phase_table({s.label: {"phases": ph} for s, ph in zip(self.summaries, self.phases)}),
            "pareto": format_table(pareto_rows, ["configuration", "train s", "final error", "Pareto-optimal"]),
        }

    def _marked(self, label: str, index: int) -> str:
        """The label, with ``(baseline)`` on the baseline's row."""
        return f"{label} (baseline)" if self.groups[index] is self.baseline else label

    def to_json(self) -> Dict[str, Any]:
        configurations = []
        for i, (g, s) in enumerate(zip(self.groups, self.summaries)):
            entry = dataclasses.asdict(s)
            entry.update(config=g.config, phases=self.phases[i], phases_to_target=self.phases_to_target[i],
                         pareto=i in self.frontier, status=describe_status(g.runs),
                         run_status={str(r.run_dir): run_status(r) for r in g.runs})
            configurations.append(entry)
        return {"baseline": self.baseline.label, "baseline_note": self.baseline_note, "budget_matched": self.budget,
                "baseline_status": describe_status(self.baseline.runs), "notes": list(self.notes),
                "baseline_final_error": self.baseline_error,
                "targets": [{"multiplier": m, "error": t} for m, t in self.targets],
                "configurations": configurations}

    # --- files -------------------------------------------------------------------------------
    def write(self, out_dir: str | Path, json_path: Optional[str | Path] = None) -> Dict[str, List[Path]]:
        """Write the plots, ``report.md`` and the JSON (default ``out_dir/report.json``): all of them
        or, if one fails (a full disk), none (:func:`~sb_accel.files.staged_directory`)."""
        out = Path(out_dir)
        labels = [s.label for s in self.summaries]
        largest = max(self.multipliers)
        with staged_directory(out) as stage:
            plots = {
                "error_curves": plot_error_curves(self.groups, stage / "error_curves", self.targets),
                "phases": plot_phases(labels, self.phases, stage / "phases", self.phases_to_target,
                                      f"to {largest:g}x baseline final error"),
                "pareto": plot_pareto(labels, [s.wall_mean for s in self.summaries],
                                      [s.final_error_mean for s in self.summaries], self.frontier, stage / "pareto",
                                      [s.wall_std for s in self.summaries],
                                      [s.final_error_std for s in self.summaries]),
            }
            if json_path is None:
                atomic_write_json(stage / "report.json", self.to_json())
            (stage / "report.md").write_text(self.markdown(out))
        json_file = out / "report.json" if json_path is None else atomic_write_json(json_path, self.to_json())
        plots = {name: [out / p.name for p in paths] for name, paths in plots.items()}
        return {"report": [out / "report.md"], "json": [json_file], **plots}

    def markdown(self, out_dir: Path) -> str:
        t = self.tables()

        def block(text: str) -> str:
            return f"```\n{text}\n```\n"

        return "\n".join([
            "# sb-accel report", "",
            f"Baseline: **{self.baseline.label}** (chosen as {self.baseline_note}), final test error "
            f"{100 * self.baseline_error:.2f}%. Targets are {', '.join(f'{m:g}x' for m in self.multipliers)} "
            "of it. Training wall-clock excludes evaluation. Configurations with several seeds show mean ± "
            "sample standard deviation; a time to target is given only if every seed reached it. Status: "
            "*diverged* runs had a NaN/inf loss, *unfinished* ones have no summary (crashed, interrupted or still "
            "running: their last eval counts).", "",
            *[f"**Note:** {note}\n" for note in self.notes],
            *(["## Budget-matched comparison", BUDGET_NOTE, "", block(t["budget"])] if self.budget else []),
            "## Runs", block(t["runs"]),
            "## Speedup to target error (paper Table 1)",
            "Speedup = baseline's time to the target / the configuration's time to it.", "",
            block(t["speedup"]),
            "## Test error vs wall-clock and vs backpropagated examples (Figs. 6, 7)",
            "![error curves](error_curves.png)", "",
            "## Where the time went (Figs. 1, 10)",
            "Seconds per phase (mean over seeds) for the whole run; the plot also shows the time up to "
            f"{max(self.multipliers):g}x the baseline's final error.", "",
            block(t["phases"]), "![phase breakdown](phases.png)", "",
            "## Pareto frontier of wall-clock vs error (Fig. 14)", block(t["pareto"]), "![pareto](pareto.png)", "",
        ])


def build_report(runs: Sequence[Run], baseline: Optional[str] = None,
                 multipliers: Sequence[float] = TARGET_MULTIPLIERS, budget: bool = False) -> Report:
    """Group ``runs`` by configuration and compute the report against ``baseline``
    (see :func:`choose_baseline`); ``budget``: the runs are budget-matched to the baseline's
    training time, and the report opens with that view (:mod:`~sb_accel.reporting.budget`).

    Runs without an eval are left out with a note; ``ValueError`` if no run is left, the runs are
    on different datasets (:func:`~sb_accel.reporting.metrics.check_same_dataset`), or a target
    multiplier is below 1. Diverged and unfinished runs are kept and marked; a baseline that is one
    of them gets a warning in :attr:`Report.notes`. Diverged configurations are never on the Pareto
    frontier.
    """
    if not runs:
        raise ValueError("no runs to report on")
    if not multipliers or min(multipliers) < 1.0:
        raise ValueError(f"target multipliers must be >= 1 (multiples of the baseline's final error), got {list(multipliers)}")
    skipped = [r for r in runs if not r.evals]
    runs = [r for r in runs if r.evals]
    if not runs:
        raise ValueError(f"{skipped[0].run_dir}: the run log has no eval event yet (it must finish at least one "
                         "epoch); nothing to report")
    check_same_dataset(runs)
    notes = [f"{r.run_dir} left out: its log has no eval event yet (it must finish at least one epoch)"
             for r in skipped]
    groups = group_runs(runs)
    base, note = choose_baseline(groups, baseline)
    warning = baseline_warning(base)
    if warning:
        notes.append(f"WARNING: {warning}")
    summaries = speedup_table(groups, base, multipliers)
    largest = max(multipliers)
    phases_to_target: List[Optional[Dict[str, float]]] = []
    for g, s in zip(groups, summaries):
        target = next(t for t in s.targets if t.multiplier == largest)
        hits = [eval_at_target(r, target.target) for r in g.runs]
        phases_to_target.append(_mean_phases([e["phases"] for e in hits]) if all(hits) else None)
    points = [(s.wall_mean, s.final_error_mean) if group_status(g.runs) != DIVERGED else (math.nan, math.nan)
              for g, s in zip(groups, summaries)]
    return Report(groups, base, note, list(multipliers), summaries, [_mean_phases([r.phases for r in g.runs]) for g in groups],
                  phases_to_target, pareto_frontier(points), notes, budget)
