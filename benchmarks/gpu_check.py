"""One command that checks the CUDA path on a GPU: ``make gpu-check`` (or ``python3 benchmarks/gpu_check.py``).

At most ~8 minutes on one H100/H200, no network; it needs only ``python3`` with torch (and
torchvision, Pillow), the package used from the checkout (``PYTHONPATH=.``), and CIFAR-10 in
``--data-dir`` (default ``.gpu-data/``, git-ignored: copy ``../shared/data/cifar10_jpeg.npz`` there).
Steps, each with its own time limit (a step that would overrun the overall ``--budget-s`` is skipped
and says so):

1. ``gpu-tests``: ``python3 -m pytest -m gpu``. Every GPU test must execute: a GPU test that skips
   for want of a GPU fails the step (on a GPU machine that is a broken probe); skips for a missing
   optional package (TensorRT) are listed.
2. ``sync-budget``: ``pytest tests/test_sync_budget.py`` (the CPU stand-in harness), then the real
   CUDA loop: a Trainer per strategy on ResNet-18 / a CIFAR-10 subset under
   ``torch.cuda.set_sync_debug_mode("warn")``, syncs counted per candidate batch (periodic reads
   included; the harness gives the per-site breakdown).
3. ``gpu-engines``: ``benchmarks/gpu_engines.py --sizes 1024`` (eager vs CUDA graphs, no compile).
4. ``ratios``: every strategy at its defaults on ResNet-18 / CIFAR-10 for ``--epochs`` epochs (4),
   the per-epoch wall-clock of each vs Traditional's.

Everything lands in ``benchmarks/results/<date>-<gpu>/`` (``--results-root`` changes the parent),
at most 8 flat files with ``summary.md`` and ``summary.json``. Without pytest the test steps say
so and the rest runs. Exit status: 0 all steps passed, 1 a step failed or could not run, 2 no GPU
(or bad arguments).

On a lent device machine (the ``run`` tool) the data travels in the carried, git-ignored folder::

    mkdir -p .gpu-data && cp ../shared/data/cifar10_jpeg.npz .gpu-data/     # here, once
    run(command="python3 benchmarks/gpu_check.py --results-root $OUT", carry=[".gpu-data"], timeout_s=590)

and the files come back under ``files_at``; copy them to ``benchmarks/results/`` and commit.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import functools
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
import time
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the package from the checkout, installed or not
    sys.path.insert(0, str(ROOT))

STEPS = ("gpu-tests", "sync-budget", "gpu-engines", "ratios")
STRATEGIES = ("traditional", "sb", "stale-sb", "kath18", "infobatch")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(ROOT / ".gpu-data"),
                        help="folder holding cifar10_jpeg.npz (or cifar10.npz)")
    parser.add_argument("--results-root", default=str(ROOT / "benchmarks" / "results"),
                        help="the results go to <results-root>/<date>-<gpu>/")
    parser.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS), help="which steps to run")
    parser.add_argument("--budget-s", type=float, default=480.0, help="overall time budget in seconds")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per strategy in the ratios step")
    parser.add_argument("--sync-subset", type=int, default=4096, help="training examples in the CUDA sync count")
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.budget_s <= 0 or args.sync_subset < 256:
        parser.error("--epochs must be >= 1, --budget-s > 0 and --sync-subset >= 256")
    return args


def results_dir(root: str | Path, gpu_name: str, today: Optional[_dt.date] = None) -> Path:
    """``<root>/<YYYY-MM-DD>-<gpu>``, the GPU's name as a lower-case slug (``nvidia-h200``)."""
    slug = re.sub(r"[^a-z0-9]+", "-", gpu_name.lower()).strip("-") or "gpu"
    return Path(root) / f"{(today or _dt.date.today()).isoformat()}-{slug}"


# --- the steps ----------------------------------------------------------------------------------------
def _pytest_available() -> bool:
    return importlib.util.find_spec("pytest") is not None


