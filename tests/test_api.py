"""The drop-in API: the README's loop, every strategy, and equivalence with the Trainer."""
import copy

import pytest
import torch
import torch.nn.functional as F

import sb_accel
from sb_accel.config import TrainConfig
from sb_accel.data import AUGMENT_PRESETS, Augment, CandidateLoader
from sb_accel.engines import EngineError
from sb_accel.models import create_model
from sb_accel.selection import list_strategies
from sb_accel.selection.batcher import kept_rows
from sb_accel.train import Trainer, driver as driver_module
from sb_accel.train.learner import build_optimizer


def test_drop_in_api_in_a_plain_loop():
    torch.manual_seed(0)
    model = create_model("small_cnn", width=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sb = sb_accel.SelectiveBackprop(model, selectivity=0.5, batch_size=16, prime_epochs=0)
    trained = 0
    for _ in range(8):
        x, y = torch.randn(32, 3, 16, 16), torch.randint(0, 10, (32,))
        for xb, yb in sb.select(x, y):
            assert len(yb) == 16
            loss = sb.loss(F.cross_entropy(model(xb), yb, reduction="none"))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sb.step()
            trained += len(yb)
    assert sb.steps == trained // 16 and 0.2 * 256 < trained + sb.driver.batcher.pending() < 0.8 * 256


def test_api_rejects_bad_engine_and_missing_indices_at_once():
    model = create_model("small_cnn", width=4)
    with pytest.raises(EngineError, match="onnxruntme|unknown engine"):
        sb_accel.SelectiveBackprop(model, engine="onnxruntme-int8")
    with pytest.raises(ValueError, match="dataset_size"):
        sb_accel.SelectiveBackprop(model, strategy="infobatch")
    sb = sb_accel.SelectiveBackprop(model, strategy="stale-sb", dataset_size=64)
    with pytest.raises(ValueError, match="indices"):
        next(sb.select(torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))))


def test_api_names_shape_and_label_errors():
    x = torch.randn(8, 3, 16, 16)
    for bad_y, message in ((torch.rand(8, 10), "1-D tensor of integer"), (torch.full((8,), -1), ">= 0"),
                           (torch.zeros(7, dtype=torch.long), "one example per label")):
        with pytest.raises(ValueError, match=message):
            next(sb_accel.SelectiveBackprop(create_model("small_cnn", width=4)).select(x, bad_y))
    sb = sb_accel.SelectiveBackprop(create_model("small_cnn", width=4))
    with pytest.raises(ValueError, match="floating-point"):
        next(sb.select(x.to(torch.uint8), torch.zeros(8, dtype=torch.long)))


def test_api_insists_on_training_losses_for_strategies_that_learn_from_them():
    model = create_model("small_cnn", width=4)
    sb = sb_accel.SelectiveBackprop(model, strategy="infobatch", dataset_size=32, batch_size=8, epochs=4)
    x, y = torch.randn(32, 3, 16, 16), torch.randint(0, 10, (32,))
    batches = sb.select(x, y, torch.arange(32))
    xb, yb = next(batches)
    F.cross_entropy(model(xb), yb).backward()  # the mean: InfoBatch never sees the losses
    with pytest.raises(RuntimeError, match="sb.loss"):
        sb.step()


def test_api_notices_epochs_from_indices_and_infobatch_prunes():
    torch.manual_seed(0)
    model = create_model("small_cnn", width=4)
    sb = sb_accel.SelectiveBackprop(model, strategy="infobatch", dataset_size=64, batch_size=16, epochs=8)
    x, y = torch.randn(64, 3, 16, 16), torch.randint(0, 10, (64,))
    per_epoch = []
    for epoch in range(3):
        trained = 0
        for part in torch.randperm(64).split(32):
            for xb, yb in sb.select(x[part], y[part], part):
                sb.loss(F.cross_entropy(model(xb), yb, reduction="none")).backward()
                sb.step()
                trained += len(yb)
        per_epoch.append(trained)
        assert sb.epoch == epoch
    assert per_epoch[0] == 64 and sum(per_epoch[1:]) < 2 * 64  # scores observed -> below-mean examples pruned


def _record_kept(monkeypatch):
    """Route every decision's kept indices into ``log[-1]``; append a list to start a new record."""
    log = []
    original = driver_module.decide

    def recording(policy, scored, epoch):
        decision = original(policy, scored, epoch)
        rows = scored.indices if decision.keep is None else scored.indices[kept_rows(decision.keep)]
        log[-1].append(rows.tolist())  # all kept (keep None), or Kath18: rows drawn twice, twice
        return decision

    monkeypatch.setattr(driver_module, "decide", recording)
    return log


