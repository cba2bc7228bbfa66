"""GPU selection engines built from torch: eager vs CUDA graphs vs torch.compile, per example, in one run.

    python benchmarks/gpu_engines.py --out $OUT                         # ResNet-18, sizes 32..1024
    python benchmarks/gpu_engines.py --compile default max-autotune-no-cudagraphs --sizes 1024
    python benchmarks/gpu_engines.py --others                           # + ONNX Runtime CUDA / TensorRT

For each variant (eager ``torch-{fp32,fp16,bf16}``; ``torch-graph-{fp16,bf16,fp32}``; and
``torch-graph-fp16`` after ``torch.compile`` in each ``--compile`` mode) on a model partly trained
on CIFAR-10 (random data if the dataset is missing): build seconds (for torch-graph: capture and
compile, the cuDNN plan search in the warm-up included), then per call size the median time of one
``losses`` call over ``--repeats`` (after warm-up calls at that size), as microseconds per
example, and the loss agreement with eager FP32 at the largest size (max |difference|, Spearman).
The fixed cost of a call and the cost per example are fitted as ``a + b n``.

Results are written to ``--out/gpu_engines_<model>.json`` after every variant (atomically), so a
run that is killed (a device time limit) leaves what it measured. ``--others`` then runs
``selection_throughput`` over the ONNX Runtime CUDA and TensorRT engines (unavailable ones are
listed with the reason).

Needs a CUDA GPU; ``--help`` works anywhere.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from sb_accel.engines import EngineContext, EngineError, create_engine, rank_correlation
from sb_accel.measure import fit_call_cost, synchronized_seconds
from sb_accel.models import create_model
from sb_accel.files import atomic_write_json
from sb_accel.reporting.tables import format_table

GPU_ENGINES = ("torch-fp32", "torch-graph-fp16", "onnxruntime-fp32", "onnxruntime-fp16", "onnxruntime-int8",
               "tensorrt-fp16", "tensorrt-int8", "tensorrt-fp8")
EAGER = ("torch-fp32", "torch-fp16", "torch-bf16")
GRAPHS = ("torch-graph-fp16", "torch-graph-bf16", "torch-graph-fp32")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128, 256, 512, 1024],
                        help="selection call sizes (also torch-graph's buckets)")
    parser.add_argument("--compile", nargs="*", default=["default"],
                        help="torch.compile modes to capture torch-graph-fp16 with (none: skip)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--train-steps", type=int, default=200, help="SGD steps on CIFAR-10 first (batch 128)")
    parser.add_argument("--out", default="benchmarks/out")
    parser.add_argument("--others", action="store_true",
                        help="then compare the ONNX Runtime CUDA and TensorRT engines (selection_throughput)")
    return parser.parse_args(argv)


def _data(size: int, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor, str]:
    """``size`` normalised CIFAR-10 training images (channels_last) and labels, or random ones."""
    try:
        from sb_accel.data import load_dataset

        data = load_dataset("cifar10")
        idx = torch.randperm(len(data.y_train), generator=torch.Generator().manual_seed(0))[:size]
        x, y, source = data.normalize(data.x_train[idx].to(device)), data.y_train[idx].to(device), "cifar10"
    except (FileNotFoundError, ValueError, OSError) as exc:
        print(f"CIFAR-10 not available ({exc}); random images", file=sys.stderr)
        g = torch.Generator(device="cpu").manual_seed(0)
        x, y, source = torch.randn(size, 3, 32, 32, generator=g).to(device), torch.randint(0, 10, (size,)).to(device), "random"
    return x.contiguous(memory_format=torch.channels_last), y, source


def _train(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    g = torch.Generator().manual_seed(1)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(y), (128,), generator=g).to(x.device)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()


def measure_variant(label: str, spec: str, options: Dict[str, Any], model: torch.nn.Module, x: torch.Tensor,
                    y: torch.Tensor, reference: torch.Tensor, args: argparse.Namespace) -> Dict[str, Any]:
    """Build one engine, time its calls per size, compare its losses with eager FP32."""
    device = x.device
    context = EngineContext(device=device, sample_batches=[(x[:128], y[:128])], max_batch=max(args.sizes),
                            options={"bucket_sizes": sorted(set(args.sizes)), **options})
    row: Dict[str, Any] = {"engine": label, "spec": spec, "options": options}
    try:
        start = time.perf_counter()
        engine = create_engine(spec, model, context)
        torch.cuda.synchronize(device)
        row["build_s"] = time.perf_counter() - start
    except EngineError as exc:
        return {**row, "status": f"unavailable: {exc}"}
    row.update(status="ok", capture_s=getattr(engine, "capture_seconds", None))
    seconds = []
    for n in args.sizes:
        for _ in range(args.warmup):
            engine.losses(x[:n], y[:n])
        samples = sorted(synchronized_seconds(lambda: engine.losses(x[:n], y[:n]), device) for _ in range(args.repeats))
        seconds.append(samples[len(samples) // 2])
    row["per_example_us"] = {n: s / n * 1e6 for n, s in zip(args.sizes, seconds)}
    row["call_ms"] = {n: s * 1e3 for n, s in zip(args.sizes, seconds)}
    if len(set(args.sizes)) >= 2:
        a, b = fit_call_cost(args.sizes, seconds)
        row.update(call_overhead_ms=a * 1e3, fitted_us_per_example=b * 1e6)
    got = engine.losses(x, y).float()
    row.update(max_abs_error=float((got - reference).abs().max()), spearman=rank_correlation(got.cpu(), reference.cpu()),
               captures=getattr(engine, "captures", None))
    engine.close()
    return row


def variants(compile_modes: Sequence[str]) -> List[Tuple[str, str, Dict[str, Any]]]:
    out = [(spec, spec, {}) for spec in EAGER + GRAPHS]
    out += [(f"torch-graph-fp16 compile={mode}", "torch-graph-fp16", {"compile": mode}) for mode in compile_modes]
    return out


def table(rows: Sequence[Dict[str, Any]], sizes: Sequence[int]) -> str:
    def cell(value: Optional[float], fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    body = []
    for r in rows:
        if r["status"] != "ok":
            body.append([r["engine"], r["status"][:70]] + [""] * (len(sizes) + 5))
            continue
        body.append([r["engine"], cell(r["build_s"], ".1f"), *(cell(r["per_example_us"][n], ".2f") for n in sizes),
                     cell(r.get("call_overhead_ms"), ".3f"), cell(r.get("fitted_us_per_example"), ".2f"),
                     cell(r["max_abs_error"], ".2g"), cell(r["spearman"], ".4f")])
    headers = ["engine", "build s", *(f"us/ex @{n}" for n in sizes), "a ms/call", "b us/ex", "max|dloss| vs fp32",
               "spearman"]
    return format_table(body, headers)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_engines.py needs a CUDA GPU and torch sees none; on CPU run benchmarks/selection_throughput.py",
              file=sys.stderr)
        return 2
    device = torch.device("cuda")
    torch.manual_seed(0)
    x, y, source = _data(max(max(args.sizes), 1024), device)
    model = create_model(args.model).to(device, memory_format=torch.channels_last)
    _train(model, x, y, args.train_steps)
    model.eval()
    x, y = x[:max(args.sizes)], y[:max(args.sizes)]
    reference = create_engine("torch-fp32", model).losses(x, y).float()
    path = Path(args.out) / f"gpu_engines_{args.model}.json"
    result: Dict[str, Any] = {"config": vars(args), "data": source, "rows": [],
                              "environment": {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(device)}}
    for label, spec, options in variants(args.compile):
        row = measure_variant(label, spec, options, model, x, y, reference, args)
        result["rows"].append(row)
        atomic_write_json(path, result)  # after every variant: a killed run keeps what it measured
        print(f"{label}: {row['status']}"
              + (f", build {row['build_s']:.1f} s, {row['per_example_us'][max(args.sizes)]:.2f} us/example at "
                 f"{max(args.sizes)}" if row["status"] == "ok" else ""), flush=True)
    print()
    print(table(result["rows"], args.sizes))
    print(f"\nwrote {path}")
    if args.others:
        import selection_throughput  # this directory is on sys.path when the script runs

        return selection_throughput.main(["--model", args.model, "--batch", "512", "--threads", "4", "--option",
                                          "provider=cuda", "--out", args.out], engines=GPU_ENGINES, device="cuda")
    return 0


if __name__ == "__main__":
    sys.exit(main())
