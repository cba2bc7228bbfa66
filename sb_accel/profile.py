"""``sb-accel profile``: how much a selection forward costs next to a training step (paper Fig. 18),
and what Selective-Backprop with each selection engine should save per epoch on this device.

For every model x batch size, on real data:

* per training precision (FP32, and BF16/FP16 autocast): the selection forward on the torch engine
  of that precision (eval, no grad), the training forward, the backward and the optimizer step;
* per other selection engine (ONNX Runtime, TensorRT, torch-graph...): build time, refresh cost
  and the selection forward; engines that cannot be built here are reported as unavailable;
* per selection engine, the cost of one call at several sizes (``call_sizes``) fitted as
  ``a + b * n`` (:func:`~sb_accel.measure.fit_call_cost`): the fixed cost of a call and the cost
  per example. On a GPU a call below ~256 examples is launch bound (~2.4 ms whatever its size on
  an H100, per ../shared/ENGINES-NOTES.md), so the time of one batch size mispredicts the others.

Each time is the median over ``repeats`` after ``warmup`` untimed repeats, with the quartiles as
spread; the :class:`~sb_accel.train.timer.PhaseTimer` uses CUDA events on a GPU. Every selection
time the cost model uses is measured *in the training loop* (a selection call, then a training
step, repeated), the engines' as the torch precisions': alone, with the caches warm and no
training between calls, a selection forward is faster than between training steps (small_cnn on
2 CPU cores: the prediction from standalone times was 2.49x for SB where the loop gave 1.65-1.8x).

The cost model (one steady-state epoch of ``N`` examples at batch ``B`` and selectivity ``s``;
SB's first, priming epoch costs as much as Traditional's)::

    Traditional:  N/B * step                       step = train forward + backward + optimizer
    SB (engine):  selection(engine) + s * N/B * step + (s * N/B / K + 1) * refresh(engine)
    selection:    N/B * sel(B) * f(S) / f(B)       f(n) = a + b * n: the per-call fit (S = the
                                                   selection batch), scaled to the in-loop time
                  N/B * sel(B)                     sel(B) at the training batch (without a fit)

with a refresh every ``K`` optimizer steps and one at the epoch end (``K = 0``: only the latter).
A refresh is costed at the engine's usual one (cheap where it has a cheap path); a negative fitted
``a`` (noise) counts as 0.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import TrainConfig
from .data import ArrayDataset, load_dataset
from .device import resolve_device
from .engines import EngineContext, SelectionEngine, create_engine, list_engines, load_recipe, parse_engine_spec
from .measure import (build_engine, call_costs, check_engine_specs, default_call_sizes, real_batch, refresh_costs,
                      seconds_cell, spread_fields, time_phases)
from .models import create_model, list_models
from .reporting.plots import plot_profile
from .files import atomic_write_json
from .reporting.tables import format_table
from .train.learner import build_optimizer
from .train.timer import PhaseTimer
from .strategy_options import DEFAULTS

__all__ = ["profile_models", "predict_epoch_costs", "profile_tables", "write_profile", "default_precisions",
           "default_engines"]


def default_precisions(device: torch.device) -> List[str]:
    """Training precisions worth profiling: FP16 autocast only on CUDA (on CPU it rarely pays;
    ask for it explicitly to measure it)."""
    return ["fp32", "bf16", "fp16"] if device.type == "cuda" else ["fp32", "bf16"]


def default_engines() -> List[str]:
    """Every registered selection engine except eager torch's (profiled with the training precisions)."""
    return [s for s in list_engines() if parse_engine_spec(s)[0] != "torch"]


def _train_step_timing(model: nn.Module, selector: SelectionEngine, precision: str, x: torch.Tensor,
                       y: torch.Tensor, device: torch.device, repeats: int, warmup: int) -> Dict[str, List[float]]:
    """Selection forward + training forward + backward + optimizer step, as the Trainer runs them."""
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    optimizer = build_optimizer(TrainConfig(), model)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    def step(timer: PhaseTimer) -> None:
        timer.switch("selection")
        selector.losses(x, y).cpu()  # the Trainer moves selection losses to the host too
        timer.switch("train_forward")
        model.train()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        timer.switch("backward")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        timer.switch("optimizer")
        scaler.step(optimizer)
        scaler.update()
        timer.switch("other")

    return time_phases(step, device, repeats, warmup)


