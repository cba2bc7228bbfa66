"""When a snapshot engine takes the training model's new weights: a pure rule, no engines, and the
default cadence of each engine on each device (:data:`CADENCES`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

__all__ = ["RefreshSchedule", "Cadence", "CADENCES", "default_schedule"]


@dataclass(frozen=True)
class RefreshSchedule:
    """Refresh every ``every_steps`` optimizer steps (0: never by steps) and/or at epoch ends.

    ``validate_every``: with validation on, check every N-th cheap step refresh against PyTorch
    (1: all). Rebuilds (re-export, INT8 recalibration) and refreshes for other reasons (epoch
    end, selection resuming after priming) are always checked; exact ones (the weights copied into
    a PyTorch module as they are) never: they cannot go wrong in a way a check would see.
    Refreshing every step makes the check (a torch forward and an engine forward on a small batch)
    the largest part of a cheap refresh; checking every N-th bounds a broken refresh to N - 1
    steps of selection, which only chooses examples and never touches the gradients.
    """

    every_steps: int = 0
    every_epoch: bool = True
    validate_every: int = 1

    def __post_init__(self) -> None:
        if self.every_steps < 0:
            raise ValueError(f"refresh every_steps must be >= 0, got {self.every_steps}")
        if self.validate_every < 1:
            raise ValueError(f"refresh validate_every must be >= 1, got {self.validate_every}")

    def validates(self, count: int, kind: str, reason: str) -> bool:
        """Whether refresh number ``count`` (1-based) of ``kind`` done for ``reason`` is checked."""
        if kind == "exact":
            return False
        return kind != "cheap" or reason != "steps" or count % self.validate_every == 0

    def due_after_step(self, step: int) -> bool:
        return self.every_steps > 0 and step > 0 and step % self.every_steps == 0

    def due_after_epoch(self) -> bool:
        return self.every_epoch


@dataclass(frozen=True)
class Cadence:
    """Default refresh interval (optimizer steps) and validation interval (refreshes) of an engine on a
    device, with the measurement they come from."""

    every_steps: int
    validate_every: int
    source: str


# (backend, device type) -> default cadence; backends not listed (the live torch engines never refresh)
# take ("*", device). Every step everywhere: a snapshot one optimizer step behind the model changes
# 9.0% of SB's keep decisions against exact SB, two steps 13.5%, where INT8 itself changes 0.3%
# (small_cnn after priming: benchmarks/selection_staleness.py, results in
# benchmarks/results/2026-12-03-x86_64-cpu2-refresh3/); a refresh every c steps averages the first c
# of these (every 2 steps: 4.6%). And it costs accuracy (CIFAR-10 20k subset, 6 epochs, one seed, INT8
# refreshed every 1/2/5/50 steps: 60.6/58.8/55.1/44.1% test accuracy vs 60.5% live).
CADENCES: Dict[Tuple[str, str], Cadence] = {
    ("onnxruntime", "cpu"): Cadence(1, 25, (
        "small_cnn, 2 CPU threads: a cheap INT8 refresh 7.5-8.2 ms in the training loop, a validation ~21 ms more "
        "(torch FP32 + engine "
        "forwards of 32 rows); after a calibration at the end of the priming epoch, 150 cheap refreshes without "
        "recalibration kept a rank agreement >= 0.98 (floor 0.5) and a relative error <= 0.016 (ceiling 0.25; "
        "benchmarks/validation_drift.py, results in benchmarks/results/2026-12-03-x86_64-cpu2-refresh2/): a check "
        "per 25 refreshes costs ~0.8 ms per refresh instead of ~2 ms per refresh at 10, and the model's "
        "recalibrate_every (100; small_cnn 500, engines/recipes/) bounds the drift regardless")),
    ("onnxruntime", "cuda"): Cadence(1, 10, (
        "not measured (no GPU in the session that set it): every step, checked every 10th refresh as on CPU "
        "before; the refresher refuses per-step refreshes that cost more than the training between them "
        "(COST_PROBE) and names an interval that fits")),
    ("tensorrt", "cuda"): Cadence(1, 10, "not measured: as onnxruntime on cuda (a refit copies every weight)"),
    ("*", "cpu"): Cadence(1, 10, "torch snapshots: an exact copy per step (~0.3 ms small_cnn), never validated"),
    ("*", "cuda"): Cadence(1, 10, "torch snapshots: an exact copy per step, never validated"),
}


def default_schedule(backend: str, device_type: str, every_steps: Optional[int] = None, every_epoch: bool = True,
                     validate_every: Optional[int] = None) -> RefreshSchedule:
    """The schedule of ``backend`` on ``device_type`` (``"cpu"``, ``"cuda"``...): :data:`CADENCES`,
    where ``every_steps`` / ``validate_every`` are None; given values win."""
    device = device_type if device_type in ("cpu", "cuda") else "cuda"  # other accelerators: the GPU default
    cadence = CADENCES.get((backend, device), CADENCES[("*", device)])
    return RefreshSchedule(cadence.every_steps if every_steps is None else every_steps, every_epoch,
                           cadence.validate_every if validate_every is None else validate_every)
