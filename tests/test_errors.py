"""Every row of docs/ERRORS.md: the CLI's message and exit status for that error.

In-process (``sb_accel.cli.main``) where possible; a subprocess where a signal or a closed pipe is
the point. Runs are tiny (synthetic data, a 4-wide small CNN).
"""
import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

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


def snapshot(directory):
    """Every file under ``directory`` and its bytes: to check that a refused command changed nothing."""
    return {p.relative_to(directory): p.read_bytes() for p in sorted(Path(directory).rglob("*")) if p.is_file()}


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
    short_usage = "usage: sb-accel train [--config FILE] [--resume | --overwrite] [--OPTION VALUE ...]\n"
    err = expect(capsys, 2, r"argument --epochs: invalid int value: 'ten'", "train", "--epochs", "ten")
    assert err == short_usage + "sb-accel train: error: argument --epochs: invalid int value: 'ten'\n"
    err = expect(capsys, 2, r"unrecognized", "train", "--epocs", "2")  # reported by train, with the fix
    assert err == short_usage + "sb-accel train: error: unrecognized arguments: --epocs 2 (did you mean --epochs?)\n"
    # No abbreviations: --epoch is not silently --epochs.
    expect(capsys, 2, r"sb-accel train: error: unrecognized arguments: --epoch 2 \(did you mean --epochs\?\)",
           "train", "--epoch", "2")
    expect(capsys, 2, r"sb-accel: error: argument COMMAND: invalid choice: 'trian' \(choose from .*\); did you mean "
                      r"'train'\?", "trian")
    expect(capsys, 2, r"sb-accel report: error: unrecognized arguments: --baselin x \(did you mean --baseline\?\)",
           "report", "runs", "--baselin", "x")


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
    # inf and nan are refused when the config is read, before anything is written
    err = expect(capsys, 2, r"beta", "train", *TINY, "--beta", "inf", "--run-dir", tmp_path / "r")
    assert err == "sb-accel: error: beta: must be a finite number, got inf\n"
    (tmp_path / "nan.toml").write_text("weight_decay = nan\n")
    expect(capsys, 2, r"nan.toml: weight_decay: must be a finite number, got nan", "train", "--config",
           tmp_path / "nan.toml", "--run-dir", tmp_path / "r")
    assert not (tmp_path / "r").exists()


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
    labels = np.arange(40) % 10
    labels[5] = -1
    np.savez(tmp_path / "negative.npz", x_train=x, y_train=labels, x_test=x[:4], y_test=np.zeros(4, int))
    expect(capsys, 2, r"negative: y_train has negative labels \(e.g. -1\): labels are class indices 0..9; ", "train",
           *TINY, "--dataset", tmp_path / "negative.npz", "--run-dir", tmp_path / "r")
    assert not (tmp_path / "r").exists()  # refused before anything was created


def test_row_10_batch_larger_than_the_training_set(capsys, tmp_path):
    expect(capsys, 2, r"batch_size: 128 is larger than the 100 training examples", "train", *TINY,
           "--batch-size", "128", "--train-subset", "100", "--run-dir", tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_row_11_run_dir_is_a_file_or_read_only(capsys, tmp_path, monkeypatch):
    (tmp_path / "f").write_text("")
    expect(capsys, 2, r"run_dir: .*f is a file, not a directory", "train", *TINY, "--run-dir", tmp_path / "f")
    expect(capsys, 2, r"cannot be created: .*f is a file", "train", *TINY, "--run-dir", tmp_path / "f" / "sub")
    # A read-only directory (this test may run as root, who may write anywhere: os.access stands in)
    (tmp_path / "ro").mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == tmp_path / "ro" else real_access(p, mode))
    err = expect(capsys, 2, r"cannot be written", "train", *TINY, "--run-dir", tmp_path / "ro" / "r")
    assert err == (f"sb-accel: error: run_dir: {tmp_path}/ro/r cannot be written (in {tmp_path}/ro): read-only or no "
                   "permission; choose another --run-dir or make it writable\n")
    assert list((tmp_path / "ro").iterdir()) == []


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
    before = snapshot(tmp_path / "r")
    expect(capsys, 2, r"cannot resume .*r: config differs from the checkpoint in \['momentum'\] \(only .*lr.* may "
                      r"change on resume\)", "train", "--run-dir", tmp_path / "r", "--resume", "--epochs", "2",
           "--momentum", "0.5")
    assert snapshot(tmp_path / "r") == before


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
    (tmp_path / "file").write_text("")
    err = expect(capsys, 2, r"--out", "report", tmp_path / "t", "--out", tmp_path / "file")
    assert err == f"sb-accel: error: --out: {tmp_path}/file is a file, not a directory; choose another --out\n"
    # A garbage line in the middle of a log is damage, not a torn last line (those are skipped)
    log = tmp_path / "t" / "log.jsonl"
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines[:2] + ['{"event": "eval", "wal'] + lines[2:]) + "\n")
    err = expect(capsys, 2, r"line 3", "report", tmp_path / "t", "--out", tmp_path / "o")
    assert err == (f"sb-accel: error: {log}: line 3 is not JSON (Unterminated string starting at), but more events "
                   "follow it: the log is damaged; restore it from a backup, or leave this run out of the report\n")
    log.write_text("\n".join(lines[1:] + ['{"event": "eval", "wal']) + "\n")  # no config line; a torn last one
    err = expect(capsys, 2, r"config", "report", tmp_path / "t", tmp_path / "svhn", "--out", tmp_path / "o")
    assert err == (f"sb-accel: error: {log} has no config event (the first line sb-accel train writes): the log is "
                   "damaged or not one of sb-accel train; leave this run out of the report\n")
    assert not (tmp_path / "o").exists()


