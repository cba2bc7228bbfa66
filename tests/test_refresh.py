"""EngineRefresher: schedule, events, validation with raise/fallback, background refresh safety."""
import importlib.util
import math
import threading
import time

import pytest
import torch
import torch.nn as nn

from sb_accel.engines import (EngineContext, EngineRefresher, RefreshError, RefreshSchedule, SelectionEngine,
                              TorchEngine, Validation, check_engine)
from sb_accel.engines.refresher import COST_PROBE
from sb_accel.engines.validation import DEFAULT_TOLERANCES, Tolerance, rank_agreement, relative_error
from sb_accel.models import create_model


class _TwoPhase(SelectionEngine):
    """Serves losses equal to the weight it took; its refresh writes two fields with a pause in
    between, so a ``losses`` call on a half-refreshed engine is detected."""

    backend, precision = "fake", "fp32"

    def __init__(self, model: nn.Module, delay: float = 0.0) -> None:
        self.delay = delay
        self.refresh_kind = "cheap"
        self.a = self.b = float(model.weight.detach())

    def refresh(self, model: nn.Module, rebuild: bool = False) -> None:
        value = float(model.weight.detach())
        self.a = value
        time.sleep(self.delay)
        self.b = value

    def losses(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        a, b = self.a, self.b
        if a != b:
            raise AssertionError(f"half-refreshed engine served ({a} vs {b})")
        return torch.full((len(y),), a)


class _CorruptedByRefresh(TorchEngine):
    """A torch snapshot engine whose refresh breaks its output: a stand-in for a bad refit."""

    broken = False
    refresh_kind = "cheap"  # a conversion that can go wrong, unlike the exact copy it inherits

    def refresh(self, model: nn.Module, rebuild: bool = False) -> None:
        super().refresh(model)
        self.broken = True

    def losses(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = super().losses(x, y)
        return out + 5.0 if self.broken else out


def _scalar_model(value: float) -> nn.Module:
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(value)
    return model


def _set(model: nn.Module, value: float) -> None:
    with torch.no_grad():
        model.weight.fill_(value)


@pytest.fixture(scope="module")
def cnn_context(tmp_path_factory):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(96, 3, 32, 32, generator=g), torch.randint(0, 10, (96,), generator=g)
    return EngineContext(sample_batches=[(x[:48], y[:48]), (x[48:], y[48:])], threads=2,
                         cache_dir=str(tmp_path_factory.mktemp("engines")), max_batch=96)


@pytest.fixture()
def cnn():
    torch.manual_seed(0)
    return create_model("small_cnn", width=2)


def _nudge(model: nn.Module) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1 + 0.05 * torch.randn_like(p))


# --- schedule ------------------------------------------------------------------------------------
def test_schedule_arithmetic():
    every3 = RefreshSchedule(every_steps=3, every_epoch=False)
    assert [s for s in range(10) if every3.due_after_step(s)] == [3, 6, 9]
    assert not every3.due_after_epoch()
    never = RefreshSchedule()
    assert not any(never.due_after_step(s) for s in range(10)) and never.due_after_epoch()
    with pytest.raises(ValueError):
        RefreshSchedule(every_steps=-1)


def test_default_schedule_per_engine_and_device():
    from sb_accel.engines import CADENCES, default_schedule

    assert default_schedule("onnxruntime", "cpu") == RefreshSchedule(1, True, CADENCES[("onnxruntime", "cpu")].validate_every)
    assert default_schedule("onnxruntime", "cpu").validate_every == 25  # the measured CPU default
    assert default_schedule("tensorrt", "cuda") == RefreshSchedule(1, True, 10)
    assert default_schedule("torch", "mps") == default_schedule("torch", "cuda")  # other accelerators: the GPU row
    assert default_schedule("onnxruntime", "cpu", 3, False, 2) == RefreshSchedule(3, False, 2)  # given values win
    assert default_schedule("my-backend", "cpu", every_steps=0).every_steps == 0


def test_sync_refresh_events_count_cheap_and_rebuild():
    model = _scalar_model(1.0)
    refresher = EngineRefresher(_TwoPhase(model), RefreshSchedule(every_steps=2))
    assert refresher.after_step(model, 1) == []
    _set(model, 2.0)
    (event,) = refresher.after_step(model, 2)
    assert event["event"] == "refresh" and event["reason"] == "steps" and event["mode"] == "sync"
    assert (event["kind"], event["count"], event["cheap_count"], event["rebuild_count"]) == ("cheap", 1, 1, 0)
    assert event["staleness"] == 0 and refresher.staleness(5) == 3
    assert float(refresher.engine.losses(torch.zeros(1), torch.zeros(1))[0]) == 2.0
    (epoch_event,) = refresher.after_epoch(model, 3)
    assert epoch_event["reason"] == "epoch" and epoch_event["count"] == 2
    assert "detail" not in event and "detail" not in epoch_event


def test_epoch_end_refresh_is_skipped_when_the_last_step_refresh_took_the_same_weights():
    model = _scalar_model(1.0)
    refresher = EngineRefresher(_TwoPhase(model), RefreshSchedule(every_steps=1))
    _set(model, 2.0)
    (step_event,) = refresher.after_step(model, 4)
    assert refresher.after_epoch(model, 4) == []  # the engine already serves step 4's weights
    assert refresher.count == 1 and refresher.engine.snapshot_step == 4
    _set(model, 3.0)  # the epoch ended between two step refreshes: it refreshes
    assert refresher.after_step(model, 5) != [] and refresher.after_epoch(model, 6)[0]["reason"] == "epoch"
    assert float(refresher.engine.losses(torch.zeros(1), torch.zeros(1))[0]) == 3.0


def test_refresh_kinds_of_old_logs_read_in_todays_names():
    from sb_accel.reporting import REFRESH_KINDS, refresh_kind

    assert refresh_kind({"event": "refresh", "kind": "full"}) == "rebuild"  # logs before the rename
    assert [refresh_kind({"kind": k}) for k in REFRESH_KINDS] == list(REFRESH_KINDS) == list(EngineRefresher(
        _TwoPhase(_scalar_model(1.0))).kind_counts)
    assert refresh_kind({"event": "refresh"}) is None


def test_refresh_detail_goes_into_the_event():
    """An engine explains an unusual refresh (e.g. a refused TensorRT refit) through refresh_detail."""
    model = _scalar_model(1.0)
    engine = _TwoPhase(model)
    refresher = EngineRefresher(engine, RefreshSchedule(every_steps=1))
    engine.refresh_detail = "TensorRT refused the refit (missing weights: ['fc.weight']); rebuilt instead"
    (event,) = refresher.after_step(model, 1)
    assert event["detail"] == engine.refresh_detail


def test_live_engine_is_never_refreshed(cnn):
    refresher = EngineRefresher(TorchEngine(cnn), RefreshSchedule(every_steps=1))
    assert refresher.after_step(cnn, 1) == [] and refresher.after_epoch(cnn, 1) == []
    assert refresher.staleness(10) == 0


# --- validation ----------------------------------------------------------------------------------
def test_refresher_create_validates_and_logs_metrics(cnn, cnn_context):
    refresher = EngineRefresher.create("onnxruntime-int8", cnn, cnn_context, RefreshSchedule(every_steps=1))
    (build,) = refresher.after_step(cnn, 0)
    assert build["event"] == "engine_build" and build["engine"] == "onnxruntime-int8"
    x, y = cnn_context.sample_batches[0][0][:32], cnn_context.sample_batches[0][1][:32]  # the validation rows
    error = (refresher.engine.losses(x, y) - TorchEngine(cnn).losses(x, y)).abs().max()
    assert build["max_abs_error"] == pytest.approx(float(error)) and build["max_abs_error"] < 0.5
    assert build["rank_correlation"] > 0.95 and build["rank_agreement"] > 0.8  # INT8 ranks like FP32
    assert build["relative_error"] < 0.05
    _nudge(cnn)
    (event,) = refresher.after_step(cnn, 1)
    assert event["kind"] == "cheap" and event["relative_error"] < 0.05 and event["cheap_count"] == 1
    refresher.close()


def test_failed_validation_raises_with_event(cnn, cnn_context):
    engine = _CorruptedByRefresh(cnn, "fp32", EngineContext(options={"snapshot": True}))
    refresher = EngineRefresher(engine, RefreshSchedule(every_steps=1), validation=Validation.from_context(cnn_context))
    with pytest.raises(RefreshError, match="failed validation") as info:
        refresher.after_step(cnn, 1)
    assert info.value.event["event"] == "refresh_failed" and info.value.event["fallback"] is None


class _StaleScalesOnCheapRefresh(TorchEngine):
    """Cheap refreshes break the output (stale calibration); a rebuild is right."""

    refresh_kind = "rebuild"

    def refresh(self, model: nn.Module, rebuild: bool = False) -> None:
        super().refresh(model)
        self.refresh_kind = "rebuild" if rebuild else "cheap"

    def losses(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = super().losses(x, y)
        return out + 5.0 if self.refresh_kind == "cheap" else out


def test_cheap_refresh_failing_validation_is_retried_as_a_rebuild(cnn, cnn_context):
    engine = _StaleScalesOnCheapRefresh(cnn, "fp32", EngineContext(options={"snapshot": True}))
    refresher = EngineRefresher(engine, RefreshSchedule(every_steps=1), validation=Validation.from_context(cnn_context))
    (event,) = refresher.after_step(cnn, 1)
    assert event["event"] == "refresh" and event["kind"] == "rebuild" and event["retried_rebuild"]
    assert event["max_abs_error"] == 0.0


def test_schedule_validates_every_nth_cheap_step_refresh_and_all_others():
    schedule = RefreshSchedule(every_steps=1, validate_every=3)
    assert [schedule.validates(n, "cheap", "steps") for n in range(1, 7)] == [False, False, True, False, False, True]
    assert schedule.validates(1, "rebuild", "steps") and schedule.validates(2, "cheap", "epoch")
    with pytest.raises(ValueError, match="validate_every"):
        RefreshSchedule(validate_every=0)


def test_unvalidated_cheap_refreshes_are_caught_at_the_next_check(cnn, cnn_context):
    engine = _CorruptedByRefresh(cnn, "fp32", EngineContext(options={"snapshot": True}))
    engine.refresh_kind = "cheap"
    refresher = EngineRefresher(engine, RefreshSchedule(every_steps=1, validate_every=3),
                                validation=Validation.from_context(cnn_context))
    first, second = refresher.after_step(cnn, 1)[0], refresher.after_step(cnn, 2)[0]
    assert not first["validated"] and not second["validated"] and "max_abs_error" not in first
    with pytest.raises(RefreshError, match="failed validation"):
        refresher.after_step(cnn, 3)


def test_failed_validation_falls_back_to_torch(cnn, cnn_context):
    engine = _CorruptedByRefresh(cnn, "fp32", EngineContext(options={"snapshot": True}))
    refresher = EngineRefresher(engine, RefreshSchedule(every_steps=1), validation=Validation.from_context(cnn_context),
                                fallback="torch")
    (event,) = refresher.after_step(cnn, 7)
    assert event["event"] == "refresh_failed" and event["fallback"] == "torch-fp32" and "relative loss error" in event["error"]
    assert type(refresher.engine) is TorchEngine and not refresher.engine.is_live
    assert refresher.engine.snapshot_step == 7
    x, y = cnn_context.sample_batches[0]
    assert torch.allclose(refresher.engine.losses(x, y), TorchEngine(cnn).losses(x, y))
    (later,) = refresher.after_step(cnn, 8)  # the fallback keeps being refreshed and validated
    assert later["event"] == "refresh" and later["kind"] == "exact" and not later["validated"]


def test_validation_rank_threshold(cnn, cnn_context):
    engine = TorchEngine(cnn, "bf16")
    validation = Validation.from_context(cnn_context, rows=16, tolerance=Tolerance(1.01, 1.0))
    check = check_engine(engine, cnn, validation)
    assert not check["ok"] and "rank agreement" in check["problem"]


def _tensorrt_usable() -> bool:
    return importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()


@pytest.mark.skipif(_tensorrt_usable(), reason="TensorRT is usable here, so its build does not fail")
def test_failed_build_raises_or_falls_back(cnn, cnn_context):
    with pytest.raises(RefreshError, match="sb-accel\\[tensorrt\\]"):
        EngineRefresher.create("tensorrt-fp16", cnn, cnn_context)
    refresher = EngineRefresher.create("tensorrt-fp16", cnn, cnn_context, fallback="torch")
    (event,) = refresher.after_step(cnn, 1)
    assert event["reason"] == "build" and event["fallback"] == "torch-fp32"
    assert refresher.engine.name == "torch-fp32"


# --- background ----------------------------------------------------------------------------------
def test_background_refresh_never_serves_a_half_refreshed_engine():
    model = _scalar_model(1.0)
    refresher = EngineRefresher(_TwoPhase(model, delay=0.3), RefreshSchedule(every_steps=2),
                                standby=_TwoPhase(model, delay=0.3))
    x = y = torch.zeros(4)
    _set(model, 2.0)
    assert refresher.after_step(model, 2) == [] and refresher.busy
    _set(model, 3.0)  # training goes on; the job works from the step-2 snapshot
    served = []
    while refresher.busy:
        served.append(float(refresher.engine.losses(x, y)[0]))  # raises if half-refreshed
    assert served and set(served) == {1.0}
    assert refresher.after_step(model, 3)[0]["staleness"] == 1
    assert float(refresher.engine.losses(x, y)[0]) == 2.0
    assert refresher.engine.snapshot_step == 2 and refresher.staleness(10) == 8


def test_background_refresh_due_while_busy_is_deferred():
    model = _scalar_model(1.0)
    refresher = EngineRefresher(_TwoPhase(model, delay=0.2), RefreshSchedule(every_steps=1),
                                standby=_TwoPhase(model, delay=0.2))
    _set(model, 2.0)
    refresher.after_step(model, 1)
    _set(model, 3.0)
    assert refresher.after_step(model, 2) == []  # due, but the step-1 refresh is still running
    assert refresher.wait(5)
    _set(model, 4.0)
    (swapped,) = refresher.after_step(model, 3)  # swap step 1, start the deferred one from step 3
    assert swapped["snapshot_step"] == 1 and swapped["mode"] == "background" and refresher.busy
    refresher.wait(5)
    events = refresher.after_step(model, 3)
    assert [e["snapshot_step"] for e in events] == [3] and events[0]["count"] == 2
    assert float(refresher.engine.losses(torch.zeros(1), torch.zeros(1))[0]) == 4.0
    refresher.close()


def test_background_failure_surfaces_in_the_training_thread(cnn, cnn_context):
    snapshot = EngineContext(options={"snapshot": True})
    refresher = EngineRefresher(TorchEngine(cnn, "fp32", snapshot), RefreshSchedule(every_steps=1),
                                validation=Validation.from_context(cnn_context),
                                standby=_CorruptedByRefresh(cnn, "fp32", snapshot))
    assert refresher.after_step(cnn, 1) == []
    refresher.wait(30)
    with pytest.raises(RefreshError, match="failed validation"):
        refresher.after_step(cnn, 2)


def test_background_onnxruntime_swap_is_consistent(cnn, cnn_context):
    refresher = EngineRefresher.create("onnxruntime-fp32", cnn, cnn_context, RefreshSchedule(every_steps=1),
                                       background=True)
    x, y = cnn_context.sample_batches[1]
    assert refresher.after_step(cnn, 0)[0]["background"]
    before = refresher.engine.losses(x, y)
    _nudge(cnn)
    expected = TorchEngine(cnn).losses(x, y)
    refresher.after_step(cnn, 1)
    answers = []
    reader = threading.Thread(target=lambda: answers.extend(refresher.engine.losses(x, y) for _ in range(3)))
    reader.start()
    while refresher.busy:
        answers.append(refresher.engine.losses(x, y))
    reader.join()
    assert answers and all(torch.equal(a, before) for a in answers)
    refresher.wait(30)
    (event,) = refresher.after_step(cnn, 2)
    assert event["mode"] == "background" and event["staleness"] == 1 and event["max_abs_error"] < 1e-3
    assert (refresher.engine.losses(x, y) - expected).abs().max() < 1e-4
    refresher.close()


# --- exact copies, priming, cost -----------------------------------------------------------------
def test_exact_snapshot_refreshes_are_never_validated(cnn, cnn_context):
    """A torch snapshot refresh copies the weights as they are: no eager check per step (--pipeline)."""
    engine = TorchEngine(cnn, "fp32", EngineContext(options={"snapshot": True}))
    refresher = EngineRefresher(engine, RefreshSchedule(every_steps=1), validation=Validation.from_context(cnn_context))
    events = refresher.after_step(cnn, 1) + refresher.after_epoch(cnn, 2)
    assert [(e["kind"], e["validated"]) for e in events] == [("exact", False)] * 2
    assert events[-1]["exact_count"] == 2 and events[-1]["cheap_count"] == events[-1]["rebuild_count"] == 0


def test_no_refresh_while_no_selection_runs_and_one_before_it_resumes():
    model = _scalar_model(1.0)
    refresher = EngineRefresher(_TwoPhase(model), RefreshSchedule(every_steps=1))
    assert all(refresher.after_step(model, s, selecting=False) == [] for s in range(1, 5))
    assert refresher.after_epoch(model, 4, selecting=False) == []  # the next epoch primes too
    _set(model, 2.0)
    (resume,) = refresher.after_epoch(model, 4, selecting=True)
    assert resume["reason"] == "resume" and resume["count"] == 1 and resume["validated"] is False
    assert float(refresher.engine.losses(torch.zeros(1), torch.zeros(1))[0]) == 2.0
    assert refresher.after_step(model, 5)[0]["reason"] == "steps"
    # without epoch refreshes the make-up refresh comes with the first selecting step
    refresher = EngineRefresher(_TwoPhase(model), RefreshSchedule(every_steps=3, every_epoch=False))
    assert refresher.after_step(model, 3, selecting=False) == [] == refresher.after_epoch(model, 3, selecting=False)
    assert refresher.after_step(model, 4)[0]["reason"] == "resume"
    assert refresher.after_step(model, 5) == [] and refresher.after_step(model, 6)[0]["reason"] == "steps"


class _Calibrated(_TwoPhase):
    """Records whether each refresh was asked to rebuild."""

    calibrated = True

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.rebuilds: list = []

    def refresh(self, model: nn.Module, rebuild: bool = False) -> None:
        super().refresh(model)
        self.rebuilds.append(rebuild)
        self.refresh_kind = "rebuild" if rebuild else "cheap"


def test_selection_resuming_recalibrates_a_calibrated_engine():
    """After a pause (priming), an INT8/FP8 engine's activation scales are those of the weights
    before it: the resume refresh rebuilds, the step refreshes after it stay cheap."""
    model = _scalar_model(1.0)
    engine = _Calibrated(model)
    refresher = EngineRefresher(engine, RefreshSchedule(every_steps=1))
    assert refresher.after_step(model, 1, selecting=False) == []
    (resume,) = refresher.after_epoch(model, 1, selecting=True)
    (step,) = refresher.after_step(model, 2)
    assert engine.rebuilds == [True, False]
    assert (resume["reason"], resume["kind"]) == ("resume", "rebuild") and step["kind"] == "cheap"
    plain = _TwoPhase(model)  # not calibrated (FP32/FP16, torch): the resume refresh is a plain one
    refresher = EngineRefresher(plain, RefreshSchedule(every_steps=1))
    refresher.after_step(model, 1, selecting=False)
    assert refresher.after_epoch(model, 1, selecting=True)[0]["kind"] == "cheap"


def test_driver_skips_refreshes_during_priming(cnn):
    from sb_accel.selection import Primed, SelectiveBackpropPolicy
    from sb_accel.train import SelectionDriver

    refresher = EngineRefresher(TorchEngine(cnn, "fp32", EngineContext(options={"snapshot": True})),
                                RefreshSchedule(every_steps=1))
    driver = SelectionDriver(Primed(SelectiveBackpropPolicy(), epochs=1), 8, refresher)
    driver.start_epoch(0)
    assert driver.after_step(cnn, 1) == [] and not driver.selects(0) and driver.selects(1)
    (resume,) = driver.after_epoch(cnn, 1)
    assert resume["reason"] == "resume"
    driver.start_epoch(1)
    assert driver.after_step(cnn, 2)[0]["reason"] == "steps"


def test_step_refresh_costlier_than_training_is_refused():
    model = _scalar_model(1.0)
    refresher = EngineRefresher(_TwoPhase(model, delay=0.02), RefreshSchedule(every_steps=1))
    with pytest.raises(RefreshError, match="refresh every [0-9]+ steps") as info:
        for step in range(1, 20):
            refresher.after_step(model, step)
            time.sleep(0.002)  # the training step
    assert step == 1 + COST_PROBE and info.value.event["event"] == "refresh_refused"
    cheap = EngineRefresher(_TwoPhase(model, delay=0.002), RefreshSchedule(every_steps=1))
    for step in range(1, 20):
        cheap.after_step(model, step)
        time.sleep(0.02)
    assert cheap.count == 19


# --- validation judges what selection needs --------------------------------------------------------
class _Rescaled(TorchEngine):
    """Losses off by ~1% of themselves, in the same order: fine for selection at any loss scale."""

    def losses(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = super().losses(x, y)
        return out * (1 + 0.01 * torch.linspace(-1, 1, len(out))[out.argsort().argsort()])


def _huge_losses(model: nn.Module) -> nn.Module:
    """Logits scaled up 1e4x: eval-mode losses of 1e3-1e5 (as a ResNet-18 shows in its first steps)."""
    with torch.no_grad():
        model.fc.weight.mul_(1e4)
    return model


def test_validation_accepts_huge_losses_in_the_right_order(cnn, cnn_context):
    model = _huge_losses(cnn)
    validation = Validation.from_context(cnn_context, tolerance=DEFAULT_TOLERANCES["int8"])
    check = check_engine(_Rescaled(model, "fp32"), model, validation)
    assert check["max_abs_error"] > 1 and check["ok"], check  # an absolute tolerance (INT8: 1) would refuse it
    refresher = EngineRefresher.create("onnxruntime-int8", model, cnn_context, RefreshSchedule(every_steps=1))
    build = refresher.after_step(model, 0)[0]
    assert build["event"] == "engine_build" and build["rank_agreement"] > 0.9 and build["relative_error"] < 0.05
    refresher.close()


def test_validation_refuses_an_engine_with_wrong_weights(cnn, cnn_context):
    """A real INT8 engine refreshed from wrong (permuted, zeroed) weights fails, against the right
    model, with losses of ordinary size and with huge ones."""
    for model in (cnn, _huge_losses(create_model("small_cnn", width=2))):
        refresher = EngineRefresher.create("onnxruntime-int8", model, cnn_context, RefreshSchedule(every_steps=1))
        for breakage in ("permuted", "zeroed"):
            wrong = create_model("small_cnn", width=2)
            wrong.load_state_dict(model.state_dict())
            with torch.no_grad():
                for p in wrong.parameters():
                    if breakage == "zeroed":
                        p.zero_()
                    else:
                        order = torch.randperm(p.numel(), generator=torch.Generator().manual_seed(0))
                        p.copy_(p.flatten()[order].view_as(p))
            refresher.engine.refresh(wrong, rebuild=True)
            check = check_engine(refresher.engine, model, refresher.validation)
            assert not check["ok"] and "rank agreement" in check["problem"], (breakage, check)
        refresher.close()


def test_rank_agreement_leaves_out_near_ties():
    reference = torch.tensor([2.300, 2.301, 2.302, 5.0])
    swapped_ties = torch.tensor([2.302, 2.300, 2.301, 5.1])  # near-ties reordered: no information lost
    assert rank_agreement(swapped_ties, reference) == 1.0
    assert rank_agreement(reference.flip(0), reference) == -1.0
    assert rank_agreement(torch.full((4,), 2.3), reference) == 0.0  # a constant engine orders nothing
    assert math.isnan(rank_agreement(swapped_ties, torch.full((4,), 2.3)))  # nothing to judge
    assert relative_error(reference * 1.1, reference) == pytest.approx(0.1)


@pytest.mark.slow
@pytest.mark.needs_dataset("cifar10")
def test_resnet18_int8_trains_through_epochs_without_refresh_error(tmp_path):
    """The run that raised RefreshError (max |loss difference| 8.8e5 > 1) at its first validated
    refresh: ResNet-18 from scratch, INT8 selection, eval-mode losses of 1e4-1e6 early on."""
    from sb_accel.config import TrainConfig
    from sb_accel.reporting import load_run
    from sb_accel.train import Trainer

    cfg = TrainConfig(dataset="cifar10", train_subset=768, test_subset=128, model="resnet18",
                      engine="onnxruntime-int8", epochs=3, batch_size=64, refresh_validate_every=2,
                      run_dir=str(tmp_path / "run"), progress=False, checkpoint=False)
    summary = Trainer(cfg).fit()
    assert summary["epochs"] == 3 and summary["forwards"] == 2 * 768
    events = [e for e in load_run(tmp_path / "run").events if e["event"] in ("refresh", "refresh_failed")]
    assert events and all(e["event"] == "refresh" for e in events)
    # epoch 0 primes (steps 1-12): no refresh in it, one at its end before selection starts
    assert events[0]["reason"] == "resume" and events[0]["step"] == 12 and all(e["step"] >= 12 for e in events)
    assert any(e["validated"] for e in events)


def test_driver_makes_no_refresh_after_the_last_epoch(cnn):
    from sb_accel.selection import SelectiveBackpropPolicy
    from sb_accel.train import SelectionDriver

    refresher = EngineRefresher(TorchEngine(cnn, "fp32", EngineContext(options={"snapshot": True})), RefreshSchedule())
    driver = SelectionDriver(SelectiveBackpropPolicy(), 8, refresher, num_epochs=2)
    driver.start_epoch(0)
    assert driver.after_epoch(cnn, 1)[0]["reason"] == "epoch"
    driver.start_epoch(1)
    assert driver.after_epoch(cnn, 2) == []  # nothing selects after the run's last epoch


def test_refresh_share_benchmark_arithmetic():
    """benchmarks/refresh_share.py: Amdahl's bound keeps Traditional's non-training time, scales its
    training by the kept share and adds SB's extra selection time."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "refresh_share", Path(__file__).resolve().parents[1] / "benchmarks" / "refresh_share.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    trad = {"wall": 100.0, "candidates": 1000, "backprops": 1000,
            "phases": {"train_forward": 30.0, "backward": 40.0, "optimizer": 10.0, "selection": 1.0, "data": 19.0}}
    sb = {"wall": 50.0, "candidates": 1000, "backprops": 250,
          "phases": {"train_forward": 7.5, "backward": 10.0, "optimizer": 2.5, "selection": 11.0, "refresh": 2.0}}
    got = module.compare(trad, sb)
    assert got["bound"] == pytest.approx(100 / (100 - 80 + 0.25 * 80 + 10))  # 2.0x
    assert got["speedup"] == 2.0 and got["efficiency"] == pytest.approx(1.0) and got["refresh_share"] == 0.04
    with pytest.raises(SystemExit):
        module.parse_args(["--epochs", "1", "--out", "x"])  # epoch 0 primes: nothing to compare
