"""The time-to-accuracy benchmark's resume rule: a finished run is reused only for its exact config."""
import dataclasses
import importlib.util
from pathlib import Path

from sb_accel.config import TrainConfig
from sb_accel.train import Trainer

_SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "time_to_accuracy.py"


def _benchmark_module():
    spec = importlib.util.spec_from_file_location("time_to_accuracy", _SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_finished_runs_are_reused_only_for_the_identical_config(tmp_path, synthetic):
    bench = _benchmark_module()
    cfg = TrainConfig(dataset="synthetic", model="small_cnn", width=4, epochs=1, batch_size=32,
                      run_dir=str(tmp_path / "run"), progress=False, checkpoint=False)
    assert bench.finished_summary(cfg) is None  # nothing there yet
    summary = Trainer(cfg, data=synthetic).fit()
    reused = bench.finished_summary(cfg)
    assert reused is not None and "event" not in reused
    assert (reused["test_acc"], reused["backprops"], reused["wall"]) == (summary["test_acc"], summary["backprops"],
                                                                         summary["wall"])
    assert bench.finished_summary(dataclasses.replace(cfg, epochs=2)) is None
