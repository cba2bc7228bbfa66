import os
import subprocess
import sys

import torch
import torch.nn.functional as F

import sb_accel
from sb_accel.cli import main
from sb_accel.models import create_model


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
    assert main(["train", "--dataset", "svhn", "--data-dir", str(tmp_path / "none"), "--run-dir", str(tmp_path / "c")]) == 1
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


def test_drop_in_api_in_a_plain_loop():
    torch.manual_seed(0)
    model = create_model("small_cnn", width=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sb = sb_accel.SelectiveBackprop(model, selectivity=0.5, batch_size=16)
    trained = 0
    for _ in range(8):
        x, y = torch.randn(32, 3, 16, 16), torch.randint(0, 10, (32,))
        for xb, yb in sb.select(x, y):
            assert len(yb) == 16
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
            sb.step()
            trained += len(yb)
    assert sb.steps == trained // 16 and 0.2 * 256 < trained + sb.batcher.pending() < 0.8 * 256
