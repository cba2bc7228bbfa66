"""``sb-accel train`` and ``demo``: settings from defaults, a saved run, a file and flags; the
run-directory checks; the demo's budget-matched Traditional vs Selective-Backprop runs and its
closing sentences."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Dict

from ..config import CONFIG_NAME, ConfigError, TrainConfig, load_values
from ..files import atomic_write_json
from ..reporting.runlog import LOG_NAME
from ..run_dir import check_run_dir
from . import EXIT_OK

__all__ = ["cmd_train", "cmd_demo"]


def _train_config(args: argparse.Namespace) -> TrainConfig:
    """Defaults < (with --resume) the run's saved config.json < --config FILE < the flags given.

    With --resume the run directory is the one named by the flags or the file (else the default),
    and it stays the run's ``run_dir`` even if the saved config names another (a moved run)."""
    flags = {k: v for k, v in vars(args).items() if k in TrainConfig.field_names()}
    chosen = {**(load_values(args.config) if args.config else {}), **flags}
    run_dir = str(chosen.get("run_dir", TrainConfig.run_dir))
    check_run_dir(run_dir, args.resume, args.overwrite, need_config=args.resume)
    if args.resume:
        chosen = {**load_values(Path(run_dir) / CONFIG_NAME), **chosen, "run_dir": run_dir}
    return TrainConfig.from_dict(chosen)


def _load_training_data(cfg: TrainConfig) -> Any:
    """The run's dataset, loaded and checked against the run: subsets no larger than the splits,
    a batch no larger than the training examples (:func:`sb_accel.data.check_run_fits`)."""
    from ..data import check_run_fits, check_subsets, load_dataset

    data = load_dataset(cfg.dataset, cfg.data_dir, cfg.download)
    check_subsets(data, cfg.train_subset, cfg.test_subset)
    check_run_fits(cfg.batch_size, cfg.train_subset or len(data.y_train))
    return data


def cmd_train(args: argparse.Namespace) -> int:
    from ..reporting.tables import phase_table, summary_table
    from ..train import Trainer

    cfg = _train_config(args)
    args.active_run_dir = cfg.run_dir
    data = _load_training_data(cfg)
    trainer = Trainer(cfg, data=data, resume=args.resume, overwrite=args.overwrite)
    if args.resume and trainer.rank == 0:  # the settings changed now (--epochs, --lr) hold for the next --resume too
        atomic_write_json(Path(cfg.run_dir) / CONFIG_NAME, cfg.to_dict())
    summary = trainer.fit()
    if trainer.rank == 0:  # under torchrun every rank has the same summary: print it once
        print(summary_table({cfg.strategy: summary}))
        print()
        print(phase_table({cfg.strategy: summary}))
        print(f"\nrun log: {cfg.run_dir}/{LOG_NAME}")
    return EXIT_OK


# --- demo -------------------------------------------------------------------------------------------
DEMO_STRATEGIES = {
    "traditional": dict(strategy="traditional"),
    "sb": dict(strategy="sb"),
    "sb-int8": dict(strategy="sb", engine="onnxruntime", precision="int8"),
}


