"""Traditional minibatch SGD, the baseline every strategy is measured against."""
from __future__ import annotations

from typing import Optional

from .base import SelectionPolicy
from .registry import StrategyOptions, register_strategy

__all__ = ["Traditional"]


class Traditional(SelectionPolicy):
    """Every example is trained on once per epoch; no selection pass, no engine."""

    name = "traditional"

    def keeps_all(self, epoch: int) -> bool:
        return True


@register_strategy("traditional")
def _build(options: StrategyOptions, dataset_size: Optional[int], batch_size: int) -> Traditional:
    return Traditional()
