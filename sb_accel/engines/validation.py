"""Is an engine's output still good enough for selection? Its losses against the FP32 PyTorch model
on a fixed batch, judged by what selection consumes.

Selective-Backprop keeps an example with a probability given by the *rank* of its loss among
recent losses (the loss CDF); Kath18 samples in proportion to the loss *values*. So a check asks
two scale-free questions, not "how many nats apart" (early in training, eval-mode losses of a
ResNet-18 reach 1e5-1e6 while its BatchNorm statistics catch up, and an absolute tolerance breaks):

* **rank agreement**: over the pairs of examples whose FP32 losses differ by more than
  :data:`TIE_RESOLUTION` of the mean loss, the share the engine orders the same way minus the share
  it orders the other way (Kendall's tau restricted to pairs the reference tells apart; an engine
  tie counts as neither). Near-ties are left out because no precision below FP32 can order them
  and selection treats them alike; without any separated pair the ranks are not judged.
* **relative error**: mean |engine loss - torch loss| / mean |torch loss|.

A broken engine (wrong, permuted or zeroed weights) orders the losses no better than chance
(agreement near 0, measured on small_cnn and ResNet-18: see :data:`DEFAULT_TOLERANCES`), while a
healthy INT8 one stays above 0.67; a cheap INT8 refresh whose activation scales have gone stale can
fall below, and the refresher then recalibrates. The max |loss difference| and the Spearman
correlation are logged too, for the record, but judge nothing.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Dict, Optional

import torch
import torch.nn as nn

from .base import EngineContext, SelectionEngine
from .errors import EngineError
from .torch_backend import TorchEngine

__all__ = ["Validation", "Tolerance", "judge", "check_engine", "require_valid", "rank_correlation", "rank_agreement",
           "relative_error", "DEFAULT_TOLERANCES", "TIE_RESOLUTION", "CHECK_METRICS"]

# Pairs whose FP32 losses differ by less than this share of the mean loss are near-ties: left out
# of the rank agreement (1% of a loss of 2.3 is 0.023, above FP16/BF16 rounding of such losses).
TIE_RESOLUTION = 0.01

# What a check puts in a RunLog event.
CHECK_METRICS = ("rank_agreement", "relative_error", "max_abs_error", "rank_correlation")


@dataclass(frozen=True)
class Tolerance:
    """What an engine of one precision must meet against FP32 PyTorch.

    Attributes:
        min_rank_agreement: smallest accepted :func:`rank_agreement` (1: every separated pair
            ordered as FP32 orders it; 0: chance).
        max_relative_error: largest accepted :func:`relative_error`.
    """

    min_rank_agreement: float
    max_relative_error: float


# Measured on CIFAR-10 validation batches of 32 (engines/README.md has the numbers): healthy INT8
# engines agree 0.67-1.0 (a freshly recalibrated ResNet-18 sits lowest around steps 30-40, when its
# eval-mode losses bunch up near 2.3) with relative error <= 0.05; permuted or zeroed weights agree
# -0.41..0.39 (Kendall's tau of 32 unrelated values has a standard deviation of ~0.12). FP32 engines
# agree 1.0 with relative error ~1e-6; FP16/BF16 lose ~1e-3 / ~1e-2 of the loss.
DEFAULT_TOLERANCES: Dict[str, Tolerance] = {
    "fp32": Tolerance(min_rank_agreement=0.9, max_relative_error=1e-3),
    "fp16": Tolerance(min_rank_agreement=0.8, max_relative_error=0.05),
    "bf16": Tolerance(min_rank_agreement=0.7, max_relative_error=0.1),
    "int8": Tolerance(min_rank_agreement=0.5, max_relative_error=0.25),
    "fp8": Tolerance(min_rank_agreement=0.5, max_relative_error=0.25),
}


@dataclass(frozen=True)
class Validation:
    """A small fixed batch and the tolerance every (re)built engine must meet against PyTorch.

    Attributes:
        x, y: the batch (on the training device).
        tolerance: None: by precision, :data:`DEFAULT_TOLERANCES`.
    """

    x: torch.Tensor
    y: torch.Tensor
    tolerance: Optional[Tolerance] = None

    @classmethod
    def from_context(cls, context: EngineContext, rows: int = 32,
                     tolerance: Optional[Tolerance] = None) -> "Validation":
        """The first ``rows`` examples of ``context.sample_batches`` (a validation forward costs
        one small batch of both the engine and the torch model per refresh)."""
        if not context.sample_batches:
            raise EngineError("validation needs EngineContext.sample_batches")
        x = torch.cat([b[0] for b in context.sample_batches])[:rows]
        y = torch.cat([b[1] for b in context.sample_batches])[:rows]
        return cls(x, y, tolerance)

    def tolerance_for(self, precision: str) -> Tolerance:
        return self.tolerance or DEFAULT_TOLERANCES.get(precision, DEFAULT_TOLERANCES["int8"])


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two loss vectors (ties get average ranks; NaN if constant)."""
    from scipy.stats import spearmanr

    with warnings.catch_warnings():  # a constant vector (a zeroed engine) is an answer here: NaN
        warnings.simplefilter("ignore")
        return float(spearmanr(a.detach().double().cpu().numpy(), b.detach().double().cpu().numpy())[0])


