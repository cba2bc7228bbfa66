"""Is an engine's output still right? Its losses against the FP32 PyTorch model on a fixed batch.

Two numbers per check: the max |engine loss - torch loss| (a broken engine, with wrong or stale
weights or a dropped bias, is off by order 1 and more) and the Spearman rank correlation of the two
loss vectors (what selection consumes are ranks, through the loss CDF).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional

import torch
import torch.nn as nn

from .base import EngineContext, SelectionEngine
from .errors import EngineError
from .torch_backend import TorchEngine

__all__ = ["Validation", "check_engine", "require_valid", "rank_correlation", "DEFAULT_MAX_ABS_ERROR"]

# Largest accepted |engine loss - FP32 torch loss| per precision: about 5x what healthy engines
# show on a partly trained CIFAR ResNet-18 (benchmarks/selection_throughput.py: FP32 1e-6, FP16
# 7e-3, BF16 2e-2, INT8 0.2), far below what a broken one shows (wrong or stale weights, a dropped
# bias: errors of order 1 and more).
DEFAULT_MAX_ABS_ERROR: Dict[str, float] = {"fp32": 1e-3, "fp16": 0.1, "bf16": 0.25, "int8": 1.0, "fp8": 1.0}


@dataclass(frozen=True)
class Validation:
    """A small fixed batch and the thresholds every (re)built engine must meet against PyTorch.

    Attributes:
        x, y: the batch (on the training device).
        max_abs_error: largest accepted |loss difference| (None: by precision,
            :data:`DEFAULT_MAX_ABS_ERROR`).
        min_rank_correlation: smallest accepted Spearman correlation with the FP32 losses (None:
            logged only; early in training INT8 ranks legitimately disagree on near-equal losses).
    """

    x: torch.Tensor
    y: torch.Tensor
    max_abs_error: Optional[float] = None
    min_rank_correlation: Optional[float] = None

    @classmethod
    def from_context(cls, context: EngineContext, rows: int = 32, **thresholds: float) -> "Validation":
        """The first ``rows`` examples of ``context.sample_batches`` (a validation forward costs
        one small batch of both the engine and the torch model per refresh)."""
        if not context.sample_batches:
            raise EngineError("validation needs EngineContext.sample_batches")
        x = torch.cat([b[0] for b in context.sample_batches])[:rows]
        y = torch.cat([b[1] for b in context.sample_batches])[:rows]
        return cls(x, y, **thresholds)


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two loss vectors (ties get average ranks; NaN if constant)."""
    from scipy.stats import spearmanr

    return float(spearmanr(a.detach().double().cpu().numpy(), b.detach().double().cpu().numpy())[0])


def check_engine(engine: SelectionEngine, model: nn.Module, validation: Validation) -> dict:
    """Compare ``engine`` with FP32 PyTorch on ``model``; returns the metrics and a verdict.

    Returns:
        ``{"max_abs_error", "rank_correlation", "ok", "problem"}``; ``problem`` says which
        threshold failed (None when ``ok``).
    """
    reference = TorchEngine(model, "fp32").losses(validation.x, validation.y).float()
    got = engine.losses(validation.x, validation.y).float().to(reference.device)
    error = float((got - reference).abs().max())
    rho = rank_correlation(got, reference)
    tolerance = (validation.max_abs_error if validation.max_abs_error is not None
                 else DEFAULT_MAX_ABS_ERROR.get(engine.precision, 1.0))
    problem = None
    if not math.isfinite(error) or error > tolerance:
        problem = f"max |loss difference| vs torch fp32 {error:.3g} > {tolerance:g}"
    elif validation.min_rank_correlation is not None and not rho >= validation.min_rank_correlation:
        problem = f"rank correlation vs torch fp32 {rho:.3f} < {validation.min_rank_correlation:g}"
    return {"max_abs_error": error, "rank_correlation": rho, "ok": problem is None, "problem": problem}


def require_valid(engine: SelectionEngine, model: nn.Module, validation: Optional[Validation]) -> dict:
    """The metrics of :func:`check_engine` for a RunLog event ({} without validation).

    Raises:
        EngineError: the engine failed a threshold.
    """
    if validation is None:
        return {}
    check = check_engine(engine, model, validation)
    if not check["ok"]:
        raise EngineError(f"{engine.name} failed validation: {check['problem']}")
    return {k: check[k] for k in ("max_abs_error", "rank_correlation")}
