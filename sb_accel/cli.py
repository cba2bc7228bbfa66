"""Command line: ``sb-accel train | demo | profile | compare | report | list-models | list-engines``.

Exit status (every error the CLI gives, with its fix: docs/ERRORS.md):

* 0: success;
* 1: a runtime failure: an engine that cannot be built or fails validation, a diverged run, a file
  that cannot be written (:class:`~sb_accel.files.StorageError`);
* 2: a usage, config or data error, argparse's own included: ``ConfigError``, ``DataError`` and
  the other ``ValueError``\\ s, a named path that does not exist;
* 130: interrupted (Ctrl-C); 143: terminated (SIGTERM). Both unwind normally, so a run's
  ``finally`` blocks run and its last checkpoint stays valid.

Importing this module, ``--help`` and ``--version`` import no torch: each command imports what it
needs when it runs.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import threading
import typing
from pathlib import Path
from typing import Any, Dict, List, Optional

from .config import CONFIG_NAME, STRATEGIES, ConfigError, TrainConfig, load_values
from .files import StorageError

__all__ = ["main", "build_parser", "Terminated", "check_run_dir", "EXIT_OK", "EXIT_RUNTIME", "EXIT_USAGE",
           "EXIT_INTERRUPTED", "EXIT_TERMINATED"]

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143

CHECKPOINT_NAME = "checkpoint.pt"  # as sb_accel.train.checkpoint.CHECKPOINT_NAME (that module imports torch)
LOG_NAME = "log.jsonl"             # as sb_accel.reporting.runlog.LOG_NAME


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when the process receives SIGTERM, so that ``finally`` blocks run
    (a run closes its log and keeps its last checkpoint). A ``KeyboardInterrupt``: code that handles
    Ctrl-C handles it too; :func:`main` exits with status 143."""


_HELP = {
    "dataset": "cifar10, cifar100, svhn, fashion_mnist, synthetic, or a path to a .npz",
    "data_dir": "where datasets live (default: $SB_ACCEL_DATA or ./data; ../shared/data is also searched)",
    "download": "let torchvision download the dataset (needs internet)",
    "train_subset": "use only this many random training examples (0: all)",
    "test_subset": "use only this many random test examples (0: all)",
    "augment": "'preset' (paper's crop/flip/cutout per dataset) or 'none'",
    "model": "registered model name (sb-accel list-models)",
    "width": "model width override (0: model default)",
    "strategy": f"one of {', '.join(STRATEGIES)}",
    "selectivity": "expected fraction backpropagated by SB (beta = 1/s - 1)",
    "beta": "SB exponent directly (overrides --selectivity)",
    "history": "R: losses the CDF is taken over",
    "floor": "minimum keep probability",
    "history_mode": "'batch' (authors' code) or 'sequential' (paper Alg. 2)",
    "prime_epochs": "train on everything for this many first epochs (default: 1 for SB/Stale-SB)",
    "stale_n": "Stale-SB: selection pass every n-th epoch per example",
    "selection_batch_size": "candidate batch size (0: batch size x policy's multiplier)",
    "end_of_epoch": "what happens to kept examples short of a full batch: carry, partial, drop",
    "milestones": "multistep LR milestones: fractions of the run (<1) or epochs (>=1)",
    "engine": "selection engine backend: torch, onnxruntime, tensorrt",
    "precision": "engine precision: fp32, bf16, fp16, int8, fp8 (per backend)",
    "refresh_every_steps": "refresh a snapshot engine every K optimizer steps (0: per epoch only; keep K small, stale selection hurts)",
    "refresh_validate_every": "check every N-th cheap refresh against torch fp32 (builds and full refreshes always)",
    "int8_recalibrate_every": "onnxruntime INT8: full activation recalibration every N refreshes (0: only when a check fails)",
    "engine_fallback": "on engine build/validation failure: raise, or fall back to torch",
    "pipeline": "select the next candidate batches in a background thread",
    "device": "auto, cpu, cuda, cuda:N",
    "threads": "torch CPU threads (0: default)",
    "amp": "training-forward autocast: off, bf16, fp16",
    "channels_last": "NHWC memory format for model and batches",
    "eval_every_steps": "also evaluate every N optimizer steps (0: per epoch)",
    "run_dir": "where the log, config and checkpoint go",
    "kath18_multiplier": "Kath18: candidates per training example",
    "infobatch_ratio": "InfoBatch: fraction of well-learned examples pruned",
    "infobatch_anneal": "InfoBatch: final fraction of epochs trained on everything",
    "epochs": "training epochs",
    "batch_size": "training batch size (examples backpropagated per optimizer step)",
    "lr": "peak learning rate (SGD)",
    "momentum": "SGD momentum",
    "nesterov": "Nesterov momentum",
    "weight_decay": "L2 weight decay",
    "lr_schedule": "multistep, cosine, linear or constant",
    "gamma": "multistep: LR factor at each milestone",
    "warmup_epochs": "linear LR warm-up over this many epochs",
    "label_smoothing": "cross-entropy label smoothing",
    "refresh_every_epoch": "also refresh a snapshot engine at every epoch end",
    "refresh_background": "build the next engine in a background thread",
    "pipeline_depth": "candidate batches the pipeline selects ahead",
    "engine_threads": "CPU threads of the selection engine (0: backend default)",
    "seed": "seed of the data order, augmentation, subsets and initialisation",
    "log_every_steps": "write an interval event every N optimizer steps",
    "checkpoint": "write checkpoint.pt at every epoch end (needed for --resume)",
    "progress": "show a progress bar",
}


