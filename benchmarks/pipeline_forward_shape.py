"""Pipelined Stale-SB epochs, this checkout against an earlier one, interleaved in one process.

    git archive <commit> sb_accel | tar -x -C /tmp/before
    python benchmarks/pipeline_forward_shape.py --before /tmp/before [--missing 0.5 0.02] [--rounds 3]

Written for the change that made the pipeline's worker gather Stale-SB's partial selection forwards
into full selection batches (as the serial driver does) instead of running the engine on the ragged
part of each candidate batch. An epoch here: candidate batches of ``--candidates`` through
``SelectionPipeline`` (worker: the selection forwards, on a live torch engine of the model) and the
driver (main thread: the decisions), with one training step (forward, backward, SGD) of the model
per batch of kept examples. A share ``--missing`` of the examples has no cached loss yet (a partial
forward mask in every candidate batch; after priming with ``end_of_epoch="carry"`` it is a few
examples, 0.5 is a stress test). Prints, for both checkouts, seconds per epoch and per training step
(medians over the rounds; the two group candidates differently, so they keep, and train on, different
examples) and the engine's call sizes.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def load(root: str):
    """The classes of the ``sb_accel`` at ``root`` (the package is then dropped from sys.modules, so
    another checkout can be imported next to it)."""
    sys.path.insert(0, root)
    try:
        modules = {name: importlib.import_module(f"sb_accel.{name}") for name in
                   ("engines", "engines.torch_backend", "selection", "train", "train.pipeline", "models")}
    finally:
        sys.path.remove(root)
        for name in [m for m in sys.modules if m == "sb_accel" or m.startswith("sb_accel.")]:
            del sys.modules[name]
    return modules


def epoch_seconds(m, old: bool, args, seed: int):
    torch.manual_seed(seed)
    n = args.examples
    model = m["models"].create_model("small_cnn", width=args.width)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sizes = []

    class Recording(m["engines.torch_backend"].TorchEngine):
        def losses(self, x, y):
            sizes.append(len(y))
            return super().losses(x, y)

    engine = Recording(model)
    policy = m["selection"].StaleSB(n, n=3, selectivity=0.33)
    g = torch.Generator().manual_seed(seed)
    have = torch.randperm(n, generator=g)[: int(n * (1 - args.missing))]
    policy.observe(have, torch.rand(len(have), generator=g), 0)
    driver = m["train"].SelectionDriver(policy, args.batch, m["engines"].EngineRefresher(engine),
                                        forward_batch_size=args.candidates)
    x, y = torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)
    candidates = [(x[i], y[i], i) for i in torch.randperm(n, generator=g).split(args.candidates)]
    Pipeline = m["train.pipeline"].SelectionPipeline
    steps = 0
    start = time.perf_counter()
    driver.start_epoch(1)
    pipe = Pipeline(iter(candidates), lambda: engine, policy, 1) if old else Pipeline(iter(candidates), driver.score)
    for scored in pipe:
        for batch in driver.submit(scored):
            per_example = F.cross_entropy(model(batch.x), batch.y, reduction="none")
            opt.zero_grad()
            per_example.mean().backward()
            opt.step()
            steps += 1
            driver.observe(batch, per_example)
    pipe.close()
    for batch in driver.end_epoch():
        driver.observe(batch, torch.zeros(len(batch)))
    driver.finish_epoch()
    return time.perf_counter() - start, sizes, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", required=True, help="an earlier checkout's root (holding sb_accel/)")
    parser.add_argument("--missing", type=float, nargs="+", default=[0.5, 0.02])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--examples", type=int, default=2048)
    parser.add_argument("--candidates", type=int, default=128)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    checkouts = {"before": load(args.before), "after": load(str(Path(__file__).resolve().parents[1]))}
    results = {"load": os.getloadavg(), "args": vars(args), "missing": {}}
    for missing in args.missing:
        args.missing = missing
        seconds = {name: [] for name in checkouts}
        per_step = {name: [] for name in checkouts}
        calls = {}
        for r in range(args.rounds):  # interleaved: the machine's noise hits both alike
            for name, m in checkouts.items():
                s, sizes, steps = epoch_seconds(m, name == "before", args, seed=r)
                seconds[name].append(s)
                per_step[name].append(s / max(steps, 1))
                calls[name] = {"calls": len(sizes), "mean_size": sum(sizes) / max(len(sizes), 1), "steps": steps}
        results["missing"][missing] = {name: {"median_s": statistics.median(v), "all_s": v,
                                              "median_s_per_step": statistics.median(per_step[name]), **calls[name]}
                                       for name, v in seconds.items()}
    results["load_after"] = os.getloadavg()
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
