"""The engine benchmarks import and parse --help on CPU; the GPU time-to-accuracy preset builds valid
configs (SB variants on torch-graph-fp16 in calls of 1024); gpu_engines' variants and refusal on CPU."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sb_accel.config import TrainConfig

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _module(name, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the scripts import their neighbours
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("script", ["time_to_accuracy.py", "gpu_engines.py", "selection_throughput.py"])
def test_scripts_parse_help_on_cpu(script):
    out = subprocess.run([sys.executable, str(BENCHMARKS / script), "--help"], capture_output=True, text=True,
                         timeout=120, cwd=BENCHMARKS.parent)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage:")
    if script == "time_to_accuracy.py":
        assert "gpu" in out.stdout and "--preset" in out.stdout


def test_gpu_preset_plans_torch_graph_selection_in_calls_of_1024(monkeypatch):
    bench = _module("time_to_accuracy", monkeypatch)
    preset = dict(bench.PRESETS["gpu"])
    assert (preset["dataset"], preset["model"], preset["epochs"], preset["batch_size"], preset["lr"],
            preset["lr_schedule"], preset["warmup_epochs"], preset["train_subset"], preset["device"]) == (
        "cifar10", "resnet18", 20, 128, 0.1, "linear", 1.0, 0, "cuda")
    plan = bench.strategies(bench.DEFAULT_ENGINES["gpu"], bench.SELECTION["gpu"])
    assert set(plan) == {"traditional", "sb", "stale-sb", "kath18", "infobatch", "sb-torch-fp32"}
    for name in ("sb", "stale-sb", "kath18"):
        assert (plan[name]["engine"], plan[name]["precision"], plan[name]["selection_batch_size"]) == (
            "torch-graph", "fp16", 1024)
    assert "engine" not in plan["traditional"] and "engine" not in plan["infobatch"]
    assert (plan["sb-torch-fp32"]["engine"], plan["sb-torch-fp32"]["selection_batch_size"]) == ("torch", 1024)
    preset.pop("train_subset")
    for name, overrides in plan.items():  # every run's config is valid (checked without a GPU)
        TrainConfig(**{**preset, **overrides, "run_dir": f"runs/{name}"})
    cpu = bench.strategies(["onnxruntime-int8"])
    assert cpu["sb-onnxruntime-int8"]["precision"] == "int8" and "selection_batch_size" not in cpu["sb"]


def test_gpu_engines_variants_and_cpu_refusal(monkeypatch, capsys):
    bench = _module("gpu_engines", monkeypatch)
    labels = [label for label, _, _ in bench.variants(["default"])]
    assert labels == ["torch-fp32", "torch-fp16", "torch-bf16", "torch-graph-fp16", "torch-graph-bf16",
                      "torch-graph-fp32", "torch-graph-fp16 compile=default"]
    if not torch.cuda.is_available():
        assert bench.main(["--out", "unused"]) == 2
        assert "needs a CUDA GPU" in capsys.readouterr().err


def test_selection_throughput_engine_options(monkeypatch):
    bench = _module("selection_throughput", monkeypatch)
    assert bench._engine_specs("torch-fp32, onnxruntime-int8@refresh_mode=inplace@recalibrate_every=5") == {
        "torch-fp32": ("torch-fp32", {}),
        "onnxruntime-int8@refresh_mode=inplace@recalibrate_every=5": (
            "onnxruntime-int8", {"refresh_mode": "inplace", "recalibrate_every": 5})}
