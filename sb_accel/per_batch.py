"""Per-batch Selective-Backprop ("Composer-style"): select within each loader batch, one optimizer
step per loader batch.

>>> selector = sb_accel.BatchSelector(model, selectivity=0.5)       # doctest: +SKIP
>>> for batch in loader:                                           # the user's own loader
...     batch = selector(batch)                                    # the kept rows, same structure
...     loss = F.cross_entropy(model(batch[0]), batch[1])
...     opt.zero_grad(); loss.backward(); opt.step(); sched.step()

The trade-off against :class:`sb_accel.SelectiveLoader`: the step count stays the loader's (LR
schedules, DDP step counts and gradient accumulation need no change), but every step trains on
only about ``selectivity`` of a batch, so the *effective batch size shrinks* by that factor while the
learning rate stays tuned for the full batch: gradient noise grows, and a run may want a larger
loader batch (``batch_size / selectivity``) or a lower LR. The selecting loader instead gathers
kept examples into full batches and takes fewer steps per epoch. Each call costs a selection forward
over the whole batch on the live model (eval mode, no grad): the saving is in backward passes only.

Keep probabilities are SB's: ``CDF_R(loss) ** beta`` with ``CDF_R`` over the last ``R`` selection
losses *across calls* (the paper's history, held by the selector), not only over the current batch.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn as nn

from .adapters import Forward, LossFn, default_forward, per_example_loss
from .data.batch_structure import Batch, num_rows, take_rows
from .engines import EngineContext
from .engines.torch_backend import TorchEngine
from .selection import SelectiveBackpropPolicy
from .train.divergence import SelectionLossCheck
from .strategy_options import DEFAULTS

__all__ = ["BatchSelector", "select_batch"]


class BatchSelector:
    """Selects the rows of each batch that Selective-Backprop would backpropagate; keeps the loss
    history between calls.

    Args:
        model: the training model; its selection forward runs in eval mode without gradients.
        selectivity: expected kept share of each batch (``beta = 1/s - 1``).
        precision: ``"fp32"`` (default), ``"bf16"`` or ``"fp16"``: the selection forward under
            autocast (the torch engine's), cheaper on a GPU; losses come back in FP32.
        loss_fn: ``loss_fn(output, batch) -> (N,)`` per-example losses; default
            :func:`sb_accel.per_example_loss` (logits from a tensor / tuple / ``ModelOutput``, labels
            from ``batch[1]`` or ``batch["labels"]``; :func:`sb_accel.causal_lm_loss` for causal LMs).
        forward: ``forward(model, batch) -> output``; default ``model(batch[0])`` for tuples and
            ``model(**batch)`` without the labels for dicts.
        history: ``R``, how many recent losses the CDF covers (the authors' 1024).
        min_keep: at least this many rows are returned (the highest-loss ones when the draw kept
            fewer), so every optimizer step has something to train on.
        seed: seed of the Bernoulli draws.
        **policy_options: ``floor`` and ``history_mode`` of
            :class:`~sb_accel.selection.SelectiveBackpropPolicy`.

    No priming: the first calls score against a short history (at first the batch itself). To train
    on full batches for a while, simply do not call the selector in those steps.
    """

    def __init__(self, model: nn.Module, selectivity: float = DEFAULTS.selectivity, *, precision: str = "fp32",
                 loss_fn: Optional[LossFn] = None, forward: Optional[Forward] = None, history: int = DEFAULTS.history,
                 min_keep: int = 1, seed: int = 0, **policy_options: Any) -> None:
        if min_keep < 1:
            raise ValueError(f"min_keep must be >= 1 (an optimizer step needs an example), got {min_keep}")
        self.model = model
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        self.engine = TorchEngine(model, precision, EngineContext(device=device))   # reads the live model
        self.loss_fn = loss_fn or per_example_loss
        self.forward = forward or default_forward
        self.min_keep = min_keep
        # history and generator on the model's device: decisions without a host round trip
        self.policy = SelectiveBackpropPolicy(selectivity, history=history, seed=seed, **policy_options).to(device)
        self.selection_losses = SelectionLossCheck(deferred=False)  # the keep mask is read at once anyway
        self.seen = 0   # rows scored so far
        self.kept = 0   # rows returned so far

    @property
    def kept_share(self) -> float:
        """Share of the scored rows returned so far (about ``selectivity`` once the history is full)."""
        return self.kept / self.seen if self.seen else 0.0

    def losses(self, batch: Batch) -> torch.Tensor:
        """Selection losses of ``batch``'s rows: the live model, eval mode, no gradients."""
        losses = self.engine.batch_losses(batch, self.forward, self.loss_fn)
        rows = num_rows(batch)
        if losses.shape != (rows,):
            raise ValueError(f"loss_fn returned shape {tuple(losses.shape)} for a batch of {rows} examples: it must "
                             "return one loss per example (reduction='none'; a sequence model: one per sequence)")
        return losses.detach()

    def __call__(self, batch: Batch) -> Batch:
        """The rows of ``batch`` that SB keeps, in ``batch``'s own structure (tuple, list, dict ...)."""
        losses = self.losses(batch)
        self.selection_losses.update(losses, losses.numel())
        keep = self.policy.select(losses, torch.arange(losses.numel(), device=losses.device), epoch=0)
        rows = keep.nonzero().flatten()
        if rows.numel() < min(self.min_keep, losses.numel()):
            rows = torch.topk(losses, min(self.min_keep, losses.numel())).indices.sort().values
        self.seen += losses.numel()
        self.kept += rows.numel()
        return take_rows(batch, rows)

    def state_dict(self) -> dict:
        """The loss history, the random generator and the counts (for checkpoints)."""
        return {"policy": self.policy.state_dict(), "seen": self.seen, "kept": self.kept}

    def load_state_dict(self, state: dict) -> None:
        self.policy.load_state_dict(state["policy"])
        self.seen, self.kept = state["seen"], state["kept"]


def select_batch(model: nn.Module, batch: Batch, *, selectivity: float = DEFAULTS.selectivity, precision: str = "fp32",
                 loss_fn: Optional[LossFn] = None, forward: Optional[Forward] = None,
                 selector: Optional[BatchSelector] = None) -> Batch:
    """The rows of ``batch`` that Selective-Backprop keeps (one call, the functional form).

    Without ``selector`` the CDF covers only this batch's own losses (every call starts a fresh
    history); pass a :class:`BatchSelector` (or call it directly) to score against the last ``R``
    losses across batches, as the paper does.
    """
    if selector is None:
        selector = BatchSelector(model, selectivity, precision=precision, loss_fn=loss_fn, forward=forward)
    elif selector.model is not model:
        raise ValueError("select_batch: the selector was built for another model; pass selector=None or its model")
    return selector(batch)
