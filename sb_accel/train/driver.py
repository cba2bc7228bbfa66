"""The selection driver: the one place where selection happens (Selective-Backprop, Alg. 1).

One candidate batch, in the order the code runs it::

    candidates (x, y, indices)                        from the loader
      score(x, y, indices) -> ScoredBatch             SelectionForwards (scoring.py):
        policy.requires_forward                         which candidates need a selection pass
        engine.losses                                   their losses; a part of a candidate batch is
                                                        gathered into full selection batches
      submit(scored) -> training batches              for each part, in order:
        policy.select / loss_weights                    keep mask and per-example loss weights (decide)
        BackpropBatcher                                 full batches of exactly ``batch_size`` kept examples
        LockstepBatches (DDP)                           as many as every rank can train now
    train step on each batch (the caller), then
      observe(batch, losses)                          the training-forward losses -> policy.observe
      after_step(model, step)                         the engine refresh, when due

``train_batches(x, y, indices)`` is ``submit(score(x, y, indices))``; the pipelined Trainer calls
``score`` in its worker thread (:mod:`sb_accel.train.pipeline`) and ``submit`` in the main thread,
so a pipelined run groups candidates and consumes random draws as a serial one does (its forwards
may only run on an engine a refresh or two older).

:class:`SelectionDriver` holds the state around the functional core of :mod:`sb_accel.train.scoring`:
the policy's lifecycle (epoch start and end, observed training losses), the batcher, the engine
refresher and the counters. The Trainer, the drop-in API (:class:`sb_accel.SelectiveBackprop`), the
selecting loader and the benchmarks all use the driver, so a strategy behaves the same whichever
loop runs it.

Under DistributedDataParallel (``group`` given) the driver runs on every rank over that rank's
candidates and adds three things (docs/DISTRIBUTED.md): the SB loss history is global (every rank
all-gathers the candidates' losses into it, so all ranks score against one CDF), steps are taken in
lockstep (:class:`~sb_accel.train.lockstep.LockstepBatches`) and per-example tables are
synchronised at epoch ends (:class:`~sb_accel.train.tables.ExampleTables`).
"""
from __future__ import annotations

from typing import Any, Dict, Iterator, List, Optional

import torch
import torch.nn as nn

from ..engines import EngineRefresher, SelectionEngine
from ..selection import BackpropBatcher, SelectionPolicy, TrainBatch
from ..selection.batcher import kept_rows
from ..transfer import to_device
from .distributed import RankGroup
from .divergence import SelectionLossCheck
from .lockstep import LockstepBatches
from .scoring import ScoredBatch, ScoredCandidates, SelectionForwards, decide
from .tables import ExampleTables

__all__ = ["SelectionDriver"]


