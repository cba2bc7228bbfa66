import os
import subprocess
import sys

from sb_accel.cli import main


def test_cli_train_end_to_end(tmp_path, capsys):
    rc = main(["train", "--dataset", "synthetic", "--model", "small_cnn", "--width", "4", "--epochs", "2",
               "--strategy", "sb", "--batch-size", "32", "--run-dir", str(tmp_path / "r"), "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0 and "test acc" in out and "selection" in out
    assert (tmp_path / "r" / "log.jsonl").is_file() and (tmp_path / "r" / "checkpoint.pt").is_file()


def test_cli_errors_exit_nonzero(tmp_path, capsys):
    assert main(["train", "--dataset", "synthetic", "--model", "vgg99", "--run-dir", str(tmp_path / "a")]) == 2
    assert "unknown model" in capsys.readouterr().err
    assert main(["train", "--selectivity", "1.5", "--run-dir", str(tmp_path / "b")]) == 2
    assert "selectivity" in capsys.readouterr().err
    assert main(["train", "--dataset", "svhn", "--data-dir", str(tmp_path / "none"), "--run-dir", str(tmp_path / "c")]) == 2
    assert "--download" in capsys.readouterr().err


def test_cli_exits_quietly_when_the_reader_closes_the_pipe():
    read_end, write_end = os.pipe()
    os.close(read_end)  # like `sb-accel list-models | head` after head has exited
    try:
        done = subprocess.run([sys.executable, "-m", "sb_accel.cli", "list-models"], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert done.returncode == 1 and "Traceback" not in done.stderr