def _with_default(text: str, default: Any) -> str:
    """``text`` plus ``(default: X)``, unless it already speaks of its default or there is none."""
    if default is None or default is argparse.SUPPRESS or "(default" in text:
        return text
    shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
    return f"{text} (default: {shown.replace('%', '%%')})".strip()


class _HelpFormatter(argparse.HelpFormatter):
    """Shows each option's default once, and none for switches, ``None`` or help naming its own."""

    def _get_help_string(self, action: argparse.Action) -> Optional[str]:
        if action.nargs == 0 and not isinstance(action, argparse.BooleanOptionalAction):
            return action.help  # --resume, --help, --version: a switch is off unless given
        return _with_default(action.help or "", action.default)


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field. Their argparse defaults are SUPPRESS, so ``vars(args)`` holds
    only the flags given on the command line (they override a config file and a resumed run's
    config); the help shows the field's default instead."""
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        typ = hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        kwargs: Dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS,
                                  "help": _with_default(_HELP.get(f.name, ""), default)}
        if typ is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        elif typing.get_origin(typ) in (list, List):
            parser.add_argument(flag, type=float, nargs="+", **kwargs)
        else:
            base = [a for a in typing.get_args(typ) if a is not type(None)] or [typ]
            parser.add_argument(flag, type=base[0], **kwargs)


def _version() -> str:
    """``sb_accel.__version__``: the package imports its API lazily, so this imports no torch (the
    installed metadata can lag behind an editable checkout, so it is not asked)."""
    from . import __version__
    return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sb-accel", description="Selective-Backprop with accelerated selection passes.",
        epilog="exit status: 0 success, 1 runtime failure (engine, divergence, storage), 2 usage, config or data "
               "error, 130 interrupted, 143 terminated (docs/ERRORS.md)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser("train", help="train a model with a selection strategy", formatter_class=_HelpFormatter,
                           description="Train a model with a selection strategy. Settings: the defaults (with "
                                       "--resume: the run's saved config.json), then --config FILE, then the "
                                       "flags given.")
    train.add_argument("--config", help="TOML file with any of the options below (flags override it)")
    train.add_argument("--resume", action="store_true",
                       help="continue the run in --run-dir from its checkpoint with its saved config "
                            "(flags and --config given now override it)")
    train.add_argument("--overwrite", action="store_true", help="replace an earlier run in --run-dir")
    _add_config_flags(train)

    demo = sub.add_parser("demo", formatter_class=_HelpFormatter,
                          help="Traditional vs Selective-Backprop on CIFAR-10 with the small CNN, at equal epochs "
                               "and at equal training time")
    demo.add_argument("--epochs", type=int, default=3, help="epochs of the equal-epochs comparison")
    demo.add_argument("--train-subset", type=int, default=25000, help="training examples used (0: all 50000)")
    demo.add_argument("--equal-wall", action=argparse.BooleanOptionalAction, default=True,
                      help="also run SB for as many epochs as fit into Traditional's training time")
    demo.add_argument("--out", default="runs/demo", help="directory for the runs' logs")
    demo.add_argument("--data-dir", default=None, help="where datasets live (default: $SB_ACCEL_DATA or ./data)")

    sub.add_parser("list-models", help="print the registered models")
    sub.add_parser("list-engines", help="print the selection engine specs")
    _add_measurement_commands(sub)

    return parser


