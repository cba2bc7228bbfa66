"""Selective-Backprop in the Hugging Face ``Trainer``: a drop-in subclass.

>>> trainer = SelectiveBackpropTrainer(model=model, args=TrainingArguments(...), train_dataset=train_set,
...                                    data_collator=collator, selectivity=0.33)   # doctest: +SKIP
>>> trainer.train()                                                                # doctest: +SKIP

Dict batches (``input_ids``, ``attention_mask``, ``labels``) and ``ModelOutput`` work as they come:
selection forwards and the training loss are per-example cross-entropies
(:func:`sb_accel.per_example_loss`; per sequence for token logits; pass
``loss_fn=sb_accel.causal_lm_loss`` for a causal LM whose labels are its input ids).

What the subclass changes in the Trainer:

* ``get_train_dataloader`` returns an :class:`sb_accel.SelectiveLoader` over the training set (the
  Trainer's collator, batch size, workers and seed): each batch is a full batch of kept examples,
  one optimizer step (or one micro-batch under gradient accumulation).
* The loader is planned for ``num_train_epochs``: every epoch has the same, known number of
  batches, so the Trainer's step count (``len(loader) x epochs``, from which it builds the LR
  scheduler) is the run's real one: the schedule completes, and no step is taken without a batch.
  Each loader epoch is closed after its last optimizer step (the Trainer stops reading an epoch
  after ``len()`` batches).
* ``compute_loss`` in training computes per-example losses and returns ``loader.loss(...)`` (the
  strategy's weighted mean; Stale-SB and InfoBatch learn from it). Evaluation is unchanged.
* Checkpoints taken at an epoch's end (``save_strategy="epoch"``) also hold the loader's state
  (``selective_loader-<process>.pt``), and ``train(resume_from_checkpoint=...)`` restores it; a
  checkpoint taken mid-epoch has none (the loader's state exists between epochs) and is refused
  for resuming.
"""
from __future__ import annotations

import os
import warnings
from typing import Any, Dict, Optional

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

try:
    from transformers import Trainer, TrainerCallback
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint
    from transformers.utils import is_datasets_available
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("sb_accel.integrations.huggingface needs transformers and accelerate: "
                      "pip install 'sb-accel[hf]'") from exc

from ..adapters import Forward, LossFn, default_forward, per_example_loss
from ..selective_loader import SelectiveLoader
from .stepping import FrameworkLoader
from ..strategy_options import DEFAULTS

__all__ = ["SelectiveBackpropTrainer", "LOADER_STATE"]

LOADER_STATE = "selective_loader-{process}.pt"   # in a Trainer checkpoint folder, one per process


