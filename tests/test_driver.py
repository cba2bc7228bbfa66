"""The selection driver on its own: lifecycle hooks and the selection batcher."""
import torch

from sb_accel.engines import EngineRefresher, SelectionEngine
from sb_accel.selection import StaleSB
from sb_accel.train import SelectionDriver


class _RecordingEngine(SelectionEngine):
    """Loss = the first input feature; records every batch size it is called with."""

    backend, precision = "test", "fp32"

    def __init__(self):
        self.sizes = []

    @property
    def is_live(self):
        return True

    def losses(self, x, y):
        self.sizes.append(len(y))
        return x[:, 0].float()

    def refresh(self, model, rebuild=False):
        pass


def test_stale_forwards_are_gathered_into_full_selection_batches():
    """In a stale epoch Stale-SB asks for forwards on part of each candidate batch (the examples with
    no loss yet): the engine still sees only full selection batches (and one smaller batch at the
    epoch's end), and forwards == those examples."""
    n, size = 96, 16
    policy = StaleSB(n, n=3, selectivity=0.5)
    policy.observe(torch.arange(0, n, 2), torch.rand(n // 2), 0)  # half the examples have a loss
    engine = _RecordingEngine()
    driver = SelectionDriver(policy, batch_size=8, refresher=EngineRefresher(engine), forward_batch_size=size)
    x = torch.rand(n, 4)
    y = torch.zeros(n, dtype=torch.long)
    stale_by_epoch = []
    for epoch in (1, 2):  # both stale epochs of n = 3
        engine.sizes.clear()
        driver.start_epoch(epoch)
        stale = 0
        for idx in torch.randperm(n, generator=torch.Generator().manual_seed(epoch)).split(size):
            need = policy.requires_forward(idx, epoch)
            stale += 0 if need is False else int(need.sum())
            for batch in driver.train_batches(x[idx], y[idx], idx):
                driver.observe(batch, batch.x[:, 0])
        for batch in driver.end_epoch():
            driver.observe(batch, batch.x[:, 0])
        driver.finish_epoch()
        stale_by_epoch.append(stale)
        assert sum(engine.sizes) == stale
        assert all(s == size for s in engine.sizes[:-1]) and (not engine.sizes or engine.sizes[-1] <= size)
    # epoch 1 scores the half without a loss; epoch 2 reuses every loss
    assert stale_by_epoch == [n // 2, 0]
    assert driver.forwards == n // 2


def test_auto_engine_and_selection_batch_per_device():
    """--engine auto: torch-graph fp16 on CUDA, torch fp32 on CPU; the CUDA selection batch is 1024 for
    per-example policies, and Kath18's pre-sample stays 3x the training batch (pure: no GPU needed)."""
    from sb_accel.config import TrainConfig
    from sb_accel.train.candidates import candidate_batch_size
    from sb_accel.train.selector import resolve_engine

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert resolve_engine("auto", "auto", cuda) == ("torch-graph", "fp16")
    assert resolve_engine("auto", "auto", cpu) == ("torch", "fp32")
    assert resolve_engine("auto", "bf16", cuda) == ("torch-graph", "bf16")
    assert resolve_engine("onnxruntime", "auto", cpu) == ("onnxruntime", None)
    cfg = TrainConfig(batch_size=128)
    assert candidate_batch_size(cfg, 1, 1, cuda) == 1024 and candidate_batch_size(cfg, 2, 1, cuda) == 512
    assert candidate_batch_size(cfg, 1, 3, cuda) == 384 and candidate_batch_size(cfg, 1, 1, cpu) == 128
    assert candidate_batch_size(cfg.replace(selection_batch_size=256), 1, 1, cuda) == 256


def test_forwards_per_candidate_batch_under_ddp():
    """``regroup=False`` (DDP: every rank decides on each candidate batch at once): the candidates
    that need a forward are scored with their own batch, which comes out whole, NaN elsewhere."""
    from sb_accel.train.scoring import SelectionForwards

    n = 32
    policy = StaleSB(n, n=3)
    policy.observe(torch.arange(0, n, 2), torch.rand(n // 2), 0)
    engine = _RecordingEngine()
    forwards = SelectionForwards(policy, lambda: engine, batch_size=64, regroup=False)
    x, idx = torch.rand(8, 4), torch.arange(8)
    (part,) = forwards.score(x, torch.zeros(8, dtype=torch.long), idx, epoch=1)
    assert engine.sizes == [4] and part.forwards == 4 and forwards.pending() == 0
    assert torch.equal(part.indices, idx) and torch.isnan(part.losses[::2]).all()
    assert torch.equal(part.losses[1::2], x[1::2, 0])


def test_a_primed_policy_resumes_from_a_checkpoint_of_the_wrapping_layout():
    """Checkpoints written before Primed forwarded its policy's state held {"epochs", "policy"}."""
    from sb_accel.selection import Primed, SelectiveBackpropPolicy

    def driver():
        return SelectionDriver(Primed(SelectiveBackpropPolicy(seed=3), 1), batch_size=8,
                               refresher=EngineRefresher(_RecordingEngine()), forward_batch_size=16)

    trained = driver()
    trained.start_epoch(1)
    list(trained.train_batches(torch.rand(32, 4), torch.zeros(32, dtype=torch.long), torch.arange(32)))
    state = trained.state_dict()
    old = dict(state, policy={"epochs": 1, "policy": state["policy"]})
    for saved in (state, old):
        resumed = driver()
        resumed.load_state_dict(saved)
        assert torch.equal(resumed.policy.history.values(), trained.policy.history.values())
        assert resumed.policy.state_dict()["generator"].equal(trained.policy.state_dict()["generator"])
