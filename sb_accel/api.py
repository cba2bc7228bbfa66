"""Selective-Backprop (or any registered strategy) in an existing PyTorch loop, in a few lines.

>>> sb = SelectiveBackprop(model, selectivity=0.33)                 # doctest: +SKIP
>>> for x, y in loader:                                            # candidate batches
...     for xb, yb in sb.select(x, y):                             # full training batches when ready
...         loss = sb.loss(F.cross_entropy(model(xb), yb, reduction="none"))
...         opt.zero_grad(); loss.backward(); opt.step()
...         sb.step()                                              # refreshes the engine on schedule

Strategies that remember examples across epochs (``"stale-sb"``, ``"infobatch"``) also need the
examples' dataset indices (``sb.select(x, y, indices)``) and ``dataset_size``. Epoch boundaries are
noticed from the indices (an index seen again opens a new epoch), or told with ``new_epoch()``.

This is the low level under :class:`sb_accel.SelectiveLoader` (which makes the candidate batches,
the epochs, Kath18's pre-samples and the step count itself): it stays for loops that make their own
candidate batches (GPU-side augmentation, as the Trainer's ``CandidateLoader``), and both drive the
same :class:`~sb_accel.train.driver.SelectionDriver`. Its silent traps warn once instead: no
indices under a priming strategy (it never leaves the priming epoch unless told ``new_epoch()``),
Kath18 candidate batches smaller than its pre-sample.
"""
from __future__ import annotations

import dataclasses

import warnings
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn as nn

from .engines import EngineContext, EngineRefresher, default_schedule, parse_engine_spec
from .selection import DEFAULTS, StrategyOptions, TrainBatch, create_strategy, priming_epochs, strategy_info
from .loader_checks import api_nonfinite_message, guard_training_losses
from .train.candidates import loss_history_size
from .train.driver import SelectionDriver
from .train.selector import resolve_engine

__all__ = ["SelectiveBackprop"]


