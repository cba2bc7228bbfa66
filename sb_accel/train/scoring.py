"""Selection forwards and the policy's decision for a candidate batch: the functional core of the
selection driver.

:class:`SelectionForwards` is the one place selection forwards are run: the serial driver calls it
between training steps, the pipelined worker (:mod:`sb_accel.train.pipeline`) from its own thread,
and under DDP every rank calls it for its own candidates. It turns a candidate batch into a
:class:`ScoredBatch` (the parts that go to the policy's decision, in order); :func:`decide` is the
policy's decision on one part. :class:`~sb_accel.train.driver.SelectionDriver` adds the state
around them (batcher, lockstep, counters).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

import torch

from ..engines import SelectionEngine
from ..selection import BackpropBatcher, SelectionPolicy, TrainBatch
from ..transfer import to_device

__all__ = ["ScoredCandidates", "ScoredBatch", "Decision", "SelectionForwards", "decide", "rows_of"]


@dataclass
class ScoredCandidates:
    """Candidates with the selection losses the policy asked for."""

    x: torch.Tensor
    y: torch.Tensor
    indices: torch.Tensor
    losses: torch.Tensor    # float32 (any device), NaN where the policy asked for no fresh loss
    forwards: int           # selection-pass forwards run


@dataclass
class ScoredBatch:
    """What the selection forwards made of one candidate batch: ``parts`` go to the policy's decision
    in this order (one part when the policy asks for forwards on all candidates or none; see
    :class:`SelectionForwards` for the others). Serially ``parts`` is lazy, so a forward made after a
    training step runs on the engine as that step's refresh left it."""

    candidates: int                      # how many candidates the batch had
    parts: Iterable[ScoredCandidates]


@dataclass
class Decision:
    """What the policy decided for scored candidates."""

    keep: Optional[torch.Tensor]       # bool, one per candidate (on the policy's device); None: all kept
    weights: Optional[torch.Tensor]    # per-candidate loss weights, or None


