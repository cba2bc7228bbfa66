"""The budget-matched comparison (sb_accel.budget, benchmarks/time_to_accuracy.py): interleaved runs
keep their own clocks, epochs are chosen to fill the budget, schedules are laid over them."""
import pytest

from sb_accel.data import synthetic_dataset
from sb_accel.budget import budget_config, compare_on_budget, epochs_for_budget, train_interleaved
from sb_accel.config import TrainConfig
from sb_accel.reporting import load_run


@pytest.fixture(scope="module")
def small():
    return synthetic_dataset(train=256, test=64)


def _config(tmp_path, name, **kw):
    return TrainConfig(**{**dict(dataset="synthetic", model="small_cnn", width=4, epochs=2, batch_size=32,
                                 run_dir=str(tmp_path / name), progress=False, checkpoint=False), **kw})


def test_interleaved_runs_take_turns_and_count_only_their_own_time(tmp_path, small):
    order = []
    cfgs = {"a": _config(tmp_path, "a", strategy="traditional"), "b": _config(tmp_path, "b", strategy="sb", epochs=3)}
    summaries, loads = train_interleaved(cfgs, small, progress=lambda name, e, n: order.append((name, e)))
    assert order == [("a", 1), ("b", 1), ("a", 2), ("b", 2), ("b", 3)]  # one epoch of each in turn
    assert len(loads) == 3 and summaries["a"]["epochs"] == 2 and summaries["b"]["epochs"] == 3
    for name in "ab":  # a run's phases add up to its own training, not the other's turns
        run = load_run(tmp_path / name)
        assert sum(run.summary["phases"].values()) == pytest.approx(run.summary["wall_total"], rel=1e-9)
    # both did the same work per epoch in the first two epochs: neither clock ran during the other's turns
    a, b = (load_run(tmp_path / n).evals for n in "ab")
    assert a[-1]["wall"] < 2.5 * b[0]["wall"] + 1.0


def test_epochs_for_budget_fill_the_budget_from_the_measured_epochs():
    # seeds averaged epoch by epoch: a priming epoch of 10 s, then 5 s each
    assert epochs_for_budget(30.0, [[10.0, 15.0, 20.0], [10.0, 15.0, 20.0]]) == 5
    assert epochs_for_budget(12.0, [[10.0, 15.0]]) == 1  # a slower strategy gets fewer epochs, at least one
    assert epochs_for_budget(31.0, [[9.0, 14.0], [11.0, 16.0]]) == 5
    with pytest.raises(ValueError):
        epochs_for_budget(10.0, [])


def test_budget_config_lays_the_whole_schedule_over_the_new_epochs(tmp_path):
    cfg = _config(tmp_path, "x", epochs=4, warmup_epochs=1.0, lr_schedule="multistep", milestones=[2.0, 0.75])
    longer = budget_config(cfg, 8, str(tmp_path / "y"))
    assert (longer.epochs, longer.warmup_epochs, longer.milestones, longer.run_dir) == (8, 2.0, [4.0, 0.75],
                                                                                        str(tmp_path / "y"))


def test_compare_on_budget_runs_both_views(tmp_path, small):
    base = _config(tmp_path, "unused", epochs=2)
    plan = {"traditional": dict(strategy="traditional"), "sb": dict(strategy="sb"),
            "kath18": dict(strategy="kath18")}
    result = compare_on_budget(base, plan, [0], tmp_path / "runs", small, fixed_only=["kath18"])
    assert set(result.fixed) == {"traditional-s0", "sb-s0", "kath18-s0"}
    assert set(result.budget) == {"traditional-s0", "sb-s0"} and result.epochs["traditional"] == 2
    assert result.budget_seconds == pytest.approx(result.fixed["traditional-s0"]["wall"])
    assert result.budget["sb-s0"]["epochs"] == result.epochs["sb"] >= 1
    assert all(d.startswith(str(tmp_path / "runs" / "budget")) for d in result.budget_dirs)
