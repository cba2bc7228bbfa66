"""The interface every selection policy implements, and the priming wrapper.

A policy sees per-example losses and dataset indices and answers which candidates to backprop.
It knows nothing about engines, devices or models, so it is tested exactly on CPU tensors.
"""
from __future__ import annotations

from abc import ABC
from typing import Dict, Optional, Union

import torch

__all__ = ["SelectionPolicy", "Primed", "ForwardMask", "generator_on"]

# What ``requires_forward`` answers: a bool mask over the candidates, or a plain ``True`` / ``False``
# for "all of them" / "none", which a caller can act on without reading a device tensor.
ForwardMask = Union[bool, torch.Tensor]


def generator_on(generator: torch.Generator, device: torch.device, seed: int) -> torch.Generator:
    """``generator`` if it is on ``device``, else a new one there seeded with ``seed`` (a generator
    cannot move between devices; see :meth:`SelectionPolicy.to`)."""
    return generator if generator.device == device else torch.Generator(device).manual_seed(seed)


class SelectionPolicy(ABC):
    """Base class: keep everything, need no selection forward.

    The Trainer calls, per candidate batch of dataset ``indices`` in ``epoch``:

    1. ``requires_forward(indices, epoch)`` -> bool mask of candidates that need a fresh
       selection-pass loss, or ``True``/``False`` for all/none (no mask to read back from the
       device). Candidates outside the mask reach ``select`` with a NaN loss; the others with a
       finite one (the caller checks the selection losses for every policy alike).
    2. ``select(losses, indices, epoch)`` -> bool keep mask (same length as ``indices``), or
       integer counts for a draw with replacement (a row drawn twice is trained twice).
    3. ``loss_weights(indices, epoch)`` -> per-example loss weights for kept examples, or None.
    4. After the train step, ``observe(indices, losses, epoch)`` with the training-forward losses
       of the examples that were backpropagated.

    ``on_epoch_start(epoch, num_epochs)`` (``num_epochs`` None: the run's length is unknown) runs
    before an epoch's first candidate batch and
    ``on_epoch_end(epoch)`` after its last one has been decided. The selection driver
    (:class:`sb_accel.train.SelectionDriver`) is the one caller of this lifecycle.

    Class attributes describe the policy to its callers:
    ``candidate_multiplier``: the most training batches' worth of candidates it wants per
    candidate batch (3 for Kath18's pre-sampling, 1 otherwise; ``candidates_per_batch(epoch)``
    says how many in an epoch); ``needs_selection_forward``: whether it ever asks
    for a selection pass (False: no engine is needed); ``uses_training_losses``: whether
    ``observe`` feeds its decisions (a caller that skips ``observe`` would silently change it).

    A policy's state (loss history, random generator, per-example tables) lives on
    :attr:`device`, which :meth:`to` sets (CPU by default). On the training GPU every decision is
    made there without a host round trip; inputs may come on any device. The keep mask is on the
    policy's device.
    """

    name = "traditional"
    candidate_multiplier = 1
    needs_selection_forward = False
    uses_training_losses = False

    device = torch.device("cpu")

    def to(self, device: torch.device | str) -> "SelectionPolicy":
        """Move the policy's state to ``device``; returns ``self``. Call it before the first
        decision (or before :meth:`load_state_dict`): a random generator moved to another device
        restarts from the policy's seed, so the same seed draws differently on CPU and GPU."""
        self.device = torch.device(device)
        return self

    def on_epoch_start(self, epoch: int, num_epochs: Optional[int]) -> None:
        """Hook for per-epoch state (default: nothing)."""

    def on_epoch_end(self, epoch: int) -> None:
        """Hook after an epoch's last candidate batch (default: nothing)."""

    def candidates_per_batch(self, epoch: int) -> int:
        """Candidate-batch size in units of the training batch size, for ``epoch`` (asked after
        ``on_epoch_start(epoch)``; for a later epoch, what it would be if that epoch started now)."""
        return self.candidate_multiplier

    def requires_forward(self, indices: torch.Tensor, epoch: int) -> ForwardMask:
        return False

    def keeps_all(self, epoch: int) -> bool:
        """Whether ``select`` keeps every candidate of ``epoch`` and changes no state in doing so
        (Traditional, priming epochs): the driver then skips it, and reads no keep mask back from
        the device. Default False (the policy decides per candidate)."""
        return False

    def select(self, losses: torch.Tensor, indices: torch.Tensor, epoch: int) -> torch.Tensor:
        return torch.ones(indices.numel(), dtype=torch.bool, device=self.device)

    def loss_weights(self, indices: torch.Tensor, epoch: int) -> Optional[torch.Tensor]:
        return None

    def observe(self, indices: torch.Tensor, losses: torch.Tensor, epoch: int) -> None:
        """Training-forward losses of backpropagated examples (default: ignored)."""

    def example_tables(self) -> Dict[str, torch.Tensor]:
        """Name -> each tensor of the policy's state with one row per training example, indexed by
        dataset index (Stale-SB's loss cache, InfoBatch's scores); default: none. Under DDP these
        are the state kept identical on every rank (:class:`sb_accel.train.tables.ExampleTables`),
        so a table every rank must draw for itself is not listed. Asked anew each time: a resume may
        replace the tensors."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` returned."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Primed:
    """Train on every example for the first ``epochs`` epochs, then defer to ``policy``.

    The authors' code primes for one epoch: selection on an untrained net is close to random
    and the loss history needs filling. During priming, training losses still reach ``observe``
    so that caching policies (Stale-SB, InfoBatch) start with a score for every example.

    A composable wrapper that defines only what priming changes (an epoch's candidates, forwards,
    keep mask and weights) and ``to``; every other attribute is the wrapped policy's, read and
    written through (its lifecycle, ``observe``, state dict, example tables, class attributes), so
    a policy's new method or attribute needs nothing here. It counts as a :class:`SelectionPolicy`
    (a registered virtual subclass) without inheriting the base class's defaults, which would hide
    the policy's own.
    """

    def __init__(self, policy: SelectionPolicy, epochs: int = 1) -> None:
        if epochs < 0:
            raise ValueError(f"priming epochs must be >= 0, got {epochs}")
        object.__setattr__(self, "policy", policy)
        object.__setattr__(self, "epochs", epochs)

    def __getattr__(self, name: str):  # called only for names not defined here
        if name == "policy":  # not set yet (a copy being built): no endless recursion
            raise AttributeError(name)
        return getattr(self.policy, name)

    def __setattr__(self, name: str, value) -> None:
        setattr(self.policy, name, value)

    def priming(self, epoch: int) -> bool:
        """Whether ``epoch`` trains on every example."""
        return epoch < self.epochs

    def to(self, device: torch.device | str) -> "Primed":
        self.policy.to(device)
        return self

    def candidates_per_batch(self, epoch: int) -> int:
        return 1 if self.priming(epoch) else self.policy.candidates_per_batch(epoch)

    def requires_forward(self, indices: torch.Tensor, epoch: int) -> ForwardMask:
        return False if self.priming(epoch) else self.policy.requires_forward(indices, epoch)

    def keeps_all(self, epoch: int) -> bool:
        return self.priming(epoch) or self.policy.keeps_all(epoch)

    def select(self, losses: torch.Tensor, indices: torch.Tensor, epoch: int) -> torch.Tensor:
        if self.priming(epoch):
            return torch.ones(indices.numel(), dtype=torch.bool, device=self.policy.device)
        return self.policy.select(losses, indices, epoch)

    def loss_weights(self, indices: torch.Tensor, epoch: int) -> Optional[torch.Tensor]:
        return None if self.priming(epoch) else self.policy.loss_weights(indices, epoch)

    def __repr__(self) -> str:
        return f"Primed({self.policy!r}, epochs={self.epochs})"


SelectionPolicy.register(Primed)