def test_row_23_damaged_dataset_file(capsys, tmp_path):
    x = np.zeros((40, 8, 8, 3), np.uint8)
    np.savez(tmp_path / "good.npz", x_train=x, y_train=np.arange(40) % 2, x_test=x[:4], y_test=np.zeros(4, int))
    whole = (tmp_path / "good.npz").read_bytes()
    savez = "np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)"
    (tmp_path / "cut.npz").write_bytes(whole[: len(whole) // 2])  # an interrupted copy
    (tmp_path / "text.npz").write_text("x_train,y_train\n1,2\n")
    (tmp_path / "empty.npz").write_bytes(b"")
    for name, message in [
        ("cut", "is a damaged .npz (a truncated or corrupted zip archive: File is not a zip file), e.g. an interrupted "
                f"copy or download: copy it again, or write it anew with {savez}"),
        ("text", f"is a text file, not an .npz (a zip archive of arrays): write it with {savez}"),
        ("empty", f"is empty (0 bytes), e.g. an interrupted copy: copy it again, or write it with {savez}"),
    ]:
        err = expect(capsys, 2, name, "train", *TINY, "--dataset", tmp_path / f"{name}.npz",
                     "--run-dir", tmp_path / "r")
        assert err == f"sb-accel: error: {tmp_path}/{name}.npz {message}\n"
        assert "allow_pickle" not in err
    assert not (tmp_path / "r").exists()


def test_row_24_subset_larger_than_the_data(capsys, tmp_path):
    err = expect(capsys, 2, "train_subset", "train", *TINY, "--train-subset", "100000", "--run-dir", tmp_path / "r")
    assert err == ("sb-accel: error: train_subset: 100000 is more than the 2048 training examples of synthetic; pass "
                   "at most 2048 (0: all of them)\n")
    err = expect(capsys, 2, "test_subset", "train", *TINY, "--test-subset", "600", "--run-dir", tmp_path / "r")
    assert err == ("sb-accel: error: test_subset: 600 is more than the 512 test examples of synthetic; pass at most "
                   "512 (0: all of them)\n")
    assert not (tmp_path / "r").exists()


def _tiny_cifar(data_dir, seed):
    rng = np.random.default_rng(seed)
    data_dir.mkdir(exist_ok=True)
    np.savez(data_dir / "cifar10.npz", x_train=rng.integers(0, 256, (64, 16, 16, 3), dtype=np.uint8),
             y_train=np.arange(64) % 10, x_test=rng.integers(0, 256, (16, 16, 16, 3), dtype=np.uint8),
             y_test=np.arange(16) % 10)


def test_row_25_resume_on_other_data(capsys, tmp_path):
    _tiny_cifar(tmp_path / "data", seed=0)
    args = ["--dataset", "cifar10", "--data-dir", tmp_path / "data", "--model", "small_cnn", "--width", "4",
            "--batch-size", "32", "--threads", "1", "--no-progress", "--run-dir", tmp_path / "r"]
    assert run_cli(capsys, "train", *args, "--epochs", "1")[0] == 0
    before = snapshot(tmp_path / "r")
    _tiny_cifar(tmp_path / "data", seed=1)  # the same sizes, other images: another data set
    err = expect(capsys, 2, r"cannot resume", "train", "--run-dir", tmp_path / "r", "--resume", "--epochs", "2")
    assert re.fullmatch(
        rf"sb-accel: error: cannot resume {tmp_path}/r: it was trained on cifar10 \(64 training / 16 test examples, 10 "
        r"classes, 3x16x16, content (\w+)\), but the dataset found now is cifar10 \(64 training / 16 test examples, 10 "
        r"classes, 3x16x16, content (?!\1)\w+\); resume with the data the run started with \(check --data-dir and "
        r"\$SB_ACCEL_DATA\), or start a new run\n", err), err
    assert snapshot(tmp_path / "r") == before
    _tiny_cifar(tmp_path / "data", seed=0)  # the original data back: the run goes on
    assert run_cli(capsys, "train", "--run-dir", tmp_path / "r", "--resume", "--epochs", "2")[0] == 0


def test_row_26_resume_with_no_epoch_left(capsys, tmp_path):
    tiny_run(capsys, tmp_path / "r", "--epochs", "2")
    before = snapshot(tmp_path / "r")
    err = expect(capsys, 2, r"nothing to resume", "train", "--run-dir", tmp_path / "r", "--resume")
    assert err == (f"sb-accel: error: nothing to resume in {tmp_path}/r: the run has trained all its 2 epochs; pass "
                   "--epochs N with N > 2 to train it further\n")
    err = expect(capsys, 2, r"cannot resume", "train", "--run-dir", tmp_path / "r", "--resume", "--epochs", "1")
    assert err == (f"sb-accel: error: cannot resume {tmp_path}/r with --epochs 1: its checkpoint is already at epoch "
                   "2; pass --epochs N with N > 2 to train it further\n")
    assert snapshot(tmp_path / "r") == before


def test_row_27_measurement_options(capsys, tmp_path):
    err = expect(capsys, 2, r"selectivity", "profile", "--selectivity", "0", "--out", tmp_path / "p")
    assert err == ("sb-accel: error: --selectivity: must be in (0, 1]; 0.33 keeps about a third of the examples, "
                   "got 0.0\n")
    err = expect(capsys, 2, r"repeats", "compare", "--repeats", "0", "--out", tmp_path / "c")
    assert err == "sb-accel: error: --repeats: must be >= 1, got 0\n"
    expect(capsys, 2, r"--batch-sizes: must all be >= 1, got 128 0", "profile", "--batch-sizes", "128", "0")
    assert not (tmp_path / "p").exists() and not (tmp_path / "c").exists()


# --- 1: runtime failures ----------------------------------------------------------------------------
def test_row_17_engine_cannot_be_built(capsys, tmp_path):
    expect(capsys, 1, r"tensorrt", "train", *TINY, "--device", "cpu", "--engine", "tensorrt", "--precision", "fp16",
           "--run-dir", tmp_path / "r")


def test_row_18_diverged(capsys, tmp_path):
    err = expect(capsys, 1, r"diverged", "train", *TINY, "--strategy", "traditional", "--lr", "1e6", "--momentum", "0",
                 "--log-every-steps", "1", "--epochs", "1", "--run-dir", tmp_path / "r")
    assert re.search(r"diverged. Lower --lr \(now 1000000.0\), .*the last good checkpoint in .* is kept \(continue "
                     r"with --resume --lr ...\)", err), err
    # The advice works: the resume check accepts a lower --lr, and the next --resume keeps it
    code, _, err = run_cli(capsys, "train", "--run-dir", tmp_path / "r", "--resume", "--lr", "0.01")
    assert code == 0, err
    assert json.loads((tmp_path / "r" / "config.json").read_text())["lr"] == 0.01


def test_row_19_cannot_write(capsys, tmp_path, monkeypatch):
    from test_reporting import TRAD, write_run

    import sb_accel.reporting.report as report

    write_run(tmp_path / "t", TRAD)
    assert main(["report", str(tmp_path / "t"), "--out", str(tmp_path / "o")]) == 0
    before = snapshot(tmp_path / "o")

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    # The disk fills up half-way through a report: the earlier report stays whole, nothing half-written
    monkeypatch.setattr(report, "plot_pareto", disk_full)
    err = expect(capsys, 1, r"could not write", "report", tmp_path / "t", "--out", tmp_path / "o")
    assert err == (f"sb-accel: error: could not write {tmp_path}/o: No space left on device (free some space on that "
                   "disk or choose another directory; nothing in it was changed)\n")
    assert snapshot(tmp_path / "o") == before
    monkeypatch.undo()
    # A file where a directory must be (here the engine cache): named, with the fix
    monkeypatch.chdir(tmp_path)
    (tmp_path / "engines").mkdir()
    (tmp_path / "engines" / "cache").write_text("")
    err = expect(capsys, 1, r"Not a directory", "train", *TINY, "--engine", "onnxruntime", "--precision", "fp32",
                 "--run-dir", tmp_path / "r")
    assert re.fullmatch(r"sb-accel: error: engines/cache/\w+: Not a directory \(engines/cache is a file, not a "
                        r"directory: move it away or choose another path\)\n", err), err
    assert not (tmp_path / "r").exists()


def test_row_19_a_full_disk_at_the_first_write_leaves_nothing_that_blocks_the_rerun(capsys, tmp_path, monkeypatch):
    fsync, calls = os.fsync, []

    def first_fsync_fails(fd):  # the first fsync of a run is its log's first line
        calls.append(fd)
        if len(calls) == 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        fsync(fd)

    monkeypatch.setattr(os, "fsync", first_fsync_fails)
    err = expect(capsys, 1, r"log.jsonl", "train", *TINY, "--epochs", "1", "--run-dir", tmp_path / "r")
    assert err == (f"sb-accel: error: could not write {tmp_path}/r/log.jsonl: No space left on device (free some "
                   "space on that disk or choose another directory)\n")
    assert (tmp_path / "r" / "log.jsonl").read_text() == ""
    tiny_run(capsys, tmp_path / "r")  # the same command again, once there is space


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


def _torchrun_stopped(tmp_path, how):
    """A 2-rank torchrun job stopped after its first checkpoint: Ctrl-C (SIGINT to torchrun, which
    passes it on to the ranks) or rank 1 killed (kill -9). Returns its stdout and stderr."""
    from test_distributed import _data

    data = _data()
    np.savez(tmp_path / "tiny.npz", x_train=data.x_train.permute(0, 2, 3, 1).numpy(), y_train=data.y_train.numpy(),
             x_test=data.x_test.permute(0, 2, 3, 1).numpy(), y_test=data.y_test.numpy())
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                             "-m", "sb_accel", "train", "--dataset", str(tmp_path / "tiny.npz"), "--model", "small_cnn",
                             "--width", "4", "--epochs", "500", "--batch-size", "32", "--run-dir", str(run_dir),
                             "--threads", "1", "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 180
        while not (run_dir / "checkpoint.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if how == "sigint":
            proc.send_signal(signal.SIGINT)
        else:
            rank1 = next(pid for pid in _children(proc.pid)
                         if b"RANK=1" in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"))
            os.kill(rank1, signal.SIGKILL)
        return proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()


def _children(pid):
    """The processes whose parent is ``pid`` (Linux /proc)."""
    def parent(stat):  # /proc/N/stat: "N (name) state ppid ..."
        return int(stat.read_text().rsplit(")", 1)[1].split()[1])

    return [int(d.name) for d in Path("/proc").iterdir() if d.name.isdigit() and (d / "stat").exists()
            and parent(d / "stat") == pid]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the ranks through /proc")
@pytest.mark.parametrize("how", ["sigint", "kill-rank"])
def test_row_20_torchrun_advice_is_the_torchrun_command_printed_once(tmp_path, how):
    out, err = _torchrun_stopped(tmp_path, how)
    advice = (f"the checkpoint of the last finished epoch is kept in {tmp_path}/run/checkpoint.pt: continue with "
              f"torchrun --standalone --nproc-per-node 2 -m sb_accel train --run-dir {tmp_path}/run --resume\n")
    ours = [line for line in err.splitlines(keepends=True) if line.startswith("sb-accel:")]
    assert len(ours) == 1 and ours[0].endswith(advice), err  # rank 0 alone speaks
    # A killed rank: rank 0's next collective fails, or torchrun terminates it first (whichever comes first)
    starts = ("sb-accel: interrupted; ",) if how == "sigint" else ("sb-accel: error: this torchrun job stopped: ",
                                                                    "sb-accel: terminated (SIGTERM); ")
    assert ours[0].startswith(starts), err


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


def test_interrupted_messages_follow_the_checkpoint(tmp_path, monkeypatch):
    from sb_accel.cli import _stopped

    assert "no checkpoint was written yet in" in _stopped("interrupted", str(tmp_path))
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    assert _stopped("interrupted", str(tmp_path)).endswith(f": continue with sb-accel train --run-dir {tmp_path} "
                                                           "--resume")
    assert _stopped("interrupted", None) == "sb-accel: interrupted"
    # Under torchrun the advice is the torchrun command: a run of N processes resumes with N
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert _stopped("interrupted", str(tmp_path)).endswith(
        f": continue with torchrun --standalone --nproc-per-node 2 -m sb_accel train --run-dir {tmp_path} --resume")
    monkeypatch.setenv("WORLD_SIZE", "16")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert _stopped("interrupted", str(tmp_path)).endswith(
        f": continue with torchrun --nnodes 2 --nproc-per-node 8 <the same rendezvous options> -m sb_accel train "
        f"--run-dir {tmp_path} --resume")
