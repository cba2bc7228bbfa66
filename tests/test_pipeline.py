import threading

import pytest
import torch

from sb_accel.engines import TorchEngine
from sb_accel.reporting import load_run
from sb_accel.selection import SelectiveBackpropPolicy, Traditional
from sb_accel.train import Trainer
from sb_accel.train.pipeline import SelectionPipeline
from sb_accel.train.scoring import ScoredBatch, SelectionForwards
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


def scorer(engine, policy, epoch=1):
    """A driver's ``score`` without the driver: the selection forwards of one candidate batch."""
    forwards = SelectionForwards(policy, lambda: engine)
    return lambda x, y, idx: ScoredBatch(len(idx), forwards.score(x, y, idx, epoch))


def only_part(scored):
    (part,) = scored.parts
    return part


def test_pipeline_scores_in_worker_and_preserves_order():
    engine = _Engine()
    pipe = SelectionPipeline(batches(), scorer(engine, SelectiveBackpropPolicy()), depth=2)
    out = [only_part(s) for s in pipe]
    pipe.close()
    assert [int(s.indices[0]) for s in out] == [0, 8, 16, 24, 32]
    assert all(torch.equal(s.losses, s.indices.float()) for s in out)
    assert set(engine.calls) == {"sb-selection"} and pipe.busy_seconds > 0


def test_pipeline_reraises_worker_errors_and_closes_early():
    def broken():
        yield from batches(2)
        raise RuntimeError("disk gone")

    pipe = SelectionPipeline(broken(), scorer(_Engine(), SelectiveBackpropPolicy()))
    with pytest.raises(RuntimeError, match="disk gone"):
        list(pipe)
    pipe.close()
    early = SelectionPipeline(batches(100), scorer(_Engine(), SelectiveBackpropPolicy()), depth=1)
    next(iter(early))
    early.close()  # must not hang with the worker blocked on a full queue


def test_traditional_needs_no_forward():
    scored = only_part(scorer(_Engine(), Traditional(), epoch=0)(*next(batches())))
    assert scored.forwards == 0 and torch.isnan(scored.losses).all()


def test_trainer_with_pipeline_reports_overlap_and_staleness(tmp_path, synthetic):
    cfg = config(tmp_path, strategy="sb", epochs=2, pipeline=True, refresh_every_steps=3, log_every_steps=2)
    summary = Trainer(cfg, data=synthetic).fit()
    assert summary["forwards"] == len(synthetic.y_train)  # epoch 0 primes
    assert summary["selection_background"] > 0
    run = load_run(tmp_path / "run")
    # no refreshes while epoch 0 primes (no selection runs); one before epoch 1, then every 3 steps
    assert run.of("refresh")[0]["reason"] == "resume" and all(e["kind"] == "exact" for e in run.of("refresh"))
    assert max(e["staleness"] for e in run.of("interval") if e["epoch"] >= 1) <= 3


def test_trainer_with_pipeline_validates_every_nth_cheap_step_refresh(tmp_path):
    """The validation cadence under the pipeline (RefreshSchedule): with ``refresh_validate_every=2``
    a cheap refresh after optimizer steps is checked against torch when it is the 2nd, 4th, ...
    refresh of the run; one for another reason (selection resuming after priming, an epoch end)
    always. This run (epoch 0 primes over steps 1-12, then a refresh every 2 steps; epoch 1 ends at
    step 15), by hand: refresh 1 at step 12 resume (checked), 2 at 14 steps (checked), 3 at 15 epoch
    end (checked, though odd), 4 at 16 steps (checked), 5 at 18 steps (not checked)."""
    from sb_accel.data import synthetic_dataset

    cfg = config(tmp_path, strategy="sb", epochs=3, pipeline=True, engine="onnxruntime-int8",
                 refresh_every_steps=2, refresh_validate_every=2, log_every_steps=2)
    Trainer(cfg, data=synthetic_dataset(train=384, test=64)).fit()
    refreshes = load_run(tmp_path / "run").of("refresh")
    assert [(e["step"], e["count"], e["reason"], e["validated"]) for e in refreshes] == [
        (12, 1, "resume", True), (14, 2, "steps", True), (15, 3, "epoch", True), (16, 4, "steps", True),
        (18, 5, "steps", False)]
    assert all(e["kind"] == "cheap" for e in refreshes if e["reason"] == "steps")  # the cadence is for cheap ones
    for e in refreshes:  # a checked refresh carries the check's numbers, an unchecked one none
        assert ("max_abs_error" in e and "rank_agreement" in e) == e["validated"], e