def cmd_demo(args: argparse.Namespace) -> int:
    """Traditional vs SB (PyTorch FP32 selection) vs SB with ONNX Runtime INT8 selection, on the
    same data, model and machine, budget-matched (:mod:`sb_accel.budget`): Traditional's training
    time is the budget, every strategy has its LR schedule decayed within it. The closing lines
    are computed from the runs."""
    from ..budget import compare_on_budget
    from ..data import check_run_fits, check_subsets, load_dataset
    from ..engines import EngineError
    from ..reporting import build_report, load_run, load_runs

    if args.epochs < 1 or args.train_subset < 0:
        raise ConfigError("demo: --epochs must be >= 1 and --train-subset >= 0 (0: all training examples)")
    data = load_dataset(args.dataset, args.data_dir)
    check_subsets(data, args.train_subset, args.test_subset)
    if args.train_subset:
        data = data.subset(args.train_subset, seed=0)
    base = TrainConfig(dataset=args.dataset, model="small_cnn", epochs=args.epochs, lr=0.05, lr_schedule="linear",
                       warmup_epochs=1.0, test_subset=args.test_subset, checkpoint=False, progress=False)
    check_run_fits(base.batch_size, len(data.y_train))
    plan = dict(DEMO_STRATEGIES)
    if not args.int8:
        plan.pop("sb-int8")
    args.active_run_dir = args.out
    print(f"== small_cnn on {args.dataset}, {len(data.y_train)} training examples; {', '.join(plan)} trained "
          f"interleaved (one epoch of each in turn), first {args.epochs} epochs each, then budget-matched", flush=True)

    def progress(name: str, epoch: int, epochs: int) -> None:
        print(f"   {name}: epoch {epoch}/{epochs}", flush=True)

    try:
        result = compare_on_budget(base, plan, [args.seed], args.out, data, progress=progress)
    except EngineError as exc:
        raise ConfigError(f"demo: the INT8 engine cannot be built here ({exc}); run with --no-int8") from exc
    report = build_report(load_runs(result.budget_dirs), "traditional", budget=True)
    files = report.write(f"{args.out}/report")
    print()
    print(report.tables()["budget"])
    print()
    print(report.tables()["phases"])
    print()
    summaries = {name.rsplit("-s", 1)[0]: s for name, s in result.budget.items()}
    budget = summaries["traditional"]["wall"]  # T as measured beside the others, under the same load
    at_budget = {name: _accuracy_within(load_run(f"{args.out}/budget/{name}-s{args.seed}").evals, budget)
                 for name in summaries}
    for line in _budget_lines(summaries, result.epochs, at_budget):
        print(line)
    print(f"Plots: {files['error_curves'][0]} (error vs time), {files['phases'][0]} (where the time went); "
          f"report: {files['report'][0]}. One seed: the committed 3-seed results are in "
          "benchmarks/results/ (see the README).")
    return EXIT_OK


def _accuracy_within(evals: list, budget: float) -> float:
    """Test accuracy of the last evaluation within ``budget`` seconds of training (NaN: none was)."""
    within = [e for e in evals if e["wall"] <= budget * (1 + 1e-9)]
    return within[-1]["test_acc"] if within else float("nan")


def _budget_lines(summaries: Dict[str, Dict[str, Any]], epochs: Dict[str, int], at_budget: Dict[str, float]) -> list:
    """The verdict per SB variant against Traditional at the same budget T (Traditional's training
    time, measured beside them), judged on the accuracy reached within T; then where SB's time went."""
    trad = summaries["traditional"]
    budget = trad["wall"]
    lines = [f"Budget T = {budget:.0f} s of training: Traditional's {epochs['traditional']} epochs, its learning rate "
             "decayed to zero within T; each SB variant ran the epochs its measured cost fits into T, with its own "
             "schedule decayed within them."]
    for name in [n for n in summaries if n != "traditional"]:
        s, acc = summaries[name], at_budget[name]
        gap = acc - trad["test_acc"]
        verdict = ("its selection pays here" if gap > 0 else
                   "its selection does not pay here: Traditional is better at the same budget" if gap <= 0 else
                   "it did not finish an epoch within T")
        lines.append(f"{name}: {epochs[name]} epochs in {s['wall']:.0f} s ({s['wall'] / budget:.2f} T); within T "
                     f"{_accuracy_gap(acc, trad['test_acc'])}, at its end {100 * s['test_acc']:.2f}%; {verdict}.")
    sb = summaries["sb"]
    lines.append("Where the time went: " + _time_split("SB", sb) + "; " + _time_split("Traditional", trad) + ".")
    return lines


def _time_split(name: str, summary: Dict[str, Any]) -> str:
    """``SB: 31% selection forwards, 42% backward, ... of 40 s``."""
    phases = {k: v for k, v in summary["phases"].items() if k != "eval"}
    total = sum(phases.values()) or 1.0
    parts = [f"{100 * phases[k] / total:.0f}% {label}" for k, label in
             (("selection", "selection"), ("train_forward", "training forward"), ("backward", "backward"),
              ("refresh", "engine refresh")) if phases.get(k, 0.0) / total >= 0.01]
    return f"{name} {', '.join(parts)} of {total:.0f} s"


def _accuracy_gap(acc: float, baseline_acc: float) -> str:
    """``60.12% vs Traditional's 58.00% (+2.12 points)``."""
    return (f"{100 * acc:.2f}% test accuracy vs Traditional's {100 * baseline_acc:.2f}% "
            f"({100 * (acc - baseline_acc):+.2f} points)")
