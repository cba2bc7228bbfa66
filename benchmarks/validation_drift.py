"""How fast a cheap INT8 refresh drifts from FP32 after its last calibration: the evidence for the
refresher's validation interval (``validate_every``) per engine.

    PYTHONPATH=. python benchmarks/validation_drift.py --model small_cnn --train-subset 10000 \\
        --prime-steps 78 --steps 150 --out benchmarks/results/<date>-x86_64-cpu2-refresh/validation_drift.json

Trains ``--model`` with the Trainer's optimizer settings (SGD lr 0.1, momentum 0.9, Nesterov,
weight decay 5e-4, batch 128, un-augmented random batches of the subset) for ``--prime-steps``
(SB's priming epoch), builds the engine there (calibrated on the Trainer's sample batches), then
for ``--steps`` more steps makes a cheap refresh after every step (no recalibration:
``recalibrate_every = 0``) and judges it against the FP32 model on the refresher's validation
batch (:func:`~sb_accel.engines.validation.check_engine`). A validation interval ``V`` is safe when
the rank agreement stays above the INT8 floor
(:data:`~sb_accel.engines.validation.DEFAULT_TOLERANCES`) for well over ``V`` steps after a
calibration (the refresher recalibrates every ``int8_recalibrate_every`` refreshes anyway).
"""
from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path
from typing import Callable, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from sb_accel.config import TrainConfig
from sb_accel.data import ArrayDataset, load_dataset
from sb_accel.engines import EngineContext, create_engine
from sb_accel.engines.validation import DEFAULT_TOLERANCES, Validation, check_engine
from sb_accel.files import atomic_write_json
from sb_accel.models import create_model
from sb_accel.train.selector import sample_batches
from sb_accel.train.learner import build_optimizer


def start_training(model_name: str, train_subset: int, seed: int = 0
                   ) -> Tuple[ArrayDataset, nn.Module, Callable[[], None]]:
    """The data subset, the model (channels_last) and a function making one training step with the
    Trainer's optimizer settings on a random un-augmented batch of 128."""
    torch.manual_seed(seed)
    data = load_dataset("cifar10").subset(train=train_subset, test=100, seed=0)
    model = create_model(model_name, num_classes=data.num_classes,
                         in_channels=data.in_channels).to(memory_format=torch.channels_last)
    optimizer = build_optimizer(TrainConfig(model=model_name), model)
    g = torch.Generator().manual_seed(seed)

    def train_step() -> None:
        idx = torch.randint(0, len(data.y_train), (128,), generator=g)
        x = data.normalize(data.x_train[idx]).contiguous(memory_format=torch.channels_last)
        model.train()
        loss = F.cross_entropy(model(x), data.y_train[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return data, model, train_step


def engine_context(data: ArrayDataset, threads: int) -> EngineContext:
    """The Trainer's engine context (its sample batches), recalibrating only when asked."""
    cpu, cl = torch.device("cpu"), torch.channels_last
    return EngineContext(device=cpu, sample_batches=sample_batches(data, 128, cpu, cl), threads=threads,
                         cache_dir=os.environ.get("SB_ACCEL_CACHE", "engines/cache"), options={"recalibrate_every": 0})


def drift_arguments(description: str) -> argparse.ArgumentParser:
    """The options of a drift measurement: model, engine, data subset, priming and measured steps."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", default="small_cnn")
    parser.add_argument("--engine", default="onnxruntime-int8")
    parser.add_argument("--train-subset", type=int, default=10000)
    parser.add_argument("--prime-steps", type=int, default=78)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    return parser


def main() -> int:
    args = drift_arguments(__doc__.split("\n")[0]).parse_args()
    torch.set_num_threads(args.threads)
    data, model, train_step = start_training(args.model, args.train_subset)
    for _ in range(args.prime_steps):
        train_step()
    context = engine_context(data, args.threads)
    engine = create_engine(args.engine, model, context)
    validation = Validation.from_context(context)
    rows = []
    for k in range(1, args.steps + 1):
        train_step()
        engine.refresh(model)
        check = check_engine(engine, model, validation)
        rows.append({"steps_since_calibration": k, "kind": engine.refresh_kind,
                     **{m: check[m] for m in ("rank_agreement", "relative_error", "ok")}})
        print(rows[-1], flush=True)
    floor = validation.tolerance_for(engine.precision)
    first_fail = next((r["steps_since_calibration"] for r in rows if not r["ok"]), None)
    summary = {"min_rank_agreement": min(r["rank_agreement"] for r in rows),
               "median_rank_agreement": statistics.median(r["rank_agreement"] for r in rows),
               "max_relative_error": max(r["relative_error"] for r in rows),
               "floor": vars(floor) if hasattr(floor, "__dict__") else str(floor), "first_failure": first_fail}
    write_result(args, summary, rows)
    return 0


def write_result(args: argparse.Namespace, summary: dict, rows: list) -> None:
    """Print the summary; write it with the options, the load average and every row to ``args.out``."""
    print(summary)
    atomic_write_json(args.out, {"args": {k: str(v) for k, v in vars(args).items()}, "load": os.getloadavg(),
                                 "summary": summary, "rows": rows})


if __name__ == "__main__":
    raise SystemExit(main())
