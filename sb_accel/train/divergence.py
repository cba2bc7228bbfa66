"""Divergence detection without a host sync per step.

Each step ORs "this loss is not finite" into a flag on the training device (no sync); the host
reads the flag every ``check_every`` steps and before every checkpoint, so a diverged run stops
within ``check_every`` steps and never overwrites the last good checkpoint.

The selection losses of every strategy are checked the same way, in one place
(:class:`SelectionLossCheck`, which the selection driver feeds and the guard reads).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, List, Optional

import torch
import torch.nn as nn

from ..config import CHECKPOINT_NAME

__all__ = ["Diverged", "DivergenceGuard", "SelectionLossCheck", "SELECTION_NONFINITE", "check_finite_weights",
           "divergence_hint"]

SELECTION_NONFINITE = ("selection losses are NaN/inf: the model has diverged (lower --lr or add --warmup-epochs) or "
                       "the engine produced garbage (check it with sb-accel compare, or select with --engine torch).")
_HOST = torch.device("cpu")  # an indexed device (an accelerator, the tests' stand-in) defers the read


class Diverged(FloatingPointError):
    """Training losses became NaN or infinite; the message says when and what to try."""


class DivergenceGuard:
    """Device-side NaN/inf flag over the training losses, read every ``check_every`` steps.

    :meth:`watch` adds checks read on the same cadence (the selection losses':
    :meth:`SelectionLossCheck.check`)."""

    def __init__(self, device: torch.device, check_every: int = 1) -> None:
        if check_every < 1:
            raise ValueError(f"check_every must be >= 1, got {check_every}")
        self.check_every = check_every
        self._flag = torch.zeros((), dtype=torch.bool, device=device)
        self._first_step = torch.full((), -1, dtype=torch.long, device=device)
        self._watched: List[Callable[[], None]] = []

    def watch(self, check: Callable[[], None]) -> None:
        """Also run ``check`` (it raises ``FloatingPointError``) whenever the flag is read."""
        self._watched.append(check)

    def update(self, loss: torch.Tensor, step: int) -> None:
        """Record whether ``loss`` (of optimizer step ``step``) is finite; no host sync."""
        bad = ~torch.isfinite(loss.detach()).all()
        self._first_step = torch.where(bad & ~self._flag, torch.full_like(self._first_step, step), self._first_step)
        self._flag |= bad

    def check(self, step: int, *, force: bool = False, hint: str = "") -> None:
        """Raise :class:`Diverged` if a non-finite loss was seen (read every ``check_every`` steps)."""
        if not force and step % self.check_every:
            return
        for check in self._watched:
            check()
        if bool(self._flag):
            first = int(self._first_step)
            raise Diverged(f"the training loss became NaN/inf at optimizer step {first} (checked at step {step}): "
                           f"the run diverged. {hint}".rstrip())


class SelectionLossCheck:
    """NaN/inf among the selection losses, for every strategy alike (policies never see a device).

    :meth:`update` gets each scored candidate batch's losses and how many of them came from a selection
    forward: the others hold NaN for "no fresh loss", so the batch is bad when more than
    ``len(losses) - forwards`` of its losses are not finite. Losses on the host raise at once; on an
    accelerator the verdict is ORed into a flag on the device (no host sync per candidate batch), read
    by :meth:`check`: at the divergence guard's cadence (:meth:`DivergenceGuard.watch`) and at every
    epoch's end (the selection driver).

    Args:
        deferred: True: always fold into the flag; False: always raise at once (a caller that reads the
            device anyway); None: by the losses' device.
    """

    def __init__(self, deferred: Optional[bool] = None) -> None:
        self.deferred = deferred
        self._flag: Optional[torch.Tensor] = None

    def update(self, losses: torch.Tensor, forwards: int) -> None:
        """Check ``losses`` of which ``forwards`` came from selection forwards (the rest are NaN)."""
        if not forwards:  # nothing was scored: no host read, no device work
            return
        unscored = len(losses) - forwards
        bad = (~torch.isfinite(losses.detach())).sum() - unscored
        if self.deferred is False or (self.deferred is None and losses.device == _HOST):
            if bool(bad > 0):
                raise FloatingPointError(f"{int(bad)} of {forwards} {SELECTION_NONFINITE}")
            return
        self._flag = bad > 0 if self._flag is None else self._flag | (bad > 0).to(self._flag.device)

    def check(self) -> None:
        """Raise ``FloatingPointError`` if non-finite selection losses were deferred since the last check."""
        if self._flag is not None and bool(self._flag):
            self._flag = None
            raise FloatingPointError(SELECTION_NONFINITE)


def divergence_hint(lr: float, run_dir: Path) -> str:
    """What to try after a divergence, and whether a good checkpoint is there to resume from."""
    saved = (f"the last good checkpoint in {run_dir} is kept (continue with --resume --lr ...)"
             if (Path(run_dir) / CHECKPOINT_NAME).exists() else "no checkpoint was written yet")
    return f"Lower --lr (now {lr}), add --warmup-epochs, or try --amp off; {saved}."


def check_finite_weights(model: nn.Module, step: int, hint: str = "") -> None:
    """Raise :class:`Diverged` if a parameter or buffer holds NaN/inf (finite losses can hide a
    BatchNorm running variance that overflowed); checked before every checkpoint."""
    bad = [name for name, t in model.state_dict().items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise Diverged(f"model tensors {bad[:3]} hold NaN/inf at optimizer step {step}: the run diverged. {hint}".rstrip())
