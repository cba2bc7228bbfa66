"""Measurement primitives shared by ``sb-accel profile``, ``sb-accel compare`` and the benchmarks.

Timing that waits for the device (a CUDA kernel launch returns before the kernel has run), repeated
measurements summarised as median and quartiles, selection engines built with their build time or
the reason they cannot be built here, refresh costs, and fixed batches of real training data.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

from .data import ArrayDataset
from .engines import EngineContext, EngineError, SelectionEngine, create_engine, parse_engine_spec
from .reporting.runlog import PHASES
from .train.timer import PhaseTimer

__all__ = ["synchronized_seconds", "spread", "spread_fields", "seconds_cell", "time_phases", "selection_seconds",
           "fit_call_cost", "call_costs", "default_call_sizes", "EngineBuild", "build_engine", "check_engine_specs",
           "refresh_costs", "real_batch"]


def synchronized_seconds(fn: Callable[[], Any], device: torch.device) -> float:
    """Wall-clock seconds of ``fn()``, including the device work it queued (CUDA is synchronised)."""
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def spread(samples: Sequence[float], scale: float = 1.0) -> Dict[str, float]:
    """Median and quartiles of ``samples`` (times ``scale``)."""
    q25, q50, q75 = np.percentile(np.asarray(samples, dtype=np.float64) * scale, [25, 50, 75])
    return {"median": float(q50), "p25": float(q25), "p75": float(q75)}


def spread_fields(key: str, seconds: Sequence[float]) -> Dict[str, float]:
    """``{key}_ms`` (the median), ``{key}_ms_p25`` and ``{key}_ms_p75`` of ``seconds``, in milliseconds:
    how the profile and compare rows store a repeated measurement."""
    s = spread(seconds, 1e3)
    return {f"{key}_ms": s["median"], f"{key}_ms_p25": s["p25"], f"{key}_ms_p75": s["p75"]}


def seconds_cell(seconds: Optional[float]) -> str:
    """Seconds for a table cell, to the millisecond (``-`` for none)."""
    return "-" if seconds is None else f"{seconds:.3f}"


def time_phases(step: Callable[[PhaseTimer], None], device: torch.device, repeats: int,
                warmup: int) -> Dict[str, List[float]]:
    """Run ``step(timer)`` ``warmup + repeats`` times; ``step`` switches the timer's phases itself.
    Returns, per phase, the seconds of each timed repeat (warm-up repeats are discarded)."""
    samples: Dict[str, List[float]] = {p: [] for p in PHASES}
    for i in range(warmup + repeats):
        timer = PhaseTimer(device)
        timer.start()
        step(timer)
        totals = timer.totals()  # on CUDA this waits for the GPU once
        if i >= warmup:
            for phase, seconds in totals.items():
                samples[phase].append(seconds)
    return samples


def selection_seconds(engine: SelectionEngine, batches: Sequence[Tuple[torch.Tensor, torch.Tensor]],
                      device: torch.device, repeats: int, warmup: int) -> Tuple[List[float], torch.Tensor]:
    """Seconds of each timed pass of ``engine.losses`` over ``batches``, the copy of the losses to
    the host included (the Trainer reads them there), and the last pass's losses, concatenated."""
    scored: List[torch.Tensor] = []

    def one_pass(timer: PhaseTimer) -> None:
        scored.clear()
        for x, y in batches:
            timer.switch("selection")
            scored.append(engine.losses(x, y).float().cpu())
        timer.switch("other")

    seconds = time_phases(one_pass, device, repeats, warmup)["selection"]
    return seconds, torch.cat(scored)


def fit_call_cost(sizes: Sequence[int], seconds: Sequence[float]) -> Tuple[float, float]:
    """Least-squares fit of ``cost(n) = a + b * n`` to the seconds of selection calls of ``n``
    examples: ``a`` is the fixed cost of a call (kernel launches, Python, the host copy of the
    losses), ``b`` the cost per example. On a GPU below ~256 examples a call is launch bound, so a
    per-batch time measured at one size mispredicts every other size; the fit does not.

    Raises:
        ValueError: fewer than two distinct sizes, or lengths that differ.
    """
    if len(sizes) != len(seconds) or len(set(sizes)) < 2:
        raise ValueError(f"fitting a + b n needs >= 2 distinct sizes with one time each, got {list(sizes)} "
                         f"and {len(seconds)} times")
    n = np.asarray(sizes, dtype=np.float64)
    design = np.stack([np.ones_like(n), n], axis=1)
    (a, b), *_ = np.linalg.lstsq(design, np.asarray(seconds, dtype=np.float64), rcond=None)
    return float(a), float(b)


