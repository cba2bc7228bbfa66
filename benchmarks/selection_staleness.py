"""How much a snapshot engine that is some optimizer steps behind the model changes Selective-Backprop's
keep decisions: the evidence for the refresh interval (``every_steps``) of snapshot engines.

    PYTHONPATH=. python benchmarks/selection_staleness.py --model small_cnn --train-subset 10000 \\
        --prime-steps 78 --steps 150 --max-staleness 3 --out <results>/selection_staleness.json

Trains as ``validation_drift.py`` does (the Trainer's optimizer, random un-augmented batches of 128)
for ``--prime-steps`` (SB's priming epoch), builds ``--engine`` there (calibrated once, as after
priming), and then after every training step ``t`` scores the next candidate batch (128 examples
walking a permutation of the subset, un-augmented, as the selection forward sees them) with:

* ``fp32@s``: the PyTorch model as it was ``s`` steps ago (``s = 0..--max-staleness``), in eval
  mode; ``fp32@0`` is the reference, exact SB;
* ``<engine>@s``: the engine refreshed (cheaply) from the weights of ``s`` steps ago.

Every variant keeps its own loss history (``R = 1024``, SB's default on CPU) and turns its losses
into SB's keep probabilities ``P = CDF_R(loss) ** beta`` (``beta = 2``: selectivity 1/3). Against the
reference, per candidate batch:

* ``disagreement``: mean ``|P - P_ref|``, the expected share of examples whose keep decision
  differs from exact SB's when both draw the same uniform numbers;
* ``rank_agreement``: :func:`~sb_accel.engines.validation.rank_agreement` of the losses.

A refresh every ``c`` steps serves the engine ``0, 1, ..., c - 1`` steps stale in turn, so its
disagreement is the mean of ``<engine>@0 .. <engine>@(c-1)``; the summary gives it for every ``c``.
"""
from __future__ import annotations

import copy
import statistics
from typing import Dict, List

import torch

from sb_accel.engines import create_engine
from sb_accel.engines.torch_backend import TorchEngine
from sb_accel.engines.validation import rank_agreement
from sb_accel.selection.history import LossHistory
from sb_accel.selection.selective_backprop import beta_for_selectivity, keep_probability
from validation_drift import drift_arguments, engine_context, start_training, write_result


def main() -> int:
    parser = drift_arguments(__doc__.split("\n")[0])
    parser.add_argument("--max-staleness", type=int, default=3)
    parser.add_argument("--selectivity", type=float, default=1 / 3)
    parser.add_argument("--history", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data, model, train_step = start_training(args.model, args.train_subset, args.seed)
    for _ in range(args.prime_steps):
        train_step()
    engine = create_engine(args.engine, model, engine_context(data, args.threads))
    shadow = copy.deepcopy(model).eval()
    staleness = range(args.max_staleness + 1)
    snapshots: List[Dict[str, torch.Tensor]] = []  # newest last
    variants = [f"fp32@{s}" for s in staleness] + [f"{args.engine}@{s}" for s in staleness]
    histories = {v: LossHistory(args.history) for v in variants}
    beta = beta_for_selectivity(args.selectivity)
    order = torch.randperm(len(data.y_train), generator=torch.Generator().manual_seed(args.seed + 1))
    rows = []
    for t in range(args.steps + args.max_staleness):
        train_step()
        snapshots = (snapshots + [copy.deepcopy(model.state_dict())])[-(args.max_staleness + 1):]
        if len(snapshots) <= args.max_staleness:
            continue  # every variant scores from the same step on
        start = (t * 128) % (len(order) - 128)
        idx = order[start:start + 128]
        x = data.normalize(data.x_train[idx]).contiguous(memory_format=torch.channels_last)
        y = data.y_train[idx]
        losses = {}
        for s in staleness:
            shadow.load_state_dict(snapshots[-1 - s])
            losses[f"fp32@{s}"] = TorchEngine(shadow, "fp32").losses(x, y)
            engine.refresh(shadow)
            losses[f"{args.engine}@{s}"] = engine.losses(x, y)
        keep = {v: keep_probability(histories[v].update_and_cdf(losses[v]), beta) for v in variants}
        reference = "fp32@0"
        row = {"step": t + 1, **{f"disagreement {v}": float((keep[v] - keep[reference]).abs().mean()) for v in variants},
               **{f"rank_agreement {v}": rank_agreement(losses[v], losses[reference]) for v in variants}}
        rows.append(row)
        print({k: round(v, 4) for k, v in row.items()}, flush=True)
    scored = rows[args.history // 128:]  # once every history is full
    mean = {v: statistics.fmean(r[f"disagreement {v}"] for r in scored) for v in variants}
    summary = {
        "disagreement": mean,
        "rank_agreement": {v: statistics.median(r[f"rank_agreement {v}"] for r in scored) for v in variants},
        "kept_share": args.selectivity,
        # a refresh every c steps serves the engine 0..c-1 steps stale in turn
        "disagreement_by_refresh_interval": {
            c: statistics.fmean(mean[f"{args.engine}@{s}"] for s in range(c)) for c in range(1, args.max_staleness + 2)},
    }
    write_result(args, summary, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
