"""Figures of the reports, each saved as PNG (to look at) and SVG (to put in a paper).

Figures are built with :class:`matplotlib.figure.Figure` and rendered by the Agg/SVG canvases
directly, never through ``pyplot``: no display is needed and the caller's global matplotlib backend
(e.g. a notebook's) is left alone. matplotlib is imported on the first figure, so code that only
imports :mod:`sb_accel.reporting` (the Trainer does, for the RunLog) does not pay for it.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .grouping import RunGroup
from .runlog import PHASES

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["save_figure", "plot_error_curves", "plot_phases", "plot_pareto", "plot_profile", "plot_compare"]

# matplotlib's default colour cycle, by name ("C0".."C9"), so no import is needed to pick colours.
_COLORS = [f"C{i}" for i in range(10)]
_PHASE_COLORS = {phase: _COLORS[i] for i, phase in enumerate(PHASES)}


def _figure(figsize: Tuple[float, float]) -> "Figure":
    from matplotlib.figure import Figure
    return Figure(figsize=figsize, layout="constrained")


def save_figure(fig: Figure, stem: str | Path) -> List[Path]:
    """Write ``stem.png`` and ``stem.svg``; returns both paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    fig.savefig(paths[0], dpi=130, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    return paths


def plot_error_curves(groups: Sequence[RunGroup], stem: str | Path,
                      targets: Sequence[tuple] = ()) -> List[Path]:
    """Test error vs training wall-clock and vs backpropagated examples (paper Figs. 6, 7).

    One line per run; the seeds of a configuration share a colour and a legend entry.
    ``targets`` are ``(multiplier, error)`` pairs drawn as dotted horizontal lines.
    """
    fig = _figure((12, 4.5))
    axes = fig.subplots(1, 2, sharey=True)
    for i, group in enumerate(groups):
        color = _COLORS[i % len(_COLORS)]
        for j, run in enumerate(group.runs):
            evals = run.evals
            error = [100 * e["test_error"] for e in evals]
            label = group.label if j == 0 else None
            axes[0].plot([e["wall"] for e in evals], error, marker="o", ms=3, color=color, label=label)
            axes[1].plot([e["backprops"] for e in evals], error, marker="o", ms=3, color=color, label=label)
    for multiplier, error in targets:
        for ax in axes:
            ax.axhline(100 * error, color="grey", lw=0.8, ls=":")
        axes[1].annotate(f"{multiplier:g}x", (1.0, 100 * error), xycoords=("axes fraction", "data"),
                         xytext=(3, 0), textcoords="offset points", va="center", fontsize=8, color="grey")
    axes[0].set_xlabel("training wall-clock (s, excluding evaluation)")
    axes[1].set_xlabel("examples backpropagated")
    axes[0].set_ylabel("test error (%)")
    axes[0].set_title("Test error vs wall-clock")
    axes[1].set_title("Test error vs backpropagated examples")
    for ax in axes:
        ax.grid(alpha=0.3)
    handles, names = axes[0].get_legend_handles_labels()  # both panels have the same lines
    fig.legend(handles, names, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(3, max(len(groups), 1)), fontsize=8)
    return save_figure(fig, stem)


def _stacked_bars(ax: Any, labels: Sequence[str], phase_rows: Sequence[Optional[Mapping[str, float]]],
                  title: str) -> None:
    y = list(range(len(labels)))
    left = [0.0] * len(labels)
    for phase in PHASES:
        widths = [(row or {}).get(phase, 0.0) for row in phase_rows]
        if any(widths):
            ax.barh(y, widths, left=left, color=_PHASE_COLORS[phase], label=phase)
            left = [a + b for a, b in zip(left, widths)]
    for yi, row in zip(y, phase_rows):
        if row is None:
            ax.text(0, yi, "  not reached", va="center", fontsize=8, color="grey")
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    ax.set_xlabel("seconds")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)


def plot_phases(labels: Sequence[str], whole: Sequence[Mapping[str, float]], stem: str | Path,
                to_target: Optional[Sequence[Optional[Mapping[str, float]]]] = None,
                target_title: str = "") -> List[Path]:
    """Where the time went, per run (paper Figs. 1, 10): stacked phase seconds for the whole run
    and, if ``to_target`` is given, up to a target error (``None`` rows: target not reached)."""
    panels = 2 if to_target is not None else 1
    fig = _figure((6 * panels + 1, 1.2 + 0.5 * len(labels)))
    axes = fig.subplots(1, panels, squeeze=False)[0]
    _stacked_bars(axes[0], labels, whole, "whole run")
    if to_target is not None:
        _stacked_bars(axes[1], labels, to_target, target_title)
        axes[1].set_yticklabels([])
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="upper center", ncol=len(names), fontsize=8, bbox_to_anchor=(0.5, 1.0 + 0.25 / len(labels)))
    return save_figure(fig, stem)


