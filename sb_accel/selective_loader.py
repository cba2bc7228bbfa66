"""The selecting loader: Selective-Backprop (or any registered strategy) in the user's own loop.

>>> loader = SelectiveLoader(train_set, model, batch_size=128, selectivity=0.33)   # doctest: +SKIP
>>> sched = OneCycleLR(opt, max_lr=0.1, total_steps=len(loader) * epochs)          # doctest: +SKIP
>>> for epoch in range(epochs):                                                  # doctest: +SKIP
...     for x, y in loader:                        # kept examples only, the user's batch structure
...         loss = loader.loss(F.cross_entropy(model(x), y, reduction="none"))
...         opt.zero_grad(); loss.backward(); opt.step(); sched.step()

**How an epoch works.** The loader draws its own per-epoch order of the dataset (so it knows every
example's dataset index; the Dataset is not changed), loads candidate batches through a DataLoader
(the user's ``collate_fn``, workers and pinning), scores them with selection forwards and yields full
training batches of kept examples, one optimizer step each.

**Steps per epoch, fixed in advance and honoured exactly.** ``len(loader)`` is fixed before an epoch
starts: ``round((kept examples carried over + expected kept share x candidates left in this pass) /
batch_size)``, at least 1 (the expected share: :func:`~sb_accel.selection.expected_share.expected_share`,
1.0 in priming epochs). The epoch then yields exactly that many batches: candidates are drawn until
they are filled. The candidates form one endless stream of passes (every example once per pass, in a
fresh order): when chance kept fewer examples than expected the last steps borrow the first
candidates of the next pass; when it kept more, the surplus is carried into the next epoch. Because
each epoch's plan counts what was carried and what is left of its pass, epochs and passes never
drift apart by more than about a batch of kept examples. What is left after the last epoch is the
untrained remainder (``stats()["untrained_remainder"]``, fewer than about a batch).

**DDP.** Under an initialised process group each rank draws its shard of one shared order (equal
shards), scores against the global loss history, and trains in lockstep: every rank yields the same
number of batches (``len()`` is agreed with one all-reduce between epochs), so no rank waits for a
step another will not take. ``batch_size`` is per rank, as with a DataLoader.
"""
from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Mapping
from typing import Any, Deque, Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, default_collate

from .adapters import Forward, LossFn, default_forward, logits_of, per_example_loss
from .candidate_rows import CandidateRows, StoredRowsEngine, batch_state, remap_row_ids
from .data.batch_structure import Batch, move, num_rows
from .data.sampler import DistributedEpochSampler
from .engines import EngineContext, EngineError, EngineRefresher, default_schedule, parse_engine_spec
from .engines.torch_backend import eval_mode
from .loader_checks import api_nonfinite_message, check_candidates, guard_training_losses, layout_error, unpack_data
from .selection import DEFAULTS, StrategyOptions, TrainBatch, create_strategy, strategy_info
from .selection.expected_share import expected_share
from .train.candidates import loss_history_size, selection_call_size
from .train.distributed import RankGroup
from .train.driver import SelectionDriver
from .train.selector import resolve_engine

__all__ = ["SelectiveLoader", "HOOKED_BACKENDS", "REFRESH_BUDGET", "STATE_FORMAT", "MAX_DRY_PASSES"]

HOOKED_BACKENDS = ("torch", "torch-graph")  # engines that run any forward and loss_fn (a per-example loss hook)
# Snapshot engines (ONNX Runtime, TensorRT, torch snapshot) are refreshed every K steps, K the smallest that
# keeps refreshing under this share of the training step's time (measured: the first refresh and steps).
REFRESH_BUDGET = 0.05
STATE_FORMAT = "sb_accel.SelectiveLoader/1"
# Passes in a row that may go by without one training batch before the loader gives up (under DDP
# lockstep steps wait for the rank that keeps least, which may need several passes per step).
MAX_DRY_PASSES = 8


