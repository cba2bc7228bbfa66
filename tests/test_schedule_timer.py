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
    with pytest.raises(ValueError, match="unknown lr schedule"):
        LRSchedule("step")


class FakeClock:
    """Seconds that pass only when the test says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_phase_timer_attributes_each_interval_to_the_phase_it_was_in():
    clock = FakeClock()
    timer = PhaseTimer("cpu", clock=clock)
    with pytest.raises(RuntimeError, match="start"):
        timer.switch("data")
    clock.now += 7.0  # before start(): counted nowhere
    timer.start()
    began = clock.now
    clock.now += 1.0  # other
    with timer.phase("selection"):
        clock.now += 3.0
        with timer.phase("backward"):
            clock.now += 2.0
        clock.now += 0.5  # back in selection
    assert timer.switch("data") == "other"
    clock.now += 4.0
    totals = timer.totals()
    assert totals == {**{p: 0.0 for p in PHASES}, "other": 1.0, "selection": 3.5, "backward": 2.0, "data": 4.0}
    assert sum(totals.values()) == clock.now - began
    clock.now += 0.25  # a report neither stops the clock nor counts an interval twice
    assert timer.totals()["data"] == 4.25 and timer.totals()["data"] == 4.25
    assert timer.state_dict() == timer.totals()
    timer.load_state_dict({"data": 10.0, "not a phase": 1.0})  # resume: add a checkpoint's totals
    assert timer.totals()["data"] == 14.25 and "not a phase" not in timer.totals()
    with pytest.raises(KeyError):
        timer.switch("nap")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_phase_timer_cuda_charges_gpu_work_to_the_phase_that_queued_it():
    """The CPU queues the matmuls and leaves the phase at once; the GPU time still lands in it."""
    a = torch.randn(4096, 4096, device="cuda")

    def work() -> None:
        for _ in range(20):
            a @ a

    work()
    torch.cuda.synchronize()
    start = time.perf_counter()
    work()
    torch.cuda.synchronize()
    gpu_seconds = time.perf_counter() - start
    timer = PhaseTimer("cuda")
    timer.start()
    with timer.phase("train_forward"):
        work()
    totals = timer.totals()
    assert totals["train_forward"] == pytest.approx(gpu_seconds, rel=0.3)
    assert totals["other"] < 0.1 * totals["train_forward"]


class FakeAsyncDevice:
    """A simulated GPU: the host queues work and runs on at once; the device runs it in order.

    An event recorded now is reached when everything queued before it is done. The host clock
    moves only by its own (launch) costs and when it waits for the device.
    """

    def __init__(self) -> None:
        self.host = 0.0        # the host's clock
        self.queue_end = 0.0   # when the device finishes what is queued

    def launch(self, device_seconds: float, host_seconds: float = 1e-5) -> None:
        self.host += host_seconds
        self.queue_end = max(self.queue_end, self.host) + device_seconds

    def record(self) -> float:
        return max(self.queue_end, self.host)

    def seconds_between(self, begin: float, end: float) -> float:
        return end - begin

    def synchronize(self, event: float) -> None:
        self.host = max(self.host, event)


def test_timer_attributes_device_time_while_the_host_runs_ahead():
    """The loop's pattern: the host queues a step's phases in microseconds and waits only for the
    one host read per candidate batch. Phases must get the device's time for their own work and
    sum to the device wall-clock; a host clock would charge everything to the phase that waits."""
    gpu = FakeAsyncDevice()
    timer = PhaseTimer("cpu", events=gpu, clock=lambda: gpu.host)
    host_timer = PhaseTimer("cpu", clock=lambda: gpu.host)  # what a host clock would say
    work = {"data": 0.002, "selection": 0.006, "train_forward": 0.010, "backward": 0.020, "optimizer": 0.003,
            "bookkeeping": 0.0005}
    timer.start()
    host_timer.start()
    start = gpu.record()
    for _ in range(10):  # candidate batches
        for phase in ("data", "selection"):
            timer.switch(phase)
            host_timer.switch(phase)
            gpu.launch(work[phase])
        gpu.synchronize(gpu.record())  # how many were kept: the host waits for the selection
        for _ in range(3):  # steps
            for phase in ("train_forward", "backward", "optimizer", "bookkeeping"):
                timer.switch(phase)
                host_timer.switch(phase)
                gpu.launch(work[phase])
    timer.switch("other")
    host_timer.switch("other")
    totals = timer.totals()
    wall = gpu.record() - start
    for phase in ("data", "selection"):
        assert totals[phase] == pytest.approx(10 * work[phase], rel=0.02), phase
    for phase in ("train_forward", "backward", "optimizer", "bookkeeping"):
        assert totals[phase] == pytest.approx(30 * work[phase], rel=0.02), phase
    assert sum(totals.values()) == pytest.approx(wall, rel=0.02)
    # The host clock sees the three steps' work (queued, not waited for) as the next selection's wait.
    host = host_timer.totals()
    assert host["backward"] < 0.1 * totals["backward"] and host["selection"] > 2 * totals["selection"]
