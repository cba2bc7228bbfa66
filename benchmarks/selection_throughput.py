"""Selection-pass throughput and loss agreement of every selection engine vs PyTorch FP32.

    python benchmarks/selection_throughput.py [--model resnet18] [--batch 128] [--train-steps 300]

In one process, so the numbers are ratios on the same machine state:

1. trains the model for ``--train-steps`` SGD steps on real CIFAR-10 (losses of an untrained model
   are nearly uniform, and agreement on them means little); the weights are cached in ``--out``;
2. builds each engine (``EngineError`` -> reported as unavailable, with the reason);
3. times ``losses(x, y)`` on one real batch: warm-up, then ``--repeats`` rounds that visit the
   engines in turn (round-robin, so background load hits all of them alike); median and quartiles;
4. compares the losses of ``--eval-examples`` training examples with torch FP32: max |difference|,
   Spearman rank correlation, and the Jaccard overlap of the sets Selective-Backprop keeps at
   ``--selectivity`` (keep probability ``CDF(loss) ** beta`` over a 1024-loss history, the same
   uniform draws for every engine; the row ``torch-fp32 (redraw)`` uses fresh draws on the FP32
   losses: the overlap that randomness alone allows);
5. times a refresh after a few more training steps (median of ``--refresh-repeats``; rebuild and
   cheap where the engine has both) and a training step at ``--batch`` (forward, backward, SGD), and
   puts them side by side: refresh as a share of the training step, and what selection plus one
   refresh cost per training step at refresh-every-step (``1 / selectivity`` selection batches per
   training batch of the same size).

An engine spec may carry its own options: ``onnxruntime-int8@refresh_mode=inplace``.

Prints a table and writes ``selection_throughput_<model>_b<batch>_<device>.json`` (+ ``.png``/``.svg``).
Exits with 1 if an engine fails the refresher's validation tolerance for its precision (rank
agreement and relative error of the losses, :data:`sb_accel.engines.DEFAULT_TOLERANCES`).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import onnxruntime
import torch
from throughput_report import BASELINE, plot, table  # this directory is on sys.path when the script runs
import torch.nn as nn
import torch.nn.functional as F

from sb_accel.data import ArrayDataset, load_dataset
from sb_accel.engines import DEFAULT_TOLERANCES, EngineContext, SelectionEngine, rank_correlation
from sb_accel.engines.validation import judge
from sb_accel.models import create_model
from sb_accel.measure import build_engine, real_batch, refresh_costs, spread, synchronized_seconds
from sb_accel.files import atomic_write_json
from sb_accel.selection import LossHistory, beta_for_selectivity, keep_probability

CPU_ENGINES = ("torch-fp32", "torch-bf16", "onnxruntime-fp32", "onnxruntime-int8", "onnxruntime-fp16")


def parse_args(argv: Optional[Sequence[str]] = None, engines: Sequence[str] = CPU_ENGINES,
               device: str = "cpu") -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--batch", type=int, default=128, help="selection batch size")
    parser.add_argument("--engines", default=",".join(engines), help="comma-separated engine specs")
    parser.add_argument("--device", default=device, help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads for torch and engines")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--train-steps", type=int, default=300, help="SGD steps on CIFAR-10 before measuring")
    parser.add_argument("--train-batch", type=int, default=32)
    parser.add_argument("--eval-examples", type=int, default=1024, help="examples for loss agreement")
    parser.add_argument("--refresh-repeats", type=int, default=5, help="refreshes timed per engine (median)")
    parser.add_argument("--selectivity", type=float, default=0.33)
    parser.add_argument("--contiguous", action="store_true",
                        help="NCHW model and batches (default: channels_last, as the Trainer)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="engine option passed in EngineContext.options (repeatable)")
    parser.add_argument("--out", default="benchmarks/out")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def _options(pairs: Sequence[str]) -> Dict[str, Any]:
    options: Dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--option wants KEY=VALUE, got {pair!r}")
        options[key] = int(value) if value.lstrip("-").isdigit() else value
    return options


def _engine_specs(text: str) -> Dict[str, Tuple[str, Dict[str, Any]]]:
    """``"a,b@key=value"`` -> {label: (engine spec, its own options)}."""
    specs = {}
    for label in (s.strip() for s in text.split(",") if s.strip()):
        spec, *pairs = label.split("@")
        specs[label] = (spec, _options(pairs))
    return specs


def train_step_seconds(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device,
                       repeats: int, warmup: int) -> List[float]:
    """Seconds of each training step (forward, backward, SGD) on a copy of ``model`` and one batch."""
    model = copy.deepcopy(model).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return [synchronized_seconds(step, device) for _ in range(warmup + repeats)][warmup:]


def trained_model(args: argparse.Namespace, data: ArrayDataset, device: torch.device,
                  memory_format: torch.memory_format) -> nn.Module:
    """The model after ``--train-steps`` SGD steps (cached by model, steps, batch and seed)."""
    torch.manual_seed(args.seed)
    model = create_model(args.model, num_classes=data.num_classes, in_channels=data.in_channels)
    model = model.to(device, memory_format=memory_format)
    cache = Path(args.out) / "weights" / f"{args.model}-{args.train_steps}x{args.train_batch}-seed{args.seed}.pt"
    if cache.is_file():
        model.load_state_dict(torch.load(cache, map_location=device))
        print(f"loaded trained weights from {cache}")
        return model
    start = time.perf_counter()
    _sgd(model, data, args.train_steps, args.train_batch, device, memory_format, args.seed)
    print(f"trained {args.model} for {args.train_steps} steps in {time.perf_counter() - start:.0f} s")
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), cache)
    return model


def _sgd(model: nn.Module, data: ArrayDataset, steps: int, batch: int, device: torch.device,
         memory_format: torch.memory_format, seed: int) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True, weight_decay=5e-4)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(data.y_train), (batch,), generator=g)
        x = data.normalize(data.x_train[idx].to(device)).contiguous(memory_format=memory_format)
        loss = F.cross_entropy(model(x), data.y_train[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_round_robin(engines: Dict[str, SelectionEngine], x: torch.Tensor, y: torch.Tensor, device: torch.device,
                     repeats: int, warmup: int) -> Dict[str, List[float]]:
    """Seconds per ``losses`` call (host copy of the result included), engines visited in turn."""
    samples: Dict[str, List[float]] = {name: [] for name in engines}
    for i in range(warmup + repeats):
        for name, engine in engines.items():
            _sync(device)
            start = time.perf_counter()
            engine.losses(x, y).cpu()
            seconds = time.perf_counter() - start
            if i >= warmup:
                samples[name].append(seconds)
    return samples


def all_losses(engine: SelectionEngine, batches: Sequence[Tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    return torch.cat([engine.losses(x, y).float().cpu() for x, y in batches])


def sb_keep(losses: torch.Tensor, batch: int, beta: float, uniforms: torch.Tensor) -> torch.Tensor:
    """Selective-Backprop's keep decisions over candidate batches in order (history of 1024)."""
    history = LossHistory(1024)
    probabilities = torch.cat([keep_probability(history.update_and_cdf(chunk), beta)
                               for chunk in losses.split(batch)])
    return uniforms < probabilities