class SelectiveLoader:
    """Iterate kept examples of ``data`` as full training batches, one optimizer step each.

    Args:
        data: a map-style ``Dataset``, or a ``DataLoader`` whose dataset, batch size, ``collate_fn``,
            workers and pinning are reused (its sampler's order is replaced by the loader's own
            shuffled order; a sampler with replacement is refused).
        model: the training model (selection forwards run on it, or on an engine built from it).
        batch_size: training batch size per rank (default: the DataLoader's).
        selectivity: SB's expected kept fraction (``beta = 1/s - 1``).
        strategy: ``"sb"`` (default), ``"stale-sb"``, ``"kath18"`` (fed 3x candidates by the
            loader), ``"infobatch"`` (needs ``epochs``), ``"traditional"``.
        engine: ``"auto"`` (default: torch-graph-fp16 on CUDA for (inputs, labels) batches, else
            torch-fp16 on CUDA, torch-fp32 on the CPU) or an engine spec (``"torch-bf16"``,
            ``"onnxruntime-int8"``...).
        loss_fn: ``loss_fn(output, batch) -> (N,)`` per-example losses for selection forwards
            (default :func:`sb_accel.per_example_loss`: cross-entropy on ``batch[1]`` /
            ``batch["labels"]``, per sequence for token logits).
        forward: ``forward(model, batch) -> output`` (default :func:`sb_accel.adapters.default_forward`).
        epochs: planned epochs (InfoBatch anneals over them; without it ``len()`` still works).
        device: where yielded batches live (default: the model's device).
        shuffle: draw a fresh random order each pass (default: True, or the DataLoader's choice).
        selection_batch_size: candidates per selection call (default: 1024 on CUDA for per-example
            policies, else ``batch_size`` x the policy's pre-sample factor).
        refresh_every: refresh a snapshot engine every this many steps (default ``None``: the
            smallest cadence keeping refreshes under :data:`REFRESH_BUDGET` of the step time).
            Live engines (torch, torch-graph) read the training model and never refresh.
        seed: seed of the order and of the strategy's random draws.
        **options: strategy knobs (:class:`~sb_accel.selection.StrategyOptions`: ``history``,
            ``stale_n``, ``prime_epochs``...). SB and Stale-SB train on everything in their first
            epoch unless ``prime_epochs=0``.
    """

    def __init__(self, data: Dataset | DataLoader, model: nn.Module, *, batch_size: Optional[int] = None,
                 selectivity: float = DEFAULTS.selectivity, strategy: str = "sb", engine: str = "auto",
                 loss_fn: Optional[LossFn] = None, forward: Optional[Forward] = None, epochs: Optional[int] = None,
                 device: Optional[torch.device | str] = None, shuffle: Optional[bool] = None,
                 selection_batch_size: Optional[int] = None, refresh_every: Optional[int] = None,
                 seed: int = 0, **options: Any) -> None:
        unknown = sorted(set(options) - set(StrategyOptions.__dataclass_fields__) - {"seed"})
        if unknown:
            raise TypeError(f"unknown option(s) {unknown}; strategy options are "
                            f"{', '.join(StrategyOptions.__dataclass_fields__)}")
        self.info = strategy_info(strategy)
        if self.info.name == "infobatch" and epochs is None:
            raise ValueError("strategy 'infobatch' trains on everything in its last 12.5% of epochs: pass epochs= "
                             "(the planned number of epochs), or it never anneals")
        if epochs is not None and epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")
        self.dataset, loader_batch, self._loading, default_shuffle = unpack_data(data)
        batch_size = loader_batch if batch_size is None else batch_size
        if batch_size is None:
            raise ValueError("pass batch_size= (the training batch size): the DataLoader has none")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.batch_size = batch_size
        self.shuffle = default_shuffle if shuffle is None else shuffle
        # selection forwards run on the module itself: through a DDP wrapper each would broadcast buffers
        self.model = model.module if isinstance(model, DistributedDataParallel) else model
        self.device = torch.device(device) if device is not None else _model_device(self.model)
        self.epochs = epochs
        self.seed = seed
        self._custom = loss_fn is not None or forward is not None
        self.loss_fn: LossFn = loss_fn or per_example_loss
        self.forward: Forward = forward or default_forward
        if refresh_every is not None and refresh_every < 0:
            raise ValueError(f"refresh_every must be >= 0, got {refresh_every}")
        self._refresh_every = refresh_every
        self.group = RankGroup.joined(self.device)
        world = 1 if self.group is None else self.group.world_size
        rank = 0 if self.group is None else self.group.rank
        self.dataset_size = len(self.dataset)
        if self.dataset_size < world * batch_size:
            raise ValueError(f"the dataset has {self.dataset_size} examples, fewer than one batch of {batch_size} "
                             f"per rank on {world} rank(s): use a smaller batch_size")
        self._order = DistributedEpochSampler(self.dataset_size, world, rank, seed=seed, shuffle=self.shuffle)
        self._selection_batch = selection_batch_size
        # R (0: automatic) must exceed a selection call (all ranks'), or the CDF covers only that batch
        options["history"] = loss_history_size(int(options.get("history", 0)), self._call_size(1) * world)
        self.policy = create_strategy(self.info.name, StrategyOptions(selectivity=selectivity, seed=seed, **options),
                                      batch_size=batch_size, dataset_size=self.dataset_size).to(self.device)
        self.rows = CandidateRows()
        sample = self._fetch(torch.arange(min(batch_size, self.dataset_size)))
        self.num_classes = self._check_sample(sample)
        self.refresher = self._build_engine(engine, sample) if self.policy.needs_selection_forward else None
        rows_engine = (None if self.refresher is None else
                       StoredRowsEngine(self.rows, self.refresher, self.forward, self.loss_fn))
        self.driver = SelectionDriver(self.policy, batch_size, self.refresher, end_of_epoch="carry",
                                      num_epochs=epochs, group=self.group, dataset_size=self.dataset_size,
                                      engine=rows_engine)
        self.events: List[dict] = [] if self.refresher is None else self.refresher.after_step(self.model, 0)
        self._ready: Deque[TrainBatch] = deque()  # full batches selected, not yet handed out
        self._kept_window: Deque[Tuple[int, int]] = deque()  # (candidates, kept) of recent selecting batches
        self._selecting = [0, 0]  # candidates and kept in selecting passes (not priming or annealing)
        self._pass = -1                             # the pass (the driver's epoch) candidates come from
        self._pass_order: Optional[torch.Tensor] = None
        self._cursor = 0                            # candidates of the pass consumed
        self._candidates: Optional[Iterator[Tuple[torch.Tensor, Batch]]] = None
        self.epoch = 0                              # epochs completed
        self.steps = 0                              # batches handed out (optimizer steps), all epochs
        self._plan: Optional[int] = None            # len() of the current epoch, once fixed
        self._run_steps: Optional[int] = None       # len() of each of the planned epochs
        self._current: Optional[TrainBatch] = None
        self._observed = True
        self._iterating = False
        self._dry_passes = 0                        # passes opened since the last batch was handed out
        self._bad_loss: Optional[torch.Tensor] = None  # device-side flag of non-finite training losses
        self._seconds = {"selection": 0.0, "refresh": 0.0, "training": 0.0}
        self._refresh_seconds: Optional[float] = None
        self._since_refresh = 0

    # --- set-up -------------------------------------------------------------------------------
    def _fetch(self, indices: torch.Tensor) -> Batch:
        """One collated batch of ``indices`` (in this process), on the loader's device."""
        collate = self._loading.get("collate_fn") or default_collate
        return move(collate([self.dataset[i] for i in indices.tolist()]), self.device)

    def _check_sample(self, sample: Batch) -> Optional[int]:
        """Run the forward and the loss on a first batch, so a wrong layout or label fails here, named;
        returns the number of classes when the default loss reads logits (None otherwise)."""
        num_rows(sample)
        try:
            with torch.no_grad(), eval_mode(self.model):
                output = self.forward(self.model, sample)
                losses = self.loss_fn(output, sample)
        except RuntimeError as exc:
            raise layout_error(sample, exc) from exc
        if not torch.is_tensor(losses) or losses.shape != (num_rows(sample),):
            raise ValueError(f"loss_fn must return one loss per example, shape ({num_rows(sample)},), got "
                             f"{tuple(losses.shape) if torch.is_tensor(losses) else type(losses).__name__}")
        if self.loss_fn is not per_example_loss:
            return None
        return int(logits_of(output).shape[-1])

    def _build_engine(self, engine: str, sample: Batch) -> EngineRefresher:
        backend, precision = (_auto_engine(self.device, self._plain(sample)) if engine == "auto"
                              else parse_engine_spec(engine))
        if backend not in HOOKED_BACKENDS and not self._plain(sample):
            raise EngineError(f"engine {backend}-{precision} exports the model with a cross-entropy head, so it takes "
                              "(inputs, labels) batches with integer class labels and the default loss; for this "
                              f"batch, forward or loss_fn use one of the torch engines: {', '.join(HOOKED_BACKENDS)} "
                              "(e.g. engine='torch-fp32', or 'torch-graph-fp16' on CUDA)")
        calls = self._call_size(max(1, self.policy.candidate_multiplier))
        samples = [(sample[0], sample[1])] if self._plain(sample) else []
        context = EngineContext(device=self.device, sample_batches=samples, max_batch=calls)
        # the loader decides when to refresh (_cadence); the schedule itself never fires. Eager torch
        # runs the model itself: nothing to validate against it.
        return EngineRefresher.create(backend, self.model, context, default_schedule(backend, self.device.type, 0, False),
                                      precision=precision, validate=bool(samples) and backend != "torch")

    def _plain(self, batch: Batch) -> bool:
        """An ``(inputs, labels)`` batch of tensors scored with the default forward and loss: what an
        exported engine (ONNX Runtime, TensorRT, torch-graph's captured graph) can take."""
        return (not self._custom and isinstance(batch, (tuple, list)) and len(batch) == 2
                and all(torch.is_tensor(t) for t in batch) and batch[1].dim() == 1
                and not batch[1].dtype.is_floating_point and batch[0].dtype.is_floating_point)

    def _call_size(self, multiplier: int) -> int:
        if self._selection_batch:
            return self._selection_batch
        world = 1 if self.group is None else self.group.world_size
        return selection_call_size(self.batch_size, multiplier, self.device, world)

    # --- length -------------------------------------------------------------------------------
    def __len__(self) -> int:
        """Optimizer steps of the current (or next) epoch: fixed before it starts, honoured exactly;
        with ``epochs`` the same for each of them (``len(loader) * epochs`` is the run's step count)."""
        if self.epochs is not None and self.epoch < self.epochs:
            if self._run_steps is None:  # fixed once: InfoBatch's nominal share moves with its scores
                self._run_steps = self._run_plan()
            return self._run_steps
        if self._plan is None:  # before the first epoch every rank computes the same number alone
            self._plan = self._plan_epoch(agree=False)
        return self._plan

    def _run_plan(self) -> int:
        """Steps per epoch of a run of ``epochs``: the expected kept examples of ``epochs`` passes at
        the strategy's nominal shares (priming passes whole), over ``epochs x batch_size``, >= 1. Every
        rank computes the same number (equal shards, no measurement)."""
        kept = sum(expected_share(self.policy, p, self.epochs) for p in range(self.epochs)) * len(self._order)
        return max(1, int(round(kept / (self.epochs * self.batch_size))))

    def _plan_epoch(self, agree: bool) -> int:
        """Past the planned ``epochs`` (or without them): ``round(expected kept examples up to the end of
        this epoch's pass / batch_size)``, >= 1, so epochs and passes re-align; with ``agree`` under DDP
        the smallest over the ranks (lockstep steps wait for the rank that keeps least; one all-reduce,
        made by every rank at the end of the previous epoch)."""
        passes = range(max(self._pass, 0), self.epoch + 1)
        expected = float(self.pending())
        for p in passes:
            left = len(self._order) - (self._cursor if p == self._pass else 0)
            expected += left * self._share(p)
        if agree and self.group is not None:
            expected = self.group.min_int(int(round(expected)))
        return max(1, int(round(expected / self.batch_size)))

    def _nominal(self, p: int) -> float:
        return expected_share(self.policy, p, self.epochs if self.epochs is not None else p + 1)

    def _share(self, p: int) -> float:
        """The kept share expected in pass ``p``: 1.0 where the strategy trains on everything (priming,
        InfoBatch's annealing), else the share measured over the last pass's worth of selecting
        candidates (SB keeps less than ``selectivity`` while the loss falls fast: its percentiles
        are taken against older, higher losses), else the strategy's nominal share."""
        nominal = self._nominal(p)
        if nominal >= 1.0 or not self._kept_window:
            return nominal
        candidates = sum(n for n, _ in self._kept_window)
        return sum(k for _, k in self._kept_window) / candidates

    def pending(self) -> int:
        """Kept examples selected but not trained on yet (carried into the next epoch)."""
        return self.driver.pending() + sum(len(b) for b in self._ready)

    # --- the loop -----------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Batch]:
        if self._iterating:
            raise RuntimeError("the SelectiveLoader is already being iterated: one epoch at a time")
        steps = len(self)
        self._iterating = True
        handed = 0
        try:
            while handed < steps:
                if not self._ready:
                    self._advance(steps - handed)
                    continue
                batch = self._ready.popleft()
                user = self.rows.gather(batch.x)
                self._current, self._observed, self._dry_passes = batch, False, 0
                left_at = time.perf_counter()
                yield user
                self._seconds["training"] += time.perf_counter() - left_at
                handed += 1
                self._after_step()
            self._close_epoch()
        finally:
            self._iterating = False

    def _advance(self, wanted: int) -> None:
        """One more candidate batch through selection (or the pass boundary when its pass is done)."""
        start = time.perf_counter()
        try:
            if self._candidates is None:
                self._open_pass(wanted)
                return
            item = next(self._candidates, None)
            if item is None:
                self._candidates = None
                self._ready.extend(self.driver.end_epoch())  # Stale-SB's last, smaller selection batch
                self.driver.finish_epoch()
                self.events += self.driver.after_epoch(self.model, self.steps)
                return
            indices, batch = item
            self._cursor += len(indices)
            check_candidates(batch, indices, self.num_classes)
            ids = self.rows.add(move(batch, self.device))
            kept = self.driver.kept
            self._ready.extend(self.driver.train_batches(ids, ids, indices))
            self._measure(len(indices), self.driver.kept - kept)
            self.rows.release([b.x for b in self.driver.buffered()] + [b.x for b in self._ready])
        except FloatingPointError as exc:
            raise FloatingPointError(api_nonfinite_message(exc)) from exc
        finally:
            self._seconds["selection"] += time.perf_counter() - start

    def _measure(self, candidates: int, kept: int) -> None:
        """Remember a selecting candidate batch's kept count (the last pass's worth of them)."""
        if self._nominal(self._pass) >= 1.0:
            return
        self._kept_window.append((candidates, kept))
        self._selecting[0] += candidates
        self._selecting[1] += kept
        while sum(n for n, _ in self._kept_window) - self._kept_window[0][0] >= len(self._order):
            self._kept_window.popleft()

    def _open_pass(self, wanted: int) -> None:
        if self._pass_order is not None and self._cursor < len(self._pass_order):
            order = self._pass_order  # resuming inside a pass
        else:
            if self._dry_passes >= MAX_DRY_PASSES:  # the same count on every rank: all raise together
                raise RuntimeError(f"{MAX_DRY_PASSES} passes over the data kept too few examples for one more step: "
                                   f"the strategy keeps almost nothing (stats: {self.stats()})")
            self._dry_passes += 1
            self._pass += 1
            self._cursor = 0
            order = self._pass_order = self._order.epoch()
            self.driver.start_epoch(self._pass)
        size = self._call_size(self.policy.candidates_per_batch(self._pass))
        self._candidates = self._batches(order[self._cursor:], size)

    def _batches(self, order: torch.Tensor, size: int) -> Iterator[Tuple[torch.Tensor, Batch]]:
        """``(dataset indices, collated batch)`` of ``order`` in chunks of ``size``, through a DataLoader."""
        chunks = list(order.split(size))
        # own generator: without one a DataLoader seeds from the global RNG (shifting the user's dropout)
        loading = {"generator": torch.Generator().manual_seed(self.seed * 1_000_003 + self._pass), **self._loading}
        loader = DataLoader(self.dataset, batch_sampler=[c.tolist() for c in chunks], **loading)
        return zip(chunks, loader)

    def loss(self, per_example: torch.Tensor) -> torch.Tensor:
        """The training loss of the batch just yielded: its per-example losses (``reduction="none"``)
        weighted as the strategy asks (InfoBatch rescales), averaged. The losses also reach the
        strategy (Stale-SB and InfoBatch learn from them); non-finite ones are refused (on a GPU at
        the epoch's end, without a per-step host sync)."""
        if self._current is None:
            raise RuntimeError("loss() comes after the loader has yielded a batch")
        if per_example.shape != (len(self._current),):
            raise ValueError(f"loss() needs one loss per example of the batch ({len(self._current)}), got shape "
                             f"{tuple(per_example.shape)}: compute it with reduction='none'")
        if self.driver.policy.uses_training_losses:  # only what a strategy stores needs guarding
            self._bad_loss = guard_training_losses(per_example, self._bad_loss)
        self.driver.observe(self._current, per_example)
        self._observed = True
        return (per_example * self._current.weights.to(per_example.device, per_example.dtype)).mean()

    def _after_step(self) -> None:
        if not self._observed and self.policy.uses_training_losses:
            raise RuntimeError(f"strategy {self.info.name!r} learns from the training losses: compute the loss as "
                               "loader.loss(F.cross_entropy(output, y, reduction='none')) for every batch")
        self.steps += 1
        if self.refresher is None or self.refresher.engine.is_live:
            return
        self._since_refresh += 1
        start = time.perf_counter()
        # through the refresher's rule: none while the pass does not select, made up before it does
        events = self.refresher.refresh_if_due(self.model, self.steps, self._since_refresh >= self._cadence(),
                                               "steps", self.driver.selecting)
        if events:
            self.events, seconds, self._since_refresh = self.events + events, time.perf_counter() - start, 0
            self._seconds["refresh"] += seconds
            self._refresh_seconds = seconds if self._refresh_seconds is None else self._refresh_seconds

    def _cadence(self) -> int:
        """Steps between refreshes of a snapshot engine: ``refresh_every``, or the smallest K with
        ``refresh seconds <= REFRESH_BUDGET x K x training step seconds`` (1 until both are measured)."""
        if self._refresh_every is not None:
            return self._refresh_every or 10 ** 18
        if self._refresh_seconds is None or not self.steps:
            return 1
        step = self._seconds["training"] / self.steps
        return max(1, math.ceil(self._refresh_seconds / (REFRESH_BUDGET * max(step, 1e-9))))

    def _close_epoch(self) -> None:
        self._bad_loss = guard_training_losses(None, self._bad_loss)
        self.epoch += 1
        # every rank is here: the one point where the next plan may all-reduce
        self._plan = self._plan_epoch(agree=True)

    # --- reporting ----------------------------------------------------------------------------
    def stats(self) -> Dict[str, Any]:
        """Kept share (all candidates, and ``kept_share_selecting``: in passes where the strategy
        selects, i.e. after priming), time shares (host wall-clock: selection incl. loading, refresh,
        the user's training step), untrained remainder (kept, not trained yet), candidates of the
        current pass not offered yet, steps, epochs and passes so far."""
        d = self.driver
        total = sum(self._seconds.values()) or 1.0
        return {"epoch": self.epoch, "steps": self.steps, "passes": self._pass + 1,
                "candidates": d.candidates, "kept": d.kept, "kept_share": d.kept / d.candidates if d.candidates else 0.0,
                "kept_share_selecting": self._selecting[1] / self._selecting[0] if self._selecting[0] else None,
                "forwards": d.forwards, "untrained_remainder": self.pending(),
                "pass_candidates_left": 0 if self._pass_order is None else len(self._pass_order) - self._cursor,
                "engine": None if self.refresher is None else self.refresher.engine.name,
                "refreshes": 0 if self.refresher is None else self.refresher.count,
                "refresh_every": None if self.refresher is None or self.refresher.engine.is_live else self._cadence(),
                **{f"{k}_seconds": v for k, v in self._seconds.items()},
                **{f"{k}_share": v / total for k, v in self._seconds.items()}}

    def close(self) -> None:
        """Release the engine."""
        self.driver.close()

    # --- checkpoint ---------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """Everything to continue exactly (between epochs): the order, the policy, the kept examples
        carried over (their data, on the CPU) and the counters."""
        if self._iterating:
            raise RuntimeError("state_dict() is taken between epochs, not while the loader is iterated")
        held = [b.x for b in self.driver.buffered()] + [b.x for b in self._ready]
        live = torch.unique(torch.cat(held)) if held else torch.zeros(0, dtype=torch.long)
        rows = None if not len(live) else move(self.rows.gather(live), "cpu")
        return {"format": STATE_FORMAT, "strategy": self.info.name, "dataset_size": self.dataset_size,
                "batch_size": self.batch_size, "world_size": 1 if self.group is None else self.group.world_size,
                "epoch": self.epoch, "steps": self.steps, "pass": self._pass, "cursor": self._cursor,
                "pass_order": self._pass_order, "order": self._order.state_dict(), "plan": self._plan,
                "run_steps": self._run_steps,
                "driver": self.driver.state_dict(), "ready": [batch_state(b) for b in self._ready],
                "row_ids": live, "rows": rows, "seconds": dict(self._seconds), "kept_window": list(self._kept_window),
                "selecting": list(self._selecting)}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (refused, named, when it is from another strategy, dataset or setup)."""
        if not isinstance(state, Mapping) or state.get("format") != STATE_FORMAT:
            found = sorted(state)[:6] if isinstance(state, Mapping) else type(state).__name__
            raise ValueError(f"not a SelectiveLoader state dict (found {found}): pass what "
                             "SelectiveLoader.state_dict() returned")
        world = 1 if self.group is None else self.group.world_size
        for key, mine in (("strategy", self.info.name), ("dataset_size", self.dataset_size),
                          ("batch_size", self.batch_size), ("world_size", world)):
            if state[key] != mine:
                raise ValueError(f"the state is from a loader with {key}={state[key]!r}, this one has {mine!r}: "
                                 "resume with the settings it was saved with")
        if self._iterating:
            raise RuntimeError("load_state_dict() is called between epochs, not while the loader is iterated")
        def remap(ids: torch.Tensor) -> torch.Tensor:  # saved row ids -> their rows in the one restored batch
            return torch.searchsorted(state["row_ids"], ids)

        self.rows.clear()
        if state["rows"] is not None:
            self.rows.add(move(state["rows"], self.device))
        self.driver.load_state_dict(remap_row_ids(state["driver"], remap), self.device)
        self._ready = deque(TrainBatch(remap(b["x"]), remap(b["y"]), b["indices"].to(self.policy.device),
                                       b["weights"].to(self.policy.device)) for b in state["ready"])
        self._order.load_state_dict(state["order"])
        self.epoch, self.steps, self._pass, self._cursor = (int(state[k]) for k in ("epoch", "steps", "pass", "cursor"))
        self._pass_order, self._plan, self._candidates = state["pass_order"], state["plan"], None
        self._run_steps = state["run_steps"]
        self._seconds.update(state["seconds"])
        self._kept_window = deque(tuple(w) for w in state["kept_window"])
        self._selecting = list(state["selecting"])


def _model_device(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def _auto_engine(device: torch.device, plain: bool) -> Tuple[str, str]:
    """The Trainer's ``auto`` engine; on CUDA a batch structure or loss torch-graph cannot capture runs
    eager torch in FP16."""
    backend, precision = resolve_engine("auto", "auto", device)
    if backend == "torch-graph" and not plain:
        return "torch", "fp16"
    return backend, precision
