"""Fixes on the CUDA path that are not sync counts, checked on the CPU: the loss history R in effect,
the run log's fsync cadence, CPU copies through object collectives, communication timing."""
import os
import time

import pytest
import torch

from sb_accel.config import ConfigError, TrainConfig
from sb_accel.data import synthetic_dataset
from sb_accel.reporting.runlog import RunLog, read_events
from sb_accel.train import Trainer
from sb_accel.train.candidates import loss_history_size
from sb_accel.train.distributed import RankGroup
from sb_accel.train.run_directory import on_host


def test_history_defaults_to_twice_the_selection_call_and_at_least_1024():
    assert loss_history_size(0, 128) == 1024
    assert loss_history_size(0, 1024) == 2048  # the CUDA selection batch: R no longer equals it
    assert loss_history_size(0, 4 * 1024) == 8192  # four ranks sharing one history
    assert loss_history_size(300, 256) == 300


def test_history_below_one_selection_call_is_refused_with_the_fix():
    with pytest.raises(ConfigError, match=r"history: R=512 .* one selection call \(1024 losses\).*--history 2048"):
        loss_history_size(512, 1024)


def test_trainer_tells_the_history_in_effect(tmp_path):
    cfg = TrainConfig(dataset="synthetic", model="small_cnn", width=4, epochs=1, batch_size=32, selection_batch_size=64,
                      run_dir=str(tmp_path), progress=False, threads=1, strategy="sb", checkpoint=False)
    trainer = Trainer(cfg, data=synthetic_dataset(train=128, test=32), overwrite=True)
    assert trainer.driver.policy.history.size == trainer.history == 1024
    config_event = next(e for e in read_events(tmp_path / "log.jsonl") if e["event"] == "config")
    assert config_event["loss_history"] == 1024
    with pytest.raises(ConfigError, match="history: R=32"):
        Trainer(cfg.replace(history=32), data=synthetic_dataset(train=128, test=32), overwrite=True)


def test_run_log_fsyncs_at_progress_events_not_per_event(tmp_path, monkeypatch):
    synced = []
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd))
    log = RunLog(tmp_path)
    log.write("config", config={})
    for step in range(50):
        log.write("refresh", step=step, kind="cheap")  # a snapshot engine: one per optimizer step
    assert len(synced) == 1
    log.write("interval", step=50)
    log.write("epoch", epoch=0)
    assert len(synced) == 3
    log.close()
    assert len(synced) == 4 and len(list(read_events(tmp_path / "log.jsonl"))) == 53  # everything flushed and readable


def test_object_collectives_get_cpu_copies():
    state = {"history": {"buffer": torch.arange(3.0), "count": 3}, "queue": [{"x": torch.ones(2)}], "tag": ("a", 1)}
    moved = on_host(state)
    assert moved["history"]["count"] == 3 and moved["tag"] == ("a", 1)
    assert all(t.device.type == "cpu" for t in (moved["history"]["buffer"], moved["queue"][0]["x"]))
    assert torch.equal(moved["history"]["buffer"], state["history"]["buffer"])


def test_collectives_on_the_host_are_timed_with_the_host_clock():
    group = RankGroup(1, 0, 0, torch.device("cpu"), torch.device("cpu"))
    with group.timed("ready"):
        time.sleep(0.01)
    start = group.mark()
    group.add_span("grad_allreduce", start, start + 0.5)
    assert group.seconds["ready"] >= 0.01 and group.seconds["grad_allreduce"] == 0.5
    assert group.calls == {"ready": 1, "grad_allreduce": 1}


@pytest.mark.gpu
def test_nccl_style_collectives_are_timed_with_device_events():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    device = torch.device("cuda")
    group = RankGroup(1, 0, 0, device, device)
    a = torch.randn(4096, 4096, device=device)
    with group.timed("loss_gather"):  # device work queued inside: the host returns at once
        for _ in range(10):
            a = a @ a / 4096
    assert group.seconds["loss_gather"] > 0.0005  # the device time, resolved on reading
