"""Report arithmetic on synthetic RunLogs (exact), Pareto, seed aggregation, and `sb-accel report`."""
import json
import math
import statistics

import pytest

from sb_accel.cli import main
from sb_accel.config import TrainConfig
from sb_accel.reporting import (DIVERGED, FINISHED, UNFINISHED, RunLog, build_report, choose_baseline,
                                collect_run_dirs, describe_status, epochs_in_budget, group_runs, load_run, load_runs,
                                pareto_frontier, run_status, speedup_table, time_to_target)
from sb_accel.train import Trainer
from sb_accel.reporting.runlog import PHASES


def write_run(run_dir, evals, strategy="traditional", seed=0, *, finished=True, train_losses=(), **config):
    """A RunLog as the Trainer writes it: config, interval events with ``train_losses`` (``None`` is
    how the RunLog writes NaN), one eval per (wall, test acc, backprops), and a summary if ``finished``."""
    cfg = TrainConfig(strategy=strategy, seed=seed, run_dir=str(run_dir), **config).to_dict()
    with RunLog(run_dir) as log:
        log.write("config", config=cfg, policy=strategy, engine="torch-fp32", device="cpu")
        for step, loss in enumerate(train_losses):
            log.write("interval", epoch=0, step=step + 1, wall=0.1 * step, train_loss=loss)
        for i, (wall, acc, backprops) in enumerate(evals):
            phases = {p: 0.0 for p in PHASES}
            phases.update(train_forward=wall / 4, backward=wall / 2, selection=wall / 4, eval=0.5 * (i + 1))
            log.write("eval", epoch=float(i + 1), step=10 * (i + 1), wall=wall, test_acc=acc, test_error=1.0 - acc,
                      test_loss=1.0, backprops=backprops, forwards=0, candidates=backprops, phases=phases)
        if finished:
            log.write("summary", test_acc=evals[-1][1], wall=evals[-1][0], phases=phases)
    return load_run(run_dir)


# Baseline final error 0.30: targets 0.33 (1.1x), 0.36 (1.2x), 0.42 (1.4x).
TRAD = [(10.0, 0.40, 100), (20.0, 0.60, 200), (30.0, 0.65, 300), (40.0, 0.70, 400)]   # errors .6 .4 .35 .3
SB = [(8.0, 0.50, 100), (14.0, 0.60, 140), (20.0, 0.66, 180)]   # errors 0.50, 0.40, 0.34


def test_time_to_target_is_the_wall_of_the_first_eval_at_or_below(tmp_path):
    run = write_run(tmp_path / "t", TRAD)
    assert time_to_target(run, 0.46) == 20.0
    assert time_to_target(run, 0.40) == 20.0
    assert time_to_target(run, 0.39) == 30.0
    assert time_to_target(run, 0.30) == 40.0
    assert time_to_target(run, 0.29) is None
    assert time_to_target(run, 0.36, x="backprops") == 300.0


def test_speedups_to_multiples_of_the_baseline_final_error(tmp_path):
    trad = write_run(tmp_path / "t", TRAD)
    sb = write_run(tmp_path / "sb", SB, strategy="sb")
    groups = group_runs([trad, sb])
    table = speedup_table(groups, groups[0])
    base, fast = table
    assert [t.target for t in base.targets] == [1.1 * (1.0 - 0.70), 1.2 * (1.0 - 0.70), 1.4 * (1.0 - 0.70)]
    assert [t.time_mean for t in base.targets] == [40.0, 30.0, 20.0]
    assert [t.speedup for t in base.targets] == [1.0, 1.0, 1.0]
    assert [t.time_mean for t in fast.targets] == [None, 20.0, 14.0]
    assert [t.speedup for t in fast.targets] == [None, 30.0 / 20.0, 20.0 / 14.0]
    assert [t.backprops_mean for t in fast.targets] == [None, 180.0, 140.0]
    assert fast.final_error_mean == 1.0 - 0.66 and fast.wall_mean == 20.0 and fast.final_error_std is None


