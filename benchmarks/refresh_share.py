"""What engine refreshes cost a Selective-Backprop epoch, and how close SB gets to its bound.

    python benchmarks/refresh_share.py --model small_cnn --train-subset 10000 --epochs 3 --rounds 2 \\
        --out benchmarks/results/<date>-x86_64-cpu2-refresh

In ONE process, each round runs, in an order that rotates from round to round (background load
then hits every configuration alike): Traditional, and SB with each ``--engines`` selection engine
(default: torch-fp32, the live model, and onnxruntime-int8, refreshed every step). Each is a
:class:`~sb_accel.train.Trainer` run of ``--epochs`` epochs on the same data subset; SB's epoch 0
primes (trains on everything, no selection, no refresh), so epochs 1.. are its steady state and are
compared with Traditional's same epochs of the same round. Per steady epoch (from the Trainer's
``epoch`` events: wall clock without evaluation, and the phase times):

* ``refresh_share``: the ``refresh`` phase over the SB epoch's wall clock;
* ``speedup``: Traditional's epoch wall over SB's;
* ``bound``: Amdahl's bound for SB given its own selection cost: with ``P`` Traditional's
  train-forward + backward + optimizer time, ``k`` SB's kept fraction (backprops / candidates)
  and ``S`` SB's selection phase minus Traditional's (the forwards; batching costs both)::

      bound = T_trad / (T_trad - P + k * P + S)

  i.e. everything but training and selection forwards (data, bookkeeping, refresh) is taken at
  Traditional's cost: refresh and any other overhead show up as ``efficiency = speedup / bound``
  below 1.

The same three against SB's *own* priming epoch (``own_*``: epoch 0 of the same run, which trains on
every example without selection, minus its refresh phase, the engine build): minutes apart in the
same run rather than in another run, so less exposed to a load that drifts between runs (on a
shared machine other processes can slow one run several-fold against the next); the priming epoch
pays the warm-up that Traditional's epoch 0 also pays (~1.5% at low load).

**Prediction** (``--profile-repeats`` > 0): at the start of every round, in the same process,
``sb-accel profile``'s cost model (:func:`~sb_accel.profile.profile_models` on the same model, batch, data
subset and engines, then :func:`~sb_accel.profile.predict_epoch_costs` at SB's selectivity and
the refresh interval in effect) predicts each SB configuration's per-epoch speedup over
Traditional; the report sets the median prediction beside the measured median (the ratio should be
within 15%).

The load average (``os.getloadavg``) is recorded before every run and ``uptime`` at the start and
end. Writes ``refresh_share.json`` and ``refresh_share.md`` (the per-epoch table, the medians over
rounds with their per-round range, and the prediction) to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

from sb_accel.config import TrainConfig
from sb_accel.data import load_dataset
from sb_accel.engines import default_schedule, parse_engine_spec
from sb_accel.files import atomic_write_json
from sb_accel.reporting import load_run, refresh_kind
from sb_accel.train import Trainer

TRAINING_PHASES = ("train_forward", "backward", "optimizer")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default="small_cnn")
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--train-subset", type=int, default=10000)
    parser.add_argument("--epochs", type=int, default=3, help="per run; SB's epoch 0 primes")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--engines", nargs="+", default=["torch-fp32", "onnxruntime-int8"])
    parser.add_argument("--refresh-every-steps", type=int, default=None, help="default: each engine's (CADENCES)")
    parser.add_argument("--profile-repeats", type=int, default=10,
                        help="repeats of sb-accel profile's measurements for the prediction (0: no prediction)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rewrite", action="store_true",
                        help="measure nothing: rewrite the report from --out's refresh_share.json")
    args = parser.parse_args(argv)
    if args.epochs < 2 or args.rounds < 1:
        parser.error("--epochs must be >= 2 (epoch 0 primes) and --rounds >= 1")
    return args


def epoch_rows(run_dir: Path) -> List[Dict[str, Any]]:
    """Per-epoch wall, phases and counters of a run (its ``epoch`` events hold running totals)."""
    run = load_run(run_dir)
    rows, last = [], {"wall": 0.0, "phases": {}, "candidates": 0, "backprops": 0}
    for e in run.of("epoch"):
        phases = {k: v - last["phases"].get(k, 0.0) for k, v in e["phases"].items()}
        rows.append({"epoch": e["epoch"] - 1, "wall": e["wall"] - last["wall"], "phases": phases,
                     "candidates": e["candidates"] - last["candidates"], "backprops": e["backprops"] - last["backprops"]})
        last = e
    return rows


def compare(trad: Dict[str, Any], sb: Dict[str, Any]) -> Dict[str, float]:
    """Refresh share, speedup, Amdahl bound and efficiency of one SB epoch against Traditional's."""
    p = sum(trad["phases"].get(k, 0.0) for k in TRAINING_PHASES)
    kept = sb["backprops"] / max(sb["candidates"], 1)
    selection = sb["phases"].get("selection", 0.0) - trad["phases"].get("selection", 0.0)
    bound = trad["wall"] / (trad["wall"] - p + kept * p + selection)
    speedup = trad["wall"] / sb["wall"]
    return {"refresh_share": sb["phases"].get("refresh", 0.0) / sb["wall"], "speedup": speedup, "bound": bound,
            "efficiency": speedup / bound, "kept": kept, "sb_wall": sb["wall"], "trad_wall": trad["wall"],
            "selection_s": sb["phases"].get("selection", 0.0), "refresh_s": sb["phases"].get("refresh", 0.0)}


