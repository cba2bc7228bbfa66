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
from sb_accel.commands.training import _equal_epochs_sentence, _equal_wall_sentence, _no_equal_wall_sentence
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


def test_demo_runs_equal_epochs_and_equal_wall_and_says_what_it_measured(tmp_path, capsys, monkeypatch):
    data = synthetic_dataset(train=384, test=64)
    monkeypatch.setattr(sb_accel.data, "load_dataset", lambda *args, **kwargs: data)
    torch.set_num_threads(1)  # the demo uses torch's threads; one is fastest on a busy 2-core machine
    assert main(["demo", "--epochs", "2", "--train-subset", "0", "--out", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    summaries = {}
    for name in os.listdir(tmp_path / "demo"):
        events = [json.loads(line) for line in (tmp_path / "demo" / name / "log.jsonl").read_text().splitlines()]
        summaries[name] = events[-1]
    trad, sb = summaries["traditional"], summaries["sb"]
    assert _equal_epochs_sentence(trad, sb, 2, 1) in out
    if "sb-equal-wall" in summaries:  # SB's epochs were cheaper: it got more of them in the same time
        wall = summaries["sb-equal-wall"]
        assert wall["epochs"] > 2 and _equal_wall_sentence(trad, wall, wall["epochs"]) in out
    else:
        assert _no_equal_wall_sentence(trad, sb) in out


def test_demo_sentences_are_computed_from_the_numbers():
    trad = {"backprops": 1000, "wall": 100.0, "test_acc": 0.60}
    sb = {"backprops": 550, "wall": 62.0, "test_acc": 0.58}
    assert _equal_epochs_sentence(trad, sb, 3, 1) == (
        "Equal epochs (3): SB backpropagated 0.55x Traditional's examples (its first epoch trains on everything) "
        "in 0.62x its training time and reached 58.00% test accuracy vs Traditional's 60.00% (-2.00 points).")
    longer = {"backprops": 900, "wall": 98.0, "test_acc": 0.615}
    assert _equal_wall_sentence(trad, longer, 5) == (
        "Equal training time: given Traditional's 100 s, SB trained 5 epochs in 98 s and reached 61.50% test "
        "accuracy vs Traditional's 60.00% (+1.50 points): ahead of Traditional at about the same training time.")
    assert "behind Traditional" in _equal_wall_sentence(trad, sb, 5)
    assert _no_equal_wall_sentence(trad, sb) == (
        "Equal training time: SB used 62 s of Traditional's 100 s and the 38 s left do not fit another SB epoch; "
        "the equal-epochs runs are the comparison (try more --epochs).")
    assert "SB took 120 s, no less than Traditional's 100 s" in _no_equal_wall_sentence(trad, {**sb, "wall": 120.0})


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
