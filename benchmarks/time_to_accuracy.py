"""Time to accuracy on real data, on this machine: the paper's fixed-schedule view and the
budget-matched view ("No Train No Gain", Kaddour et al. 2023), both over several seeds.

    python benchmarks/time_to_accuracy.py                       # CPU setting: Fashion-MNIST 10k, small CNN, 3 seeds
    python benchmarks/time_to_accuracy.py --dataset cifar10 --train-subset 20000
    python benchmarks/time_to_accuracy.py --preset gpu          # ResNet-18, full CIFAR-10, 20 epochs (one GPU)
    python benchmarks/time_to_accuracy.py --preset paper        # WRN-28-10, 200 epochs (GPU)

Strategies: Traditional, SB, Stale-SB (n = 3, the published rule), Kath18, InfoBatch, and SB with every available accelerated engine
(ONNX Runtime INT8 on CPU; TensorRT where present). The ``gpu`` preset selects with the
``torch-graph-fp16`` engine (CUDA graphs over the live model) in calls of 1024 candidates for every
strategy that runs selection forwards and compares SB with eager FP32 selection (``sb-torch-fp32``).

(a) fixed schedule (the paper's view): every strategy runs the same number of epochs with the same
    epoch-based LR schedule (SB finishes sooner: does it get there?);
(b) budget-matched: the budget T is Traditional's training time in (a), with its schedule fully
    decayed within T; every strategy runs as many epochs as its epoch cost measured in (a) fits
    into T, with its own schedule laid over them; Traditional runs again beside them. Reported:
    final accuracy at (about) T and time to 1.1x / 1.2x the budget-tuned Traditional's error.

The machine may be shared, so each view trains its runs interleaved in one process (one epoch of
each run in turn, every run's clock paused while the others train; :mod:`sb_accel.budget`), and
the load average is recorded at every round. ``sb-accel report`` renders both views (``--budget``
for (b)). Results go to ``benchmarks/results/<date>-<machine>-budget-<dataset>/`` (summaries,
reports, plots, logs, the load, the exact command).
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

import torch

from sb_accel.budget import BudgetComparison, compare_on_budget
from sb_accel.cli import main as sb_accel_main
from sb_accel.config import TrainConfig
from sb_accel.data import load_dataset
from sb_accel.engines import EngineContext, EngineError, create_engine, parse_engine_spec
from sb_accel.models import create_model

PRESETS: Dict[str, Dict[str, object]] = {
    # Sized for a busy 2-core CPU (both views, 3 seeds, in about an hour): the small ResNet-9-style CNN on
    # 10k Fashion-MNIST examples, warm-up + linear decay.
    "cpu": dict(dataset="fashion_mnist", model="small_cnn", epochs=5, batch_size=128, lr=0.05, lr_schedule="linear",
                warmup_epochs=1.0, train_subset=10000, test_subset=5000, selectivity=0.33, refresh_every_steps=1),
    # One GPU (sized on an H100 by ../shared/ENGINES-NOTES.md: ResNet-18 training step b128 ~11 ms;
    # FP16 selection at b1024 5.2 us per example eager, 3.3 under torch.compile; torch-graph has not
    # run yet): full CIFAR-10, warm-up + linear decay.
    "gpu": dict(dataset="cifar10", model="resnet18", epochs=20, batch_size=128, lr=0.1, lr_schedule="linear",
                warmup_epochs=1.0, train_subset=0, selectivity=0.33, refresh_every_steps=1, device="cuda"),
    # The paper's CIFAR-10 setting (§5.1) for GPU users.
    "paper": dict(dataset="cifar10", model="wrn-28-10", epochs=200, batch_size=128, lr=0.1, lr_schedule="multistep",
                  milestones=[60.0, 120.0, 160.0], gamma=0.2, train_subset=0, selectivity=0.33,
                  refresh_every_steps=200, amp="bf16"),
}


# Per preset: what every strategy that runs selection forwards uses (SB, Stale-SB, Kath18), the
# accelerated engines tried for extra "sb-<engine>" runs by default.
SELECTION: Dict[str, Dict[str, object]] = {
    "gpu": dict(engine="torch-graph", precision="fp16", selection_batch_size=1024),
}
DEFAULT_ENGINES = {"cpu": ["onnxruntime-int8", "tensorrt-fp16", "tensorrt-int8"], "gpu": ["torch-fp32"],
                   "paper": ["torch-graph-bf16", "tensorrt-fp16", "tensorrt-int8"]}


def strategies(available_engines: List[str], selection: Optional[Dict[str, object]] = None) -> Dict[str, Dict[str, object]]:
    """Name -> TrainConfig overrides of every strategy in the comparison; ``selection`` goes to every
    strategy that runs selection forwards (and to the engine variants, whose engine it keeps)."""
    chosen = dict(selection or {})
    out: Dict[str, Dict[str, object]] = {
        "traditional": dict(strategy="traditional"),
        "sb": dict(strategy="sb", **chosen),
        "stale-sb": dict(strategy="stale-sb", stale_n=3, **chosen),
        "kath18": dict(strategy="kath18", **chosen),
        "infobatch": dict(strategy="infobatch"),
    }
    for spec in available_engines:
        backend, precision = parse_engine_spec(spec)
        out[f"sb-{spec}"] = dict(strategy="sb", **{**chosen, "engine": backend, "precision": precision})
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


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def write_results(out: Path, result: BudgetComparison, uptimes: List[str]) -> int:
    """summaries.json, budget.json (epochs, T, load), copies of the run logs, and one
    ``sb-accel report`` per view."""
    (out / "summaries.json").write_text(json.dumps({"fixed-schedule": result.fixed, "budget": result.budget},
                                                   indent=2, default=str))
    (out / "budget.json").write_text(json.dumps({
        "budget_seconds": result.budget_seconds, "epochs": result.epochs, "load_average_per_round": result.loads,
        "uptime": uptimes}, indent=2))
    for view, dirs, extra in (("fixed-schedule", result.fixed_dirs, []), ("budget", result.budget_dirs, ["--budget"])):
        for d in dirs:  # small copies of what the report reads: results reproducible from git alone
            dest = out / "logs" / view / Path(d).name
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy(Path(d) / "log.jsonl", dest / "log.jsonl")
        code = sb_accel_main(["report", *dirs, "--out", str(out / view), "--baseline", "traditional", *extra])
        if code:
            return code
    return 0


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--dataset", help="override the preset's dataset (cifar10, fashion_mnist, ...)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, help="override the preset's fixed-schedule epochs")
    parser.add_argument("--train-subset", type=int, help="override the preset's training-set size (0: all)")
    parser.add_argument("--test-subset", type=int, help="override the preset's evaluated test examples (0: all)")
    parser.add_argument("--only", nargs="+", help="run only these strategies (names as printed; traditional always)")
    parser.add_argument("--engines", nargs="+",
                        help="accelerated engines to try for extra SB runs (unavailable ones are skipped; default per "
                             f"preset: {DEFAULT_ENGINES})")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--refresh-every-steps", type=int, help="override the preset's engine refresh interval")
    parser.add_argument("--out", help="results directory (default benchmarks/results/<date>-<machine>-budget-<dataset>)")
    args = parser.parse_args(argv)

    preset = dict(PRESETS[args.preset])
    for key in ("dataset", "epochs", "train_subset", "test_subset", "refresh_every_steps"):
        if getattr(args, key) is not None:
            preset[key] = getattr(args, key)
    machine = f"{platform.machine()}-{torch.cuda.get_device_name(0).replace(' ', '_') if torch.cuda.is_available() else 'cpu' + str(args.threads)}"
    dataset = str(preset["dataset"])
    out = Path(args.out or f"benchmarks/results/{datetime.date.today().isoformat()}-{machine}-budget-{dataset}")
    runs_dir = Path("benchmarks/out/runs") / out.name
    out.mkdir(parents=True, exist_ok=True)
    (out / "command.txt").write_text("python " + " ".join(shlex.quote(a) for a in [sys.argv[0]] + (argv or sys.argv[1:])) + "\n")

    torch.set_num_threads(args.threads)
    data = load_dataset(dataset)
    if preset.get("train_subset"):
        data = data.subset(int(preset.pop("train_subset")), seed=0)
    preset.pop("train_subset", None)
    engines = args.engines if args.engines is not None else DEFAULT_ENGINES[args.preset]
    plan = strategies(available_engines(engines), SELECTION.get(args.preset))
    if args.only:
        unknown = set(args.only) - set(plan)
        if unknown:
            parser.error(f"unknown strategies {sorted(unknown)}; available: {', '.join(plan)}")
        plan = {k: v for k, v in plan.items() if k in args.only or k == "traditional"}

    base = TrainConfig(**preset, threads=args.threads, progress=False, log_every_steps=50, checkpoint=False)
    uptimes = [_uptime()]
    print(f"{len(plan)} strategies x {len(args.seeds)} seeds, interleaved; {uptimes[0]}", flush=True)
    result = compare_on_budget(base, plan, args.seeds, runs_dir, data,
                               progress=lambda name, e, n: print(f"  {name}: epoch {e}/{n}", flush=True))
    uptimes.append(_uptime())
    print(f"budget T = {result.budget_seconds:.1f} s; epochs per strategy: {result.epochs}; {uptimes[-1]}")
    code = write_results(out, result, uptimes)
    print(f"\nresults: {out}")
    return code


if __name__ == "__main__":
    sys.exit(main())
