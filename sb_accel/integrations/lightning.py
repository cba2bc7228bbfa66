"""Selective-Backprop in Lightning 2.x: one callback, automatic optimization kept.

>>> class Module(L.LightningModule):                                          # doctest: +SKIP
...     def __init__(self):
...         super().__init__()
...         self.net = ...
...         self.sb = SelectiveBackpropCallback(selectivity=0.33)
...     def forward(self, x):                                       # what selection forwards call
...         return self.net(x)
...     def configure_callbacks(self):
...         return [self.sb]
...     def train_dataloader(self):
...         return self.sb.wrap(DataLoader(train_set, batch_size=128, shuffle=True))
...     def training_step(self, batch, batch_idx):
...         x, y = batch
...         return self.sb.loss(F.cross_entropy(self(x), y, reduction="none"))
...     def configure_optimizers(self):
...         opt = torch.optim.SGD(self.parameters(), lr=0.1)
...         steps = self.trainer.estimated_stepping_batches          # the SB run's real step count
...         return [opt], [{"scheduler": OneCycleLR(opt, 0.1, total_steps=steps), "interval": "step"}]

``wrap`` builds a :class:`sb_accel.SelectiveLoader` over the user's DataLoader and the module,
planned for the Trainer's ``max_epochs``: every batch Lightning draws is a full batch of kept
examples, every epoch has the same, known number of them, so ``estimated_stepping_batches`` (and a
scheduler built from it) is the run's real step count. The callback closes each loader epoch after
its last optimizer step (Lightning stops reading an epoch after ``len()`` batches) and keeps the
loader's state in Lightning checkpoints.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from torch.utils.data import DataLoader, Dataset

try:
    import lightning.pytorch as pl
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("sb_accel.integrations.lightning needs Lightning 2.x: pip install 'sb-accel[lightning]'") from exc

from ..selective_loader import SelectiveLoader
from .stepping import FrameworkLoader
from ..strategy_options import DEFAULTS

__all__ = ["SelectiveBackpropCallback"]


class SelectiveBackpropCallback(pl.Callback):
    """Selective-Backprop for a LightningModule: ``wrap`` the training DataLoader, ``loss`` the
    per-example losses in ``training_step``.

    Args:
        selectivity, strategy, engine, **loader_options: as for :class:`sb_accel.SelectiveLoader`
            (``loss_fn``, ``forward``, ``prime_epochs``...); its ``epochs`` is the Trainer's ``max_epochs``.
    """

    def __init__(self, selectivity: float = DEFAULTS.selectivity, *, strategy: str = "sb", engine: str = "auto",
                 **loader_options: Any) -> None:
        if "epochs" in loader_options:
            raise TypeError("SelectiveBackpropCallback takes the planned epochs from Trainer(max_epochs=...)")
        self.loader_options = dict(selectivity=selectivity, strategy=strategy, engine=engine, **loader_options)
        self.loader: Optional[SelectiveLoader] = None
        self._reader: Optional[FrameworkLoader] = None
        self._trainer: Optional[pl.Trainer] = None
        self._module: Optional[pl.LightningModule] = None
        self._state: Optional[Dict[str, Any]] = None   # a checkpoint's loader state, until the loader exists

    # --- what the user calls ------------------------------------------------------------------
    def wrap(self, data: Dataset | DataLoader) -> FrameworkLoader:
        """The selecting loader over ``data`` (a DataLoader, or a Dataset with ``batch_size=`` given to
        the callback), to return from ``train_dataloader()``; the loader itself is :attr:`loader`."""
        trainer, module = self._trainer, self._module
        if trainer is None or module is None:
            raise RuntimeError("SelectiveBackpropCallback.wrap() is called from train_dataloader() during "
                               "Trainer.fit: add the callback to the Trainer (callbacks=[sb]) or return it from "
                               "the module's configure_callbacks()")
        epochs = trainer.max_epochs
        if epochs is None or epochs < 1:
            raise ValueError("Selective-Backprop plans its steps over the run's epochs: give Trainer(max_epochs=N)")
        if "forward" not in self.loader_options and type(module).forward is torch.nn.Module.forward:
            raise ValueError(f"{type(module).__name__} has no forward(): selection forwards call module(batch[0]) "
                             "(or module(**batch) for dict batches); define forward() or pass forward=fn(module, "
                             "batch) to SelectiveBackpropCallback")
        if self.loader is not None:
            self.loader.close()
        self.loader = SelectiveLoader(data, module, epochs=epochs, **self.loader_options)
        if self._state is not None:
            self.loader.load_state_dict(self._state)
            self._state = None
        self._reader = FrameworkLoader(self.loader)
        return self._reader

    def loss(self, per_example: torch.Tensor) -> torch.Tensor:
        """The training loss of the batch in hand from its per-example losses (``reduction="none"``):
        the strategy's weighted mean; the losses also reach the strategy."""
        if self.loader is None:
            raise RuntimeError("loss() needs the selecting loader: return sb.wrap(your_dataloader) from "
                               "train_dataloader()")
        return self.loader.loss(per_example)

    # --- Lightning hooks ------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer, self._module = trainer, pl_module

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._reader is None or trainer.train_dataloader is not self._reader:
            raise RuntimeError("SelectiveBackpropCallback is attached but train_dataloader() did not return "
                               "sb.wrap(...): the epoch would train without selection")

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._reader.step_taken()   # after the optimizer step: the loader's epoch closes after its last batch

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.loader is not None and stage == "fit":
            self.loader.close()

    def state_dict(self) -> Dict[str, Any]:
        if self.loader is None:
            return {}
        try:
            return {"loader": self.loader.state_dict()}
        except RuntimeError as exc:
            raise RuntimeError("the selecting loader's state is saved between epochs: checkpoint at epoch ends "
                               "(ModelCheckpoint(every_n_epochs=...), not every_n_train_steps)") from exc

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        if "loader" not in state_dict:
            return
        if self.loader is not None:   # built already (configure_optimizers asked for the step count)
            self.loader.load_state_dict(state_dict["loader"])
        else:
            self._state = state_dict["loader"]
