"""``sb-accel train`` and ``demo``: settings from defaults, a saved run, a file and flags; the
run-directory checks; the demo's Traditional vs Selective-Backprop runs and its closing sentences."""
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
def cmd_demo(args: argparse.Namespace) -> int:
    """Traditional vs SB (33%) on the same data, model, schedule and machine: at equal epochs, then
    (``--equal-wall``) SB for as many epochs as fit into Traditional's training time, with the same
    LR schedule stretched over them. The closing sentences are computed from the runs."""
    from ..data import check_run_fits, check_subsets, load_dataset
    from ..reporting import epochs_in_budget, load_run
    from ..reporting.tables import phase_table, summary_table
    from ..selection import priming_epochs
    from ..train import Trainer

    if args.epochs < 1 or args.train_subset < 0:
        raise ConfigError("demo: --epochs must be >= 1 and --train-subset >= 0 (0: all training examples)")
    data = load_dataset("cifar10", args.data_dir)
    check_subsets(data, args.train_subset, 0)
    if args.train_subset:
        data = data.subset(args.train_subset, seed=0)
    base = TrainConfig(dataset="cifar10", model="small_cnn", epochs=args.epochs, lr=0.05, lr_schedule="linear",
                       warmup_epochs=min(1.0, args.epochs / 4), nesterov=True)
    check_run_fits(base.batch_size, len(data.y_train))

    def run(name: str, cfg: TrainConfig, what: str) -> Dict[str, Any]:
        args.active_run_dir = cfg.run_dir
        print(f"== {name}: small_cnn on CIFAR-10, {len(data.y_train)} training examples, {what}", flush=True)
        summary = Trainer(cfg, data=data, overwrite=True).fit()
        print(f"   test acc {100 * summary['test_acc']:.2f}% in {summary['wall']:.1f} s of training", flush=True)
        return summary

    summaries: Dict[str, Dict[str, Any]] = {}
    for strategy in ("traditional", "sb"):
        cfg = base.replace(strategy=strategy, run_dir=f"{args.out}/{strategy}")
        summaries[strategy] = run(strategy, cfg, f"{args.epochs} epochs")
    trad, sb = summaries["traditional"], summaries["sb"]
    lines = [_equal_epochs_sentence(trad, sb, args.epochs, priming_epochs("sb", base.prime_epochs))]
    if args.equal_wall:
        epochs = epochs_in_budget(trad["wall"], [e["wall"] for e in load_run(f"{args.out}/sb").evals])
        if epochs > args.epochs:
            stretch = epochs / args.epochs  # the same schedule shape over more epochs
            cfg = base.replace(strategy="sb", epochs=epochs, warmup_epochs=base.warmup_epochs * stretch,
                               run_dir=f"{args.out}/sb-equal-wall")
            name = f"sb, {epochs} epochs"
            summaries[name] = run(name, cfg, f"{epochs} epochs (as many as fit into Traditional's "
                                             f"{trad['wall']:.0f} s)")
            lines.append(_equal_wall_sentence(trad, summaries[name], epochs))
        else:
            lines.append(_no_equal_wall_sentence(trad, sb))
    print()
    print(summary_table(summaries))
    print()
    print(phase_table(summaries))
    print()
    print("\n".join(lines))
    print(f"Run logs: {args.out}/*/{LOG_NAME} (sb-accel report {args.out} compares them)")
    return EXIT_OK


def _accuracy_gap(acc: float, baseline_acc: float) -> str:
    """``60.12% vs Traditional's 58.00% (+2.12 points)``."""
    return (f"{100 * acc:.2f}% test accuracy vs Traditional's {100 * baseline_acc:.2f}% "
            f"({100 * (acc - baseline_acc):+.2f} points)")


def _equal_epochs_sentence(trad: Dict[str, Any], sb: Dict[str, Any], epochs: int, prime_epochs: int) -> str:
    primed = {0: "", 1: " (its first epoch trains on everything)"}.get(
        prime_epochs, f" (its first {prime_epochs} epochs train on everything)")
    return (f"Equal epochs ({epochs}): SB backpropagated {sb['backprops'] / trad['backprops']:.2f}x Traditional's "
            f"examples{primed} in {sb['wall'] / trad['wall']:.2f}x its training time and reached "
            f"{_accuracy_gap(sb['test_acc'], trad['test_acc'])}.")


def _equal_wall_sentence(trad: Dict[str, Any], sb: Dict[str, Any], epochs: int) -> str:
    gap = sb["test_acc"] - trad["test_acc"]
    verdict = "ahead of" if gap > 0 else ("behind" if gap < 0 else "level with")
    return (f"Equal training time: given Traditional's {trad['wall']:.0f} s, SB trained {epochs} epochs in "
            f"{sb['wall']:.0f} s and reached {_accuracy_gap(sb['test_acc'], trad['test_acc'])}: "
            f"{verdict} Traditional at about the same training time.")


def _no_equal_wall_sentence(trad: Dict[str, Any], sb: Dict[str, Any]) -> str:
    if sb["wall"] >= trad["wall"]:
        why = f"SB took {sb['wall']:.0f} s, no less than Traditional's {trad['wall']:.0f} s, so no extra epoch fits"
    else:
        why = (f"SB used {sb['wall']:.0f} s of Traditional's {trad['wall']:.0f} s and the "
               f"{trad['wall'] - sb['wall']:.0f} s left do not fit another SB epoch")
    return f"Equal training time: {why}; the equal-epochs runs are the comparison (try more --epochs)."
