"""Reproduce the paper's comparison (Table 1, Figs. 6/7/10) on real data, on this machine, in one run.

    python benchmarks/time_to_accuracy.py                       # default CPU setting (<= 60 min, 2 cores)
    python benchmarks/time_to_accuracy.py --seeds 0 1 2 --epochs 12
    python benchmarks/time_to_accuracy.py --dataset fashion_mnist
    python benchmarks/time_to_accuracy.py --preset gpu          # ResNet-18, full CIFAR-10, 20 epochs (one GPU)
    python benchmarks/time_to_accuracy.py --preset paper        # WRN-28-10, 200 epochs (GPU)

Strategies: Traditional, SB, Stale-SB (n = 2, 3), Kath18, InfoBatch, and SB with every available
accelerated engine (ONNX Runtime INT8 on CPU; TensorRT where present), plus pipelined selection.
The ``gpu`` preset selects with the ``torch-graph-fp16`` engine (CUDA graphs over the live model)
in calls of 1024 candidates for every strategy that runs selection forwards, compares SB with
eager FP32 selection (``sb-torch-fp32``, the paper's setting) and runs no pipelined variants.
Every strategy uses the same epoch-based LR schedule. Two views, as the paper:

(a) equal epochs: every strategy runs the same number of epochs (SB finishes sooner: does it get
    there?);
(b) equal wall-clock: each strategy's schedule is stretched to the number of epochs that fit into
    Traditional's training time, using the per-epoch time it measured in (a) (means over the seeds,
    so every seed of a strategy runs the same schedule).

Targets are 1.1x / 1.2x / 1.4x Traditional's final error; ``sb-accel report`` renders Table 1, the
error-vs-time and error-vs-backprops plots and the phase breakdown. Results go to
``benchmarks/results/<date>-<machine>/`` (summaries, report.md, plots, the exact command).
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import shlex
import shutil
import sys
from pathlib import Path
from typing import Dict, List, Optional

import torch

from sb_accel.cli import main as sb_accel_main
from sb_accel.config import TrainConfig
from sb_accel.data import load_dataset
from sb_accel.engines import EngineContext, EngineError, create_engine, parse_engine_spec
from sb_accel.models import create_model
from sb_accel.reporting import load_run
from sb_accel.train import Trainer

PRESETS: Dict[str, Dict[str, object]] = {
    # Sized for a 2-core CPU: the small ResNet-9-style CNN, warm-up + linear decay compressed to the budget.
    "cpu": dict(model="small_cnn", epochs=6, batch_size=128, lr=0.05, lr_schedule="linear", warmup_epochs=1.0,
                train_subset=20000, selectivity=0.33, refresh_every_steps=1),
    # One GPU (sized on an H100 by ../shared/ENGINES-NOTES.md: ResNet-18 training step b128 ~11 ms;
    # FP16 selection at b1024 5.2 us per example eager, 3.3 under torch.compile; torch-graph has not
    # run yet): full CIFAR-10, warm-up + linear decay.
    "gpu": dict(model="resnet18", epochs=20, batch_size=128, lr=0.1, lr_schedule="linear", warmup_epochs=1.0,
                train_subset=0, selectivity=0.33, refresh_every_steps=1, device="cuda"),
    # The paper's CIFAR-10 setting (§5.1) for GPU users.
    "paper": dict(model="wrn-28-10", epochs=200, batch_size=128, lr=0.1, lr_schedule="multistep",
                  milestones=[60.0, 120.0, 160.0], gamma=0.2, train_subset=0, selectivity=0.33,
                  refresh_every_steps=200, amp="bf16"),
}


# Per preset: what every strategy that runs selection forwards uses (SB, Stale-SB, Kath18), the
# accelerated engines tried for extra "sb-<engine>" runs by default, and whether pipelined variants run.
SELECTION: Dict[str, Dict[str, object]] = {
    "gpu": dict(engine="torch-graph", precision="fp16", selection_batch_size=1024),
}
DEFAULT_ENGINES = {"cpu": ["onnxruntime-int8", "tensorrt-fp16", "tensorrt-int8"], "gpu": ["torch-fp32"],
                   "paper": ["torch-graph-bf16", "tensorrt-fp16", "tensorrt-int8"]}
PIPELINES = {"cpu": True, "gpu": False, "paper": True}


def strategies(available_engines: List[str], threads: int, selection: Optional[Dict[str, object]] = None,
               pipelines: bool = True) -> Dict[str, Dict[str, object]]:
    """Name -> TrainConfig overrides of every strategy in the comparison; ``selection`` goes to every
    strategy that runs selection forwards (and to the engine variants, whose engine it keeps)."""
    chosen = dict(selection or {})
    out: Dict[str, Dict[str, object]] = {
        "traditional": dict(strategy="traditional"),
        "sb": dict(strategy="sb", **chosen),
        "stale-sb-2": dict(strategy="stale-sb", stale_n=2, **chosen),
        "stale-sb-3": dict(strategy="stale-sb", stale_n=3, **chosen),
        "kath18": dict(strategy="kath18", **chosen),
        "infobatch": dict(strategy="infobatch"),
    }
    for spec in available_engines:
        backend, precision = parse_engine_spec(spec)
        out[f"sb-{spec}"] = dict(strategy="sb", **{**chosen, "engine": backend, "precision": precision})
        if not pipelines:
            continue
        # Pipelined: selection of the next batches overlaps training; on CPU the cores are split.
        split = dict(threads=max(1, threads // 2), engine_threads=max(1, threads - threads // 2)) if not torch.cuda.is_available() else {}
        out[f"sb-{spec}-pipeline"] = dict(strategy="sb", **{**chosen, "engine": backend, "precision": precision},
                                          pipeline=True, **split)
    return out


def available_engines(candidates: List[str]) -> List[str]:
    """The accelerated engines that build on this machine (a tiny model as the probe)."""
    found = []
    probe = create_model("small_cnn", width=2)
    batch = [(torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,)))]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    for spec in candidates:
        try:
            engine = create_engine(spec, probe.to(device), EngineContext(device=device, sample_batches=[(x.to(device), y.to(device)) for x, y in batch], max_batch=8))
            engine.close()
            found.append(spec)
        except (EngineError, ImportError) as exc:
            print(f"skipping engine {spec}: {exc}", file=sys.stderr)
    return found


def run(cfg: TrainConfig, data, reuse: bool = False) -> Dict[str, object]:
    """Train ``cfg``; with ``reuse``, a finished run of the identical config in its run_dir is read instead."""
    print(f"-- {cfg.run_dir}: {cfg.strategy} engine={cfg.engine}-{cfg.precision} pipeline={cfg.pipeline} "
          f"epochs={cfg.epochs} seed={cfg.seed}", flush=True)
    summary = finished_summary(cfg) if reuse else None
    if summary is None:
        summary = Trainer(cfg, data=data, overwrite=True).fit()
    else:
        print("   (reused the finished run)", flush=True)
    print(f"   acc {100 * summary['test_acc']:.2f}%  train {summary['wall']:.0f} s  backprops {summary['backprops']}", flush=True)
    return summary


def finished_summary(cfg: TrainConfig) -> Optional[Dict[str, object]]:
    """The summary of a finished run of exactly ``cfg`` in ``cfg.run_dir``, else None."""
    try:
        run = load_run(cfg.run_dir)
    except FileNotFoundError:
        return None
    if run.summary is None or run.config != json.loads(json.dumps(cfg.to_dict())):
        return None
    return {k: v for k, v in run.summary.items() if k not in ("event", "time")}


def write_results(out: Path, summaries: Dict[str, Dict[str, object]], run_dirs: Dict[str, List[str]]) -> int:
    """summaries.json, a copy of each run's log, and ``sb-accel report`` per view."""
    (out / "summaries.json").write_text(json.dumps(summaries, indent=2, default=str))
    for view, dirs in run_dirs.items():
        for d in dirs:  # small copies of what the report reads: results reproducible from git alone
            dest = out / "logs" / view / Path(d).name
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy(Path(d) / "log.jsonl", dest / "log.jsonl")
        code = sb_accel_main(["report", *dirs, "--out", str(out / view), "--baseline", "traditional"])
        if code:
            return code
    return 0


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--dataset", default="cifar10", help="cifar10, fashion_mnist, ...")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epochs", type=int, help="override the preset's epoch budget")
    parser.add_argument("--train-subset", type=int, help="override the preset's training-set size (0: all)")
    parser.add_argument("--only", nargs="+", help="run only these strategies (names as printed)")
    parser.add_argument("--engines", nargs="+",
                        help="accelerated engines to try for extra SB runs (unavailable ones are skipped; default per "
                             f"preset: {DEFAULT_ENGINES})")
    parser.add_argument("--views", nargs="+", choices=["equal-epochs", "equal-wall"], default=["equal-epochs", "equal-wall"])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--refresh-every-steps", type=int, help="override the preset's engine refresh interval")
    parser.add_argument("--out", help="results directory (default benchmarks/results/<date>-<machine>-<dataset>)")
    parser.add_argument("--reuse", action="store_true",
                        help="read finished runs of identical configs under benchmarks/out instead of training them "
                             "again (continues an interrupted benchmark; their timings are from when they ran)")
    args = parser.parse_args(argv)

    preset = dict(PRESETS[args.preset])
    if args.epochs:
        preset["epochs"] = args.epochs
    if args.train_subset is not None:
        preset["train_subset"] = args.train_subset
    if args.refresh_every_steps is not None:
        preset["refresh_every_steps"] = args.refresh_every_steps
    machine = f"{platform.machine()}-{torch.cuda.get_device_name(0).replace(' ', '_') if torch.cuda.is_available() else 'cpu' + str(args.threads)}"
    out = Path(args.out or f"benchmarks/results/{datetime.date.today().isoformat()}-{machine}-{args.dataset}")
    runs_dir = Path("benchmarks/out/runs") / out.name
    out.mkdir(parents=True, exist_ok=True)
    (out / "command.txt").write_text("python " + " ".join(shlex.quote(a) for a in [sys.argv[0]] + (argv or sys.argv[1:])) + "\n")

    torch.set_num_threads(args.threads)
    data = load_dataset(args.dataset)
    if preset.get("train_subset"):
        data = data.subset(int(preset["train_subset"]), seed=0)
    engines = args.engines if args.engines is not None else DEFAULT_ENGINES[args.preset]
    plan = strategies(available_engines(engines), args.threads, SELECTION.get(args.preset), PIPELINES[args.preset])
    if args.only:
        unknown = set(args.only) - set(plan)
        if unknown:
            parser.error(f"unknown strategies {sorted(unknown)}; available: {', '.join(plan)}")
        plan = {k: v for k, v in plan.items() if k in args.only or k == "traditional"}

    base = dict(preset, dataset=args.dataset, threads=args.threads, progress=False, log_every_steps=50)
    base.pop("train_subset")
    summaries: Dict[str, Dict[str, object]] = {}
    run_dirs: Dict[str, List[str]] = {view: [] for view in args.views}
    # (a) equal epochs, every seed; results are rewritten after each seed so an interruption keeps them.
    for seed in args.seeds:
        for name, overrides in plan.items():
            cfg = TrainConfig(**{**base, **overrides, "seed": seed, "run_dir": str(runs_dir / "equal-epochs" / f"{name}-s{seed}")})
            summaries[f"equal-epochs/{name}-s{seed}"] = run(cfg, data, args.reuse)
            if "equal-epochs" in run_dirs:
                run_dirs["equal-epochs"].append(cfg.run_dir)
        code = write_results(out, summaries, {v: d for v, d in run_dirs.items() if v == "equal-epochs"})
        if code:
            return code
    if "equal-wall" in args.views:
        # (b) equal wall-clock: one epoch budget per strategy, from its mean epoch time over the seeds.
        mean_wall = {name: sum(summaries[f"equal-epochs/{name}-s{seed}"]["wall"] for seed in args.seeds) / len(args.seeds)
                     for name in plan}
        budget = mean_wall["traditional"]
        for seed in args.seeds:
            run_dirs["equal-wall"].append(str(runs_dir / "equal-epochs" / f"traditional-s{seed}"))
            for name, overrides in plan.items():
                if name == "traditional":
                    continue
                epochs = max(1, math.floor(budget / (mean_wall[name] / base["epochs"])))
                stretch = epochs / base["epochs"]  # warm-up stretches with the schedule (milestones are fractions)
                cfg = TrainConfig(**{**base, **overrides, "epochs": epochs, "seed": seed,
                                     "warmup_epochs": base.get("warmup_epochs", 0.0) * stretch,
                                     "run_dir": str(runs_dir / "equal-wall" / f"{name}-s{seed}")})
                summaries[f"equal-wall/{name}-s{seed}"] = run(cfg, data, args.reuse)
                run_dirs["equal-wall"].append(cfg.run_dir)
            code = write_results(out, summaries, run_dirs)
            if code:
                return code
    print(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