def _add_measurement_commands(sub: Any) -> None:
    """``profile``, ``compare`` and ``report``: each prints tables and writes JSON and plots to --out."""
    from .reporting.metrics import TARGET_MULTIPLIERS

    fmt = _HelpFormatter

    profile = sub.add_parser("profile", formatter_class=fmt,
                             help="time selection forward vs training forward/backward (paper Fig. 18) and "
                                  "predict the per-epoch cost of Traditional, SB and SB on each engine")
    profile.add_argument("--models", nargs="+", default=["small_cnn"], help="registered model names")
    profile.add_argument("--batch-sizes", nargs="+", type=int, default=[128], help="training and selection batch sizes")
    profile.add_argument("--precisions", nargs="+", choices=["fp32", "bf16", "fp16"],
                         help="training precisions (default: fp32 bf16, plus fp16 on CUDA)")
    profile.add_argument("--engines", nargs="+",
                         help="selection engines besides torch (default: every registered one; "
                              "those that cannot be built here are reported as unavailable)")
    profile.add_argument("--dataset", default="cifar10", help="where the real batches come from")
    profile.add_argument("--data-dir", default=None, help="where datasets live (default: $SB_ACCEL_DATA or ./data)")
    profile.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    profile.add_argument("--repeats", type=int, default=5, help="timed repetitions (medians are reported)")
    profile.add_argument("--warmup", type=int, default=2, help="untimed repetitions first")
    profile.add_argument("--selectivity", type=float, default=0.33, help="SB's kept fraction in the cost model")
    profile.add_argument("--epoch-size", type=int, default=0,
                         help="examples per epoch in the cost model (0: the dataset's training split)")
    profile.add_argument("--refresh-every-steps", type=int, default=1,
                         help="engine refresh interval in optimizer steps in the cost model (0: once per epoch)")
    profile.add_argument("--out", default="runs/profile", help="directory for profile.json and the plot")
    profile.add_argument("--json", default=None, help="write the JSON here instead of OUT/profile.json")

    compare = sub.add_parser("compare", formatter_class=fmt,
                             help="throughput and selection agreement of each engine/precision vs torch FP32")
    compare.add_argument("--model", default="small_cnn", help="registered model name (ignored with --checkpoint)")
    compare.add_argument("--checkpoint", default=None,
                         help="a run directory (or its checkpoint.pt) whose model to use")
    compare.add_argument("--train-steps", type=int, default=300,
                         help="without --checkpoint: SGD steps on real data first, so losses are spread out")
    compare.add_argument("--lr", type=float, default=0.05, help="learning rate of those steps")
    compare.add_argument("--engines", nargs="+", help="engine specs (default: every registered one)")
    compare.add_argument("--dataset", default=None, help="default: the checkpoint's dataset, else cifar10")
    compare.add_argument("--data-dir", default=None, help="where datasets live (default: $SB_ACCEL_DATA or ./data)")
    compare.add_argument("--examples", type=int, default=2048, help="training examples scored by every engine")
    compare.add_argument("--batch-size", type=int, default=128, help="selection (and training-step) batch size")
    compare.add_argument("--selectivity", type=float, default=0.33, help="for the kept-set agreement")
    compare.add_argument("--repeats", type=int, default=3, help="timed passes over the examples")
    compare.add_argument("--warmup", type=int, default=1, help="untimed passes first")
    compare.add_argument("--seed", type=int, default=0, help="examples, draws and training steps")
    compare.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    compare.add_argument("--out", default="runs/compare", help="directory for compare.json and the plot")
    compare.add_argument("--json", default=None, help="write the JSON here instead of OUT/compare.json")

    report = sub.add_parser("report", formatter_class=fmt,
                            help="speedup to target error, error curves, phase breakdown and Pareto frontier "
                                 "of training runs (from their log.jsonl)")
    report.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                        help="run directories, or directories whose subdirectories are runs")
    report.add_argument("--baseline", default=None,
                        help="baseline run directory, configuration label or strategy (default: the Traditional run)")
    report.add_argument("--targets", nargs="+", type=float, default=list(TARGET_MULTIPLIERS),
                        help="target errors as multiples of the baseline's final error")
    report.add_argument("--out", default="runs/report", help="directory for report.md, report.json and plots")
    report.add_argument("--json", default=None, help="write the JSON here instead of OUT/report.json")


def _print_files(files: List[Any]) -> None:
    print("\nwritten:")
    for path in files:
        print(f"  {path}")