def own_priming(sb_epoch0: Dict[str, Any]) -> Dict[str, Any]:
    """SB's priming epoch as a Traditional epoch: without its refresh phase (the engine build)."""
    refresh = sb_epoch0["phases"].get("refresh", 0.0)
    return {**sb_epoch0, "wall": sb_epoch0["wall"] - refresh, "phases": {**sb_epoch0["phases"], "refresh": 0.0}}


def run_once(name: str, cfg: TrainConfig, data) -> Dict[str, Any]:
    load = os.getloadavg()[0]
    start = time.perf_counter()
    summary = Trainer(cfg, data=data).fit()
    rows = epoch_rows(Path(cfg.run_dir))
    refreshes = load_run(Path(cfg.run_dir)).of("refresh")
    cheap = [e["seconds"] for e in refreshes if refresh_kind(e) == "cheap" and not e.get("validated")]
    return {"name": name, "load_before": load, "seconds": time.perf_counter() - start, "epochs": rows,
            "refreshes": len(refreshes), "validated": sum(1 for e in refreshes if e.get("validated")),
            "kinds": {k: sum(1 for e in refreshes if refresh_kind(e) == k) for k in ("exact", "cheap", "rebuild")},
            "rebuild_seconds": [e["seconds"] for e in refreshes if refresh_kind(e) == "rebuild"],
            "validated_seconds": [e["seconds"] for e in refreshes if refresh_kind(e) == "cheap" and e.get("validated")],
            "cheap_median_seconds": statistics.median(cheap) if cheap else None,
            "refresh_steps": [e["step"] for e in refreshes][:3], "test_acc": summary["test_acc"]}


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.rewrite:
        old = json.loads((args.out / "refresh_share.json").read_text())
        write(args, old["command"].split()[1:], old["runs"], old.get("predicted", []), old.get("uptime", {}))
        return 0
    torch.set_num_threads(args.threads)
    data = load_dataset(args.dataset).subset(train=args.train_subset, test=500, seed=0)
    configs = {"traditional": {"strategy": "traditional"}}
    configs.update({f"sb/{spec}": {"strategy": "sb", "engine": spec} for spec in args.engines})
    names = list(configs)
    runs: List[Dict[str, Any]] = []
    uptime = {"start": _uptime()}
    predicted: List[Dict[str, Dict[str, float]]] = []  # per round
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            if args.profile_repeats > 0:
                predicted.append(predict(args, data))
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                cfg = TrainConfig(dataset=args.dataset, model=args.model, epochs=args.epochs, batch_size=args.batch_size,
                                  refresh_every_steps=args.refresh_every_steps, threads=args.threads, seed=r,
                                  run_dir=f"{tmp}/{r}-{name.replace('/', '-')}", progress=False, checkpoint=False,
                                  **configs[name])
                result = run_once(name, cfg, data)
                result["round"] = r
                runs.append(result)
                print(f"round {r} {name}: {result['seconds']:.1f} s, load {result['load_before']:.2f}", flush=True)
            uptime["end"] = _uptime()
            write(args, argv, runs, predicted, uptime)  # after every round: a run cut short keeps what it measured
    return 0


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def predict(args: argparse.Namespace, data) -> Dict[str, Dict[str, float]]:
    """``sb-accel profile``'s predicted steady-epoch costs of every SB configuration, by config name."""
    from sb_accel.profile import predict_epoch_costs, profile_models

    snapshots = [spec for spec in args.engines if parse_engine_spec(spec)[0] != "torch"]
    rows = profile_models([args.model], [args.batch_size], ["fp32"], snapshots, data=data, device="cpu",
                          repeats=args.profile_repeats, warmup=2, cache_dir=tempfile.mkdtemp(prefix="sb-profile-"))
    predicted = {}
    for spec in args.engines:
        every = (args.refresh_every_steps if args.refresh_every_steps is not None
                 else default_schedule(parse_engine_spec(spec)[0], "cpu").every_steps)
        # SB on CPU scores one training batch per selection call: the profile's default selection batch
        costs = predict_epoch_costs(rows, TrainConfig().selectivity, len(data.y_train), every)
        cost = next(c for c in costs if c["strategy"] == f"sb {spec}")
        predicted[f"sb/{spec}"] = {k: cost[k] for k in ("speedup", "selection_s", "train_s", "refresh_s", "epoch_s")}
    return predicted