def _check_inputs(models: Sequence[str], batch_sizes: Sequence[int], precisions: Sequence[str],
                  engines: Sequence[str], repeats: int, warmup: int) -> None:
    """Bad input fails before any measurement (``ValueError``, the CLI's exit code 2)."""
    unknown = [m for m in models if m not in list_models()]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; choose from: {', '.join(list_models())}")
    if not models or not batch_sizes or min(batch_sizes) < 1:
        raise ValueError("give at least one model and batch sizes >= 1")
    bad = [p for p in precisions if p not in ("fp32", "bf16", "fp16")]
    if bad or not precisions:
        raise ValueError(f"training precisions must be fp32, bf16 or fp16, got {list(precisions)}")
    check_engine_specs(engines)
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats} and {warmup}")


def profile_models(models: Sequence[str] = ("small_cnn",), batch_sizes: Sequence[int] = (128,),
                   precisions: Optional[Sequence[str]] = None, engines: Optional[Sequence[str]] = None,
                   dataset: str = "cifar10", data: Optional[ArrayDataset] = None, data_dir: Optional[str] = None,
                   device: str = "auto", repeats: int = 5, warmup: int = 2, channels_last: bool = True,
                   cache_dir: str = "engines/cache", call_sizes: Optional[Sequence[int]] = None) -> List[Dict[str, Any]]:
    """Time training steps and selection forwards; one row (dict) per model x batch x precision or engine.

    Args:
        models: registered model names.
        batch_sizes: batch sizes, each for training and selection.
        precisions: training precisions (autocast); default :func:`default_precisions`.
        engines: other selection engines; default :func:`default_engines`.
        dataset, data, data_dir: the real data the batches come from (``data`` if given).
        device: ``auto``, ``cpu``, ``cuda``...
        repeats, warmup: timed and untimed repetitions of each measurement.
        channels_last: NHWC model and batches, as the Trainer's default.
        cache_dir: the engines' cache directory.
        call_sizes: selection call sizes the per-call fit is measured at (default
            :func:`~sb_accel.measure.default_call_sizes`; sizes above the training set are dropped).

    Rows of ``kind == "train"`` have ``selection_ms`` (the torch engine of that precision),
    ``train_forward_ms``, ``backward_ms``, ``optimizer_ms`` (medians; ``*_p25``/``*_p75`` quartiles),
    ``backward_over_forward`` and ``selection_over_backward``. Rows of ``kind == "engine"`` have
    ``status`` (``"ok"`` or ``"unavailable: why"``), ``build_s``, the refresh costs of
    :func:`refresh_costs`, ``selection_ms`` and ``selection_over_backward`` (vs the FP32 backward,
    or the first precision's). Measured rows of both kinds carry their selection engine's per-call
    fit: ``call_sizes``, ``call_ms``, ``call_overhead_ms`` (a) and ``per_example_us`` (b).
    """
    dev = resolve_device(device)
    precisions = list(precisions or default_precisions(dev))
    engines = list(default_engines() if engines is None else engines)
    _check_inputs(models, batch_sizes, precisions, engines, repeats, warmup)
    data = data or load_dataset(dataset, data_dir)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    sizes = [n for n in (call_sizes or default_call_sizes(dev)) if n <= len(data.y_train)]
    max_batch = max([*batch_sizes, *sizes])
    device_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    rows: List[Dict[str, Any]] = []
    for name in models:
        torch.manual_seed(0)
        model = create_model(name, num_classes=data.num_classes, in_channels=data.in_channels).to(dev, memory_format=memory_format)
        sample = real_batch(data, max_batch, dev, memory_format)
        context = EngineContext(device=dev, sample_batches=[sample], max_batch=max_batch, cache_dir=cache_dir,
                                recipe=load_recipe(name))
        builds = [build_engine(spec, model, context) for spec in engines]
        refreshes = [refresh_costs(b.engine, model, dev, repeats, warmup) if b.engine else {} for b in builds]
        selectors = {p: create_engine(f"torch-{p}", model, context) for p in precisions}
        calls = {}  # engine name -> its per-call fit
        if len(set(sizes)) >= 2:
            built = [(b.spec, b.engine) for b in builds if b.engine is not None]
            for selector, engine in list(selectors.items()) + built:
                own = [n for n in sizes if n in getattr(engine, "buckets", sizes)]  # a graph pads to its buckets
                calls[selector] = call_costs(engine, *sample, own if len(own) >= 2 else sizes, dev, repeats, warmup)
        try:
            for batch in batch_sizes:
                x, y = sample[0][:batch], sample[1][:batch]
                base = {"model": name, "batch": batch, "device": device_name, "dataset": data.name,
                        "dataset_size": len(data.y_train)}
                backward_ms: Dict[str, float] = {}
                for precision in precisions:
                    t = _train_step_timing(model, selectors[precision], precision, x, y, dev, repeats, warmup)
                    row = {**base, "kind": "train", "name": precision, "status": "ok", **calls.get(precision, {})}
                    for phase in ("selection", "train_forward", "backward", "optimizer"):
                        row.update(spread_fields(phase, t[phase]))
                    row["backward_over_forward"] = row["backward_ms"] / row["train_forward_ms"]
                    row["selection_over_backward"] = row["selection_ms"] / row["backward_ms"]
                    backward_ms[precision] = row["backward_ms"]
                    rows.append(row)
                reference = backward_ms.get("fp32", backward_ms[precisions[0]])
                for build, refresh in zip(builds, refreshes):
                    row = {**base, "kind": "engine", "name": build.spec, "status": build.status,
                           "build_s": build.build_s, **refresh, **calls.get(build.spec, {})}
                    if build.engine is not None:  # in the loop, like the precisions' selection times
                        t = _train_step_timing(model, build.engine, precisions[0], x, y, dev, repeats, warmup)
                        row.update(spread_fields("selection", t["selection"]))
                        row["selection_over_backward"] = row["selection_ms"] / reference
                    rows.append(row)
        finally:
            for b in builds:
                if b.engine is not None:
                    b.engine.close()
    return rows