def rank_agreement(got: torch.Tensor, reference: torch.Tensor, resolution: float = TIE_RESOLUTION) -> float:
    """Kendall's tau of ``got`` against ``reference`` over the pairs ``reference`` separates by more
    than ``resolution`` x its mean |loss| (NaN if it separates none: nothing to judge).

    Each such pair counts +1 if ``got`` orders it the same way, -1 if the other way, 0 if ``got``
    ties it; the result is the mean, in [-1, 1].
    """
    got, reference = got.detach().double().flatten(), reference.detach().double().flatten()
    ref_gap = reference[:, None] - reference[None, :]
    separated = ref_gap.abs() > resolution * float(reference.abs().mean())
    if not bool(separated.any()):
        return math.nan
    same_order = torch.sign(got[:, None] - got[None, :]) * torch.sign(ref_gap)
    return float(same_order[separated].mean())


def relative_error(got: torch.Tensor, reference: torch.Tensor) -> float:
    """mean |got - reference| / mean |reference| (inf where the reference is all zero and got is not)."""
    got, reference = got.detach().double(), reference.detach().double()
    error, scale = float((got - reference).abs().mean()), float(reference.abs().mean())
    return error / scale if scale > 0 else (0.0 if error == 0 else math.inf)


def judge(got: torch.Tensor, reference: torch.Tensor, tolerance: Tolerance) -> dict:
    """The metrics of engine losses ``got`` against FP32 ``reference`` losses and the verdict.

    Returns:
        ``{"rank_agreement", "relative_error", "max_abs_error", "rank_correlation", "ok",
        "problem"}``; ``problem`` says which threshold failed (None when ``ok``).
    """
    got, reference = got.detach().float().cpu(), reference.detach().float().cpu()
    metrics = {"rank_agreement": rank_agreement(got, reference), "relative_error": relative_error(got, reference),
               "max_abs_error": float((got - reference).abs().max()), "rank_correlation": rank_correlation(got, reference)}
    problem = None
    if not torch.isfinite(reference).all():
        problem = "the torch fp32 model itself gives non-finite losses (has training diverged?)"
    elif not torch.isfinite(got).all():
        problem = "non-finite losses where torch fp32 gives finite ones"
    elif metrics["rank_agreement"] < tolerance.min_rank_agreement:  # NaN (nothing separated) passes
        problem = (f"rank agreement with torch fp32 {metrics['rank_agreement']:.3f} < "
                   f"{tolerance.min_rank_agreement:g} (selection would keep other examples)")
    elif not metrics["relative_error"] <= tolerance.max_relative_error:
        problem = f"relative loss error vs torch fp32 {metrics['relative_error']:.3g} > {tolerance.max_relative_error:g}"
    return {**metrics, "ok": problem is None, "problem": problem}


def check_engine(engine: SelectionEngine, model: nn.Module, validation: Validation) -> dict:
    """Compare ``engine`` with FP32 PyTorch on ``model`` on the validation batch: :func:`judge`."""
    reference = TorchEngine(model, "fp32").losses(validation.x, validation.y)
    return judge(engine.losses(validation.x, validation.y), reference, validation.tolerance_for(engine.precision))


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
    return {k: check[k] for k in CHECK_METRICS}