def write(args: argparse.Namespace, argv: Optional[Sequence[str]], runs: List[Dict[str, Any]],
          predicted: List[Dict[str, Dict[str, float]]], uptime: Dict[str, str]) -> None:
    """Compare every SB run with its round's Traditional run; write the JSON and the table."""
    table = []
    for r in sorted({x["round"] for x in runs}):
        trad = next(x for x in runs if x["round"] == r and x["name"] == "traditional")
        for run in (x for x in runs if x["round"] == r and x["name"] != "traditional"):
            for e in range(1, args.epochs):
                row = {"round": r, "config": run["name"], "epoch": e, **compare(trad["epochs"][e], run["epochs"][e])}
                own = compare(own_priming(run["epochs"][0]), run["epochs"][e])
                row.update({f"own_{k}": own[k] for k in ("speedup", "bound", "efficiency")})
                if r < len(predicted) and run["name"] in predicted[r]:
                    row["predicted_speedup"] = predicted[r][run["name"]]["speedup"]
                table.append(row)
    medians = {}
    for name in sorted({t["config"] for t in table}):
        rows = [t for t in table if t["config"] == name]
        keys = ("refresh_share", "speedup", "bound", "efficiency", "own_speedup", "own_bound", "own_efficiency")
        medians[name] = {k: statistics.median(t[k] for t in rows) for k in keys + ("kept",)}
        medians[name].update({f"{k}_range": [min(t[k] for t in rows), max(t[k] for t in rows)] for k in keys})
        if predicted and name in predicted[0]:
            medians[name]["predicted_speedup"] = statistics.median(p[name]["speedup"] for p in predicted)
            medians[name]["predicted_over_measured"] = medians[name]["predicted_speedup"] / medians[name]["speedup"]
            medians[name]["predicted_over_own"] = medians[name]["predicted_speedup"] / medians[name]["own_speedup"]
    result = {"command": " ".join([Path(sys.argv[0]).name] + list(argv if argv is not None else sys.argv[1:])),
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__},
              "args": {k: str(v) for k, v in vars(args).items()}, "uptime": uptime, "predicted": predicted,
              "runs": runs, "epochs": table, "medians": medians}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "refresh_share.json", result)
    (args.out / "refresh_share.md").write_text(report(result))
    print(report(result), flush=True)


def report(result: Dict[str, Any]) -> str:
    lines = [f"`{result['command']}`", "", "| round | config | epoch | SB s | Trad s | kept | refresh share | speedup | "
             "bound | efficiency | own: speedup | bound | efficiency | predicted |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for t in result["epochs"]:
        predicted = f"{t['predicted_speedup']:.2f}x" if "predicted_speedup" in t else "-"
        lines.append(f"| {t['round']} | {t['config']} | {t['epoch']} | {t['sb_wall']:.1f} | {t['trad_wall']:.1f} | "
                     f"{t['kept']:.2f} | {t['refresh_share']:.1%} | {t['speedup']:.2f}x | {t['bound']:.2f}x | "
                     f"{t['efficiency']:.1%} | {t['own_speedup']:.2f}x | {t['own_bound']:.2f}x | "
                     f"{t['own_efficiency']:.1%} | {predicted} |")
    lines += ["", "Medians over steady epochs and rounds [min-max over them]; vs Traditional's run of the round, and "
              "vs SB's own priming epoch (own); predicted: `sb-accel profile`'s cost model, measured in the same "
              "process at the start of each round (median over rounds), over the measured speedup:", "",
              "| config | refresh share | speedup | bound | efficiency | own speedup | own bound | own efficiency | "
              "predicted | / measured | / own |", "|---|---|---|---|---|---|---|---|---|---|---|"]

    def cell(m: Dict[str, Any], key: str, fmt: str) -> str:
        low, high = m[f"{key}_range"]
        return f"{format(m[key], fmt)} [{format(low, fmt)}-{format(high, fmt)}]"

    for name, m in result["medians"].items():
        prediction = (f"{m['predicted_speedup']:.2f}x | {m['predicted_over_measured']:.2f} | {m['predicted_over_own']:.2f}"
                      if "predicted_speedup" in m else "- | - | -")
        lines.append(f"| {name} | {cell(m, 'refresh_share', '.1%')} | {cell(m, 'speedup', '.2f')} | {m['bound']:.2f} | "
                     f"{cell(m, 'efficiency', '.1%')} | {cell(m, 'own_speedup', '.2f')} | {m['own_bound']:.2f} | "
                     f"{cell(m, 'own_efficiency', '.1%')} | {prediction} |")
    lines += ["", f"uptime at start: `{result['uptime'].get('start')}`; at end: `{result['uptime'].get('end')}`"]
    lines += ["", "Runs (load average before each; refreshes: count, validated, by kind):", ""]
    for run in result["runs"]:
        costs = ""
        if run.get("cheap_median_seconds") is not None:
            costs = (f"; a cheap refresh {run['cheap_median_seconds'] * 1e3:.1f} ms (median), validated "
                     f"{[round(x * 1e3, 1) for x in run['validated_seconds']]} ms, rebuilds "
                     f"{[round(x, 2) for x in run['rebuild_seconds']]} s")
        lines.append(f"- round {run['round']} {run['name']}: {run['seconds']:.0f} s, load {run['load_before']:.2f}, "
                     f"refreshes {run['refreshes']} (validated {run['validated']}, {run['kinds']}), first at steps "
                     f"{run['refresh_steps']}, test acc {run['test_acc']:.3f}{costs}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