def selection_epoch_seconds(row: Dict[str, Any], examples: float, selection_batch: int) -> float:
    """Seconds to score ``examples`` candidates in calls of ``selection_batch`` with the engine of
    ``row``: its in-loop time of one call at the row's batch size per that many examples, scaled by
    its per-call fit ``f(n) = a + b * n`` from the row's batch to ``selection_batch`` (the fit,
    measured alone, gives how the cost changes with the call size; the loop gives its level)."""
    per_example_s = row["selection_ms"] / 1e3 / row["batch"]
    if row.get("per_example_us") is not None:
        def fit(n: float) -> float:
            return max(row["call_overhead_ms"], 0.0) / 1e3 + n * row["per_example_us"] / 1e6

        per_example_s *= (fit(selection_batch) / selection_batch) / (fit(row["batch"]) / row["batch"])
    return examples * per_example_s


def predict_epoch_costs(rows: Sequence[Dict[str, Any]], selectivity: float = DEFAULTS.selectivity,
                        dataset_size: Optional[int] = None, refresh_every_steps: int = 1,
                        selection_batch: Optional[int] = None) -> List[Dict[str, Any]]:
    """Predicted seconds per steady-state epoch of Traditional, SB and SB with each engine (module
    docstring's cost model), per model x batch x training precision, from :func:`profile_models` rows.
    ``dataset_size`` defaults to the size of the training split the rows were measured on;
    ``selection_batch`` (candidates per selection call) to the training batch size."""
    if not 0.0 < selectivity <= 1.0:
        raise ValueError(f"selectivity must be in (0, 1], got {selectivity}")
    if refresh_every_steps < 0:
        raise ValueError(f"refresh_every_steps must be >= 0, got {refresh_every_steps}")
    out: List[Dict[str, Any]] = []
    for train in (r for r in rows if r["kind"] == "train"):
        size = dataset_size or train["dataset_size"]
        batches = size / train["batch"]
        step_s = (train["train_forward_ms"] + train["backward_ms"] + train["optimizer_ms"]) / 1e3
        same = [r for r in rows if r["kind"] == "engine" and r["status"] == "ok"
                and (r["model"], r["batch"]) == (train["model"], train["batch"])]
        calls = selection_batch or train["batch"]
        options = [("traditional", 0.0, 1.0, 0.0),
                   (f"sb torch-{train['name']}", selection_epoch_seconds(train, size, calls), selectivity, 0.0)]
        # plus the epoch-end refresh, skipped when the last step's refresh took the same weights (K = 1)
        refreshes = (selectivity * batches / refresh_every_steps if refresh_every_steps else 0.0) + \
            (0.0 if refresh_every_steps == 1 else 1.0)
        options += [(f"sb {r['name']}", selection_epoch_seconds(r, size, calls), selectivity,
                     refreshes * (r["refresh_s"] or 0.0)) for r in same]  # a live engine (refresh_s None): never
        traditional_s = batches * step_s
        for strategy, selection_s, share, refresh_s in options:
            train_s = share * batches * step_s
            total = selection_s + train_s + refresh_s
            out.append({"model": train["model"], "batch": train["batch"], "precision": train["name"],
                        "strategy": strategy, "selection_s": selection_s, "train_s": train_s,
                        "refresh_s": refresh_s, "epoch_s": total, "speedup": traditional_s / total,
                        "dataset_size": size, "selectivity": selectivity})
    return out


