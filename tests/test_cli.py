"""A newcomer's first minutes: --version, --help (fast, defaults shown once), python -m sb_accel,
--resume alone, and a demo whose sentences match its numbers."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sb_accel.data
from sb_accel.cli import build_parser, main
from sb_accel.commands.training import _budget_lines
from sb_accel.data import synthetic_dataset

REPO = Path(__file__).resolve().parents[1]
TINY = ["--dataset", "synthetic", "--train-subset", "256", "--test-subset", "64", "--model", "small_cnn",
        "--width", "4", "--batch-size", "32", "--threads", "1", "--no-progress"]


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"sb-accel {sb_accel.__version__}\n"


def _option_helps(text):
    """Each option's help text, continuation lines joined."""
    helps, current = [], None
    for line in text.splitlines():
        if re.match(r"^  -", line):
            current = [line]
            helps.append(current)
        elif current is not None and line.startswith("    "):
            current.append(line.strip())
        else:
            current = None
    return [" ".join(h) for h in helps]


@pytest.mark.parametrize("command", ["train", "demo", "profile", "compare", "report"])
def test_help_shows_each_default_once(command):
    text = build_parser()._subparsers._group_actions[0].choices[command].format_help()
    for option in _option_helps(text):
        assert option.count("(default") <= 1, option
    if command == "train":
        assert "--epochs EPOCHS       training epochs (default: 10)" in text
        assert "--resume" in text and "(default: False)" not in text.split("--dataset")[0]