class SelectionDriver:
    """Candidates in, full backprop batches out, with the policy's lifecycle called in one place.

    Per epoch::

        driver.start_epoch(epoch)
        for x, y, idx in candidates:
            for batch in driver.train_batches(x, y, idx):   # = driver.submit(driver.score(x, y, idx))
                per_example = ...                       # the training forward on batch.x
                driver.observe(batch, per_example)      # before or after backward
                ...                                     # backward, optimizer step
                events = driver.after_step(model, step)
        for batch in driver.end_epoch():                # the remainder, per the end-of-epoch rule
            ...
        driver.finish_epoch()

    Args:
        policy: the selection policy (:func:`sb_accel.selection.create_strategy`).
        batch_size: training batch size (every backprop batch has exactly this many examples,
            except a ``"partial"`` end-of-epoch remainder).
        refresher: keeps the selection engine up to date with the training model; None for
            policies that never ask for a selection forward.
        end_of_epoch: ``"carry"``, ``"partial"`` or ``"drop"`` (see :class:`BackpropBatcher`; under
            DDP :class:`~sb_accel.train.lockstep.LockstepBatches`).
        num_epochs: length of the run in epochs, for policies that anneal (InfoBatch); None: unknown
            (InfoBatch then never anneals).
        group: the ranks under DistributedDataParallel (None: a single process). ``batch_size`` is
            then this rank's share of the global batch.
        dataset_size: number of training examples (needed with ``group``: the per-example tables).
        shared_history: with ``group``, score against the global loss history (all ranks' losses;
            default) rather than this rank's own (``False``: the ``"local"`` comparison setting).
        forward_batch_size: when a policy asks for selection forwards on only part of a candidate
            batch (Stale-SB: the examples with no loss yet), those candidates are gathered into
            selection batches of this size (0: the candidate batch size); the last, smaller one is
            scored at the epoch's end. Not under DDP (see :class:`SelectionForwards`).
        engine: the engine selection calls go to; default: the refresher's (which a refresh or a
            fallback may swap). The selecting loader passes one that scores rows of the user's
            stored batches (:class:`sb_accel.candidate_rows.StoredRowsEngine`).
    """

    def __init__(self, policy: SelectionPolicy, batch_size: int, refresher: Optional[EngineRefresher] = None, *,
                 end_of_epoch: str = "carry", num_epochs: Optional[int] = None, group: Optional[RankGroup] = None,
                 dataset_size: Optional[int] = None, shared_history: bool = True,
                 forward_batch_size: int = 0, engine: Optional[SelectionEngine] = None) -> None:
        if refresher is None and engine is None and policy.needs_selection_forward:
            raise ValueError(f"{policy!r} runs selection forwards: the driver needs an engine refresher")
        self.policy = policy
        self.refresher = refresher
        self._engine = engine
        self.batcher = BackpropBatcher(batch_size, end_of_epoch)
        self.scorer = SelectionForwards(policy, lambda: self.engine, forward_batch_size, regroup=group is None)
        self.lockstep: Optional[LockstepBatches] = None
        self.tables: Optional[ExampleTables] = None
        if group is not None:
            if dataset_size is None:
                raise ValueError("a distributed driver needs dataset_size (its per-example tables are global)")
            self.lockstep = LockstepBatches(group, end_of_epoch)
            self.tables = ExampleTables(policy, dataset_size, group) or None
            history = getattr(policy, "history", None)  # SB's and Stale-SB's LossHistory (through Primed too)
            if shared_history and history is not None:
                history.make_global(group.gather_losses)
        self._empty: Optional[TrainBatch] = None  # a zero-example batch, for lockstep partial steps
        self.selection_losses = SelectionLossCheck()  # NaN/inf among them, for every strategy alike
        self.num_epochs = num_epochs
        self.selecting = True  # whether the open epoch may run selection forwards (set at its start)
        self.epoch = 0
        self.epoch_open = False
        self.candidates = 0   # examples offered as candidates
        self.forwards = 0     # selection-pass forwards run
        self.kept = 0         # candidates the policy kept
        self.observed = 0     # training losses handed to the policy

    @property
    def engine(self) -> Optional[SelectionEngine]:
        """The engine serving selection now (a refresh or fallback may swap it)."""
        if self._engine is not None:
            return self._engine
        return None if self.refresher is None else self.refresher.engine

    @property
    def engine_name(self) -> Optional[str]:
        return None if self.refresher is None else self.refresher.engine.name

    def candidates_per_batch(self, epoch: Optional[int] = None) -> int:
        """Candidate-batch size the policy wants in ``epoch``, in training batches."""
        return self.policy.candidates_per_batch(self.epoch if epoch is None else epoch)

    # --- epoch lifecycle ----------------------------------------------------------------------
    def start_epoch(self, epoch: int) -> None:
        """Open ``epoch`` (an epoch still open is finished first)."""
        if self.epoch_open:
            self.finish_epoch()
        self.epoch = epoch
        self.epoch_open = True
        if self.tables is not None:
            self.tables.snapshot()
        self.policy.on_epoch_start(epoch, self.num_epochs)
        self.selecting = self.selects(epoch)  # asked once per epoch, not at every step

    def end_epoch(self) -> Iterator[TrainBatch]:
        """The remainder of kept examples as the end-of-epoch rule says (``"partial"``: one batch;
        under DDP as many lockstep steps as the rank with most left needs)."""
        for part in self.scorer.flush():  # the last, smaller selection batch of the epoch
            yield from self._submit_part(part)
        if self.lockstep is None:
            yield from self.batcher.end_epoch()
        else:
            yield from self.lockstep.end_epoch(self.batcher.end_epoch(), self._empty)

    def finish_epoch(self) -> None:
        """Close the epoch: the deferred NaN check of the selection losses, the policy's
        ``on_epoch_end``; under DDP the tables' synchronisation."""
        if self.epoch_open:
            self.selection_losses.check()
            self.policy.on_epoch_end(self.epoch)
            if self.tables is not None:
                self.tables.sync()
            self.epoch_open = False

    def pending(self) -> int:
        """Kept examples not trained on yet (the batcher's remainder, and under DDP the full local
        batches waiting for the other ranks)."""
        return self.batcher.pending() + (0 if self.lockstep is None else self.lockstep.pending())

    def buffered(self) -> List[TrainBatch]:
        """Every kept or candidate example the driver holds and has not handed out yet."""
        held = self.batcher.buffered() + self.scorer.buffered()
        return held + ([] if self.lockstep is None else self.lockstep.buffered())

    @property
    def dropped(self) -> int:
        """Kept examples discarded by the ``"drop"`` end-of-epoch rule."""
        return self.batcher.dropped + (0 if self.lockstep is None else self.lockstep.dropped)

    # --- one candidate batch ------------------------------------------------------------------
    def score(self, x: torch.Tensor, y: torch.Tensor, indices: torch.Tensor) -> ScoredBatch:
        """The selection forwards of candidate batch ``(x, y, indices)`` (lazily: see :class:`ScoredBatch`)."""
        indices = to_device(indices, self.policy.device)
        return ScoredBatch(len(indices), self.scorer.score(x, y, indices, self.epoch))

    def submit(self, scored: ScoredBatch) -> Iterator[TrainBatch]:
        """Let the policy decide on each part of ``scored``; yield every full training batch now ready."""
        for part in scored.parts:
            yield from self._submit_part(part)

    def train_batches(self, x: torch.Tensor, y: torch.Tensor, indices: torch.Tensor) -> Iterator[TrainBatch]:
        """Candidates in, the full training batches of kept examples now ready out:
        :meth:`score` then :meth:`submit`."""
        yield from self.submit(self.score(x, y, indices))

    def _submit_part(self, scored: ScoredCandidates) -> Iterator[TrainBatch]:
        # indices where the policy's tables are: the batcher then never indexes host indices with device rows
        scored.indices = to_device(scored.indices, self.policy.device)
        self.selection_losses.update(scored.losses, scored.forwards)
        decision = decide(self.policy, scored, self.epoch)
        # how many were kept decides whether a step is due: the one host read per candidate batch
        rows = None if decision.keep is None else kept_rows(decision.keep)
        self.candidates += len(scored.indices)
        self.forwards += scored.forwards
        self.kept += len(scored.indices) if rows is None else len(rows)
        batches = self.batcher.add_rows(scored.x, scored.y, scored.indices, rows, decision.weights)
        if self.lockstep is None:
            yield from batches
        else:
            if self._empty is None:
                self._empty = TrainBatch(scored.x[:0].clone(), scored.y[:0].clone(), scored.indices[:0].clone(),
                                         torch.ones(0))
            yield from self.lockstep.offer(batches)

    def observe(self, batch: TrainBatch, losses: torch.Tensor) -> None:
        """Hand the training-forward losses of ``batch`` to the policy."""
        if losses.shape != (len(batch),):
            raise ValueError(f"observe() needs one training loss per example of the batch ({len(batch)}), "
                             f"got shape {tuple(losses.shape)}; compute them with reduction='none'")
        self.policy.observe(batch.indices, losses.detach(), self.epoch)
        self.observed += len(batch)

    # --- engine -------------------------------------------------------------------------------
    def after_step(self, model: nn.Module, step: int) -> List[dict]:
        """Refresh the engine if due after optimizer step ``step`` and selection runs in this epoch;
        returns the RunLog events."""
        if self.refresher is None:
            return []
        return self.refresher.after_step(model, step, selecting=self.selecting)

    def after_epoch(self, model: nn.Module, step: int) -> List[dict]:
        """Epoch-end engine refresh if due and a next epoch selects; returns the RunLog events."""
        if self.refresher is None:
            return []
        last = self.num_epochs is not None and self.epoch + 1 >= self.num_epochs
        return self.refresher.after_epoch(model, step, selecting=not last and self.selects(self.epoch + 1))

    def selects(self, epoch: int) -> bool:
        """Whether the policy may ask for selection forwards in ``epoch`` (False while priming): its
        ``requires_forward`` on no candidates is a plain ``False`` exactly when it asks for none."""
        no_candidates = torch.empty(0, dtype=torch.long, device=self.policy.device)
        return self.policy.requires_forward(no_candidates, epoch) is not False

    def staleness(self, step: int) -> int:
        """Optimizer steps the engine's weights are behind the model (0 without an engine)."""
        return 0 if self.refresher is None else self.refresher.staleness(step)

    def close(self) -> None:
        if self.refresher is not None:
            self.refresher.close()

    # --- checkpoint ---------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        state = {"policy": self.policy.state_dict(), "batcher": self.batcher.state_dict(), "epoch": self.epoch,
                 "epoch_open": self.epoch_open,
                 "counters": {"candidates": self.candidates, "forwards": self.forwards, "kept": self.kept,
                              "observed": self.observed}}
        if self.lockstep is not None:
            state["lockstep"] = self.lockstep.state_dict()
        waiting = self.scorer.state_dict()
        if waiting:  # mid-epoch (the selecting loader)
            state["awaiting"] = waiting
        return state

    def load_state_dict(self, state: Dict[str, Any], device: torch.device | str = "cpu") -> None:
        policy_state = state["policy"]
        if set(policy_state) == {"epochs", "policy"}:  # a primed policy's checkpoint written before 2026-12-03
            policy_state = policy_state["policy"]
        self.policy.load_state_dict(policy_state)
        self.batcher.load_state_dict(state["batcher"], device)
        if self.lockstep is not None and "lockstep" in state:
            self.lockstep.load_state_dict(state["lockstep"], device)
        if "awaiting" in state:
            self.scorer.load_state_dict(state["awaiting"], device)
        self.epoch = int(state["epoch"])
        self.epoch_open = bool(state["epoch_open"])
        self.selecting = self.selects(self.epoch)
        for key, value in state["counters"].items():
            setattr(self, key, int(value))

