"""``sb-accel compare``: what each selection engine / precision costs and how far its selection
decisions drift from FP32.

On one model (from a run's checkpoint, or briefly trained here: losses of an untrained model are
nearly uniform, so quantisation noise alone would reorder them) and real training batches, for each
engine: throughput, latency per batch, build and refresh cost; the error of its per-example losses
against the torch FP32 reference (max and mean absolute); the rank agreement of the losses
(Spearman, Kendall); and the agreement of the examples Selective-Backprop keeps at a selectivity,
each engine's losses run through the same loss history and the *same* uniform draws, so any
difference in the kept set comes from the losses alone (Jaccard, fraction of decisions flipped).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy import stats

from .config import TrainConfig
from .data import ArrayDataset, Augment, CandidateLoader, load_dataset
from .device import resolve_device
from .engines import EngineContext, list_engines
from .measure import (build_engine, check_engine_specs, real_batch, refresh_costs, seconds_cell, selection_seconds,
                      spread_fields)
from .reporting.plots import plot_compare
from .files import atomic_write_json
from .reporting.tables import format_table
from .selection import LossHistory, beta_for_selectivity, keep_probability
from .train.learner import build_model, build_optimizer
from .train.run_directory import CHECKPOINT_NAME, load_checkpoint
from .strategy_options import DEFAULTS

__all__ = ["REFERENCE", "prepare_model", "compare_engines", "kept_mask", "agreement", "compare_table", "write_compare"]

REFERENCE = "torch-fp32"


def prepare_model(model: str = "small_cnn", dataset: Optional[str] = None, data_dir: Optional[str] = None,
                  checkpoint: Optional[str | Path] = None, train_steps: int = 300, batch_size: int = 128,
                  lr: float = 0.05, device: torch.device | str = "cpu", seed: int = 0,
                  data: Optional[ArrayDataset] = None, channels_last: bool = True) -> Tuple[nn.Module, ArrayDataset, str]:
    """The model to compare engines on, its data, and a line saying where the weights came from.

    With ``checkpoint`` (a run directory or its ``checkpoint.pt``) the run's model, width and
    dataset are used (``dataset`` overrides the latter); otherwise ``model`` is trained for
    ``train_steps`` SGD steps (momentum 0.9, constant ``lr``) on un-augmented batches of ``dataset``
    (default cifar10), in NHWC memory format if ``channels_last`` (the Trainer's default, ~1.8x
    faster on CPU). ``data`` skips loading. Returns the model in eval mode on ``device``.
    """
    device = torch.device(device)
    if train_steps < 0 or batch_size < 1:
        raise ValueError(f"need train_steps >= 0 and batch_size >= 1, got {train_steps} and {batch_size}")
    if checkpoint is not None:
        path = Path(checkpoint)
        run_dir = path.parent if path.is_file() else path
        state = load_checkpoint(run_dir)
        if state is None:
            raise FileNotFoundError(f"{checkpoint}: no {CHECKPOINT_NAME} there; pass a run directory of sb-accel train")
        cfg = TrainConfig.from_dict(state["config"])
        data = data or load_dataset(dataset or cfg.dataset, data_dir or cfg.data_dir)
        net = build_model(cfg, data.num_classes, data.in_channels)
        net.load_state_dict(state["model"])
        origin = f"{cfg.model} from {run_dir / CHECKPOINT_NAME} (step {state['step']}, test acc {state['last_acc']:.3f})"
        return net.to(device).eval(), data, origin
    data = data or load_dataset(dataset or "cifar10", data_dir)
    cfg = TrainConfig(model=model, lr=lr, batch_size=batch_size, seed=seed)
    torch.manual_seed(seed)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    net = build_model(cfg, data.num_classes, data.in_channels).to(device, memory_format=memory_format)
    optimizer = build_optimizer(cfg, net)
    loader = CandidateLoader(data, Augment(), device, seed=seed, memory_format=memory_format)
    net.train()
    step, loss = 0, torch.zeros(())
    while step < train_steps:
        for x, y, _ in loader.epoch(batch_size):
            loss = F.cross_entropy(net(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if step == train_steps:
                break
    origin = f"{model} trained here for {train_steps} SGD steps (batch {batch_size}, lr {lr}) on {data.name}"
    if train_steps:
        origin += f"; last training loss {loss.item():.3f}"
    return net.eval(), data, origin


def kept_mask(losses: torch.Tensor, batch_size: int, selectivity: float, uniforms: torch.Tensor,
              history: int = DEFAULTS.history) -> torch.Tensor:
    """SB's keep decisions for ``losses`` seen in consecutive batches of ``batch_size``: a new loss
    history of length ``history`` takes each batch before scoring it (the authors' order), and an
    example is kept if its ``uniforms`` draw is below ``CDF ** beta``."""
    hist = LossHistory(history, "batch")
    beta = beta_for_selectivity(selectivity)
    probs = torch.cat([keep_probability(hist.update_and_cdf(chunk), beta) for chunk in losses.split(batch_size)])
    return uniforms < probs


def agreement(losses: torch.Tensor, reference: torch.Tensor, keep: torch.Tensor,
              reference_keep: torch.Tensor) -> Dict[str, float]:
    """Loss error, rank correlations and kept-set agreement of one engine against the reference."""
    diff = (losses.double() - reference.double()).abs()
    union = int((keep | reference_keep).sum())
    return {
        "loss_max_abs": float(diff.max()),
        "loss_mean_abs": float(diff.mean()),
        "spearman": float(stats.spearmanr(losses.numpy(), reference.numpy()).statistic),
        "kendall": float(stats.kendalltau(losses.numpy(), reference.numpy()).statistic),
        "jaccard": int((keep & reference_keep).sum()) / union if union else 1.0,
        "flipped": float((keep != reference_keep).double().mean()),
        "kept": float(keep.double().mean()),
    }


def compare_engines(model: nn.Module, data: ArrayDataset, engines: Optional[Sequence[str]] = None,
                    examples: int = 2048, batch_size: int = 128, selectivity: float = DEFAULTS.selectivity,
                    repeats: int = 3, warmup: int = 1, device: torch.device | str = "cpu", seed: int = 0,
                    history: int = DEFAULTS.history, channels_last: bool = True,
                    cache_dir: str = "engines/cache") -> List[Dict[str, Any]]:
    """Measure every engine in ``engines`` (default: all registered) against torch FP32.

    Args:
        model: the model (on ``device``); it is not modified.
        data: real data; ``examples`` training examples (a fixed random choice, un-augmented) are
            scored in batches of ``batch_size`` (a smaller last batch is dropped).
        selectivity: SB's target kept fraction for the kept-set agreement.
        repeats, warmup: timed and untimed passes over the examples for the latency.
        seed: fixes the examples and the uniform draws shared by all engines.
        history: SB's loss-history length ``R``.

    Returns one row per engine, the reference first: ``engine``, ``status`` (``"ok"`` or
    ``"unavailable: why"``), ``build_s``, refresh costs (:func:`~sb_accel.measure.refresh_costs`),
    ``latency_ms`` (median per batch, with ``_p25``/``_p75``), ``throughput`` (examples/s) and the
    :func:`agreement` fields.
    """
    requested = list_engines() if engines is None else engines
    specs = [REFERENCE] + [s for s in dict.fromkeys(requested) if s != REFERENCE]
    check_engine_specs(specs)
    device = resolve_device(str(device))
    n = (examples // batch_size) * batch_size
    if n < 2 or batch_size < 1:
        raise ValueError(f"need at least one full batch: examples={examples}, batch size={batch_size}")
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format).eval()
    x, y = real_batch(data, n, device, memory_format, seed=seed)
    batches = list(zip(x.split(batch_size), y.split(batch_size)))
    context = EngineContext(device=device, sample_batches=batches[:4], max_batch=batch_size, cache_dir=cache_dir)
    uniforms = torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)

    rows: List[Dict[str, Any]] = []
    reference: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
    for spec in specs:
        build = build_engine(spec, model, context)
        row: Dict[str, Any] = {"engine": spec, "status": build.status, "build_s": build.build_s}
        rows.append(row)
        if build.engine is None:
            continue
        engine = build.engine
        try:
            row.update(refresh_costs(engine, model, device))
            seconds, losses = selection_seconds(engine, batches, device, repeats, warmup)
        finally:
            engine.close()
        row.update(spread_fields("latency", [t / len(batches) for t in seconds]))
        row["throughput"] = batch_size / (row["latency_ms"] / 1e3)
        keep = kept_mask(losses, batch_size, selectivity, uniforms, history)
        if reference is None:  # the first spec is the reference
            reference = (losses, keep)
        row.update(agreement(losses, reference[0], keep, reference[1]))
        row.update(examples=n, batch_size=batch_size, selectivity=selectivity)
    return rows


def compare_table(rows: Sequence[Dict[str, Any]]) -> str:
    """The comparison as terminal text: measured engines, then the unavailable ones with why."""
    measured = [r for r in rows if r["status"] == "ok"]
    table = [[r["engine"], f"{r['throughput']:.0f}", f"{r['latency_ms']:.2f} ±{(r['latency_ms_p75'] - r['latency_ms_p25']) / 2:.2f}",
              *(seconds_cell(r[k]) for k in ("build_s", "refresh_s", "refresh_rebuild_s", "refresh_cheap_s")),
              f"{r['loss_max_abs']:.2e}",
              f"{r['loss_mean_abs']:.2e}", f"{r['spearman']:.4f}", f"{r['kendall']:.4f}", f"{r['jaccard']:.3f}",
              f"{100 * r['flipped']:.2f}%", f"{100 * r['kept']:.1f}%"] for r in measured]
    head = (f"{measured[0]['examples']} examples in batches of {measured[0]['batch_size']}; agreement vs {REFERENCE}; "
            f"kept sets at selectivity {measured[0]['selectivity']:g} with the same draws") if measured else ""
    lines = [head, format_table(table, ["engine", "examples/s", "latency ms", "build s", "refresh s", "rebuild s",
                                        "cheap refresh s", "max|dloss|", "mean|dloss|", "Spearman", "Kendall",
                                        "Jaccard", "flipped", "kept"])]
    lines += [f"{r['engine']}: {r['status']}" for r in rows if r["status"] != "ok"]
    return "\n".join(lines)


def write_compare(rows: Sequence[Dict[str, Any]], out_dir: str | Path, json_path: Optional[str | Path] = None,
                  origin: str = "") -> List[Path]:
    """Write ``compare.json`` (or ``json_path``) and the throughput-vs-agreement plot."""
    out = Path(out_dir)
    json_file = atomic_write_json(json_path or out / "compare.json", {"model": origin, "rows": list(rows)})
    return [json_file] + plot_compare(rows, out / "compare")