def test_help_and_version_import_no_heavy_modules():
    """--help and --version stay fast: neither torch, numpy nor matplotlib is imported."""
    code = ("import sys\n"
            "from sb_accel.cli import main\n"
            "for argv in (['--help'], ['--version'], ['train', '--help'], ['report', '--help']):\n"
            "    try:\n"
            "        main(argv)\n"
            "    except SystemExit:\n"
            "        pass\n"
            "loaded = {m.split('.')[0] for m in sys.modules}\n"
            "print(sorted(loaded & {'torch', 'numpy', 'matplotlib', 'onnxruntime', 'torchvision'}))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_python_dash_m_sb_accel():
    done = subprocess.run([sys.executable, "-m", "sb_accel", "--version"], capture_output=True, text=True,
                          timeout=120, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0 and done.stdout.startswith("sb-accel ")


def test_resume_with_no_other_flag_continues_with_the_saved_config(tmp_path, capsys):
    run_dir = tmp_path / "r"
    assert main(["train", *TINY, "--epochs", "1", "--lr", "0.02", "--strategy", "traditional",
                 "--run-dir", str(run_dir)]) == 0
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["lr"] == 0.02 and saved["train_subset"] == 256
    # Only --epochs is given: everything else comes from config.json, not from the defaults.
    assert main(["train", "--run-dir", str(run_dir), "--resume", "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert "traditional" in out  # the saved strategy, not the default (sb)
    events = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events].count("resume") == 1
    assert events[-1]["event"] == "summary" and events[-1]["epochs"] == 2
    # A --config file given with --resume overrides the saved config too.
    (tmp_path / "more.toml").write_text("epochs = 3\n")
    assert main(["train", "--run-dir", str(run_dir), "--resume", "--config", str(tmp_path / "more.toml")]) == 0
    events = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert events[-1]["epochs"] == 3


def test_demo_runs_the_budget_matched_comparison_and_says_what_it_measured(tmp_path, capsys, monkeypatch):
    data = synthetic_dataset(train=384, test=64)
    monkeypatch.setattr(sb_accel.data, "load_dataset", lambda *args, **kwargs: data)
    torch.set_num_threads(1)  # the demo uses torch's threads; one is fastest on a busy 2-core machine
    assert main(["demo", "--epochs", "2", "--train-subset", "0", "--test-subset", "0", "--no-int8",
                 "--out", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert sorted(os.listdir(tmp_path / "demo" / "budget")) == ["sb-s0", "traditional-s0"]
    epochs = {}
    for name in ("sb", "traditional"):
        log = (tmp_path / "demo" / "budget" / f"{name}-s0" / "log.jsonl").read_text().splitlines()
        epochs[name] = json.loads(log[0])["config"]["epochs"]
    assert epochs["traditional"] == 2
    lines = out.strip().splitlines()
    assert lines[-1].startswith("Plots: ") and (tmp_path / "demo" / "report" / "error_curves.png").is_file()
    assert lines[-2].startswith("Where the time went: SB ")
    assert lines[-3].startswith(f"sb: {epochs['sb']} epochs in ")
    assert "try more" not in out


def test_demo_lines_are_computed_from_the_numbers():
    phases = {"selection": 10.0, "train_forward": 10.0, "backward": 20.0, "refresh": 0.0, "eval": 5.0, "other": 0.0}
    trad = {"wall": 100.0, "test_acc": 0.60, "phases": {**phases, "selection": 0.0, "backward": 80.0}}
    sb = {"wall": 110.0, "test_acc": 0.615, "phases": phases}
    lines = _budget_lines({"traditional": trad, "sb": sb, "sb-int8": {**sb, "test_acc": 0.62}},
                          {"traditional": 5, "sb": 8, "sb-int8": 9}, {"traditional": 0.60, "sb": 0.605, "sb-int8": 0.59})
    assert lines[0].startswith("Budget T = 100 s of training: Traditional's 5 epochs")
    assert lines[1] == ("sb: 8 epochs in 110 s (1.10 T); within T 60.50% test accuracy vs Traditional's 60.00% "
                        "(+0.50 points), at its end 61.50%; its selection pays here.")
    assert lines[2].endswith("(-1.00 points), at its end 62.00%; its selection does not pay here: Traditional is "
                             "better at the same budget.")
    assert lines[3] == ("Where the time went: SB 25% selection, 25% training forward, 50% backward of 40 s; "
                        "Traditional 11% training forward, 89% backward of 90 s.")


def test_train_help_groups_its_flags_by_section():
    text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    sections = re.findall(r"^(\w[\w ]*):$", text, flags=re.M)
    assert sections == ["options", "data", "model", "selection strategy", "optimisation", "selection engine",
                        "device and run"]
    body = {name: part for name, part in zip(sections, re.split(r"^\w[\w ]*:$", text, flags=re.M)[1:])}
    assert "--data-dir" in body["data"] and "--selectivity" in body["selection strategy"]
    assert "--lr " in body["optimisation"] and "--precision" in body["selection engine"]
    assert "--resume" in body["device and run"] and "--run-dir" in body["device and run"]


def test_completion_script_completes_commands_flags_and_their_words(tmp_path):
    script = tmp_path / "sb-accel.bash"
    done = subprocess.run([sys.executable, "-m", "sb_accel", "completion", "bash"], capture_output=True, text=True,
                          timeout=120, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    script.write_text(done.stdout)
    probe = ('source "$1"; shift\n'
             'COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); COMPREPLY=(); _sb_accel; echo "${COMPREPLY[*]}"\n')

    def complete(*words):
        return subprocess.run(["bash", "-c", probe, "probe", str(script), *words], capture_output=True, text=True,
                              timeout=60).stdout.split()

    assert complete("sb-accel", "tr") == ["train"]
    assert complete("sb-accel", "train", "--epo") == ["--epochs"]
    assert complete("sb-accel", "train", "--strategy", "s") == ["sb", "stale-sb"]
    assert complete("sb-accel", "train", "--lr", "") == []  # a free value: bash completes file names
    assert complete("sb-accel", "report", "--bas") == ["--baseline"]
    assert complete("sb-accel", "completion", "") == ["bash", "zsh"]
    zsh = subprocess.run([sys.executable, "-m", "sb_accel", "completion", "zsh"], capture_output=True, text=True,
                         timeout=120, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}).stdout
    assert zsh.startswith("autoload -U +X bashcompinit && bashcompinit\n")
    assert zsh.split("\n", 2)[2] == done.stdout.split("\n", 1)[1]  # the same function, through bashcompinit


def test_only_rank_0_prints_the_summary_tables(tmp_path, capsys, monkeypatch):
    import sb_accel.train

    class Rank1(sb_accel.train.Trainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.rank = 1  # as on torchrun's second process (the tables would repeat rank 0's)

    monkeypatch.setattr(sb_accel.train, "Trainer", Rank1)
    assert main(["train", *TINY, "--epochs", "1", "--run-dir", str(tmp_path / "r")]) == 0
    assert capsys.readouterr().out == ""
