import time

import pytest
import torch

from sb_accel.train import PHASES, LRSchedule, PhaseTimer


def test_multistep_schedule():
    s = LRSchedule("multistep", 0.1, 200, (60, 120, 160), 0.2)
    assert s(0) == pytest.approx(0.1)
    assert s(59.9) == pytest.approx(0.1)
    assert s(60) == pytest.approx(0.02)
    assert s(170) == pytest.approx(0.1 * 0.2 ** 3)


def test_cosine_linear_warmup():
    assert LRSchedule("cosine", 1.0, 10)(5) == pytest.approx(0.5)
    assert LRSchedule("linear", 1.0, 10)(7.5) == pytest.approx(0.25)
    w = LRSchedule("linear", 1.0, 10, warmup=2)
    assert w(1) == pytest.approx(0.5) and w(2) == pytest.approx(1.0) and w(10) == pytest.approx(0.0)
    stretched = LRSchedule("multistep", 0.1, 10, (5,), 0.1).scaled_to(20)
    assert stretched.milestones == (10,) and stretched(9.9) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="unknown lr schedule"):
        LRSchedule("step")


def test_phase_timer_adds_up_to_wall_clock():
    timer = PhaseTimer("cpu")
    start = time.perf_counter()
    timer.start()
    with timer.phase("selection"):
        time.sleep(0.03)
        with timer.phase("backward"):
            time.sleep(0.02)
    timer.switch("data")
    time.sleep(0.01)
    totals = timer.totals()
    wall = time.perf_counter() - start
    assert set(totals) == set(PHASES)
    assert totals["selection"] == pytest.approx(0.03, abs=0.01)
    assert totals["backward"] == pytest.approx(0.02, abs=0.01)
    assert sum(totals.values()) == pytest.approx(wall, rel=0.02)
    with pytest.raises(KeyError):
        timer.switch("nap")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_phase_timer_cuda_events():
    timer = PhaseTimer("cuda")
    timer.start()
    with timer.phase("train_forward"):
        torch.randn(2048, 2048, device="cuda") @ torch.randn(2048, 2048, device="cuda")
    assert timer.totals()["train_forward"] > 0