def cmd_profile(args: argparse.Namespace) -> int:
    from .profile import predict_epoch_costs, profile_models, profile_tables, write_profile

    rows = profile_models(args.models, args.batch_sizes, args.precisions, args.engines, dataset=args.dataset,
                          data_dir=args.data_dir, device=args.device, repeats=args.repeats, warmup=args.warmup)
    costs = predict_epoch_costs(rows, args.selectivity, args.epoch_size or None, args.refresh_every_steps)
    print(profile_tables(rows, costs))
    _print_files(write_profile(rows, costs, args.out, args.json))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .compare import compare_engines, compare_table, prepare_model, write_compare
    from .device import resolve_device

    if not 0.0 < args.selectivity <= 1.0:
        raise ValueError(f"--selectivity must be in (0, 1], got {args.selectivity}")
    device = resolve_device(args.device)
    print("preparing the model ...", flush=True)
    model, data, origin = prepare_model(args.model, args.dataset, args.data_dir, args.checkpoint, args.train_steps,
                                        args.batch_size, args.lr, device, args.seed)
    print(origin, flush=True)
    rows = compare_engines(model, data, args.engines, args.examples, args.batch_size, args.selectivity,
                           args.repeats, args.warmup, device, args.seed)
    print(compare_table(rows))
    _print_files(write_compare(rows, args.out, args.json, origin))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .reporting import build_report, load_runs

    report = build_report(load_runs(args.run_dirs), args.baseline, args.targets)
    tables = report.tables()
    print(f"baseline: {report.baseline.label} (chosen as {report.baseline_note}), final test error "
          f"{100 * report.baseline_error:.2f}%\n")
    for note in report.notes:
        print(f"note: {note}")
    if report.notes:
        print()
    for title, key in (("runs", "runs"), ("speedup to target error", "speedup"),
                       ("seconds per phase (mean over seeds)", "phases"), ("Pareto frontier", "pareto")):
        print(f"{title}:\n{tables[key]}\n")
    files = report.write(args.out, args.json)
    _print_files([p for paths in files.values() for p in paths])
    return EXIT_OK


# --- train ------------------------------------------------------------------------------------------
def check_run_dir(run_dir: str | Path, resume: bool, overwrite: bool) -> None:
    """Refuse, before anything is loaded or created, a ``run_dir`` the run cannot use: a file (or
    below one), ``--resume`` without a checkpoint and saved config to resume from, an earlier run
    without ``--resume`` or ``--overwrite``, or both flags at once. Raises :class:`ConfigError`."""
    path = Path(run_dir)
    if resume and overwrite:
        raise ConfigError(f"--resume continues the run in {path} and --overwrite replaces it: pass only one")
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        where = "is a file" if existing == path else f"cannot be created: {existing} is a file"
        raise ConfigError(f"run_dir: {path} {where}, not a directory; choose another --run-dir")
    has_log = (path / LOG_NAME).is_file()
    if resume and not (path / CHECKPOINT_NAME).is_file():
        if not path.is_dir():
            raise ConfigError(f"nothing to resume: {path} does not exist; check --run-dir")
        if not has_log:
            raise ConfigError(f"nothing to resume in {path}: no {CHECKPOINT_NAME}; run without --resume")
        raise ConfigError(f"nothing to resume in {path}: no {CHECKPOINT_NAME}; run without --resume "
                          "(add --overwrite to replace the old log)")
    if resume and not (path / CONFIG_NAME).is_file():
        raise ConfigError(f"cannot resume {path}: it has a {CHECKPOINT_NAME} but no {CONFIG_NAME} (the run's saved "
                          "config); give the run's settings with --config FILE")
    if not resume and not overwrite and has_log:
        raise ConfigError(f"run_dir: {path} already holds a run; pass --resume to continue it, --overwrite to "
                          "replace it, or choose another --run-dir")


def _train_config(args: argparse.Namespace) -> TrainConfig:
    """Defaults < (with --resume) the run's saved config.json < --config FILE < the flags given.

    With --resume the run directory is the one named by the flags or the file (else the default),
    and it stays the run's ``run_dir`` even if the saved config names another (a moved run)."""
    flags = {k: v for k, v in vars(args).items() if k in TrainConfig.field_names()}
    chosen = {**(load_values(args.config) if args.config else {}), **flags}
    run_dir = str(chosen.get("run_dir", TrainConfig.run_dir))
    check_run_dir(run_dir, args.resume, args.overwrite)
    if args.resume:
        chosen = {**load_values(Path(run_dir) / CONFIG_NAME), **chosen, "run_dir": run_dir}
    return TrainConfig.from_dict(chosen)


