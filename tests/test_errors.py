"""Every row of docs/ERRORS.md: the CLI's message and exit status for that error.

In-process (``sb_accel.cli.main``) where possible; a subprocess where a signal or a closed pipe is
the point. Runs are tiny (synthetic data, a 4-wide small CNN).
"""
import errno
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from sb_accel.cli import main

DOC = Path(__file__).resolve().parents[1] / "docs" / "ERRORS.md"
TINY = ["--dataset", "synthetic", "--train-subset", "256", "--test-subset", "64", "--model", "small_cnn",
        "--width", "4", "--batch-size", "32", "--threads", "1", "--no-progress"]
REPO = Path(__file__).resolve().parents[1]


def run_cli(capsys, *argv):
    """``(exit status, stdout, stderr)`` of ``sb-accel argv`` run in this process."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def expect(capsys, code, pattern, *argv):
    """Run the CLI, check the exit status and that stderr matches ``pattern``; returns stderr."""
    got, _, err = run_cli(capsys, *argv)
    assert got == code, err
    assert re.search(pattern, err), err
    assert "Traceback" not in err
    return err


def tiny_run(capsys, run_dir, *extra):
    code, out, err = run_cli(capsys, "train", *TINY, "--epochs", "1", "--run-dir", run_dir, *extra)
    assert code == 0, err
    return out


def test_the_doc_lists_every_tested_error():
    table = DOC.read_text().split("## Every error the CLI gives")[1].split("\n## ")[0]
    rows = [line for line in table.splitlines() if re.match(r"\| *\d+ *\|", line)]
    tested = {int(m) for m in re.findall(r"def test_row_(\d+)_", Path(__file__).read_text())}
    assert {int(r.split("|")[1]) for r in rows} == tested
    for row in rows:  # each row gives its exit status
        assert re.search(r"\| *(1|2|130|143) *\|", row), row


# --- 2: usage, config and data errors ---------------------------------------------------------------
def test_row_1_argparse(capsys):
    expect(capsys, 2, r"argument --epochs: invalid int value: 'ten'", "train", "--epochs", "ten")
    expect(capsys, 2, r"invalid choice: 'trian'", "trian")


def test_row_2_config_file(capsys, tmp_path):
    expect(capsys, 2, r"config file .*missing.toml not found", "train", "--config", tmp_path / "missing.toml")
    (tmp_path / "bad.toml").write_text("epochs = \n")
    expect(capsys, 2, r"bad.toml: not valid TOML", "train", "--config", tmp_path / "bad.toml")


def test_row_3_unknown_key(capsys, tmp_path):
    (tmp_path / "run.toml").write_text("epoch = 3\n")
    expect(capsys, 2, r"run.toml: unknown config keys: 'epoch' \(did you mean 'epochs'\?\)",
           "train", "--config", tmp_path / "run.toml")


def test_row_4_wrong_type(capsys, tmp_path):
    (tmp_path / "run.toml").write_text("epochs = 1.7\n")
    expect(capsys, 2, r"run.toml: epochs: must be an integer, got 1.7", "train", "--config", tmp_path / "run.toml")
    (tmp_path / "run.toml").write_text('checkpoint = "no"\n')
    expect(capsys, 2, r"checkpoint: must be true or false, got 'no'", "train", "--config", tmp_path / "run.toml")


def test_row_5_out_of_range(capsys, tmp_path):
    expect(capsys, 2, r"selectivity: must be in \(0, 1\]", "train", "--selectivity", "1.5",
           "--run-dir", tmp_path / "r")
    expect(capsys, 2, r"strategy: must be one of", "train", "--strategy", "oracle", "--run-dir", tmp_path / "r")
    expect(capsys, 2, r"unknown engine backend 'onnxruntme'", "train", *TINY, "--engine", "onnxruntme",
           "--run-dir", tmp_path / "r")
    expect(capsys, 2, r"engine 'torch' has no precision 'int8'", "train", *TINY, "--precision", "int8",
           "--engine", "torch", "--run-dir", tmp_path / "r")


def test_row_6_unknown_model(capsys, tmp_path):
    expect(capsys, 2, r"unknown model 'vgg99'", "train", *TINY, "--model", "vgg99", "--run-dir", tmp_path / "r")


def test_row_7_dataset_not_found(capsys, tmp_path):
    expect(capsys, 2, r"dataset 'svhn' not found.*--download", "train", "--dataset", "svhn",
           "--data-dir", tmp_path / "none", "--run-dir", tmp_path / "r")


def test_row_8_download_failed(capsys, tmp_path, monkeypatch):
    import torchvision

    def offline(*args, **kwargs):
        raise OSError("[Errno 101] Network is unreachable")

    monkeypatch.setattr(torchvision.datasets, "SVHN", offline)
    expect(capsys, 2, r"could not download svhn with torchvision .*no network", "train", "--dataset", "svhn",
           "--download", "--data-dir", tmp_path / "d", "--run-dir", tmp_path / "r")
    assert not (tmp_path / "d").exists() and not (tmp_path / "r").exists()


def test_row_9_malformed_dataset(capsys, tmp_path):
    x = np.zeros((40, 8, 8, 3), np.uint8)
    np.savez(tmp_path / "frac.npz", x_train=x, y_train=np.full(40, 0.5), x_test=x[:4], y_test=np.zeros(4, int))
    expect(capsys, 2, r"y_train holds fractional labels", "train", *TINY, "--dataset", tmp_path / "frac.npz",
           "--run-dir", tmp_path / "r")
    np.savez(tmp_path / "nchw.npz", x_train=np.zeros((40, 3, 8, 8), np.uint8), y_train=np.arange(40) % 2,
             x_test=x[:4], y_test=np.zeros(4, int))
    expect(capsys, 2, r"looks channels-first", "train", *TINY, "--dataset", tmp_path / "nchw.npz",
           "--run-dir", tmp_path / "r")
    np.savez(tmp_path / "range.npz", x_train=x, y_train=np.arange(40) % 2, x_test=x[:4], y_test=np.full(4, 7))
    expect(capsys, 2, r"y_test has label 7 but the training labels only go up to 1", "train", *TINY,
           "--dataset", tmp_path / "range.npz", "--run-dir", tmp_path / "r")
    assert not (tmp_path / "r").exists()  # refused before anything was created


def test_row_10_batch_larger_than_the_training_set(capsys, tmp_path):
    expect(capsys, 2, r"batch_size: 128 is larger than the 100 training examples", "train", *TINY,
           "--batch-size", "128", "--train-subset", "100", "--run-dir", tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_row_11_run_dir_is_a_file(capsys, tmp_path):
    (tmp_path / "f").write_text("")
    expect(capsys, 2, r"run_dir: .*f is a file, not a directory", "train", *TINY, "--run-dir", tmp_path / "f")
    expect(capsys, 2, r"cannot be created: .*f is a file", "train", *TINY, "--run-dir", tmp_path / "f" / "sub")


def test_row_12_run_dir_holds_a_run(capsys, tmp_path):
    tiny_run(capsys, tmp_path / "r")
    expect(capsys, 2, r"already holds a run; pass --resume to continue it, --overwrite to replace it",
           "train", *TINY, "--run-dir", tmp_path / "r")


def test_row_13_nothing_to_resume(capsys, tmp_path):
    tiny_run(capsys, tmp_path / "r", "--no-checkpoint")
    expect(capsys, 2, r"nothing to resume in .*r: no checkpoint.pt; run without --resume \(add --overwrite to "
                      r"replace the old log\)", "train", "--run-dir", tmp_path / "r", "--resume")
    expect(capsys, 2, r"nothing to resume: .*nowhere does not exist", "train", "--run-dir", tmp_path / "nowhere",
           "--resume")
    expect(capsys, 2, r"--resume continues the run .* --overwrite replaces it: pass only one",
           "train", "--run-dir", tmp_path / "r", "--resume", "--overwrite")


def test_row_14_resume_with_a_changed_setting(capsys, tmp_path):
    tiny_run(capsys, tmp_path / "r")
    expect(capsys, 2, r"cannot resume .*r: .*lr", "train", "--run-dir", tmp_path / "r", "--resume", "--lr", "0.5")


def test_row_15_cuda_not_available(capsys, tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    expect(capsys, 2, r"device: 'cuda' asked for but CUDA is not available; use --device cpu",
           "train", *TINY, "--device", "cuda", "--run-dir", tmp_path / "r")


def test_row_16_report_inputs(capsys, tmp_path):
    from test_reporting import SB, TRAD, write_run

    (tmp_path / "empty").mkdir()
    expect(capsys, 2, r"no log.jsonl in it or in its subdirectories", "report", tmp_path / "empty",
           "--out", tmp_path / "o")
    write_run(tmp_path / "t", TRAD)
    expect(capsys, 2, r"baseline 'kath18' matches no run directory", "report", tmp_path / "t",
           "--baseline", "kath18", "--out", tmp_path / "o")
    expect(capsys, 2, r"target multipliers must be >= 1", "report", tmp_path / "t", "--targets", "0.5",
           "--out", tmp_path / "o")
    write_run(tmp_path / "svhn", SB, strategy="sb", dataset="svhn")
    expect(capsys, 2, r"the runs are on different datasets", "report", tmp_path / "t", tmp_path / "svhn",
           "--out", tmp_path / "o")


# --- 1: runtime failures ----------------------------------------------------------------------------
def test_row_17_engine_cannot_be_built(capsys, tmp_path):
    expect(capsys, 1, r"tensorrt", "train", *TINY, "--device", "cpu", "--engine", "tensorrt", "--precision", "fp16",
           "--run-dir", tmp_path / "r")


def test_row_18_diverged(capsys, tmp_path):
    expect(capsys, 1, r"diverged", "train", *TINY, "--strategy", "traditional", "--lr", "1e6", "--momentum", "0",
           "--log-every-steps", "1", "--epochs", "1", "--run-dir", tmp_path / "r")


def test_row_19_cannot_write(capsys, tmp_path, monkeypatch):
    from test_reporting import TRAD, write_run

    write_run(tmp_path / "t", TRAD)

    def disk_full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    expect(capsys, 1, r"could not write .*report.json: No space left on device \(free some space",
           "report", tmp_path / "t", "--out", tmp_path / "o")


# --- signals and pipes: a real process --------------------------------------------------------------
def _train_process(run_dir):
    # A shell without job control starts background commands with SIGINT ignored, and Python then
    # keeps ignoring it: restore the default so Ctrl-C reaches the child as it would from a terminal.
    return subprocess.Popen([sys.executable, "-m", "sb_accel", "train", *TINY, "--epochs", "500",
                             "--run-dir", str(run_dir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _stop_when_training(run_dir, sig, after_checkpoint):
    proc = _train_process(run_dir)
    wanted = run_dir / ("checkpoint.pt" if after_checkpoint else "log.jsonl")
    deadline = time.monotonic() + 120
    while not wanted.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, err


def _check_stop_message(err, run_dir):
    assert "Traceback" not in err
    if (run_dir / "checkpoint.pt").exists():
        assert "the checkpoint of the last finished epoch is kept" in err and "--resume" in err
    else:
        assert "no checkpoint was written yet" in err


def test_row_20_interrupted(tmp_path):
    code, err = _stop_when_training(tmp_path / "r", signal.SIGINT, after_checkpoint=True)
    assert code == 130 and "sb-accel: interrupted" in err, err
    _check_stop_message(err, tmp_path / "r")


def test_row_21_terminated(tmp_path):
    code, err = _stop_when_training(tmp_path / "r", signal.SIGTERM, after_checkpoint=False)
    assert code == 143 and "sb-accel: terminated (SIGTERM)" in err, err
    _check_stop_message(err, tmp_path / "r")


def test_row_22_reader_closed_the_pipe():
    read_end, write_end = os.pipe()
    os.close(read_end)  # like `sb-accel list-models | head` after head has exited
    try:
        done = subprocess.run([sys.executable, "-m", "sb_accel", "list-models"], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=120, cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    finally:
        os.close(write_end)
    assert done.returncode == 1 and "Traceback" not in done.stderr and "error" not in done.stderr


def test_interrupted_messages_follow_the_checkpoint(tmp_path):
    from sb_accel.cli import _stopped

    assert "no checkpoint was written yet in" in _stopped("interrupted", str(tmp_path))
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    assert f"sb-accel train --run-dir {tmp_path} --resume" in _stopped("interrupted", str(tmp_path))
    assert _stopped("interrupted", None) == "sb-accel: interrupted"