def _run(command: List[str], log: Path, timeout: float) -> Dict[str, Any]:
    """Run ``command`` from the repository root with the package on PYTHONPATH; output to ``log``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        status, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as exc:
        status = "timeout"
        output = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"$ {' '.join(command)}\n{output}\n")
    return {"returncode": status, "seconds": round(time.perf_counter() - start, 1), "tail": output[-2000:]}


def skipped_tests(junit_xml: Path) -> List[str]:
    """The tests a pytest JUnit report lists as skipped, with the reason."""
    skipped = []
    for case in ET.parse(junit_xml).getroot().iter("testcase"):
        for skip in case.findall("skipped"):
            skipped.append(f"{case.get('classname')}::{case.get('name')}: {skip.get('message', '')}")
    return skipped


def step_gpu_tests(out: Path, timeout: float) -> Dict[str, Any]:
    if not _pytest_available():
        return {"status": "not run", "detail": "pytest is not installed here: the GPU tests did not run "
                                               "(python3 -m pip install pytest, or carry its wheel)"}
    report = out / "pytest-gpu.xml"
    run = _run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rs", "-p", "no:cacheprovider",
                f"--junitxml={report}"], out / "pytest-gpu.log", timeout)
    skipped = skipped_tests(report) if report.exists() else []
    no_gpu = [s for s in skipped if wants_a_gpu(s)]
    passed = run["returncode"] == 0 and not no_gpu
    detail = (f"{len(no_gpu)} GPU test(s) skipped for want of a GPU on a GPU machine: " + "; ".join(no_gpu[:5])
              if no_gpu else f"pytest exit status {run['returncode']}" if not passed else "the GPU tests passed")
    others = [s for s in skipped if s not in no_gpu]
    if others:  # an optional package missing here (TensorRT on the lent machines): said, not failed
        detail += f"; {len(others)} skipped for a missing package: " + "; ".join(others[:3])
    return {"status": "passed" if passed else "failed", "detail": detail, "skipped": skipped, **run}


def wants_a_gpu(skip: str) -> bool:
    """Whether a skip reason says the test found no GPU (on a GPU machine that is a broken probe)."""
    return re.search(r"\bGPU\b", skip.split(": ", 1)[-1]) is not None


@functools.lru_cache(maxsize=1)
def cifar10(data_dir: str) -> Any:
    """CIFAR-10 from ``data_dir``, loaded once for every run of the check."""
    from sb_accel.data import load_dataset

    return load_dataset("cifar10", data_dir)


def cuda_loop_syncs(strategy: str, data_dir: str, subset: int, epochs: int = 2) -> Dict[str, Any]:
    """A Trainer on CUDA under ``set_sync_debug_mode("warn")``: synchronising calls per candidate batch."""
    import torch

    from sb_accel.config import TrainConfig
    from sb_accel.train import Trainer

    cfg = TrainConfig(dataset="cifar10", data_dir=data_dir, train_subset=subset, test_subset=1024, model="resnet18",
                      strategy=strategy, epochs=epochs, device="cuda", progress=False, checkpoint=False,
                      log_every_steps=10 ** 6, run_dir=str(Path("/tmp") / f"gpu-check-syncs-{strategy}"))
    trainer = Trainer(cfg, data=cifar10(data_dir), overwrite=True)
    batches = sum(math.ceil(len(trainer.source) / trainer.selection_batch_size(e)) for e in range(epochs))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.fit()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message).lower()]
    return {"strategy": strategy, "candidate_batches": batches, "syncs": len(syncs),
            "syncs_per_candidate_batch": round(len(syncs) / max(batches, 1), 3)}


def step_sync_budget(out: Path, timeout: float, data_dir: str, subset: int) -> Dict[str, Any]:
    result: Dict[str, Any] = {}
    if _pytest_available():
        harness = _run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_sync_budget.py"],
                       out / "sync-budget.log", timeout / 2)
        result["harness"] = {"status": "passed" if harness["returncode"] == 0 else "failed", **harness}
    else:
        result["harness"] = {"status": "not run", "detail": "pytest is not installed: the CPU harness did not run"}
    result["cuda_loop"] = [cuda_loop_syncs(s, data_dir, subset) for s in STRATEGIES]
    passed = result["harness"]["status"] == "passed"
    result["status"] = "passed" if passed else result["harness"]["status"]
    result["detail"] = "harness " + result["harness"]["status"] + "; CUDA loop syncs per candidate batch: " + ", ".join(
        f"{r['strategy']} {r['syncs_per_candidate_batch']}" for r in result["cuda_loop"])
    return result


def step_gpu_engines(out: Path, timeout: float) -> Dict[str, Any]:
    run = _run([sys.executable, str(ROOT / "benchmarks" / "gpu_engines.py"), "--sizes", "1024", "--compile",
                "--repeats", "10", "--out", str(out)], out / "gpu-engines.log", timeout)
    return {"status": "passed" if run["returncode"] == 0 else "failed",
            "detail": f"gpu_engines.py at 1024: exit status {run['returncode']} ({run['seconds']} s)", **run}


def per_epoch_walls(log_path: Path) -> List[float]:
    """Training wall-clock of each epoch (evaluation excluded) from a run's ``epoch`` events."""
    walls, before = [], 0.0
    for line in log_path.read_text().splitlines():
        event = json.loads(line)
        if event.get("event") == "epoch":
            walls.append(event["wall"] - before)
            before = event["wall"]
    return walls