def plot_pareto(labels: Sequence[str], walls: Sequence[float], errors: Sequence[float],
                frontier: Sequence[int], stem: str | Path, wall_std: Sequence[Optional[float]] = (),
                error_std: Sequence[Optional[float]] = ()) -> List[Path]:
    """Wall-clock vs final test error; frontier points opaque and joined, the rest faded (Fig. 14)."""
    fig = _figure((7, 5))
    ax = fig.subplots()
    on = set(frontier)
    for i, (label, wall, error) in enumerate(zip(labels, walls, errors)):
        color = _COLORS[i % len(_COLORS)]
        xerr = wall_std[i] if i < len(wall_std) else None
        yerr = 100 * error_std[i] if i < len(error_std) and error_std[i] is not None else None
        ax.errorbar(wall, 100 * error, xerr=xerr, yerr=yerr, fmt="o", ms=8, color=color,
                    alpha=1.0 if i in on else 0.3, label=label + (" (Pareto)" if i in on else ""))
    if frontier:
        ax.step([walls[i] for i in frontier], [100 * errors[i] for i in frontier], where="post",
                color="black", lw=1, alpha=0.6)
    ax.set_xlabel("training wall-clock (s)")
    ax.set_ylabel("final test error (%)")
    ax.set_title("Pareto frontier: wall-clock vs error")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return save_figure(fig, stem)


_PROFILE_SEGMENTS = (("train_forward_ms", "train forward", "#4c72b0"), ("backward_ms", "backward", "#dd8452"),
                     ("optimizer_ms", "optimizer", "#55a868"))
_SELECTION_COLOR = "#8172b3"


def plot_profile(rows: Sequence[Dict[str, Any]], stem: str | Path) -> List[Path]:
    """Per-batch time of a training step (forward, backward, optimizer stacked) per precision, and
    of the selection forward per engine; one panel per model, bars grouped by batch size (Fig. 18)."""
    measured = [r for r in rows if r.get("status") == "ok"]
    models = list(dict.fromkeys(r["model"] for r in measured))
    bars = max((sum(r["model"] == m for r in measured) for m in models), default=1)
    fig = _figure((max(7.0, 1.0 * bars + 2.5), 3.8 * max(len(models), 1)))
    axes = fig.subplots(max(len(models), 1), 1, squeeze=False)[:, 0]
    for ax, model in zip(axes, models):
        x, ticks, pos = [], [], 0.0
        previous_batch = None
        for r in (r for r in measured if r["model"] == model):
            if previous_batch is not None and r["batch"] != previous_batch:
                pos += 0.6  # a gap between batch sizes
            previous_batch = r["batch"]
            if r["kind"] == "train":
                bottom = 0.0
                for key, name, color in _PROFILE_SEGMENTS:
                    ax.bar(pos, r[key], bottom=bottom, color=color, label=name)
                    bottom += r[key]
                sel = r["selection_ms"]
                ax.bar(pos + 0.42, sel, width=0.3, color=_SELECTION_COLOR, label="selection forward (torch, same precision)")
                note = f"bwd/fwd {r['backward_over_forward']:.1f}x"
                ax.annotate(note, (pos, bottom), xytext=(0, 2), textcoords="offset points", ha="center", fontsize=7)
            else:
                ax.bar(pos, r["selection_ms"], width=0.5, color=_SELECTION_COLOR, hatch="//", edgecolor="white",
                       label="selection forward (engine)")
                if r.get("selection_over_backward") is not None:
                    ax.annotate(f"{r['selection_over_backward']:.2f}x bwd", (pos, r["selection_ms"]), xytext=(0, 2),
                                textcoords="offset points", ha="center", fontsize=7)
            x.append(pos)
            ticks.append(f"train {r['name']}" if r["kind"] == "train" else r["name"].replace("-", "\n", 1))
            ticks[-1] += f"\nB={r['batch']}"
            pos += 1.0
        ax.set_xticks(x, ticks, fontsize=7)
        ax.set_ylabel("ms per batch")
        ax.set_title(f"{model}: time per batch ({measured[0]['device']})")
        ax.grid(axis="y", alpha=0.3)
        handles, names = ax.get_legend_handles_labels()
        unique = dict(zip(names, handles))
        ax.legend(unique.values(), unique.keys(), fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return save_figure(fig, stem)


def plot_compare(rows: Sequence[Dict[str, Any]], stem: str | Path) -> List[Path]:
    """Throughput vs agreement with FP32, one point per engine: as *dis*agreement on a symlog axis
    (1 - Spearman of the losses; fraction of SB's keep decisions flipped), since the interesting
    differences are 1e-4 apart near perfect agreement and the reference sits at exactly 0."""
    measured = [r for r in rows if r.get("status") == "ok"]
    fig = _figure((11, 4.5))
    axes = fig.subplots(1, 2, sharex=True)
    panels = ((lambda r: 1.0 - r["spearman"], "1 - Spearman rank correlation of losses"),
              (lambda r: r["flipped"], "fraction of keep decisions flipped (same draws)"))
    markers = "osD^vP*X"
    for ax, (value, title) in zip(axes, panels):
        for i, r in enumerate(measured):
            y = value(r)
            if math.isnan(y):
                continue
            ax.scatter(r["throughput"], y, s=70, color=_COLORS[i % len(_COLORS)], marker=markers[i % len(markers)],
                       label=r["engine"])
        ax.set_yscale("symlog", linthresh=1e-5)
        ax.set_ylim(bottom=-2e-6)  # room for the markers of exact agreement at 0
        ax.set_xlabel("selection throughput (examples/s)")
        ax.set_ylabel("disagreement with torch-fp32 (0 = identical)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return save_figure(fig, stem)