def test_a_tie_with_the_target_counts_despite_float_rounding(tmp_path):
    # 1.2 * (1 - 0.23) is 0.9239999999999999 in floats, 1 - 0.076 is 0.924: equal in exact arithmetic.
    trad = write_run(tmp_path / "t", [(5.0, 0.1, 10), (10.0, 0.23, 20)])
    other = write_run(tmp_path / "o", [(4.0, 0.076, 10)], strategy="sb")
    groups = group_runs([trad, other])
    assert speedup_table(groups, groups[0], [1.2])[1].targets[0].time_mean == 4.0


def test_seeds_are_aggregated_and_partial_success_is_counted(tmp_path):
    trad = write_run(tmp_path / "t", TRAD)
    s0 = write_run(tmp_path / "sb0", SB, strategy="sb", seed=0)
    s1 = write_run(tmp_path / "sb1", [(10.0, 0.50, 100), (16.0, 0.68, 150), (22.0, 0.69, 200)], strategy="sb", seed=1)
    s2 = write_run(tmp_path / "sb2", [(9.0, 0.55, 100), (18.0, 0.62, 150)], strategy="sb", seed=2)
    other = write_run(tmp_path / "sb-half", SB, strategy="sb", selectivity=0.5)
    groups = group_runs([trad, s0, s1, s2, other])
    assert [g.label for g in groups] == ["traditional", "sb (selectivity=0.33)", "sb (selectivity=0.5)"]
    assert groups[1].seeds == [0, 1, 2]
    sb = speedup_table(groups, groups[0])[1]
    errors = [1.0 - 0.66, 1.0 - 0.69, 1.0 - 0.62]
    assert sb.runs == 3
    assert sb.final_error_mean == pytest.approx(statistics.fmean(errors), abs=1e-15)
    assert sb.final_error_std == pytest.approx(statistics.stdev(errors), abs=1e-15)
    assert (sb.wall_mean, sb.wall_std) == (20.0, 2.0)
    to_11, to_12, to_14 = sb.targets
    assert (to_11.reached, to_11.time_mean, to_11.speedup) == (1, None, None)   # 0.33: only seed 1
    assert (to_12.reached, to_12.time_mean, to_12.time_std) == (2, None, None)  # 0.36: seed 2 never
    assert to_14.reached == 3 and to_14.time_mean == statistics.fmean([14.0, 16.0, 18.0])
    assert to_14.speedup == 20.0 / 16.0 and to_14.time_std == 2.0


def test_pareto_frontier():
    points = [(1, 5), (2, 4), (3, 4), (2, 6), (4, 1), (4, 1), (float("nan"), 0), (5, 1)]
    assert pareto_frontier(points) == [0, 1, 4, 5]
    assert pareto_frontier([]) == []
    assert pareto_frontier([(3.0, 2.0)]) == [0]


def test_baseline_choice(tmp_path):
    sb = write_run(tmp_path / "sb", SB, strategy="sb")
    trad = write_run(tmp_path / "t", TRAD)
    groups = group_runs([sb, trad])
    assert choose_baseline(groups)[0] is groups[1]
    assert choose_baseline(groups, str(tmp_path / "sb"))[0] is groups[0]
    assert choose_baseline(groups, "sb")[0] is groups[0]
    with pytest.raises(ValueError, match="matches no run directory"):
        choose_baseline(groups, "kath18")
    assert choose_baseline(group_runs([sb]))[1].startswith("the first configuration")


def test_run_directories_are_found_one_level_down(tmp_path):
    write_run(tmp_path / "exp" / "a", TRAD)
    write_run(tmp_path / "exp" / "b", SB, strategy="sb")
    assert collect_run_dirs([tmp_path / "exp"]) == [tmp_path / "exp" / "a", tmp_path / "exp" / "b"]
    assert len(load_runs([tmp_path / "exp", tmp_path / "exp" / "a"])) == 2  # duplicates dropped
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="log.jsonl"):
        collect_run_dirs([tmp_path / "empty"])