def default_call_sizes(device: torch.device) -> Tuple[int, ...]:
    """Selection call sizes to fit: 32..1024 on a GPU (the launch-bound range and the selection
    batch the GPU preset uses), 16..128 on a CPU (where large calls take long and barely differ)."""
    return (32, 64, 128, 256, 512, 1024) if device.type == "cuda" else (16, 32, 64, 128)


def call_costs(engine: SelectionEngine, x: torch.Tensor, y: torch.Tensor, sizes: Sequence[int],
               device: torch.device, repeats: int, warmup: int) -> Dict[str, Any]:
    """Median seconds of one ``engine.losses`` call (host copy of the losses included) on the first
    ``n`` rows of ``x, y`` for each ``n`` of ``sizes`` (warm-up calls first at each size: a first
    call at a new shape pays cuDNN's plan search), and the fit of :func:`fit_call_cost`:
    ``call_overhead_ms`` (a) and ``per_example_us`` (b)."""
    medians = [float(np.median(selection_seconds(engine, [(x[:n], y[:n])], device, repeats, warmup)[0]))
               for n in sizes]
    a, b = fit_call_cost(sizes, medians)
    return {"call_sizes": list(sizes), "call_ms": [m * 1e3 for m in medians], "call_overhead_ms": a * 1e3,
            "per_example_us": b * 1e6}


@dataclass
class EngineBuild:
    """An engine built for measurement, or why it could not be."""

    spec: str
    engine: Optional[SelectionEngine]
    build_s: Optional[float]
    error: Optional[str] = None

    @property
    def status(self) -> str:
        return "ok" if self.engine is not None else f"unavailable: {self.error}"


def build_engine(spec: str, model: nn.Module, context: EngineContext) -> EngineBuild:
    """Build ``spec`` from ``model``, timing it; an ``EngineError`` means "unavailable here"."""
    try:
        start = time.perf_counter()
        engine = create_engine(spec, model, context)
        return EngineBuild(spec, engine, time.perf_counter() - start)
    except EngineError as exc:
        return EngineBuild(spec, None, None, str(exc))


def check_engine_specs(specs: Sequence[str]) -> None:
    """A malformed engine spec fails before any measurement, as a ``ValueError`` (the CLI's exit
    code 2); a well-formed one that cannot be built here is :func:`build_engine`'s business."""
    for spec in specs:
        try:
            parse_engine_spec(spec)
        except EngineError as exc:
            raise ValueError(str(exc)) from None


def refresh_costs(engine: SelectionEngine, model: nn.Module, device: torch.device,
                  repeats: int = 1, warmup: int = 0) -> Dict[str, Optional[float]]:
    """Seconds of ``engine.refresh(model)``, what training pays per refresh on the default schedule
    (``refresh_s``, the median of ``repeats`` after ``warmup`` untimed ones: one sample on a busy CPU
    can be several times the usual), and of the engine's rebuild and cheap refreshes where it tells
    them apart (``None`` for a cheap refresh the engine does not have; all ``None`` for a live
    engine, which is never refreshed).
    """
    costs: Dict[str, Optional[float]] = {"refresh_s": None, "refresh_rebuild_s": None, "refresh_cheap_s": None}
    if engine.is_live:
        return costs
    for _ in range(warmup):
        engine.refresh(model)
    seconds = costs["refresh_s"] = float(np.median(
        [synchronized_seconds(lambda: engine.refresh(model), device) for _ in range(max(1, repeats))]))
    costs[f"refresh_{engine.refresh_kind}_s"] = seconds
    if engine.refresh_kind == "cheap":
        costs["refresh_rebuild_s"] = synchronized_seconds(lambda: engine.refresh(model, rebuild=True), device)
    return costs


def real_batch(data: ArrayDataset, size: int, device: torch.device, memory_format: torch.memory_format,
               seed: int = 0, offset: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """``size`` training examples (normalised, un-augmented): positions ``offset`` to
    ``offset + size`` of a random order fixed by ``seed``, so batches with different offsets are
    disjoint."""
    if offset < 0 or offset + size > len(data.y_train):
        raise ValueError(f"{data.name} has {len(data.y_train)} training examples; examples {offset} to "
                         f"{offset + size} were asked for")
    idx = torch.randperm(len(data.y_train), generator=torch.Generator().manual_seed(seed))[offset:offset + size]
    x = data.normalize(data.x_train[idx].to(device)).contiguous(memory_format=memory_format)
    return x, data.y_train[idx].to(device)
