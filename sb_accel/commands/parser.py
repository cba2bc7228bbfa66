"""The ``sb-accel`` argument parser: every command's options and their help text (each default
shown once). Builds without importing torch, numpy or matplotlib, so ``--help`` stays fast."""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import re
import sys
import typing
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..config import TrainConfig
from ..strategy_options import DEFAULTS

__all__ = ["build_parser", "Parser"]

_HELP = {
    "dataset": "cifar10, cifar100, svhn, fashion_mnist, synthetic, or a path to a .npz",
    "data_dir": "where datasets live (default: $SB_ACCEL_DATA or ./data; ../shared/data is also searched)",
    "download": "let torchvision download the dataset (needs internet)",
    "train_subset": "use only this many random training examples (0: all)",
    "test_subset": "use only this many random test examples (0: all)",
    "augment": "'preset' (paper's crop/flip/cutout per dataset) or 'none'",
    "model": "registered model name (sb-accel list-models)",
    "width": "model width override (0: model default)",
    "strategy": "registered selection strategy (sb-accel list-strategies)",
    "selectivity": "expected fraction backpropagated by SB (beta = 1/s - 1)",
    "beta": "SB exponent directly (overrides --selectivity)",
    "history": "R: losses the CDF is taken over (0: twice the selection batch, at least 1024)",
    "floor": "minimum keep probability",
    "history_mode": "'batch' (authors' code) or 'sequential' (paper Alg. 2)",
    "prime_epochs": "train on everything for this many first epochs (default: the strategy's, sb-accel list-strategies)",
    "stale_n": "Stale-SB: selection passes every n-th epoch",
    "selection_batch_size": "candidate batch size (0: 1024 on CUDA, else batch size x policy's multiplier)",
    "end_of_epoch": "what happens to kept examples short of a full batch: carry, partial, drop",
    "milestones": "multistep LR milestones: fractions of the run (<1) or epochs (>=1)",
    "engine": "selection engine: auto (torch-graph fp16 on CUDA, torch fp32 on CPU), torch, torch-graph, onnxruntime, tensorrt",
    "precision": "engine precision: auto (the engine's default), fp32, bf16, fp16, int8, fp8 (per backend)",
    "refresh_every_steps": "refresh a snapshot engine every K optimizer steps (0: per epoch only; keep K small, stale selection hurts)",
    "refresh_validate_every": "check every N-th cheap refresh against torch fp32 (builds and rebuilds always; default: the engine's, 25 for onnxruntime on CPU)",
    "int8_recalibrate_every": "onnxruntime INT8: rebuild (recalibrate the activations) every N refreshes (0: only when a check fails)",
    "engine_fallback": "on engine build/validation failure: raise, or fall back to torch",
    "pipeline": "select the next candidate batches in a background thread",
    "device": "auto, cpu, cuda, cuda:N",
    "threads": "torch CPU threads (0: default)",
    "amp": "training-forward autocast: off, bf16, fp16",
    "channels_last": "NHWC memory format for model and batches",
    "eval_every_steps": "also evaluate every N optimizer steps (0: per epoch)",
    "run_dir": "where the log, config and checkpoint go",
    "kath18_multiplier": "Kath18: candidates per training example once importance sampling is on",
    "kath18_replacement": "Kath18: draw the batch with replacement (as the reference; --no-kath18-replacement: without)",
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
    "ddp_history": "under torchrun: 'global' (one SB loss history over all ranks) or 'local' (per rank)",
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


class Parser(argparse.ArgumentParser):
    """``argparse`` as a command line's users expect it: no abbreviated flags (``--epoch`` is not
    ``--epochs``); a subcommand reports its own unknown flags under its own usage, with the closest
    known one (``did you mean --epochs?``); an error shows the short usage line, not every option."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args: Optional[Sequence[str]] = None,  # type: ignore[override]
                         namespace: Optional[argparse.Namespace] = None) -> Tuple[argparse.Namespace, List[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        if extras and self._subparsers is None:  # a (sub)command: its unknown flags are its error
            self.error(f"unrecognized arguments: {' '.join(extras)}{self._did_you_mean(extras)}")
        return parsed, extras

    def _did_you_mean(self, extras: List[str]) -> str:
        known = [o for action in self._actions for o in action.option_strings if o.startswith("--")]
        for word in extras:
            if word.startswith("--"):
                close = difflib.get_close_matches(word.split("=")[0], known, n=1, cutoff=0.6)
                if close:
                    return f" (did you mean {close[0]}?)"
        return ""

    def error(self, message: str) -> typing.NoReturn:
        choice = re.match(r"argument \S+: invalid choice: '([^']*)' \(choose from (.*)\)$", message)
        if choice:
            close = difflib.get_close_matches(choice.group(1), re.findall(r"'([^']*)'", choice.group(2)), n=1)
            if close:
                message += f"; did you mean {close[0]!r}?"
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


# The sections of `train --help`: each begins at its field and runs to the next (TrainConfig's order).
_SECTIONS = (("data", "dataset"), ("model", "model"), ("selection strategy", "strategy"),
             ("optimisation", "epochs"), ("selection engine", "engine"), ("device and run", "device"))


def _sections(parser: argparse.ArgumentParser) -> Dict[str, Any]:
    """Each TrainConfig field's help section (an argument group of ``parser``)."""
    starts = {field: parser.add_argument_group(title) for title, field in _SECTIONS}
    sections: Dict[str, Any] = {}
    current = None
    for f in dataclasses.fields(TrainConfig):
        current = starts.get(f.name, current)
        sections[f.name] = current
    return sections


def _add_config_flags(parser: argparse.ArgumentParser) -> Any:
    """One flag per TrainConfig field, in its help section; returns the last section (the run's).
    Their argparse defaults are SUPPRESS, so ``vars(args)`` holds only the flags given on the
    command line (they override a config file and a resumed run's config); the help shows the
    field's default instead."""
    hints = typing.get_type_hints(TrainConfig)
    sections = _sections(parser)
    for f in dataclasses.fields(TrainConfig):
        group = sections[f.name]
        flag = "--" + f.name.replace("_", "-")
        typ = hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        kwargs: Dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS,
                                  "help": _with_default(_HELP.get(f.name, ""), default)}
        if typ is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        elif typing.get_origin(typ) in (list, List):
            group.add_argument(flag, type=float, nargs="+", **kwargs)
        else:
            base = [a for a in typing.get_args(typ) if a is not type(None)] or [typ]
            group.add_argument(flag, type=base[0], **kwargs)
    return group


