
import pytest
import torch

from sb_accel.config import ConfigError, TrainConfig
from sb_accel.reporting import load_run
from sb_accel.train import Trainer, load_checkpoint, save_checkpoint


def config(tmp_path, **kw):
    base = dict(dataset="synthetic", model="small_cnn", width=4, epochs=2, batch_size=32, lr=0.05,
                run_dir=str(tmp_path / "run"), log_every_steps=5, progress=False)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("strategy", ["traditional", "sb", "stale-sb", "kath18", "infobatch"])
def test_every_strategy_trains_and_logs(tmp_path, synthetic, strategy):
    cfg = config(tmp_path, strategy=strategy, epochs=3, stale_n=2)
    summary = Trainer(cfg, data=synthetic).fit()
    n = len(synthetic.y_train)
    assert summary["candidates"] == 3 * n
    assert summary["backprops"] % 32 == 0 and summary["backprops"] == 32 * summary["step"]
    run = load_run(tmp_path / "run")
    assert [e["event"] for e in run.events][0] == "config"
    assert len(run.evals) == 3 and run.summary["test_acc"] == summary["test_acc"]
    phases = summary["phases"]
    assert sum(phases.values()) == pytest.approx(summary["wall_total"], rel=1e-9)
    if strategy == "traditional":
        assert summary["forwards"] == 0 and summary["backprops"] + summary["untrained_remainder"] == 3 * n
    if strategy == "sb":  # epoch 0 primes; epochs 1-2 select ~33%
        assert summary["forwards"] == 2 * n
        assert 0.2 < (summary["backprops"] - n) / (2 * n) < 0.5
    if strategy == "stale-sb":  # priming caches every loss; n=2 -> every example is scored in epoch 2 only
        # (and in epoch 1 the few of the first candidate batch that priming carried over untrained)
        assert n <= summary["forwards"] <= n + 32
    if strategy == "kath18":  # uniform batches, unscored, until sampling pays; then b of every 3b scored
        sampled = summary["forwards"]  # the candidates of the importance-sampling epochs
        assert sampled in (0, n, 2 * n, 3 * n)
        assert summary["backprops"] == pytest.approx(3 * n - sampled + sampled // 3, abs=3 * 32)


@pytest.mark.needs_dataset("cifar10")
def test_sb_learns_real_cifar10_subset(tmp_path):
    cfg = TrainConfig(dataset="cifar10", train_subset=3000, test_subset=1000, model="small_cnn", strategy="sb",
                      epochs=3, lr=0.05, lr_schedule="linear", run_dir=str(tmp_path / "run"), progress=False)
    summary = Trainer(cfg).fit()
    assert summary["test_acc"] > 0.25  # chance is 0.10
    assert summary["phases"]["selection"] > 0 and summary["phases"]["backward"] > 0


class _Crash(Exception):
    pass


class _CrashAfterTwoEpochs(Trainer):
    def _end_epoch(self):
        super()._end_epoch()  # the checkpoint is written here
        if self.epoch == 2:
            raise _Crash


@pytest.mark.parametrize("strategy", ["sb", "stale-sb"])
def test_resume_after_crash_continues_exactly(tmp_path, synthetic, strategy):
    full = Trainer(config(tmp_path / "a", strategy=strategy, epochs=3), data=synthetic).fit()
    with pytest.raises(_Crash):
        _CrashAfterTwoEpochs(config(tmp_path / "b", strategy=strategy, epochs=3), data=synthetic).fit()
    resumed = Trainer(config(tmp_path / "b", strategy=strategy, epochs=3), data=synthetic, resume=True).fit()
    for key in ("step", "backprops", "forwards", "candidates", "test_acc"):
        assert resumed[key] == full[key], key
    kinds = [e["event"] for e in load_run(tmp_path / "b" / "run").events]
    assert kinds.count("resume") == 1 and kinds.count("config") == 1


def test_existing_run_dir_needs_resume_or_overwrite(tmp_path, synthetic):
    Trainer(config(tmp_path, epochs=1), data=synthetic).fit()
    with pytest.raises(ConfigError, match="--resume"):
        Trainer(config(tmp_path, epochs=1), data=synthetic)
    Trainer(config(tmp_path, epochs=1), data=synthetic, overwrite=True).fit()
    with pytest.raises(ConfigError, match="differs"):
        Trainer(config(tmp_path, epochs=2, momentum=0.5), data=synthetic, resume=True)  # lr may change: momentum not


def test_divergence_is_reported(tmp_path, synthetic):
    cfg = config(tmp_path, strategy="traditional", lr=1e6, momentum=0.0, log_every_steps=2, epochs=1)
    with pytest.raises(FloatingPointError, match="diverged|NaN"):
        Trainer(cfg, data=synthetic).fit()


def test_config_validation_and_toml(tmp_path):
    with pytest.raises(ConfigError, match="selectivity"):
        TrainConfig(selectivity=0.0)
    with pytest.raises(ConfigError, match="strategy"):
        TrainConfig(strategy="oracle")
    path = tmp_path / "run.toml"
    path.write_text('strategy = "stale-sb"\nstale_n = 2\nepochs = 4\n')
    cfg = TrainConfig.from_toml(path, {"epochs": 5})
    assert (cfg.strategy, cfg.stale_n, cfg.epochs) == ("stale-sb", 2, 5)
    assert cfg.prime_epochs is None and cfg.milestone_epochs == pytest.approx((1.5, 3.0, 4.0))
    path.write_text("lr_typo = 1\n")
    with pytest.raises(ConfigError, match="unknown config keys"):
        TrainConfig.from_toml(path)


def _state_equal(a, b):
    """Nested state dicts equal, tensors by value (NaN equal to NaN), generator states by bytes."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_state_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_state_equal(x, y) for x, y in zip(a, b))
    if torch.is_tensor(a):
        return a.shape == b.shape and a.dtype == b.dtype and bool(((a == b) | (a != a) & (b != b)).all())
    return a == b or (a != a and b != b)


def test_a_trainers_state_is_its_parts_and_loads_back(tmp_path, synthetic):
    """state_dict() holds the parts' own states; a fresh Trainer given it (and its driver's) reports the same."""
    trainer = Trainer(config(tmp_path / "a", strategy="stale-sb", stale_n=2, epochs=2), data=synthetic)
    trainer.train_epoch()
    state = trainer.state_dict()
    assert _state_equal(state["model"], trainer.learner.model.state_dict())
    assert _state_equal(state["driver"], trainer.driver.state_dict()) and state["step"] == trainer.step > 0
    fresh = Trainer(config(tmp_path / "b", strategy="stale-sb", stale_n=2, epochs=2), data=synthetic)
    fresh.load_state_dict(state)
    fresh.driver.load_state_dict(state["driver"], fresh.device)
    again = fresh.state_dict()
    for key in state:
        if key != "phases":  # the fresh timer adds its own set-up time to the loaded totals
            assert _state_equal(again[key], state[key]), key
    assert all(again["phases"][p] >= state["phases"][p] for p in state["phases"])


def test_resume_with_another_number_of_processes_is_refused(tmp_path, synthetic):
    Trainer(config(tmp_path, epochs=1), data=synthetic).fit()
    checkpoint = load_checkpoint(tmp_path / "run")
    save_checkpoint({**checkpoint, "world_size": 2, "ranks": [None, {}]}, tmp_path / "run")
    with pytest.raises(ConfigError, match=r"written by 2 process\(es\) but this run has 1.*--nproc-per-node 2"):
        Trainer(config(tmp_path, epochs=2), data=synthetic, resume=True)
