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


def test_checkpoint_carries_the_loader_state(tmp_path):
    module = Module(engine="torch-fp32")
    trainer = _trainer(tmp_path, limit_val_batches=0)
    trainer.fit(module)
    path = tmp_path / "sb.ckpt"
    trainer.save_checkpoint(path)
    state = torch.load(path, weights_only=False)["callbacks"]
    (saved,) = [v for k, v in state.items() if k.startswith("SelectiveBackpropCallback")]
    assert saved["loader"]["steps"] == trainer.global_step

    resumed = Module(engine="torch-fp32")
    more = L.Trainer(accelerator="cpu", devices=1, max_epochs=EPOCHS, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                     limit_val_batches=0)
    more.fit(resumed, ckpt_path=path)     # already complete: restores, trains nothing more
    assert resumed.sb.loader.steps == trainer.global_step and resumed.sb.loader.epoch == EPOCHS


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
