import threading

import pytest
import torch

from sb_accel.engines import TorchEngine
from sb_accel.reporting import load_run
from sb_accel.selection import SelectiveBackpropPolicy, Traditional
from sb_accel.train import Trainer
from sb_accel.train.pipeline import SelectionPipeline
from sb_accel.train.driver import score_candidates
from test_trainer import config


class _Engine(TorchEngine):
    def __init__(self):
        self.calls = []

    def losses(self, x, y):
        self.calls.append(threading.current_thread().name)
        return x[:, 0].float()

    def refresh(self, model):
        pass


def batches(n=5, size=8):
    for i in range(n):
        idx = torch.arange(i * size, (i + 1) * size)
        yield idx.float()[:, None], idx % 3, idx


def test_pipeline_scores_in_worker_and_preserves_order():
    engine = _Engine()
    pipe = SelectionPipeline(batches(), lambda: engine, SelectiveBackpropPolicy(), epoch=1, depth=2)
    out = list(pipe)
    pipe.close()
    assert [int(s.indices[0]) for s in out] == [0, 8, 16, 24, 32]
    assert all(torch.equal(s.losses, s.indices.float()) for s in out)
    assert set(engine.calls) == {"sb-selection"} and pipe.busy_seconds > 0


def test_pipeline_reraises_worker_errors_and_closes_early():
    def broken():
        yield from batches(2)
        raise RuntimeError("disk gone")

    pipe = SelectionPipeline(broken(), _Engine, SelectiveBackpropPolicy(), epoch=1)
    with pytest.raises(RuntimeError, match="disk gone"):
        list(pipe)
    pipe.close()
    early = SelectionPipeline(batches(100), _Engine, SelectiveBackpropPolicy(), epoch=1, depth=1)
    next(iter(early))
    early.close()  # must not hang with the worker blocked on a full queue


def test_traditional_needs_no_forward():
    scored = score_candidates(_Engine(), Traditional(), *next(batches()), epoch=0)
    assert scored.forwards == 0 and torch.isnan(scored.losses).all()


def test_trainer_with_pipeline_reports_overlap_and_staleness(tmp_path, synthetic):
    cfg = config(tmp_path, strategy="sb", epochs=2, pipeline=True, refresh_every_steps=3, log_every_steps=2)
    summary = Trainer(cfg, data=synthetic).fit()
    assert summary["forwards"] == len(synthetic.y_train)  # epoch 0 primes
    assert summary["selection_background"] > 0
    run = load_run(tmp_path / "run")
    assert run.of("refresh") and max(e["staleness"] for e in run.of("interval")) <= 3