class SelectiveBackprop:
    """Wraps a model: selection passes on an engine, a strategy's policy, and a batcher of kept examples.

    Args:
        model: the training model (read by the torch engine, exported by the others).
        selectivity: expected fraction of candidates backpropagated by SB (``beta = 1/s - 1``).
        strategy: a registered strategy: ``"sb"`` (default), ``"stale-sb"``, ``"kath18"``,
            ``"infobatch"``, ``"traditional"``.
        batch_size: training batch size; default: the size of the first candidate batch.
        engine: ``"auto"`` (the Trainer's: torch-graph-fp16 on CUDA, torch-fp32 on the CPU),
            ``"torch-fp32"``, ``"torch-bf16"``, ``"onnxruntime-int8"``, ``"tensorrt-fp16"``...
        refresh_every: refresh a snapshot engine every this many ``step()`` calls (0: never).
            Keep it small: stale selection hurts SB (see README). The default torch engine reads
            the live model and is never refreshed.
        dataset_size: number of training examples (needed by ``stale-sb`` and ``infobatch``, and
            used to notice epoch boundaries from the indices).
        epochs: planned number of epochs (InfoBatch trains on everything in its last 12.5%).
        end_of_epoch: what happens to kept examples short of a batch at an epoch's end: ``"carry"``
            (default), ``"partial"`` (trained as a smaller batch) or ``"drop"``.
        calibration: a few ``(x, y)`` training batches for INT8 engines and engine validation.
        **options: strategy knobs of :class:`~sb_accel.selection.StrategyOptions` (``history``,
            ``stale_n``, ``prime_epochs``, ``seed``, ...). As in the Trainer, SB and Stale-SB
            train on everything in their first epoch unless ``prime_epochs=0``.
    """

    def __init__(self, model: nn.Module, selectivity: float = DEFAULTS.selectivity, *, strategy: str = "sb",
                 batch_size: Optional[int] = None, engine: str = "auto", refresh_every: int = 1,
                 dataset_size: Optional[int] = None, epochs: Optional[int] = None, end_of_epoch: str = "carry",
                 calibration: Optional[List[Tuple[torch.Tensor, torch.Tensor]]] = None, **options: Any) -> None:
        unknown = sorted(set(options) - set(StrategyOptions.__dataclass_fields__))
        if unknown:
            raise TypeError(f"unknown option(s) {unknown}; strategy options are "
                            f"{', '.join(StrategyOptions.__dataclass_fields__)}")
        self.info = strategy_info(strategy)
        if self.info.needs_dataset_size and not dataset_size:
            raise ValueError(f"strategy {strategy!r} keeps a value per training example: pass dataset_size= "
                             "(the number of training examples) and the indices to select(x, y, indices)")
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        # a misspelt engine fails here, not at the first batch
        self._engine_spec = None if engine == "auto" else parse_engine_spec(engine)
        if refresh_every < 0:
            raise ValueError(f"refresh_every must be >= 0, got {refresh_every}")
        self.model = model
        self.options = StrategyOptions(selectivity=selectivity, **options)
        self._history = int(options.get("history", 0))  # R; 0: automatic, fixed at the first batch
        self.dataset_size = dataset_size
        self.epochs = epochs
        self.end_of_epoch = end_of_epoch
        self.batch_size = batch_size
        self._calibration = calibration or []
        self._refresh_every = refresh_every
        self.driver: Optional[SelectionDriver] = None  # built at the first batch: engines need a sample
        self.events: List[dict] = []   # engine build / refresh / fallback events, as the Trainer logs them
        self.steps = 0
        self._seen: Optional[torch.Tensor] = None  # indices seen this epoch, to notice the next one
        self._batch: Optional[TrainBatch] = None   # the batch select() last yielded
        self._observed = True
        self._bad_loss: Optional[torch.Tensor] = None  # a device-side flag of non-finite training losses
        self._warned = set()

    # --- set-up -------------------------------------------------------------------------------
    def _setup(self, x: torch.Tensor, y: torch.Tensor) -> SelectionDriver:
        self.batch_size = self.batch_size or len(y)
        # R must hold more than one selection call, or SB's CDF covers only the batch it scores
        self.options = dataclasses.replace(self.options, history=loss_history_size(self._history, len(y)))
        policy = create_strategy(self.info.name, self.options, batch_size=self.batch_size,
                                 dataset_size=self.dataset_size).to(x.device)
        refresher = None
        if policy.needs_selection_forward:
            context = EngineContext(device=x.device, sample_batches=self._calibration or [(x, y)],
                                    max_batch=max(len(y), 512))
            backend, precision = self._engine_spec or resolve_engine("auto", "auto", x.device)
            schedule = default_schedule(backend, x.device.type, self._refresh_every, every_epoch=False)
            refresher = EngineRefresher.create(backend, self.model, context, schedule, precision=precision)
        self.driver = SelectionDriver(policy, self.batch_size, refresher, end_of_epoch=self.end_of_epoch,
                                      num_epochs=self.epochs)
        self.driver.start_epoch(0)
        self._collect([] if refresher is None else refresher.after_step(self.model, 0))
        return self.driver

    @property
    def policy(self):
        """The strategy's policy (None before the first batch)."""
        return None if self.driver is None else self.driver.policy

    @property
    def epoch(self) -> int:
        return 0 if self.driver is None else self.driver.epoch

    # --- the loop -----------------------------------------------------------------------------
    def select(self, x: torch.Tensor, y: torch.Tensor, indices: Optional[torch.Tensor] = None
               ) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """Score a candidate batch; yield every full training batch ``(xb, yb)`` of kept examples now ready.

        ``indices`` (the examples' dataset indices) are needed by strategies that remember
        examples across epochs; given, an index seen before in this epoch starts the next epoch
        (the remainder of the old one is yielded first under ``end_of_epoch="partial"``).
        """
        _check_batch(x, y, values=self.driver is None)  # label values once: reading them syncs a GPU
        driver = self.driver or self._setup(x, y)
        if indices is None:
            if self.info.needs_dataset_size:
                raise ValueError(f"strategy {self.info.name!r} needs the examples' dataset indices: "
                                 "select(x, y, indices)")
            if priming_epochs(self.info.name, self.options.prime_epochs) > driver.epoch:
                self._warn_once("priming", f"strategy {self.info.name!r} trains on everything in its priming epoch and "
                                "select() without indices cannot see epochs end: call new_epoch() at each epoch's end "
                                "(or use sb_accel.SelectiveLoader, which does)")
            indices = torch.arange(len(y))
        else:
            indices = torch.as_tensor(indices).reshape(-1)
            if indices.dtype.is_floating_point or indices.dtype == torch.bool:
                raise ValueError(f"indices must be integer dataset indices, got dtype {indices.dtype}")
            indices = indices.cpu()
            if len(indices) != len(y):
                raise ValueError(f"got {len(indices)} indices for {len(y)} examples")
            if self._starts_new_epoch(indices):
                yield from self.new_epoch()
            self._mark_seen(indices)
        multiplier = driver.candidates_per_batch()
        if multiplier > 1 and len(y) <= self.batch_size:
            self._warn_once("presample", f"strategy {self.info.name!r} draws one training batch from each pre-sample of "
                            f"{multiplier * self.batch_size} candidates; candidate batches of {len(y)} keep them all: "
                            f"pass candidate batches of {multiplier * self.batch_size} (or use sb_accel.SelectiveLoader, "
                            "which does)")
        try:  # lazily: the user's steps on earlier batches come before later selection forwards
            for batch in driver.train_batches(x, y, indices):
                yield from self._hand_out(batch)
        except FloatingPointError as exc:
            raise FloatingPointError(api_nonfinite_message(exc)) from exc

    def loss(self, per_example: torch.Tensor) -> torch.Tensor:
        """The training loss of the batch last yielded: per-example losses (``reduction="none"``)
        weighted as the strategy asks (InfoBatch rescales), averaged; the losses also reach the
        strategy (Stale-SB and InfoBatch learn from them)."""
        if self._batch is None:
            raise RuntimeError("loss() comes after select() has yielded a batch")
        if self.driver.policy.uses_training_losses:  # only what a strategy stores needs guarding
            self._bad_loss = guard_training_losses(per_example, self._bad_loss)
        self.driver.observe(self._batch, per_example)
        self._observed = True
        return (per_example * self._batch.weights.to(per_example.device)).mean()

    def step(self) -> List[dict]:
        """Count an optimizer step; refresh the engine when due. Returns the engine events of this
        step (also appended to :attr:`events`)."""
        if not self._observed and self.driver is not None and self.driver.policy.uses_training_losses:
            raise RuntimeError(f"strategy {self.info.name!r} learns from the training losses: compute the loss as "
                               "sb.loss(F.cross_entropy(logits, yb, reduction='none')) before step()")
        self.steps += 1
        events = [] if self.driver is None else self.driver.after_step(self.model, self.steps)
        return self._collect(events)

    def new_epoch(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """Close the current epoch and open the next; yields what the epoch left to train on (the
        last selection batch of a strategy that gathers its forwards, e.g. Stale-SB, and the
        remainder under ``end_of_epoch="partial"``). Call it, and exhaust it, at each epoch
        boundary the indices passed to :meth:`select` do not tell, and once after the last epoch."""
        if self.driver is None:
            return
        self._bad_loss = guard_training_losses(None, self._bad_loss)
        for batch in self.driver.end_epoch():
            yield from self._hand_out(batch)
        self._collect(self.driver.after_epoch(self.model, self.steps))
        self.driver.start_epoch(self.driver.epoch + 1)
        self._seen = None

    def close(self) -> None:
        """Release the engine."""
        if self.driver is not None:
            self.driver.close()

    def state_dict(self) -> Dict[str, Any]:
        """Everything needed to continue selection exactly (policy, buffered examples, counters)."""
        return {"strategy": self.info.name, "dataset_size": self.dataset_size, "steps": self.steps,
                "driver": None if self.driver is None else self.driver.state_dict(), "seen": self._seen}

    def load_state_dict(self, state: Dict[str, Any], sample: Tuple[torch.Tensor, torch.Tensor]) -> None:
        """Restore :meth:`state_dict`; ``sample`` is one candidate batch ``(x, y)`` to build the engine.
        A state from another strategy or dataset size is refused."""
        if not isinstance(state, dict) or not {"strategy", "dataset_size", "steps", "driver"} <= set(state):
            raise ValueError(f"not a SelectiveBackprop state dict (keys: {sorted(state) if isinstance(state, dict) else type(state).__name__}): "
                             "pass what SelectiveBackprop.state_dict() returned")
        for key, mine in (("strategy", self.info.name), ("dataset_size", self.dataset_size)):
            if state[key] != mine:
                raise ValueError(f"the state is from strategy/dataset {key}={state[key]!r}, this one has {mine!r}: "
                                 "resume with the settings it was saved with")
        driver = self.driver or self._setup(*sample)
        if state["driver"] is not None:
            driver.load_state_dict(state["driver"], sample[0].device)
        self.steps = int(state["steps"])
        self._seen = state["seen"]

    # --- helpers ------------------------------------------------------------------------------
    def _hand_out(self, batch: TrainBatch) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        self._batch, self._observed = batch, False
        yield batch.x, batch.y

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, stacklevel=3)

    def _collect(self, events: List[dict]) -> List[dict]:
        self.events.extend(events)
        return events

    def _starts_new_epoch(self, indices: torch.Tensor) -> bool:
        if self._seen is None:
            return False
        if self.dataset_size:
            return bool(self._seen[indices].any())
        return not self._seen.isdisjoint(indices.tolist())

    def _mark_seen(self, indices: torch.Tensor) -> None:
        if self.dataset_size:
            if int(indices.max()) >= self.dataset_size or int(indices.min()) < 0:
                raise ValueError(f"an index is outside [0, dataset_size={self.dataset_size})")
            if self._seen is None:
                self._seen = torch.zeros(self.dataset_size, dtype=torch.bool)
            self._seen[indices] = True
        else:
            if self._seen is None:
                self._seen = set()
            self._seen.update(indices.tolist())


def _check_batch(x: torch.Tensor, y: torch.Tensor, values: bool = True) -> None:
    """Shape and label errors named here rather than deep inside a forward pass."""
    if not torch.is_tensor(x) or not torch.is_tensor(y):
        raise TypeError(f"select(x, y) takes tensors, got {type(x).__name__} and {type(y).__name__}")
    if y.dim() != 1 or y.dtype.is_floating_point or y.dtype == torch.bool:
        raise ValueError(f"y must be a 1-D tensor of integer class indices, got shape {tuple(y.shape)} and "
                         f"dtype {y.dtype} (one-hot or soft labels: pass y.argmax(1))")
    if x.dim() < 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"x must hold one example per label along dim 0: x {tuple(x.shape)}, y {tuple(y.shape)}")
    if not x.dtype.is_floating_point:
        raise ValueError(f"x must be a floating-point tensor (normalised inputs), got {x.dtype}")
    if values and len(y) and int(y.min()) < 0:
        raise ValueError(f"labels must be class indices >= 0, got {int(y.min())}")
    if values and not bool(torch.isfinite(x).all()):
        raise ValueError("x holds NaN/inf inputs: clean or filter these examples in the data")