@pytest.mark.parametrize("strategy", list_strategies())
def test_api_and_trainer_keep_the_same_examples(tmp_path, synthetic, monkeypatch, strategy):
    """Same data, seed and model: the README's few-line loop and the Trainer select identically."""
    cfg = TrainConfig(dataset="synthetic", model="small_cnn", width=4, epochs=3, batch_size=32, lr=0.05,
                      lr_schedule="constant", strategy=strategy, stale_n=2, seed=3, run_dir=str(tmp_path / "run"),
                      progress=False, checkpoint=False)
    trainer = Trainer(cfg, data=synthetic)
    initial = copy.deepcopy(trainer.model.state_dict())
    records = _record_kept(monkeypatch)
    kept_by_trainer, kept_by_api = [], []
    records.append(kept_by_trainer)
    trainer.fit()

    model = create_model("small_cnn", num_classes=synthetic.num_classes, width=4).to(memory_format=torch.channels_last)
    model.load_state_dict(initial)
    opt = build_optimizer(cfg, model)
    loader = CandidateLoader(synthetic, AUGMENT_PRESETS.get(synthetic.name, Augment()), seed=cfg.seed,
                             memory_format=torch.channels_last)
    sb = sb_accel.SelectiveBackprop(model, cfg.selectivity, strategy=strategy, batch_size=cfg.batch_size,
                                    dataset_size=len(synthetic.y_train), epochs=cfg.epochs, stale_n=2, seed=cfg.seed)
    records.append(kept_by_api)

    def train(batches):
        for xb, yb in batches:
            loss = sb.loss(F.cross_entropy(model(xb), yb, reduction="none"))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sb.step()

    for epoch in range(cfg.epochs):  # the candidate-batch size the policy asks for (Kath18: b, or 3b once sampling)
        size = cfg.batch_size * (1 if sb.policy is None else sb.policy.candidates_per_batch(epoch))
        for x, y, idx in loader.epoch(size):
            train(sb.select(x, y, idx))  # a new epoch is noticed from the indices
    train(sb.new_epoch())  # after the last epoch: what the epoch left (Stale-SB's last selection batch)
    assert len(kept_by_api) == len(kept_by_trainer) > 0
    assert kept_by_api == kept_by_trainer
    if strategy not in ("traditional", "kath18"):  # Kath18 samples only once it pays (not in 3 synthetic epochs)
        assert sum(map(len, kept_by_api)) < cfg.epochs * len(synthetic.y_train)


def test_api_misuse_is_named():
    model = create_model("small_cnn", width=4)
    x, y = torch.randn(16, 3, 16, 16), torch.randint(0, 10, (16,))
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        sb_accel.SelectiveBackprop(model, batch_size=0)
    sb = sb_accel.SelectiveBackprop(model, strategy="stale-sb", dataset_size=64, batch_size=8)
    with pytest.raises(ValueError, match="integer dataset indices"):
        next(sb.select(x, y, torch.arange(16).float()))
    with pytest.raises(ValueError, match="outside"):
        next(sb_accel.SelectiveBackprop(model, strategy="stale-sb", dataset_size=8).select(x, y, torch.arange(16)))
    with pytest.raises(ValueError, match="not a SelectiveBackprop state dict"):
        sb.load_state_dict({}, (x, y))
    traditional = sb_accel.SelectiveBackprop(model, strategy="traditional").state_dict()
    with pytest.raises(ValueError, match="strategy='traditional', this one has 'stale-sb'"):
        sb.load_state_dict(traditional, (x, y))
    other = sb_accel.SelectiveBackprop(model, strategy="stale-sb", dataset_size=32).state_dict()
    with pytest.raises(ValueError, match="dataset_size=32, this one has 64"):
        sb.load_state_dict(other, (x, y))
    nan = x.clone()
    nan[0] = float("nan")
    with pytest.raises(ValueError, match="NaN/inf inputs"):
        next(sb_accel.SelectiveBackprop(model, prime_epochs=0).select(nan, y))
    later = sb_accel.SelectiveBackprop(model, prime_epochs=0, batch_size=16)
    list(later.select(x, y))
    with pytest.raises(FloatingPointError, match="lower the learning rate") as caught:
        next(later.select(nan, y))  # later batches: the selection losses' own check, in the API's words
    assert "--" not in str(caught.value)  # no CLI flags in an API message
    learner = sb_accel.SelectiveBackprop(model, strategy="infobatch", dataset_size=16, batch_size=8, epochs=2)
    next(learner.select(x, y, torch.arange(16)))
    with pytest.raises(FloatingPointError, match="training losses passed to loss"):
        learner.loss(torch.full((8,), float("inf")))


def test_api_warns_once_about_its_silent_traps():
    model = create_model("small_cnn", width=4)
    x, y = torch.randn(16, 3, 16, 16), torch.randint(0, 10, (16,))
    sb = sb_accel.SelectiveBackprop(model, batch_size=16)
    with pytest.warns(UserWarning, match="cannot see epochs end: call new_epoch"):
        list(sb.select(x, y))
    kath = sb_accel.SelectiveBackprop(model, strategy="kath18", batch_size=16)
    list(kath.select(x, y))  # before switch-on Kath18 takes uniform batches of b: nothing to warn about
    kath.policy.tau.fill_(100.0)  # its variance estimate says sampling pays: the next epoch pre-samples
    list(kath.new_epoch())
    with pytest.warns(UserWarning, match="pre-sample of 48 candidates; candidate batches of 16 keep them all"):
        list(kath.select(x, y))
