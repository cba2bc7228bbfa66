"""The Lightning integration with the real package: a tiny model trained for a few epochs on the CPU."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

L = pytest.importorskip("lightning")
from sb_accel.integrations.lightning import SelectiveBackpropCallback  # noqa: E402

N, BATCH, EPOCHS, SELECTIVITY, MAX_LR = 480, 32, 4, 0.33, 0.05


def _data(n=N, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 10, generator=g)
    y = (x[:, :4].argmax(1) + (torch.rand(n, generator=g) < 0.2).long()) % 4   # learnable, with label noise
    return TensorDataset(x, y)


class Module(L.LightningModule):
    def __init__(self, **sb_options):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 4))
        self.sb = SelectiveBackpropCallback(selectivity=SELECTIVITY, **sb_options)
        self.batches = {}       # epoch -> batches trained
        self.planned = {}       # epoch -> len(loader) when the epoch started
        self.validations = 0
        self.lrs = []

    def forward(self, x):
        return self.net(x)

    def configure_callbacks(self):
        return [self.sb]

    def train_dataloader(self):
        return self.sb.wrap(DataLoader(_data(), batch_size=BATCH, shuffle=True))

    def val_dataloader(self):
        return DataLoader(_data(64, seed=1), batch_size=64)

    def on_train_epoch_start(self):
        self.planned[self.current_epoch] = len(self.sb.loader)

    def training_step(self, batch, batch_idx):
        x, y = batch
        assert len(y) == BATCH and x.shape[1:] == (10,)   # full batches of kept examples, the user's (x, y)
        self.batches[self.current_epoch] = self.batches.get(self.current_epoch, 0) + 1
        self.lrs.append(self.trainer.optimizers[0].param_groups[0]["lr"])
        return self.sb.loss(F.cross_entropy(self(x), y, reduction="none"))

    def validation_step(self, batch, batch_idx):
        self.validations += 1

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=MAX_LR, momentum=0.9)
        steps = self.trainer.estimated_stepping_batches
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=MAX_LR, total_steps=steps)
        return [opt], [{"scheduler": sched, "interval": "step"}]


def _trainer(tmp_path, **kw):
    return L.Trainer(accelerator="cpu", devices=1, max_epochs=EPOCHS, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path, **kw)


def test_trains_with_selection_and_the_schedule_completes(tmp_path):
    torch.manual_seed(0)
    module = Module(engine="torch-fp32")
    trainer = _trainer(tmp_path)
    trainer.fit(module)

    loader = module.sb.loader
    stats = loader.stats()
    per_epoch = module.planned[0]
    # one optimizer step per yielded batch; every epoch yielded the length it announced, the same for all
    assert trainer.global_step == EPOCHS * per_epoch == loader.steps
    assert module.batches == module.planned == {e: per_epoch for e in range(EPOCHS)}
    # a priming pass over everything, then about `selectivity` of the data: fewer steps than plain training
    assert per_epoch == round((N + (EPOCHS - 1) * SELECTIVITY * N) / (EPOCHS * BATCH))
    assert abs((stats["kept"] - N) / stats["forwards"] - SELECTIVITY) < 0.1
    assert loader.epoch == EPOCHS and stats["untrained_remainder"] < BATCH
    # the scheduler was built for the run's real step count and ran to its end
    sched = trainer.lr_scheduler_configs[0].scheduler
    assert sched.total_steps == trainer.global_step and sched.last_epoch == trainer.global_step
    assert module.lrs[-1] == pytest.approx(MAX_LR / (25 * 1e4), rel=1e-6)   # the last step at OneCycleLR's final LR
    assert max(module.lrs) == pytest.approx(MAX_LR, rel=0.05)
    # end-of-epoch validation ran after every epoch
    assert module.validations == EPOCHS + 1      # + Lightning's sanity check


def test_resumes_from_an_epoch_end_checkpoint_as_if_uninterrupted(tmp_path):
    def trainer():
        every_epoch = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_epochs=1, save_top_k=-1)
        return L.Trainer(accelerator="cpu", devices=1, max_epochs=EPOCHS, logger=False, callbacks=[every_epoch],
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                         limit_val_batches=0)

    torch.manual_seed(0)
    whole = Module(engine="torch-fp32")
    trainer().fit(whole)
    (checkpoint,) = (tmp_path / "ckpt").glob("epoch=1-*.ckpt")
    torch.manual_seed(1)   # other initial weights: the checkpoint must bring back the model and the loader
    resumed = Module(engine="torch-fp32")
    again = trainer()
    again.fit(resumed, ckpt_path=checkpoint)
    assert set(resumed.batches) == {2, 3}    # only the epochs after the checkpoint were trained
    assert again.global_step == resumed.sb.loader.steps == whole.sb.loader.steps
    assert resumed.sb.loader.stats()["kept"] == whole.sb.loader.stats()["kept"]
    for a, b in zip(whole.parameters(), resumed.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_misuse_is_a_clear_error(tmp_path):
    class Unwrapped(Module):
        def train_dataloader(self):
            return DataLoader(_data(), batch_size=BATCH, shuffle=True)

    with pytest.raises(RuntimeError, match="did not return"):
        _trainer(tmp_path, limit_val_batches=0).fit(Unwrapped())
    class NoForward(Module):
        forward = nn.Module.forward

    with pytest.raises(ValueError, match="no forward"):
        _trainer(tmp_path, limit_val_batches=0).fit(NoForward())
    with pytest.raises(RuntimeError, match="during"):
        SelectiveBackpropCallback().wrap(DataLoader(_data(), batch_size=BATCH))
    with pytest.raises(TypeError, match="max_epochs"):
        SelectiveBackpropCallback(epochs=3)