def test_report_cli_on_synthetic_logs(tmp_path, capsys):
    write_run(tmp_path / "t", TRAD)
    write_run(tmp_path / "sb", SB, strategy="sb")
    out = tmp_path / "report"
    assert main(["report", str(tmp_path / "t"), str(tmp_path / "sb"), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "not reached" in text and "1.50x (20.0 s)" in text and "1.43x (14.0 s)" in text
    assert "chosen as the Traditional configuration" in text
    for name in ("report.md", "report.json", "error_curves.png", "error_curves.svg", "phases.png", "phases.svg",
                 "pareto.png", "pareto.svg"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    data = json.loads((out / "report.json").read_text())
    assert data["baseline"] == "traditional" and data["baseline_final_error"] == 1.0 - 0.70
    sb = data["configurations"][1]
    assert [t["speedup"] for t in sb["targets"]] == [None, 1.5, 20.0 / 14.0]
    assert sb["pareto"] and data["configurations"][0]["pareto"]  # faster but worse vs slower but better
    assert sb["phases_to_target"]["backward"] == 14.0 / 2
    md = (out / "report.md").read_text()
    assert "![error curves](error_curves.png)" in md and "not reached" in md
    # --baseline by run directory, --json elsewhere
    assert main(["report", str(tmp_path / "t"), str(tmp_path / "sb"), "--out", str(out), "--baseline",
                 str(tmp_path / "sb"), "--json", str(tmp_path / "r.json")]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["baseline"] == "sb"


def test_report_cli_bad_input_exits_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "no log.jsonl" in capsys.readouterr().err
    write_run(tmp_path / "t", TRAD)
    assert main(["report", str(tmp_path / "t"), "--baseline", "kath18", "--out", str(tmp_path / "o")]) == 2
    assert "baseline 'kath18'" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "t"), "--targets", "0.5", "--out", str(tmp_path / "o")]) == 2
    with RunLog(tmp_path / "noeval") as log:
        log.write("config", config=TrainConfig().to_dict())
    assert main(["report", str(tmp_path / "noeval"), "--out", str(tmp_path / "o")]) == 2
    assert "no eval event" in capsys.readouterr().err


def test_report_cli_on_real_tiny_runs(tmp_path, synthetic, capsys):
    for strategy in ("traditional", "sb"):
        cfg = TrainConfig(dataset="synthetic", model="small_cnn", width=4, epochs=2, batch_size=32, lr=0.05,
                          strategy=strategy, run_dir=str(tmp_path / "runs" / strategy), progress=False, threads=1)
        Trainer(cfg, data=synthetic).fit()
    assert main(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "report")]) == 0
    text = capsys.readouterr().out
    assert "speedup to target error" in text and "Pareto" in text
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    labels = [c["label"] for c in data["configurations"]]
    assert sorted(labels) == ["sb", "traditional"] and data["baseline"] == "traditional"
    trad = data["configurations"][labels.index("traditional")]
    assert all(t["speedup"] == 1.0 for t in trad["targets"])  # the baseline reaches its own targets
    assert math.isclose(sum(trad["phases"].values()), load_run(tmp_path / "runs" / "traditional").summary["wall_total"])