def epoch_ratios(walls: Dict[str, List[float]], baseline: str = "traditional") -> Dict[str, List[Optional[float]]]:
    """Each strategy's per-epoch wall-clock divided by the baseline's in the same epoch."""
    base = walls[baseline]
    return {name: [round(w / b, 3) if b > 0 else None for w, b in zip(series, base)] for name, series in walls.items()}


def step_ratios(out: Path, data_dir: str, epochs: int, deadline: float) -> Dict[str, Any]:
    from sb_accel.config import TrainConfig
    from sb_accel.train import Trainer

    walls: Dict[str, List[float]] = {}
    for strategy in STRATEGIES:
        if time.monotonic() > deadline:
            break
        run_dir = Path("/tmp") / f"gpu-check-ratio-{strategy}"
        cfg = TrainConfig(dataset="cifar10", data_dir=data_dir, model="resnet18", strategy=strategy, epochs=epochs,
                          device="cuda", progress=False, checkpoint=False, run_dir=str(run_dir))
        Trainer(cfg, data=cifar10(data_dir), overwrite=True).fit()
        walls[strategy] = per_epoch_walls(run_dir / "log.jsonl")
    missing = [s for s in STRATEGIES if s not in walls]
    ratios = epoch_ratios(walls) if "traditional" in walls else {}
    return {"status": "failed" if missing else "passed", "walls": walls, "ratios": ratios,
            "detail": (f"out of time before {missing}; " if missing else "") + ", ".join(
                f"{s} {r[-1]}x" for s, r in ratios.items() if r)}


# --- results --------------------------------------------------------------------------------------
def summary_markdown(results: Dict[str, Any]) -> str:
    """``summary.md``: the environment, one line per step, the tables."""
    env = results["environment"]
    lines = [f"# GPU check, {env['date']}, {env['gpu']}", "",
             f"torch {env['torch']} (CUDA {env['cuda']}), Python {env['python']}; command: `{env['command']}`; "
             f"{results['seconds']:.0f} s of a {results['budget_s']:.0f} s budget.", "",
             "| step | status | detail |", "|---|---|---|"]
    for name in STEPS:
        step = results["steps"].get(name)
        if step is not None:
            lines.append(f"| {name} | {step['status']} | {str(step.get('detail', '')).replace('|', '/')} |")
    loop = results["steps"].get("sync-budget", {}).get("cuda_loop")
    if loop:
        lines += ["", "Syncs on the real CUDA loop (`torch.cuda.set_sync_debug_mode`; periodic reads included):", "",
                  "| strategy | candidate batches | syncs | per candidate batch |", "|---|---|---|---|"]
        lines += [f"| {r['strategy']} | {r['candidate_batches']} | {r['syncs']} | {r['syncs_per_candidate_batch']} |"
                  for r in loop]
    ratios = results["steps"].get("ratios", {}).get("ratios")
    if ratios:
        epochs = max(len(r) for r in ratios.values())
        lines += ["", "Per-epoch wall-clock vs Traditional (ResNet-18, CIFAR-10, defaults):", "",
                  "| strategy | " + " | ".join(f"epoch {e}" for e in range(epochs)) + " |",
                  "|---|" + "---|" * epochs]
        lines += [f"| {name} | " + " | ".join("-" if v is None else f"{v:.2f}" for v in series) + " |"
                  for name, series in ratios.items()]
    lines.append("")
    return "\n".join(lines)