def _load_training_data(cfg: TrainConfig) -> Any:
    """The run's dataset, loaded and checked against the run (see :func:`sb_accel.data.check_run_fits`)."""
    from .data import check_run_fits, load_dataset

    data = load_dataset(cfg.dataset, cfg.data_dir, cfg.download)
    available = len(data.y_train)
    check_run_fits(cfg.batch_size, min(cfg.train_subset, available) if cfg.train_subset else available)
    return data


def cmd_train(args: argparse.Namespace) -> int:
    from .reporting.tables import phase_table, summary_table
    from .train import Trainer

    cfg = _train_config(args)
    args.active_run_dir = cfg.run_dir
    data = _load_training_data(cfg)
    summary = Trainer(cfg, data=data, resume=args.resume, overwrite=args.overwrite).fit()
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
    from .data import check_run_fits, load_dataset
    from .reporting import epochs_in_budget, load_run
    from .reporting.tables import phase_table, summary_table
    from .train import Trainer

    if args.epochs < 1 or args.train_subset < 0:
        raise ConfigError("demo: --epochs must be >= 1 and --train-subset >= 0 (0: all training examples)")
    data = load_dataset("cifar10", args.data_dir)
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
    lines = [_equal_epochs_sentence(trad, sb, args.epochs, base.replace(strategy="sb").resolved_prime_epochs)]
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


# --- listings ---------------------------------------------------------------------------------------
def cmd_list_models(args: argparse.Namespace) -> int:
    from .models import list_models
    print("\n".join(list_models()))
    return EXIT_OK


def cmd_list_engines(args: argparse.Namespace) -> int:
    from .engines import list_engines
    print("\n".join(list_engines()))
    return EXIT_OK


_HANDLERS = {"train": cmd_train, "demo": cmd_demo, "list-models": cmd_list_models, "list-engines": cmd_list_engines,
             "profile": cmd_profile, "compare": cmd_compare, "report": cmd_report}


# --- errors, signals, exit status -------------------------------------------------------------------
def _error(message: object) -> None:
    print(f"sb-accel: error: {message}", file=sys.stderr)


def _stopped(what: str, run_dir: Optional[str]) -> str:
    """What an interrupted command leaves behind: a checkpoint to resume from, or none yet."""
    if run_dir is None:
        return f"sb-accel: {what}"
    checkpoint = Path(run_dir) / CHECKPOINT_NAME
    if checkpoint.is_file():
        return (f"sb-accel: {what}; the checkpoint of the last finished epoch is kept in {checkpoint}: continue with "
                f"sb-accel train --run-dir {run_dir} --resume")
    return (f"sb-accel: {what}; no checkpoint was written yet in {run_dir} (none is written before the first epoch "
            "ends, or with --no-checkpoint): start again, with --overwrite to replace its log")


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


class _SigtermRaises:
    """While active (main thread only), SIGTERM raises :class:`Terminated`; the old handler is restored after."""

    def __enter__(self) -> "_SigtermRaises":
        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, _raise_terminated)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def main(argv: Optional[List[str]] = None) -> int:
    """Run one command; returns its exit status (see the module docstring)."""
    args = build_parser().parse_args(argv)  # usage errors: argparse prints them and exits with 2
    args.active_run_dir = None  # the run a command is training, for the interruption message
    with _SigtermRaises():
        try:
            return _HANDLERS[args.command](args)
        except Terminated:
            print(_stopped("terminated (SIGTERM)", args.active_run_dir), file=sys.stderr)
            return EXIT_TERMINATED
        except KeyboardInterrupt:
            print(_stopped("interrupted", args.active_run_dir), file=sys.stderr)
            return EXIT_INTERRUPTED
        except BrokenPipeError:  # e.g. `sb-accel list-engines | head`: the reader left, nothing to report
            # Point stdout at /dev/null so the interpreter's final flush does not raise again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_RUNTIME
        except StorageError as exc:  # a file the run must not lose could not be written
            _error(exc.strerror or exc)
            return EXIT_RUNTIME
        except (ValueError, FileNotFoundError) as exc:  # ConfigError, DataError, bad values, missing inputs
            _error(exc)
            return EXIT_USAGE
        except (FloatingPointError, RuntimeError, OSError) as exc:  # divergence, EngineError, I/O
            _error(exc)
            return EXIT_RUNTIME


if __name__ == "__main__":
    sys.exit(main())