class SelectionForwards:
    """Runs the selection forwards a policy asks for; candidates that need a forward on only part of
    a candidate batch are gathered into full selection batches.

    Per candidate batch the policy's ``requires_forward`` says which candidates need a fresh loss:

    * all of them: the batch is scored whole (its losses stay on the engine's device);
    * none: it comes out whole with NaN losses (no forward);
    * some (Stale-SB's examples with no loss yet): the candidates that need none come out at once
      (NaN losses: the policy reuses their cached ones) and the others wait in a selection batch
      of ``batch_size``, which is scored, and comes out, when it is full. So the engine never runs
      on a ragged or tiny batch and the selection cost scales with the forwards made. :meth:`flush`
      scores the last, smaller selection batch at the epoch's end.

    ``regroup=False`` (DDP): each candidate batch comes out whole, as one part. Every rank must make
    the same collective calls for each candidate batch (the loss-history gather needs equal sizes,
    the lockstep agreement one call per batch), while the number of candidates that need a forward
    differs from rank to rank; so the ones that do are this batch's own selection batch, scored at
    once and written back among the NaN losses of the others. Gathering them would cost one more
    collective and host read per candidate batch of such an epoch, for little: in a 2-rank Stale-SB
    run (``benchmarks/ddp_partial_forwards.py``) they were 2 to 13 rows per rank, all in epoch 1.

    Args:
        policy: the selection policy (only ``requires_forward`` is called here, which reads its state).
        engine: returns the engine to use now (a refresh or a fallback may swap it); None when the
            policy never asks for a forward.
        batch_size: the selection batch size for gathered forwards (0: the candidate batch size).
        regroup: gather partial forwards across candidate batches (False under DDP, see above).
    """

    def __init__(self, policy: SelectionPolicy, engine: Callable[[], Optional[SelectionEngine]], batch_size: int = 0,
                 regroup: bool = True) -> None:
        self.policy = policy
        self.engine = engine
        self.batch_size = batch_size
        self.regroup = regroup
        self._waiting: Optional[BackpropBatcher] = None  # candidates waiting for a forward (created lazily)

    def score(self, x: torch.Tensor, y: torch.Tensor, indices: torch.Tensor, epoch: int) -> Iterator[ScoredCandidates]:
        """The parts of candidate batch ``(x, y, indices)`` ready for the policy's decision (lazily:
        a waiting selection batch is scored only when the caller asks for the part it completes)."""
        need = self.policy.requires_forward(indices, epoch)
        if isinstance(need, bool):
            yield self._scored(x, y, indices, need)
            return
        wanted = need.nonzero().squeeze(1)  # the one read of the mask: which candidates need a forward
        if len(wanted) in (0, len(indices)):  # all or none: the mask is known now, not read again
            yield self._scored(x, y, indices, len(wanted) > 0)
            return
        if not self.regroup:
            losses = _nan_losses(len(indices), self.policy.device)
            on_x = to_device(wanted, x.device)
            losses[to_device(wanted, losses.device)] = self._losses(x[on_x], y[on_x]).to(losses.device)
            yield ScoredCandidates(x, y, indices, losses, len(wanted))
            return
        cached = torch.nonzero_static(~need, size=len(indices) - len(wanted)).squeeze(1)  # count known: no read
        yield ScoredCandidates(*rows_of(x, y, indices, cached), _nan_losses(len(cached), need.device), 0)
        if self._waiting is None:
            self._waiting = BackpropBatcher(self.batch_size or len(indices), "partial")
        for group in self._waiting.add_rows(*rows_of(x, y, indices, wanted), rows=None):
            yield self._scored(group.x, group.y, group.indices, True)

    def flush(self) -> Iterator[ScoredCandidates]:
        """The last, smaller selection batch of the epoch, scored (nothing if none waits)."""
        if self._waiting is not None:
            for group in self._waiting.end_epoch():
                yield self._scored(group.x, group.y, group.indices, True)

    def _scored(self, x: torch.Tensor, y: torch.Tensor, indices: torch.Tensor, forward: bool) -> ScoredCandidates:
        if not forward:
            return ScoredCandidates(x, y, indices, _nan_losses(len(indices), self.policy.device), 0)
        return ScoredCandidates(x, y, indices, self._losses(x, y), len(indices))

    def _losses(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        engine = self.engine()
        if engine is None:
            raise RuntimeError(f"{self.policy!r} asked for selection forwards but the driver has no engine")
        return engine.losses(x, y).float()

    def pending(self) -> int:
        """Candidates waiting for a forward."""
        return 0 if self._waiting is None else self._waiting.pending()

    def buffered(self) -> List[TrainBatch]:
        """The candidates waiting for a forward."""
        return [] if self._waiting is None else self._waiting.buffered()

    def state_dict(self) -> Dict[str, Any]:
        """The waiting candidates (empty at an epoch's end; mid-epoch only for the selecting loader)."""
        if not self.pending():
            return {}
        return {"batch_size": self._waiting.batch_size, **self._waiting.state_dict()}

    def load_state_dict(self, state: Dict[str, Any], device: torch.device | str = "cpu") -> None:
        self._waiting = None
        if state:
            self._waiting = BackpropBatcher(state["batch_size"], "partial")
            self._waiting.load_state_dict(state, device)


def _nan_losses(n: int, device: torch.device) -> torch.Tensor:
    """``n`` NaN losses: "no fresh loss" for candidates the policy asked no forward for."""
    return torch.full((n,), float("nan"), dtype=torch.float32, device=device)


def decide(policy: SelectionPolicy, scored: ScoredCandidates, epoch: int) -> Decision:
    """The policy's keep mask and loss weights for ``scored`` (no mask when the policy keeps every
    candidate of the epoch: nothing to read back from the device)."""
    keep = None if policy.keeps_all(epoch) else policy.select(scored.losses, scored.indices, epoch)
    return Decision(keep, policy.loss_weights(scored.indices, epoch))


def rows_of(x: torch.Tensor, y: torch.Tensor, indices: torch.Tensor,
            rows: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``x, y, indices`` restricted to ``rows`` (row numbers on any device)."""
    on_device = to_device(rows, x.device)
    return x[on_device], y[on_device], indices[to_device(rows, indices.device)]