# --- datasets, diverged and unfinished runs ---------------------------------------------------------
def test_runs_of_different_datasets_are_refused(tmp_path, capsys):
    write_run(tmp_path / "t", TRAD)
    write_run(tmp_path / "sb", SB, strategy="sb")
    write_run(tmp_path / "svhn", SB, strategy="sb", dataset="svhn")
    assert main(["report", str(tmp_path / "t"), str(tmp_path / "sb"), str(tmp_path / "svhn"),
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "the runs are on different datasets (cifar10: " in err and f"svhn: {tmp_path / 'svhn'}" in err
    assert f"sb-accel report {tmp_path / 't'} {tmp_path / 'sb'}" in err
    write_run(tmp_path / "c10", SB, strategy="sb", dataset="CIFAR10")  # the same dataset, spelt otherwise
    assert main(["report", str(tmp_path / "t"), str(tmp_path / "c10"), "--out", str(tmp_path / "o")]) == 0


def test_diverged_and_unfinished_runs_are_marked(tmp_path):
    nan_loss = write_run(tmp_path / "nan", SB, strategy="sb", train_losses=[2.3, None])
    inf_loss = write_run(tmp_path / "inf", SB, strategy="sb", train_losses=[float("inf")], seed=1)
    with RunLog(tmp_path / "event") as log:
        log.write("diverged", step=3)
    event = load_run(tmp_path / "event")
    unfinished = write_run(tmp_path / "cut", SB, strategy="kath18", finished=False)
    fine = write_run(tmp_path / "t", TRAD, train_losses=[2.3, 1.9])
    assert [run_status(r) for r in (nan_loss, inf_loss, event, unfinished, fine)] == \
        [DIVERGED, DIVERGED, DIVERGED, UNFINISHED, FINISHED]
    assert describe_status([nan_loss, fine, unfinished]) == "1 diverged, 1 unfinished, 1 finished"

    report = build_report([fine, nan_loss, inf_loss, unfinished])
    assert report.baseline.label == "traditional" and report.notes == []
    tables = report.tables()
    runs_lines = tables["runs"].splitlines()
    assert runs_lines[0].split()[-1] == "status"
    assert [line.split()[-1] for line in runs_lines[2:]] == ["finished", "diverged", "diverged", "unfinished"]
    speed = {line.split()[0]: line for line in tables["speedup"].splitlines()[2:]}
    assert speed["traditional"].rstrip().endswith("finished") and "(baseline)" in speed["traditional"]
    assert speed["sb"].rstrip().endswith("diverged") and speed["kath18"].rstrip().endswith("unfinished")
    pareto = {line.split()[0]: line for line in tables["pareto"].splitlines()[2:]}
    assert pareto["sb"].rstrip().endswith("no (diverged)")   # fastest, but a diverged run is no trade-off
    assert [c["status"] for c in report.to_json()["configurations"]] == ["finished", "diverged", "unfinished"]


def test_a_diverged_or_unfinished_baseline_is_never_taken_silently(tmp_path, capsys):
    write_run(tmp_path / "t", TRAD, train_losses=[None])
    write_run(tmp_path / "sb", SB, strategy="sb")
    assert main(["report", str(tmp_path / "t"), str(tmp_path / "sb"), "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "note: WARNING: the baseline 'traditional' is diverged: its training loss became NaN/inf" in out
    assert "Pass --baseline to choose a finished configuration" in out
    md = (tmp_path / "o" / "report.md").read_text()
    assert "**Note:** WARNING: the baseline 'traditional' is diverged" in md
    assert json.loads((tmp_path / "o" / "report.json").read_text())["baseline_status"] == "diverged"
    # Several Traditional configurations: the first finished one is the baseline.
    cut = write_run(tmp_path / "t1", TRAD, finished=False, lr=0.2)
    done = write_run(tmp_path / "t2", TRAD, lr=0.3)
    groups = group_runs([cut, done])
    assert choose_baseline(groups) == (groups[1], "the first finished of 2 Traditional configurations")
    # No Traditional run: the first finished configuration; an unfinished baseline is flagged.
    sb_cut = write_run(tmp_path / "s1", SB, strategy="sb", finished=False)
    kath = write_run(tmp_path / "k", SB, strategy="kath18")
    groups = group_runs([sb_cut, kath])
    assert choose_baseline(groups)[0] is groups[1]
    report = build_report([sb_cut, kath], baseline="sb")
    assert report.notes[0].startswith("WARNING: the baseline 'sb' is unfinished: its log has no summary")


def test_runs_without_an_eval_are_left_out_with_a_note(tmp_path, capsys):
    write_run(tmp_path / "t", TRAD)
    with RunLog(tmp_path / "noeval") as log:
        log.write("config", config=TrainConfig().to_dict())
    assert main(["report", str(tmp_path / "t"), str(tmp_path / "noeval"), "--out", str(tmp_path / "o")]) == 0
    assert f"note: {tmp_path / 'noeval'} left out: its log has no eval event yet" in capsys.readouterr().out


def test_epochs_in_budget():
    # SB's first epoch primes on everything (10 s), later ones cost 4 s: 10 + 4 + 4 + 4 + 4 = 26 <= 27.
    assert epochs_in_budget(27.0, [10.0, 14.0, 18.0]) == 5
    assert epochs_in_budget(26.0, [10.0, 14.0, 18.0]) == 5      # exactly fits
    assert epochs_in_budget(12.0, [10.0, 14.0, 18.0]) == 1      # fewer than measured
    assert epochs_in_budget(5.0, [10.0, 14.0]) == 1             # at least one
    assert epochs_in_budget(30.0, [10.0]) == 3                  # one measured epoch: all cost as much
    with pytest.raises(ValueError):
        epochs_in_budget(10.0, [])


def test_run_label_names_the_engine_the_run_built(tmp_path):
    """``engine: auto`` is resolved from the config event; a log without one falls back to the config."""
    cfg = TrainConfig(strategy="sb", engine="auto", run_dir=str(tmp_path / "a")).to_dict()
    with RunLog(tmp_path / "a") as log:
        log.write("config", config=cfg, policy="sb", engine="onnxruntime-int8", device="cpu")
    assert load_run(tmp_path / "a").label == "sb [onnxruntime-int8]"
    with RunLog(tmp_path / "b") as log:
        log.write("config", config={**cfg, "engine": "onnxruntime", "precision": "fp16"}, policy="sb", device="cpu")
    assert load_run(tmp_path / "b").engine == "onnxruntime-fp16"
    with RunLog(tmp_path / "c") as log:
        log.write("config", config=cfg, policy="sb", device="cpu")
    assert load_run(tmp_path / "c").engine is None and load_run(tmp_path / "c").label == "sb"


def test_a_torn_last_line_is_skipped_but_damage_in_the_middle_is_named(tmp_path):
    from sb_accel.reporting.runlog import RunLogError

    write_run(tmp_path / "t", TRAD)
    log = tmp_path / "t" / "log.jsonl"
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines) + '\n{"event": "eval", "wa')  # a crash mid-write: the last line is torn
    assert len(load_run(tmp_path / "t").evals) == len(TRAD)
    log.write_text("\n".join(lines[:3] + ["[1, 2]"] + lines[3:]) + "\n")
    with pytest.raises(RunLogError, match=r"log.jsonl: line 4 is not an event \(a JSON object with an 'event' name\), "
                                          r"but more events follow it: the log is damaged"):
        load_run(tmp_path / "t")
    log.write_text("\n".join([json.dumps({"event": "config", "config": "garbage"})] + lines[1:]) + "\n")
    with pytest.raises(RunLogError, match=r"log.jsonl has a config event without the run's settings"):
        load_run(tmp_path / "t").config


def test_a_report_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    import sb_accel.reporting.report as report

    write_run(tmp_path / "t", TRAD)
    built = build_report([load_run(tmp_path / "t")])
    files = built.write(tmp_path / "out")
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == sorted(p.name for paths in files.values() for p in paths)  # no staging directory left
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report, "plot_pareto", full)
    with pytest.raises(OSError, match=r"could not write .*out: No space left on device .*nothing in it was changed"):
        built.write(tmp_path / "out")
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before
