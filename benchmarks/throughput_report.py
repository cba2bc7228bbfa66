"""Table and plot of :mod:`selection_throughput` results (speed, refresh cost, loss agreement)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

from sb_accel.reporting.plots import save_figure
from sb_accel.reporting.tables import format_table

BASELINE = "torch-fp32"


def table(result: Dict[str, Any]) -> str:
    def num(value: Optional[float], fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    rows = []
    for r in result["rows"]:
        if r["status"] != "ok":
            rows.append([r["engine"], r["status"][:60]] + [""] * 12)
            continue
        spread_ms = (f"{r['ms_per_batch']:.1f} ({r['ms_p25']:.0f}-{r['ms_p75']:.0f})"
                     if "ms_per_batch" in r else "-")
        rows.append([r["engine"], num(r.get("build_s"), ".2f"), spread_ms, num(r.get("examples_per_s"), ".0f"),
                     num(r.get("speedup"), ".2f") + ("x" if "speedup" in r else ""),
                     num(r.get("refresh_rebuild_s", r.get("refresh_full_s")), ".3f"),  # "full": older results
                     num(r.get("refresh_cheap_s"), ".4f"),
                     num(100 * r["refresh_over_step"] if "refresh_over_step" in r else None, ".1f"),
                     num(r.get("per_step_ms"), ".1f"),
                     num(r.get("max_abs_error"), ".2g"), num(r.get("spearman"), ".4f"), num(r.get("jaccard"), ".3f"),
                     num(r.get("kept_fraction"), ".3f"), {True: "yes", False: "NO"}.get(r.get("agrees"), "")])
    headers = ["engine", "build s", "ms/batch (p25-p75)", "examples/s", f"vs {BASELINE}", "refresh rebuild s",
               "refresh cheap s", "refresh % step", "sel+refresh ms/step", "max|dloss|", "spearman", "jaccard", "kept",
               "agrees"]
    step = next((r["train_step_ms"] for r in result["rows"] if "train_step_ms" in r), None)
    note = f"training step (batch {result['config']['batch']}): {step:.1f} ms" if step else ""
    return format_table(rows, headers) + ("\n" + note if note else "")


def plot(result: Dict[str, Any], stem: Path) -> List[Path]:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        print("matplotlib is not installed: no plot")
        return []
    rows = [r for r in result["rows"] if "speedup" in r]
    names = [r["engine"] for r in rows]
    fig = Figure(figsize=(9, 3.6), layout="constrained")
    speed, agree = fig.subplots(1, 2)
    speed.barh(names, [r["speedup"] for r in rows], color="C0")
    speed.axvline(1.0, color="k", lw=0.8)
    speed.set_xlabel(f"selection throughput vs {BASELINE}")
    agree.barh(names, [r["spearman"] for r in rows], color="C1", label="Spearman")
    agree.barh(names, [r["jaccard"] for r in rows], color="C2", height=0.4, label="kept-set Jaccard")
    redraw = next(r["jaccard"] for r in result["rows"] if r["engine"].endswith("(redraw)"))
    agree.axvline(redraw, color="k", ls="--", lw=0.8, label="Jaccard of two FP32 draws")
    agree.set_xlim(0, 1.0)
    agree.set_xlabel("agreement with FP32 losses")
    agree.legend(loc="upper left", fontsize="small", framealpha=0.9)
    cfg = result["config"]
    fig.suptitle(f"{cfg['model']}, batch {cfg['batch']}, {result['environment']['threads']} threads, "
                 f"{cfg['train_steps']} training steps")
    return save_figure(fig, stem)


