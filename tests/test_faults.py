"""Fault injection: crashes, signals, full disks and divergence, each followed by the README's resume
command (``sb-accel train --run-dir D --resume``). On CPU a resumed run must end with the very same
weights as an uninterrupted one.

Each faulty run is a child process (``_faulty_run.py``) that patches one function to kill, signal or
fail itself at a chosen point, so no fault hook lives in the package.
"""
import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sb_accel.cli import main

HERE = Path(__file__).parent
TINY = ["--dataset", "synthetic", "--model", "small_cnn", "--width", "4", "--epochs", "3", "--batch-size", "32",
        "--train-subset", "512", "--test-subset", "128", "--threads", "1", "--no-progress", "--log-every-steps", "4"]
TIMEOUT = 240


def faulty_run(fault: str, at: int, run_dir: Path, *flags: str) -> subprocess.CompletedProcess:
    """``sb-accel train`` in a child process with ``fault`` injected at ``at``."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, str(HERE / "_faulty_run.py"), fault, str(at), "train", *TINY, *flags,
                           "--run-dir", str(run_dir)], capture_output=True, text=True, timeout=TIMEOUT, env=env)


def weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)["model"]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f"weights differ after resume: {different[:5]}"


def events(run_dir: Path) -> list:
    lines = (run_dir / "log.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]  # strict: a torn or NaN line fails here


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The reference: the same runs, never interrupted (SB and Stale-SB)."""
    out = {}
    for strategy in ("sb", "stale-sb"):
        run_dir = tmp_path_factory.mktemp("ref") / strategy
        assert main(["train", *TINY, "--strategy", strategy, "--stale-n", "2", "--run-dir", str(run_dir)]) == 0
        out[strategy] = run_dir
    return out


@pytest.mark.parametrize("fault,at,strategy", [
    ("kill-at-step", 3, "sb"),               # before the first epoch's checkpoint
    ("kill-at-step", 22, "sb"),              # mid-epoch 1 (epoch 0 primes: 16 steps)
    ("kill-at-step", 18, "stale-sb"),        # mid-epoch 1, a strategy with a per-example loss table
    ("kill-in-atomic-write", 3, "sb"),       # half-way through writing the epoch-0 checkpoint
    ("sigint-at-step", 20, "sb"),
    ("sigterm-at-step", 19, "stale-sb"),
])
def test_crash_then_resume_equals_an_uninterrupted_run(tmp_path, uninterrupted, fault, at, strategy):
    run_dir = tmp_path / "run"
    crashed = faulty_run(fault, at, run_dir, "--strategy", strategy, "--stale-n", "2")
    expected_rc = {"kill": -9, "sigint": 130, "sigterm": 143}[fault.split("-")[0]]
    assert crashed.returncode == expected_rc, crashed.stderr
    if fault.startswith("sig"):  # a clean stop: a message, no torn files
        assert "--resume" in crashed.stderr and "Traceback" not in crashed.stderr
        assert not list(run_dir.glob(".*.tmp"))
    assert main(["train", "--run-dir", str(run_dir), "--resume"]) == 0  # the README's command, no other flag
    assert not list(run_dir.glob(".*.tmp"))  # a SIGKILL's half-written temp file is cleared on resume
    assert_same_weights(run_dir, uninterrupted[strategy])
    log = events(run_dir)
    reference = events(uninterrupted[strategy])
    assert [e["event"] for e in log].count("config") == 1
    # The resumed log reads as one run: the same evaluations at the same steps, no duplicates.
    assert [(e["step"], e["test_acc"]) for e in log if e["event"] == "eval"] == \
           [(e["step"], e["test_acc"]) for e in reference if e["event"] == "eval"]
    assert log[-1]["event"] == "summary" and log[-1]["step"] == reference[-1]["step"]


@contextlib.contextmanager
def small_filesystem(path: Path, size: str = "256k"):
    """A tiny tmpfs at ``path`` where mounting is allowed; None otherwise."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True).returncode == 0 if hasattr(os, "geteuid") and os.geteuid() == 0 else False
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", str(path)], capture_output=True)


def test_full_disk_gives_a_clear_error_and_keeps_the_last_checkpoint(tmp_path, capsys):
    with small_filesystem(tmp_path / "disk") as mounted:
        run_dir = tmp_path / "disk" / "run"
        if mounted:  # a real full filesystem: the log and checkpoints outgrow 256 KiB
            rc = main(["train", *TINY, "--width", "16", "--epochs", "6", "--run-dir", str(run_dir)])
        else:  # no mount rights: ENOSPC injected in the epoch-0 checkpoint write
            crashed = faulty_run("enospc-in-atomic-write", 3, run_dir, "--strategy", "sb")
            rc, err = crashed.returncode, crashed.stderr
        if mounted:
            err = capsys.readouterr().err
        assert rc == 1, err
        assert "No space left" in err and str(run_dir) in err and "Traceback" not in err
        assert not list(run_dir.glob(".*.tmp"))
        if (run_dir / "checkpoint.pt").exists():  # the last good checkpoint is intact and loadable
            assert all(torch.isfinite(t).all() for t in weights(run_dir).values() if t.is_floating_point())


@pytest.mark.parametrize("strategy", ["traditional", "sb", "stale-sb", "kath18", "infobatch"])
def test_divergence_stops_every_strategy_and_keeps_the_last_good_checkpoint(tmp_path, capsys, strategy):
    # The LR jumps a million-fold after epoch 1: epoch 0's checkpoint is good, epoch 1 diverges.
    run_dir = tmp_path / "run"
    rc = main(["train", *TINY, "--strategy", strategy, "--lr-schedule", "multistep", "--milestones", "1",
               "--gamma", "1e6", "--lr", "0.05", "--prime-epochs", "0", "--run-dir", str(run_dir)])
    err = capsys.readouterr().err
    assert rc == 1, err
    assert "diverged" in err and "--lr" in err and "Traceback" not in err
    state = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert state["epoch"] == 1  # the epoch-0 checkpoint, not overwritten by a non-finite one
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())
    log = events(run_dir)  # strict JSON: no NaN/Infinity anywhere
    assert any(e["event"] == "diverged" for e in log)


def test_unreadable_checkpoint_is_a_clear_error(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "1", "--run-dir", str(run_dir)]) == 0
    for content in (b"", b"\x00garbage" * 10, (run_dir / "checkpoint.pt").read_bytes()[:200]):
        (run_dir / "checkpoint.pt").write_bytes(content)
        assert main(["train", "--run-dir", str(run_dir), "--resume"]) == 1
        err = capsys.readouterr().err
        assert "cannot read" in err and "checkpoint.pt" in err and "Traceback" not in err


def test_a_failed_setup_leaves_nothing_that_refuses_the_rerun(tmp_path, capsys):
    run_dir = tmp_path / "run"
    # The engine fails only when built (INT8 calibration needs onnxruntime; a missing extra would do the same).
    crashed = faulty_run("fail-engine-build", 1, run_dir, "--engine", "onnxruntime", "--precision", "int8")
    assert crashed.returncode == 1, crashed.stderr
    assert main(["train", *TINY, "--epochs", "1", "--run-dir", str(run_dir)]) == 0
