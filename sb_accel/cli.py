"""Command line: ``sb-accel train | demo | export | profile | compare | report``."""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import typing
from typing import Any, Dict, List, Optional

from .config import STRATEGIES, ConfigError, TrainConfig

__all__ = ["main"]

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
}


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        typ = hints[f.name]
        kwargs: Dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": _HELP.get(f.name, "")}
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        kwargs["help"] += f" (default: {default})"
        if typ is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        elif typing.get_origin(typ) in (list, List):
            parser.add_argument(flag, type=float, nargs="+", **kwargs)
        else:
            base = [a for a in typing.get_args(typ) if a is not type(None)] or [typ]
            parser.add_argument(flag, type=base[0], **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sb-accel", description="Selective-Backprop with accelerated selection passes.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser("train", help="train a model with a selection strategy",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    train.add_argument("--config", help="TOML file with any of the options below (flags override it)")
    train.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its checkpoint")
    train.add_argument("--overwrite", action="store_true", help="replace an earlier run in --run-dir")
    _add_config_flags(train)

    demo = sub.add_parser("demo", help="Traditional vs Selective-Backprop on CIFAR-10 with the small CNN")
    demo.add_argument("--epochs", type=int, default=3)
    demo.add_argument("--train-subset", type=int, default=25000)
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("--data-dir", default=None)

    sub.add_parser("list-models", help="print the registered models")
    sub.add_parser("list-engines", help="print the selection engine specs")
    _add_measurement_commands(sub)

    return parser


class _DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except ``None``: those options say in their help what happens without them."""

    def _get_help_string(self, action: argparse.Action) -> Optional[str]:
        return action.help if action.default is None else super()._get_help_string(action)


def _add_measurement_commands(sub: Any) -> None:
    """``profile``, ``compare`` and ``report``: each prints tables and writes JSON and plots to --out."""
    from .reporting.metrics import TARGET_MULTIPLIERS

    fmt = _DefaultsHelpFormatter

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
    for title, key in (("runs", "runs"), ("speedup to target error", "speedup"),
                       ("seconds per phase (mean over seeds)", "phases"), ("Pareto frontier", "pareto")):
        print(f"{title}:\n{tables[key]}\n")
    files = report.write(args.out, args.json)
    _print_files([p for paths in files.values() for p in paths])
    return 0


def _train_config(args: argparse.Namespace) -> TrainConfig:
    overrides = {k: v for k, v in vars(args).items() if k in TrainConfig.field_names()}
    if args.config:
        return TrainConfig.from_toml(args.config, overrides)
    return TrainConfig.from_dict(overrides)


def cmd_train(args: argparse.Namespace) -> int:
    from .reporting.tables import phase_table, summary_table
    from .train import Trainer

    cfg = _train_config(args)
    summary = Trainer(cfg, resume=args.resume, overwrite=args.overwrite).fit()
    print(summary_table({cfg.strategy: summary}))
    print()
    print(phase_table({cfg.strategy: summary}))
    print(f"\nrun log: {cfg.run_dir}/log.jsonl")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Traditional vs SB (33%) on the same data, model, schedule and machine; prints the comparison."""
    from .data import load_dataset
    from .reporting.tables import phase_table, summary_table
    from .train import Trainer

    data = load_dataset("cifar10", args.data_dir)
    if args.train_subset:
        data = data.subset(args.train_subset, seed=0)
    summaries = {}
    for strategy in ("traditional", "sb"):
        cfg = TrainConfig(dataset="cifar10", model="small_cnn", strategy=strategy, epochs=args.epochs,
                          lr=0.05, lr_schedule="linear", warmup_epochs=min(1.0, args.epochs / 4), nesterov=True,
                          run_dir=f"{args.out}/{strategy}")
        print(f"== {strategy}: small_cnn on CIFAR-10 (JPEG q75 copy), {len(data.y_train)} training examples, "
              f"{args.epochs} epochs", flush=True)
        summaries[strategy] = Trainer(cfg, data=data, overwrite=True).fit()
        print(f"   test acc {100 * summaries[strategy]['test_acc']:.2f}% in {summaries[strategy]['wall']:.1f} s", flush=True)
    print()
    print(summary_table(summaries))
    print()
    print(phase_table(summaries))
    t, s = summaries["traditional"], summaries["sb"]
    print(f"\nSB backpropagated {s['backprops'] / t['backprops']:.2f}x Traditional's examples "
          f"(the first epoch primes on everything) in {s['wall'] / t['wall']:.2f}x its training time.")
    print(f"Run logs: {args.out}/*/log.jsonl")
    return 0


def cmd_list_models(args: argparse.Namespace) -> int:
    from .models import list_models
    print("\n".join(list_models()))
    return 0


def cmd_list_engines(args: argparse.Namespace) -> int:
    from .engines import list_engines
    print("\n".join(list_engines()))
    return 0


_HANDLERS = {"train": cmd_train, "demo": cmd_demo, "list-models": cmd_list_models, "list-engines": cmd_list_engines,
             "profile": cmd_profile, "compare": cmd_compare, "report": cmd_report}


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = _HANDLERS[args.command]
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("interrupted; the last epoch's checkpoint is kept (continue with --resume)", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `sb-accel list-engines | head`: the reader left, nothing to report
        # Point stdout at /dev/null so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (ConfigError, FileNotFoundError, FloatingPointError, ValueError) as exc:
        print(f"sb-accel: error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # DataError, EngineError and friends carry their fix in the message
        print(f"sb-accel: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