def write_results(out: Path, results: Dict[str, Any]) -> None:
    """``summary.json`` and ``summary.md`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (out / "summary.md").write_text(summary_markdown(results))


def overall_status(results: Dict[str, Any]) -> int:
    """0 when every step passed, else 1."""
    return 0 if all(step["status"] == "passed" for step in results["steps"].values()) else 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print(f"gpu_check: no CUDA GPU visible to torch {torch.__version__} (CUDA build {torch.version.cuda}); "
              "run it on a machine with an NVIDIA GPU (README: GPU check)", file=sys.stderr)
        return 2
    data = Path(args.data_dir)
    if "gpu-engines" in args.steps or "ratios" in args.steps or "sync-budget" in args.steps:
        if not any((data / name).is_file() for name in ("cifar10_jpeg.npz", "cifar10.npz")):
            print(f"gpu_check: no CIFAR-10 in {data}: mkdir -p {data} && cp ../shared/data/cifar10_jpeg.npz {data}/",
                  file=sys.stderr)
            return 2
    os.environ["SB_ACCEL_DATA"] = str(data)  # gpu_engines.py finds CIFAR-10 there too
    gpu = torch.cuda.get_device_name(0)
    out = results_dir(args.results_root, gpu)
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    deadline = start + args.budget_s
    results: Dict[str, Any] = {
        "environment": {"date": _dt.date.today().isoformat(), "gpu": gpu, "torch": torch.__version__,
                        "cuda": torch.version.cuda, "python": sys.version.split()[0],
                        "command": " ".join(["gpu_check.py", *(argv if argv is not None else sys.argv[1:])])},
        "budget_s": args.budget_s, "steps": {}, "seconds": 0.0}
    # the share of the budget each step may use at most (what is left when it starts, capped)
    steps: Dict[str, Callable[[float], Dict[str, Any]]] = {
        "gpu-tests": lambda limit: step_gpu_tests(out, limit),
        "sync-budget": lambda limit: step_sync_budget(out, limit, str(data), args.sync_subset),
        "gpu-engines": lambda limit: step_gpu_engines(out, limit),
        "ratios": lambda limit: step_ratios(out, str(data), args.epochs, time.monotonic() + limit),
    }
    share = {"gpu-tests": 0.2, "sync-budget": 0.2, "gpu-engines": 0.15, "ratios": 0.45}
    for name in args.steps:
        left = deadline - time.monotonic()
        if left < 10:
            results["steps"][name] = {"status": "not run", "detail": f"the {args.budget_s:.0f} s budget was spent"}
            continue
        print(f"gpu_check: {name} ...", flush=True)
        try:
            results["steps"][name] = steps[name](min(left, share[name] * args.budget_s + 30))
        except Exception as exc:  # noqa: BLE001 - a broken step is reported, the others still run
            results["steps"][name] = {"status": "failed", "detail": f"{type(exc).__name__}: {exc}"}
        print(f"gpu_check: {name}: {results['steps'][name]['status']}", flush=True)
        results["seconds"] = time.monotonic() - start
        write_results(out, results)  # after every step: a killed run keeps what it measured
    results["seconds"] = time.monotonic() - start
    write_results(out, results)
    print(summary_markdown(results))
    print(f"gpu_check: wrote {out}")
    return overall_status(results)


if __name__ == "__main__":
    sys.exit(main())