@pytest.mark.gpu
def test_gpu_pipeline_selects_on_its_own_stream_and_sees_engine_changes():
    """On CUDA the worker's kernels go on a side stream; scores equal the serial path's; a weight
    change made under the pipeline's lock reaches the worker's later forwards."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    cuda = torch.device("cuda")
    model = torch.nn.Linear(8, 3).to(cuda)
    streams = set()

    class Engine:
        name = "linear"

        def losses(self, x, y):
            streams.add(torch.cuda.current_stream(cuda).cuda_stream)
            return torch.nn.functional.cross_entropy(model(x), y, reduction="none")

    engine, policy = Engine(), SelectiveBackpropPolicy()
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(256, 8, generator=g).to(cuda), torch.randint(0, 3, (256,), generator=g).to(cuda),
             torch.arange(256) + 256 * i) for i in range(8)]
    serial = [only_part(scorer(engine, policy)(*b)).losses for b in data]
    training_stream = torch.cuda.current_stream(cuda).cuda_stream
    streams.clear()
    pipe = SelectionPipeline(iter(data), scorer(engine, policy), depth=2, device=cuda)
    piped = []
    for i, scored in enumerate(pipe):
        piped.append(only_part(scored).losses)
        if i == 0:
            with pipe.lock:  # as a refresh does
                model.weight.data.zero_()
                model.bias.data.zero_()
    pipe.close()
    assert streams and training_stream not in streams
    assert torch.allclose(piped[0], serial[0])
    uniform = torch.full_like(piped[-1], float(torch.log(torch.tensor(3.0))))
    assert torch.allclose(piped[-1], uniform, atol=1e-6)


def test_pipeline_gathers_partial_forwards_and_decides_as_a_serial_run():
    """Stale-SB asks for forwards on half of each candidate batch: pipelined, the worker gathers them
    into full selection batches as the serial driver does, and every decision is the serial run's."""
    from sb_accel.engines import EngineRefresher
    from sb_accel.selection import StaleSB
    from sb_accel.train import SelectionDriver
    from test_driver import _RecordingEngine

    n, size = 96, 16
    g = torch.Generator().manual_seed(0)
    x, cached = torch.rand(n, 4, generator=g), torch.rand(n // 2, generator=g)
    y = torch.zeros(n, dtype=torch.long)
    candidates = [(x[idx], y[idx], idx) for idx in torch.randperm(n, generator=g).split(size)]

    def run(pipelined):
        policy = StaleSB(n, n=3, selectivity=0.5)
        policy.observe(torch.arange(0, n, 2), cached, 0)  # half the examples have a loss
        engine = _RecordingEngine()
        driver = SelectionDriver(policy, batch_size=8, refresher=EngineRefresher(engine), forward_batch_size=size)
        driver.start_epoch(1)
        pipe = SelectionPipeline(iter(candidates), driver.score) if pipelined else None
        kept = []
        for scored in pipe if pipelined else (driver.score(*c) for c in candidates):
            for batch in driver.submit(scored):
                kept.append(batch.indices.tolist())
                driver.observe(batch, batch.x[:, 0])
        if pipe is not None:
            pipe.close()
        kept += [batch.indices.tolist() for batch in driver.end_epoch()]
        return kept, engine.sizes, driver.forwards

    serial, piped = run(False), run(True)
    assert piped == serial
    kept, sizes, forwards = piped
    assert sizes == [size] * (n // 2 // size) and forwards == n // 2 and kept
