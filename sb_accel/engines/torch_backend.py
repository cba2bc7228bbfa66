"""PyTorch selection engine: eval-mode, no-grad forward in FP32 or autocast BF16/FP16."""
from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import EngineContext, EngineError, SelectionEngine

__all__ = ["TorchEngine", "per_example_loss", "eval_mode"]

_AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def per_example_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per example, computed in FP32 whatever the logits' dtype."""
    return F.cross_entropy(logits.float(), y, reduction="none")


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Every submodule in eval mode inside, each one's own flag restored after (a training model
    may hold frozen submodules in eval mode: ``model.train(was)`` would not give them back)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


class TorchEngine(SelectionEngine):
    """Selection forward with PyTorch.

    By default it reads the live training model (``snapshot=False``): the paper's setting, never
    stale, no refresh cost. ``options={"snapshot": True}`` keeps a private copy instead, refreshed
    on the engine schedule like the other backends (for pipelined selection in another thread).
    """

    backend = "torch"
    precisions = tuple(_AUTOCAST)
    refresh_kind = "exact"  # a snapshot refresh copies the weights as they are

    def __init__(self, model: nn.Module, precision: str = "fp32", context: EngineContext | None = None) -> None:
        context = context or EngineContext()
        if precision not in _AUTOCAST:
            raise EngineError(f"torch engine precision must be one of {list(_AUTOCAST)}, got {precision!r}")
        self.precision = precision
        self.device = context.device
        self.snapshot = bool(context.options.get("snapshot", False))
        self.model = copy.deepcopy(model).eval() if self.snapshot else model

    @property
    def is_live(self) -> bool:
        return not self.snapshot

    def refresh(self, model: nn.Module, rebuild: bool = False) -> None:
        if self.snapshot:
            self.model.load_state_dict(model.state_dict())

    @torch.no_grad()
    def losses(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._run((x, y), x.device, lambda model, batch: model(batch[0]),
                         lambda logits, batch: per_example_loss(logits, batch[1]))

    @torch.no_grad()
    def batch_losses(self, batch: Any, forward: Callable[[nn.Module, Any], Any],
                     loss_fn: Callable[[Any, Any], torch.Tensor]) -> torch.Tensor:
        """The per-example loss hook: ``loss_fn(forward(model, batch), batch)`` for any batch structure
        (dicts of token ids, tuples) and any model output, in eval mode under this precision's autocast;
        the loss itself is computed outside autocast and returned as FP32."""
        return self._run(batch, self.device, forward, loss_fn)

    def _run(self, batch: Any, device: torch.device, forward: Callable[[nn.Module, Any], Any],
             loss_fn: Callable[[Any, Any], torch.Tensor]) -> torch.Tensor:
        dtype = _AUTOCAST[self.precision]
        with eval_mode(self.model):
            with torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None):
                output = forward(self.model, batch)
            return loss_fn(output, batch).float()
