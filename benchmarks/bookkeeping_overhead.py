"""Cost of SB's bookkeeping (history CDF, Bernoulli draw, batching) relative to one training step.

    python benchmarks/bookkeeping_overhead.py [--model small_cnn] [--batch 128] [--history 1024]

Times, in one process so the numbers are ratios on the same machine state: (a) what the
``SelectionDriver`` does for one scored candidate batch besides the engine forward (SB's ``select``:
history update + CDF + draw; counters; ``BackpropBatcher``), and
(b) one training step (forward, backward, SGD) of the model at the same batch size. Prints both
and their ratio; the issue's target is bookkeeping < 1% of a training step.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from sb_accel.models import create_model
from sb_accel.engines import EngineRefresher, TorchEngine
from sb_accel.selection import StrategyOptions, create_strategy
from sb_accel.train.driver import SelectionDriver
from sb_accel.train.scoring import ScoredBatch, ScoredCandidates


def median_seconds(fn, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="small_cnn")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--history", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = create_model(args.model)
    # What the Trainer runs per candidate batch besides the engine forward: the driver's policy
    # decision (history update, CDF, Bernoulli draws), counters and backprop batcher.
    policy = create_strategy("sb", StrategyOptions(selectivity=0.33, history=args.history, prime_epochs=0),
                             batch_size=args.batch)
    driver = SelectionDriver(policy, args.batch, EngineRefresher(TorchEngine(model)))
    driver.start_epoch(1)
    x = torch.randn(args.batch, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch,))
    idx = torch.arange(args.batch)

    def bookkeeping() -> None:
        scored = ScoredCandidates(x, y, idx, torch.rand(args.batch), forwards=args.batch)
        for _ in driver.submit(ScoredBatch(args.batch, [scored])):
            pass

    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def train_step() -> None:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()

    book = median_seconds(bookkeeping, args.repeats * 10)
    step = median_seconds(train_step, args.repeats)
    result = {"model": args.model, "batch": args.batch, "history": args.history, "threads": torch.get_num_threads(),
              "bookkeeping_ms": book * 1e3, "train_step_ms": step * 1e3, "ratio_percent": 100 * book / step}
    print(f"bookkeeping per candidate batch: {book * 1e3:.3f} ms; training step ({args.model}, batch {args.batch}): "
          f"{step * 1e3:.1f} ms; ratio {100 * book / step:.2f}%")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