def _version() -> str:
    """``sb_accel.__version__``: the package imports its API lazily, so this imports no torch (the
    installed metadata can lag behind an editable checkout, so it is not asked)."""
    from .. import __version__
    return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="sb-accel", description="Selective-Backprop with accelerated selection passes.",
        epilog="exit status: 0 success, 1 runtime failure (engine, divergence, storage), 2 usage, config or data "
               "error, 130 interrupted, 143 terminated (docs/ERRORS.md)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)

    train = sub.add_parser("train", help="train a model with a selection strategy", formatter_class=_HelpFormatter,
                           usage="%(prog)s [--config FILE] [--resume | --overwrite] [--OPTION VALUE ...]",
                           description="Train a model with a selection strategy. Settings: the defaults (with "
                                       "--resume: the run's saved config.json), then --config FILE, then the "
                                       "flags given.")
    run = _add_config_flags(train)
    run.add_argument("--config", metavar="FILE", help="TOML file with any of these options (flags override it)")
    run.add_argument("--resume", action="store_true",
                     help="continue the run in --run-dir from its checkpoint with its saved config "
                          "(flags and --config given now override it)")
    run.add_argument("--overwrite", action="store_true", help="replace an earlier run in --run-dir")

    demo = sub.add_parser("demo", formatter_class=_HelpFormatter, usage="%(prog)s [--OPTION VALUE ...]",
                          help="Traditional vs Selective-Backprop (FP32 and INT8 selection) at the same training-time "
                               "budget, on Fashion-MNIST with the small CNN (a few minutes on a CPU)")
    demo.add_argument("--epochs", type=int, default=5, help="Traditional's epochs: their training time is the budget")
    demo.add_argument("--dataset", default="fashion_mnist", help="dataset (fashion_mnist, cifar10, ...)")
    demo.add_argument("--train-subset", type=int, default=10000, help="training examples used (0: all)")
    demo.add_argument("--test-subset", type=int, default=5000, help="test examples evaluated (0: all)")
    demo.add_argument("--int8", action=argparse.BooleanOptionalAction, default=True,
                      help="also SB with ONNX Runtime INT8 selection")
    demo.add_argument("--seed", type=int, default=0, help="seed of every run")
    demo.add_argument("--out", default="runs/demo", help="directory for the runs' logs and the report")
    demo.add_argument("--data-dir", default=None, help="where datasets live (default: $SB_ACCEL_DATA or ./data)")

    sub.add_parser("list-models", help="print the registered models")
    sub.add_parser("list-engines", help="print the selection engine specs")
    sub.add_parser("list-strategies", help="print the registered selection strategies and their priming epochs")
    _add_measurement_commands(sub)
    completion = sub.add_parser("completion", help="print a shell completion script: "
                                                   "eval \"$(sb-accel completion bash)\" in ~/.bashrc")
    completion.add_argument("shell", choices=["bash", "zsh"], help="the shell to complete in")

    return parser


