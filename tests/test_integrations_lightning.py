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
        assert len(y) == BATCH                 # full batches of kept examples, the user's (x, y) structure
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
    steps = sum(module.batches.values())
    # one optimizer step per yielded batch; every epoch yielded exactly the length it announced
    assert trainer.global_step == steps == loader.steps
    assert module.batches == module.planned and len(module.batches) == EPOCHS
    # priming epoch on everything, then about `selectivity` of the data per epoch
    assert module.batches[0] == N // BATCH
    after = sum(module.batches[e] for e in range(1, EPOCHS)) * BATCH / (N * (EPOCHS - 1))
    assert abs(after - SELECTIVITY) < 0.08
    # the scheduler was built for the run's real step count and ran to its end
    sched = trainer.lr_scheduler_configs[0].scheduler
    assert sched.total_steps == steps and sched.last_epoch == steps
    assert sched.get_last_lr()[0] == pytest.approx(MAX_LR / (25 * 1e4), rel=1e-6)   # OneCycleLR's final LR
    assert max(module.lrs) == pytest.approx(MAX_LR, rel=0.05)
    # end-of-epoch validation ran after every epoch, also the shorter ones
    assert module.validations == EPOCHS + 1      # + Lightning's sanity check
    assert loader.epoch == EPOCHS


def test_user_max_steps_caps_the_plan(tmp_path):
    module = Module(engine="torch-fp32")
    trainer = _trainer(tmp_path, max_steps=20, limit_val_batches=0)
    trainer.fit(module)
    assert trainer.global_step == 20
    assert trainer.lr_scheduler_configs[0].scheduler.total_steps == 20


def test_misuse_is_a_clear_error(tmp_path):
    class Unwrapped(Module):
        def train_dataloader(self):
            return DataLoader(_data(), batch_size=BATCH, shuffle=True)

    with pytest.raises(RuntimeError, match="did not return"):
        _trainer(tmp_path, limit_val_batches=0).fit(Unwrapped())
    with pytest.raises(ValueError, match="accumulate_grad_batches"):
        _trainer(tmp_path, accumulate_grad_batches=2, limit_val_batches=0).fit(Module())
    class NoForward(Module):
        forward = nn.Module.forward

    with pytest.raises(ValueError, match="no forward"):
        _trainer(tmp_path, limit_val_batches=0).fit(NoForward())
    with pytest.raises(RuntimeError, match="during"):
        SelectiveBackpropCallback().wrap(DataLoader(_data(), batch_size=BATCH))
    with pytest.raises(TypeError, match="max_epochs"):
        SelectiveBackpropCallback(epochs=3)
