"""Plain-text tables for the terminal (no dependency), and the per-run summary table."""
from __future__ import annotations

from typing import Any, Dict, List, Sequence

from .runlog import PHASES

__all__ = ["format_table", "summary_table", "phase_table"]


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"
    return str(value)


def format_table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """Left-aligned first column, right-aligned others."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def line(parts: Sequence[str]) -> str:
        return "  ".join(p.ljust(w) if i == 0 else p.rjust(w) for i, (p, w) in enumerate(zip(parts, widths)))

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in cells])


def summary_table(summaries: Dict[str, Dict[str, Any]]) -> str:
    """One row per run: accuracy, training wall-clock, backprops, selectivity, forwards."""
    rows: List[List[Any]] = []
    for name, s in summaries.items():
        rows.append([name, f"{100 * s['test_acc']:.2f}%", f"{s['wall']:.1f}", s["backprops"],
                     f"{100 * s['selectivity']:.1f}%", s["forwards"], s["step"]])
    return format_table(rows, ["run", "test acc", "train s", "backprops", "backprop share", "sel. forwards", "steps"])


def phase_table(summaries: Dict[str, Dict[str, Any]]) -> str:
    """Seconds per phase per run, plus the check that phases add up to the wall-clock."""
    rows = []
    for name, s in summaries.items():
        ph = s["phases"]
        rows.append([name] + [f"{ph.get(p, 0.0):.1f}" for p in PHASES] + [f"{sum(ph.values()):.1f}"])
    return format_table(rows, ["run (seconds)"] + list(PHASES) + ["total"])