def _add_measurement_commands(sub: Any) -> None:
    """``profile``, ``compare`` and ``report``: each prints tables and writes JSON and plots to --out."""
    from ..reporting.metrics import TARGET_MULTIPLIERS

    fmt = _HelpFormatter

    profile = sub.add_parser("profile", formatter_class=fmt, usage="%(prog)s [--OPTION VALUE ...]",
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
    profile.add_argument("--selectivity", type=float, default=DEFAULTS.selectivity,
                         help="SB's kept fraction in the cost model")
    profile.add_argument("--epoch-size", type=int, default=0,
                         help="examples per epoch in the cost model (0: the dataset's training split)")
    profile.add_argument("--refresh-every-steps", type=int, default=1,
                         help="engine refresh interval in optimizer steps in the cost model (0: once per epoch)")
    profile.add_argument("--out", default="runs/profile", help="directory for profile.json and the plot")
    profile.add_argument("--json", default=None, help="write the JSON here instead of OUT/profile.json")

    compare = sub.add_parser("compare", formatter_class=fmt, usage="%(prog)s [--OPTION VALUE ...]",
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
    compare.add_argument("--selectivity", type=float, default=DEFAULTS.selectivity, help="for the kept-set agreement")
    compare.add_argument("--repeats", type=int, default=3, help="timed passes over the examples")
    compare.add_argument("--warmup", type=int, default=1, help="untimed passes first")
    compare.add_argument("--seed", type=int, default=0, help="examples, draws and training steps")
    compare.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    compare.add_argument("--out", default="runs/compare", help="directory for compare.json and the plot")
    compare.add_argument("--json", default=None, help="write the JSON here instead of OUT/compare.json")

    report = sub.add_parser("report", formatter_class=fmt, usage="%(prog)s RUN_DIR [RUN_DIR ...] [--OPTION VALUE ...]",
                            help="speedup to target error, error curves, phase breakdown and Pareto frontier "
                                 "of training runs (from their log.jsonl)")
    report.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                        help="run directories, or directories whose subdirectories are runs")
    report.add_argument("--baseline", default=None,
                        help="baseline run directory, configuration label or strategy (default: the Traditional run)")
    report.add_argument("--targets", nargs="+", type=float, default=list(TARGET_MULTIPLIERS),
                        help="target errors as multiples of the baseline's final error")
    report.add_argument("--budget", action="store_true",
                        help="the runs are budget-matched: each had the baseline's training time T with its own LR "
                             "schedule decayed within T (benchmarks/time_to_accuracy.py); adds that view first")
    report.add_argument("--out", default="runs/report", help="directory for report.md, report.json and plots")
    report.add_argument("--json", default=None, help="write the JSON here instead of OUT/report.json")
