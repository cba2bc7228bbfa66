"""Correctness and speed of every GPU selection engine vs torch FP32, in one command.

    python benchmarks/gpu_engines.py [--model resnet18] [--batch 512] [any selection_throughput option]

Runs :mod:`selection_throughput` on CUDA over torch FP32/BF16/FP16 (autocast), ONNX Runtime's
CUDA provider in FP32/FP16/INT8 (needs ``onnxruntime-gpu``: ``pip install 'sb-accel[gpu]'``) and
TensorRT FP16/INT8/FP8 (needs ``pip install 'sb-accel[tensorrt]'``; FP8 also NVIDIA ModelOpt and
an Ada/Hopper GPU). Engines that cannot be built here are listed with the reason and skipped.
Reports ms/batch, examples/s, speedup, refresh cost (refit vs rebuild for TensorRT) and loss
agreement (max |difference|, Spearman, kept-set overlap) with torch FP32.
"""
from __future__ import annotations

import sys
from typing import Optional, Sequence

import torch

import selection_throughput  # this directory is on sys.path when the script runs

GPU_ENGINES = ("torch-fp32", "torch-bf16", "torch-fp16", "onnxruntime-fp32", "onnxruntime-fp16", "onnxruntime-int8",
               "tensorrt-fp16", "tensorrt-int8", "tensorrt-fp8")


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" not in argv and "--help" not in argv and not torch.cuda.is_available():
        print("gpu_engines.py needs a CUDA GPU and torch sees none; on CPU run benchmarks/selection_throughput.py",
              file=sys.stderr)
        return 2
    # Defaults first: options given on the command line come later and win.
    defaults = ["--batch", "512", "--threads", "4", "--option", "provider=cuda"]
    return selection_throughput.main(defaults + argv, engines=GPU_ENGINES, device="cuda")


if __name__ == "__main__":
    sys.exit(main())