class SelectiveBackpropTrainer(Trainer):
    """A ``transformers.Trainer`` that trains with Selective-Backprop (or another sb_accel strategy).

    Args:
        *args, **kwargs: the ``Trainer``'s own.
        selectivity, strategy, engine: as for :class:`sb_accel.SelectiveLoader`.
        loss_fn: ``loss_fn(output, batch) -> (N,)`` per-example losses, used for selection and
            training (default :func:`sb_accel.per_example_loss`).
        forward: ``forward(model, batch) -> output`` (default: ``model(**batch)`` without the labels,
            so the model does not compute its own mean loss on the way).
        loader_options: further :class:`sb_accel.SelectiveLoader` keywords (``prime_epochs``,
            ``history``, ``selection_batch_size``...).
    """

    def __init__(self, *args: Any, selectivity: float = DEFAULTS.selectivity, strategy: str = "sb",
                 engine: str = "auto", loss_fn: Optional[LossFn] = None, forward: Optional[Forward] = None,
                 loader_options: Optional[Dict[str, Any]] = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sb_loss_fn: LossFn = loss_fn or per_example_loss
        self.sb_forward: Forward = forward or default_forward
        self.loader_options = dict(selectivity=selectivity, strategy=strategy, engine=engine,
                                   loss_fn=self.sb_loss_fn, forward=self.sb_forward, **(loader_options or {}))
        self.selective_loader: Optional[SelectiveLoader] = None
        self._reader: Optional[FrameworkLoader] = None
        # compute_loss returns a per-batch mean: the Trainer divides it for gradient accumulation
        # itself and needs no token count
        self.model_accepts_loss_kwargs = False
        self._resume_state: Optional[Dict[str, Any]] = None
        self.add_callback(_LoaderHooks(self))

    def train(self, resume_from_checkpoint: Optional[str | bool] = None, *args: Any, **kwargs: Any):
        """The Trainer's ``train``; resuming restores the loader's state saved in the checkpoint."""
        self._resume_state = None
        if resume_from_checkpoint:
            if resume_from_checkpoint is True:
                resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
                if resume_from_checkpoint is None:
                    raise ValueError(f"no checkpoint found in {self.args.output_dir} to resume from")
            path = os.path.join(resume_from_checkpoint, LOADER_STATE.format(process=self.args.process_index))
            if not os.path.isfile(path):
                raise ValueError(f"{resume_from_checkpoint} holds no selecting-loader state "
                                 f"({os.path.basename(path)}): it was not taken at an epoch's end; resume from an "
                                 "epoch-end checkpoint (save_strategy='epoch')")
            self._resume_state = torch.load(path, weights_only=False)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _planned_epochs(self) -> int:
        epochs = self.args.num_train_epochs
        if self.args.max_steps > 0 or epochs < 1 or float(epochs) != int(epochs):
            raise ValueError(f"SelectiveBackpropTrainer plans its steps over whole epochs: give an integer "
                             f"num_train_epochs >= 1 and no max_steps (got num_train_epochs={epochs}, "
                             f"max_steps={self.args.max_steps})")
        return int(epochs)

    def get_train_dataloader(self) -> FrameworkLoader:
        """The selecting loader over ``train_dataset`` (built at every ``train()``; also in
        :attr:`selective_loader`)."""
        if self.train_dataset is None:
            raise ValueError("SelectiveBackpropTrainer: training requires a train_dataset")
        if self.args.n_gpu > 1:
            raise ValueError("SelectiveBackpropTrainer does not run under DataParallel (several GPUs in one "
                             "process): launch one process per GPU with torchrun")
        epochs = self._planned_epochs()
        sampling = getattr(self.args, "train_sampling_strategy",   # transformers 5; 4.x: group_by_length
                           "group_by_length" if getattr(self.args, "group_by_length", False) else "random")
        if sampling not in ("random", "sequential"):
            raise ValueError(f"train_sampling_strategy={sampling!r} cannot be kept: the selecting loader draws its "
                             "own order of the dataset (use 'random' or 'sequential')")
        dataset, collator = self.train_dataset, self.data_collator
        # the Trainer's own column clean-up (datasets.Dataset columns, or a collator that drops them)
        if _is_hf_dataset(dataset):
            dataset = self._remove_unused_columns(dataset, description="training")
        else:
            collator = self._get_collator_with_removed_columns(collator, description="training")
        data = DataLoader(dataset, batch_size=self._train_batch_size, shuffle=sampling == "random", collate_fn=collator,
                          num_workers=self.args.dataloader_num_workers, pin_memory=self.args.dataloader_pin_memory)
        if self.selective_loader is not None:
            self.selective_loader.close()
        self.selective_loader = SelectiveLoader(data, self.model, epochs=epochs,
                                                **{"seed": self.args.seed, **self.loader_options})
        if self._resume_state is not None:
            self.selective_loader.load_state_dict(self._resume_state)
            self._resume_state = None
        self._reader = FrameworkLoader(self.selective_loader)
        return self._reader

    def compute_loss(self, model: nn.Module, inputs: Dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Optional[torch.Tensor] = None):
        """Training: ``loader.loss`` of the per-example losses of ``inputs`` (a batch the loader just
        yielded). Evaluation: the Trainer's own loss."""
        if not model.training or self.selective_loader is None:
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        outputs = self.sb_forward(model, inputs)
        loss = self.selective_loader.loss(self.sb_loss_fn(outputs, inputs))
        return (loss, outputs) if return_outputs else loss


def _is_hf_dataset(dataset: Any) -> bool:
    if not is_datasets_available():
        return False
    import datasets

    return isinstance(dataset, datasets.Dataset)


class _LoaderHooks(TrainerCallback):
    """Closes the loader's epoch after its last optimizer step (see :class:`FrameworkLoader`) and
    saves the loader's state into epoch-end checkpoints."""

    def __init__(self, trainer: SelectiveBackpropTrainer) -> None:
        self.trainer = trainer
        self._warned = False

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.trainer._reader is not None:
            self.trainer._reader.step_taken()

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        loader = self.trainer.selective_loader
        folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        if loader is None or not os.path.isdir(folder):
            return
        try:
            loader_state = loader.state_dict()
        except RuntimeError:   # mid-epoch: the loader's state exists between epochs only
            if not self._warned:
                warnings.warn("a checkpoint taken mid-epoch holds no selecting-loader state and cannot be resumed "
                              "from; use save_strategy='epoch'", stacklevel=2)
                self._warned = True
            return
        torch.save(loader_state, os.path.join(folder, LOADER_STATE.format(process=args.process_index)))
