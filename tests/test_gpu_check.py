"""benchmarks/gpu_check.py, the parts that run without a GPU: arguments, the results folder and its
summary, skipped GPU tests found in a JUnit report, per-epoch ratios, and the refusal without a GPU."""
import datetime
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_arguments(check):
    args = check.parse_args([])
    assert args.steps == list(check.STEPS) and args.epochs == 4 and args.budget_s == 480
    assert check.parse_args(["--steps", "ratios", "--epochs", "2"]).steps == ["ratios"]
    with pytest.raises(SystemExit):
        check.parse_args(["--steps", "everything"])
    with pytest.raises(SystemExit):
        check.parse_args(["--epochs", "0"])


def test_results_folder_is_named_by_date_and_gpu(check, tmp_path):
    day = datetime.date(2026, 12, 3)
    assert check.results_dir(tmp_path, "NVIDIA H200", day) == tmp_path / "2026-12-03-nvidia-h200"
    assert check.results_dir(tmp_path, "NVIDIA H100 80GB HBM3", day).name == "2026-12-03-nvidia-h100-80gb-hbm3"


def test_skipped_gpu_tests_are_found_in_the_junit_report(check, tmp_path):
    report = tmp_path / "r.xml"
    report.write_text('<testsuites><testsuite><testcase classname="tests.test_a" name="test_ok"/>'
                      '<testcase classname="tests.test_b" name="test_gpu"><skipped message="needs a CUDA GPU"/>'
                      '</testcase></testsuite></testsuites>')
    assert check.skipped_tests(report) == ["tests.test_b::test_gpu: needs a CUDA GPU"]
    assert check.wants_a_gpu("tests.test_b::test_gpu: needs a CUDA GPU")
    assert check.wants_a_gpu("tests.test_tensorrt::test_x: TensorRT tests need a CUDA GPU")
    assert not check.wants_a_gpu("tests.test_tensorrt::test_y: could not import 'tensorrt'")


def test_per_epoch_ratios_from_run_logs(check, tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text("\n".join(json.dumps(e) for e in [{"event": "config"}, {"event": "epoch", "wall": 10.0},
                                                      {"event": "eval"}, {"event": "epoch", "wall": 16.0}]))
    assert check.per_epoch_walls(log) == [10.0, 6.0]
    ratios = check.epoch_ratios({"traditional": [10.0, 8.0], "sb": [12.0, 4.0]})
    assert ratios == {"traditional": [1.0, 1.0], "sb": [1.2, 0.5]}


def test_results_are_written_with_a_summary(check, tmp_path):
    results = {"environment": {"date": "2026-12-03", "gpu": "NVIDIA H200", "torch": "2.11", "cuda": "13.0",
                               "python": "3.12", "command": "gpu_check.py"},
               "budget_s": 480.0, "seconds": 300.0,
               "steps": {"gpu-tests": {"status": "failed", "detail": "1 GPU test(s) skipped on a GPU machine"},
                         "sync-budget": {"status": "passed", "detail": "harness passed",
                                         "cuda_loop": [{"strategy": "sb", "candidate_batches": 10, "syncs": 12,
                                                        "syncs_per_candidate_batch": 1.2}]},
                         "ratios": {"status": "passed", "detail": "", "ratios": {"traditional": [1.0], "sb": [0.61]}}}}
    check.write_results(tmp_path, results)
    summary = (tmp_path / "summary.md").read_text()
    assert "# GPU check, 2026-12-03, NVIDIA H200" in summary
    assert "| gpu-tests | failed | 1 GPU test(s) skipped" in summary and "| sb | 10 | 12 | 1.2 |" in summary
    assert "| sb | 0.61 |" in summary
    assert json.loads((tmp_path / "summary.json").read_text())["steps"]["ratios"]["ratios"]["sb"] == [0.61]
    assert check.overall_status(results) == 1
    results["steps"]["gpu-tests"]["status"] = "passed"
    assert check.overall_status(results) == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where there is no GPU")
def test_refuses_without_a_gpu_with_a_clear_message_and_status_2(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(SCRIPT), "--results-root", str(tmp_path)], capture_output=True,
                          text=True, env=env, timeout=120)
    assert done.returncode == 2
    assert "no CUDA GPU visible" in done.stderr and "README" in done.stderr
    assert not any(tmp_path.iterdir())  # nothing written


def test_makefile_target_installs_nothing():
    makefile = (ROOT / "Makefile").read_text()
    target = makefile[makefile.index("gpu-check:"):].split("\n\n")[0]
    assert "benchmarks/gpu_check.py" in target and "pip" not in target and "$(STAMP)" not in target.split("\n")[0]
