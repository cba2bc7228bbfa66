"""``sb-accel profile``, ``compare`` and ``report``: run a measurement or read training logs, print
its tables and list the JSON and plots written."""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

from ..config import ConfigError
from . import EXIT_OK

__all__ = ["cmd_profile", "cmd_compare", "cmd_report"]

# The numeric options of profile and compare, checked before any model, engine or file is made.
_RULES: Dict[str, Tuple[Callable[[Any], bool], str]] = {
    "selectivity": (lambda v: 0.0 < v <= 1.0, "must be in (0, 1]; 0.33 keeps about a third of the examples"),
    "repeats": (lambda v: v >= 1, "must be >= 1"),
    "warmup": (lambda v: v >= 0, "must be >= 0"),
    "epoch_size": (lambda v: v >= 0, "must be >= 0 (0: the dataset's training split)"),
    "refresh_every_steps": (lambda v: v >= 0, "must be >= 0 (0: once per epoch)"),
    "batch_sizes": (lambda v: all(b >= 1 for b in v), "must all be >= 1"),
    "batch_size": (lambda v: v >= 1, "must be >= 1"),
    "examples": (lambda v: v >= 1, "must be >= 1"),
    "train_steps": (lambda v: v >= 0, "must be >= 0"),
    "lr": (lambda v: v > 0, "must be a positive number"),
}


def _check_options(args: argparse.Namespace) -> None:
    """Refuse an out-of-range option or an --out/--json that cannot be written to, up front."""
    for name, (ok, rule) in _RULES.items():
        value = getattr(args, name, None)
        values = value if isinstance(value, list) else [value]
        if value is not None and (not all(math.isfinite(v) for v in values) or not ok(value)):
            shown = " ".join(map(str, values))
            raise ConfigError(f"--{name.replace('_', '-')}: {rule}, got {shown}")
    out = Path(args.out)
    blocker = next((p for p in (out, *out.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        where = "is a file" if blocker == out else f"cannot be created: {blocker} is a file"
        raise ConfigError(f"--out: {out} {where}, not a directory; choose another --out")
    if args.json is not None and Path(args.json).is_dir():
        raise ConfigError(f"--json: {args.json} is a directory; name a file, e.g. {Path(args.json) / 'out.json'}")


def _print_files(files: List[Any]) -> None:
    print("\nwritten:")
    for path in files:
        print(f"  {path}")


def cmd_profile(args: argparse.Namespace) -> int:
    _check_options(args)
    from ..profile import predict_epoch_costs, profile_models, profile_tables, write_profile

    rows = profile_models(args.models, args.batch_sizes, args.precisions, args.engines, dataset=args.dataset,
                          data_dir=args.data_dir, device=args.device, repeats=args.repeats, warmup=args.warmup)
    costs = predict_epoch_costs(rows, args.selectivity, args.epoch_size or None, args.refresh_every_steps)
    print(profile_tables(rows, costs))
    _print_files(write_profile(rows, costs, args.out, args.json))
    return EXIT_OK


def cmd_compare(args: argparse.Namespace) -> int:
    _check_options(args)
    from ..compare import compare_engines, compare_table, prepare_model, write_compare
    from ..device import resolve_device

    device = resolve_device(args.device)
    print("preparing the model ...", flush=True)
    model, data, origin = prepare_model(args.model, args.dataset, args.data_dir, args.checkpoint, args.train_steps,
                                        args.batch_size, args.lr, device, args.seed)
    print(origin, flush=True)
    rows = compare_engines(model, data, args.engines, args.examples, args.batch_size, args.selectivity,
                           args.repeats, args.warmup, device, args.seed)
    print(compare_table(rows))
    _print_files(write_compare(rows, args.out, args.json, origin))
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    _check_options(args)
    from ..reporting import build_report, load_runs

    report = build_report(load_runs(args.run_dirs), args.baseline, args.targets, budget=args.budget)
    tables = report.tables()
    print(f"baseline: {report.baseline.label} (chosen as {report.baseline_note}), final test error "
          f"{100 * report.baseline_error:.2f}%\n")
    for note in report.notes:
        print(f"note: {note}")
    if report.notes:
        print()
    if report.budget:
        print(f"budget-matched to the baseline's training time:\n{tables['budget']}\n")
    for title, key in (("runs", "runs"), ("speedup to target error", "speedup"),
                       ("seconds per phase (mean over seeds)", "phases"), ("Pareto frontier", "pareto")):
        print(f"{title}:\n{tables[key]}\n")
    files = report.write(args.out, args.json)
    _print_files([p for paths in files.values() for p in paths])
    return EXIT_OK