# A measurement whose half interquartile range exceeds this share of its median is flagged: on a
# shared CPU another process can slow a repeat several-fold, and a median of few repeats is then
# not to be trusted.
NOISY_SPREAD = 0.10


def _half_iqr(row: Dict[str, Any], key: str) -> float:
    return (row[f"{key}_ms_p75"] - row[f"{key}_ms_p25"]) / 2


def _ms(row: Dict[str, Any], key: str) -> str:
    """``median ±half-IQR`` of a ``*_ms`` field (``*`` if noisy), or ``-``."""
    if row.get(f"{key}_ms") is None:
        return "-"
    noisy = "*" if _half_iqr(row, key) > NOISY_SPREAD * row[f"{key}_ms"] else ""
    return f"{row[f'{key}_ms']:.2f} ±{_half_iqr(row, key):.2f}{noisy}"


def _fit(row: Dict[str, Any], key: str, fmt: str) -> str:
    return "-" if row.get(key) is None else format(row[key], fmt)


def profile_tables(rows: Sequence[Dict[str, Any]], costs: Sequence[Dict[str, Any]]) -> str:
    """The timing table (medians ± half the interquartile range), unavailable engines, and the
    predicted per-epoch costs, as terminal text."""
    timing = [[r["model"], r["batch"], r["name"] if r["kind"] == "train" else f"select {r['name']}",
               _ms(r, "selection"), _ms(r, "train_forward"), _ms(r, "backward"), _ms(r, "optimizer"),
               r.get("backward_over_forward"), r.get("selection_over_backward"), seconds_cell(r.get("build_s")),
               seconds_cell(r.get("refresh_s")), _fit(r, "call_overhead_ms", ".2f"), _fit(r, "per_example_us", ".1f")]
              for r in rows if r["status"] == "ok"]
    parts = [f"device: {rows[0]['device']}; ms per batch, median ±half-IQR; a selection call of n examples "
             "costs a + b n (least squares over the call sizes)" if rows else "no measurements",
             format_table(timing, ["model", "batch", "precision / engine", "selection fwd", "train fwd", "backward",
                                   "optimizer", "bwd/fwd", "sel/bwd", "build s", "refresh s", "call ms (a)",
                                   "us/example (b)"])]
    if any("*" in cell for row in timing for cell in row[3:7]):
        parts.append(f"* varies by more than {NOISY_SPREAD:.0%} between repeats: is another process using the "
                     "CPU/GPU? Rerun on a quiet machine or with more --repeats.")
    unavailable = {r["name"]: r["status"] for r in rows if r["status"] != "ok"}
    parts += [f"{name}: {status}" for name, status in unavailable.items()]
    if costs:
        c0 = costs[0]
        parts += ["", f"predicted seconds per epoch ({c0['dataset_size']} examples, selectivity {c0['selectivity']:g}; "
                      "SB: selection + s x training step + refreshes)",
                  format_table([[c["model"], c["batch"], c["precision"], c["strategy"], c["selection_s"], c["train_s"],
                                 c["refresh_s"], c["epoch_s"], f"{c['speedup']:.2f}x"] for c in costs],
                               ["model", "batch", "train prec.", "strategy", "selection s", "train s", "refresh s",
                                "epoch s", "vs Traditional"])]
    return "\n".join(parts)


def write_profile(rows: Sequence[Dict[str, Any]], costs: Sequence[Dict[str, Any]], out_dir: str | Path,
                  json_path: Optional[str | Path] = None) -> List[Path]:
    """Write ``profile.json`` (or ``json_path``) and the Fig. 18-style plot ``profile.png``/``.svg``."""
    out = Path(out_dir)
    json_file = atomic_write_json(json_path or out / "profile.json", {"rows": list(rows), "costs": list(costs)})
    return [json_file] + plot_profile(rows, out / "profile")