def jaccard(a: torch.Tensor, b: torch.Tensor) -> float:
    union = int((a | b).sum())
    return int((a & b).sum()) / union if union else 1.0


def run(args: argparse.Namespace) -> Dict[str, Any]:
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    memory_format = torch.contiguous_format if args.contiguous else torch.channels_last
    data = load_dataset("cifar10")
    model = trained_model(args, data, device, memory_format).eval()
    x, y = real_batch(data, args.batch, device, memory_format, seed=args.seed)
    calibration = [real_batch(data, args.batch, device, memory_format, seed=args.seed, offset=args.batch * (i + 1))
                   for i in range(4)]
    offset = args.batch * 5
    eval_x, eval_y = real_batch(data, args.eval_examples, device, memory_format, seed=args.seed, offset=offset)
    eval_batches = list(zip(eval_x.split(args.batch), eval_y.split(args.batch)))
    context = EngineContext(device=device, sample_batches=calibration, threads=args.threads,
                            cache_dir=str(Path(args.out) / "engines"), max_batch=args.batch,
                            options=_options(args.option))

    specs = _engine_specs(args.engines)
    if BASELINE not in specs:
        specs = {BASELINE: (BASELINE, {}), **specs}
    builds = {label: build_engine(spec, model, dataclasses.replace(context, options={**context.options, **options}))
              for label, (spec, options) in specs.items()}
    engines = {spec: b.engine for spec, b in builds.items() if b.engine is not None}
    for spec, b in builds.items():
        print(f"{spec:18s} {'built in %.2f s' % b.build_s if b.engine is not None else b.status}")

    times = time_round_robin(engines, x, y, device, args.repeats, args.warmup)
    step_ms = spread(train_step_seconds(model, x, y, device, args.repeats, args.warmup), 1e3)["median"]
    beta = beta_for_selectivity(args.selectivity)
    draws, redraws = (torch.rand(args.eval_examples, generator=torch.Generator().manual_seed(args.seed + i),
                                 dtype=torch.float64) for i in (1, 2))
    reference = all_losses(engines[BASELINE], eval_batches)
    reference_keep = sb_keep(reference, args.batch, beta, draws)

    updated = copy.deepcopy(model)  # a few more steps, so a refresh has new weights to take
    _sgd(updated, data, 5, args.train_batch, device, memory_format, args.seed + 3)
    updated.eval()
    baseline_ms = spread(times[BASELINE], 1e3)["median"]
    rows: List[Dict[str, Any]] = []
    for spec, b in builds.items():
        row: Dict[str, Any] = {"engine": spec, "status": b.status, "build_s": b.build_s}
        if b.engine is not None:
            ms = spread(times[spec], 1e3)
            losses = all_losses(b.engine, eval_batches)
            keep = sb_keep(losses, args.batch, beta, draws)
            row.update(ms_per_batch=ms["median"], ms_p25=ms["p25"], ms_p75=ms["p75"],
                       examples_per_s=args.batch / ms["median"] * 1e3, speedup=baseline_ms / ms["median"],
                       max_abs_error=float((losses - reference).abs().max()),
                       spearman=rank_correlation(losses, reference), jaccard=jaccard(keep, reference_keep),
                       kept_fraction=float(keep.double().mean()))
            check = judge(losses, reference, DEFAULT_TOLERANCES[b.engine.precision])
            row.update(rank_agreement=check["rank_agreement"], relative_error=check["relative_error"],
                       agrees=check["ok"])
            row.update(refresh_costs(b.engine, updated, device, args.refresh_repeats) if not b.engine.is_live else
                       {"refresh_s": 0.0, "refresh_rebuild_s": None, "refresh_cheap_s": None})
            row.update(train_step_ms=step_ms, refresh_over_step=row["refresh_s"] * 1e3 / step_ms,
                       per_step_ms=ms["median"] / args.selectivity + row["refresh_s"] * 1e3)
            b.engine.close()
        rows.append(row)
    rows.append({"engine": f"{BASELINE} (redraw)", "status": "ok",
                 "jaccard": jaccard(sb_keep(reference, args.batch, beta, redraws), reference_keep)})
    return {"config": vars(args), "rows": rows,
            "environment": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                            "python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
                            "cpu_count": os.cpu_count(), "threads": args.threads,
                            "cuda": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                            "memory_format": "contiguous" if args.contiguous else "channels_last"}}


def main(argv: Optional[Sequence[str]] = None, engines: Sequence[str] = CPU_ENGINES, device: str = "cpu") -> int:
    args = parse_args(argv, engines, device)
    result = run(args)
    print()
    print(table(result))
    stem = Path(args.out) / f"selection_throughput_{args.model}_b{args.batch}_{args.device}"
    written = [atomic_write_json(stem.with_suffix(".json"), result)] + plot(result, stem)
    print("\nwrote " + ", ".join(str(p) for p in written))
    disagreeing = [r["engine"] for r in result["rows"] if r.get("agrees") is False]
    if disagreeing:  # "agrees": within the refresher's validation tolerance
        print(f"engines outside the loss tolerance vs {BASELINE}: {', '.join(disagreeing)}", file=sys.stderr)
    return 1 if disagreeing else 0


if __name__ == "__main__":
    sys.exit(main())
