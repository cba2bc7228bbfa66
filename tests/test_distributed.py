"""Distributed training (DDP on gloo, CPU, 2 processes): one selection rule across ranks, lockstep
steps, exact resume, the torchrun launch. Each multi-process job has a deadline: a hang fails.

Workers are forked from a forkserver that has imported torch, sb_accel and the modules a Trainer
pulls in on first use (torch._dynamo through the optimizer, scipy.stats through engine validation)
once, so a job starts in a fraction of a second instead of re-importing them in every process.
"""
import json
import multiprocessing
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sb_accel.config import ConfigError, TrainConfig
from sb_accel.data import synthetic_dataset
from sb_accel.data.sampler import DistributedEpochSampler
from sb_accel.reporting import load_run
from sb_accel.selection import LossHistory, StaleSB
from sb_accel.train import Trainer
from sb_accel.train.scoring import ScoredBatch, ScoredCandidates
from sb_accel.train.tables import SHARED, ExampleTables, fill_shared

WORLD = 2
DEADLINE = 60.0  # seconds per multi-process job
multiprocessing.set_forkserver_preload(["torch", "torch.distributed", "torch._dynamo", "scipy.stats", "sb_accel.train"])


# --- running a job on WORLD gloo ranks -----------------------------------------------------------
def _entry(rank, job, init_file, out_dir, args):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=DEADLINE))
    try:
        torch.save(job(rank, *args), Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_ranks(tmp_path, job, *args, expect_failure=False):
    """``job(rank, *args)`` on every rank; the ranks' return values, in rank order."""
    out = tmp_path / f"job-{job.__name__}-{time.monotonic_ns()}"
    out.mkdir()
    context = mp.start_processes(_entry, args=(job, str(out / "init"), str(out), args), nprocs=WORLD, join=False,
                                 start_method="forkserver")
    deadline = time.monotonic() + DEADLINE
    try:
        while not context.join(timeout=0.1):
            if time.monotonic() > deadline:
                pytest.fail(f"{job.__name__} did not finish within {DEADLINE:.0f} s: a rank hangs")
    except mp.ProcessExitedException:
        if not expect_failure:
            raise
        return None
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
    assert not expect_failure, f"{job.__name__} was expected to die"
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _config(run_dir, **changes):
    base = dict(dataset="synthetic", model="small_cnn", width=4, epochs=2, batch_size=32, lr=0.05,
                lr_schedule="constant", run_dir=str(run_dir), log_every_steps=4, progress=False, threads=1)
    return TrainConfig(**{**base, **changes})


def _data():
    return synthetic_dataset(train=512, test=128)


def _report(trainer, summary):
    """What a rank sends back: the global summary and its own view."""
    history = getattr(trainer.driver.policy, "history", None)
    return {"summary": summary, "step": trainer.step, "backprops": trainer.backprops, "kept": trainer.driver.kept,
            "weights": {k: v.clone() for k, v in trainer.model.state_dict().items()},
            "history": None if history is None else history.values()}


def _without_time(event):
    return {k: v for k, v in event.items() if k != "time"}


# --- jobs (module level: the forkserver's children import them by name) ---------------------------
def _train_each(rank, run_dir, configs):
    results = []
    for i, changes in enumerate(configs):
        trainer = Trainer(_config(Path(run_dir) / str(i), **changes), data=_data(), overwrite=True)
        results.append(_report(trainer, trainer.fit()))
    return results


def _train_on_given_losses(rank, run_dir, runs):
    """SB runs whose selection losses are uniform on ``[shift * rank, shift * rank + 1)`` (stationary,
    so the kept share is exactly what the CDF rule gives); ``runs``: (name, shift, config changes)."""
    results = []
    for name, shift, changes in runs:
        trainer = Trainer(_config(Path(run_dir) / name, strategy="sb", prime_epochs=0, **changes), data=_data(),
                          overwrite=True)

        def given_losses(x, y, idx):
            g = torch.Generator().manual_seed(int(idx[0]))
            losses = (shift * rank + torch.rand(len(idx), generator=g)).float()
            return ScoredBatch(len(idx), [ScoredCandidates(x, y, idx, losses, len(idx))])

        trainer.driver.score = given_losses
        summary = trainer.fit()
        results.append({**_report(trainer, summary), "pending": trainer.driver.pending(),
                        "dropped": trainer.driver.dropped, "candidates": trainer.driver.candidates})
    return results


class _KilledMidEpoch(Trainer):
    """Rank 1 dies in the middle of epoch 2 (after epoch 1's checkpoint), as under ``kill -9``."""

    def _train_step(self, batch):
        super()._train_step(batch)
        if self.epoch == 2 and self.rank == 1 and self.progress > 2.5:
            os._exit(9)


def _train_killable(rank, run_dir, kill, resume):
    cls = _KilledMidEpoch if kill else Trainer
    cfg = _config(run_dir, strategy="stale-sb", stale_n=2, epochs=3, selectivity=0.5)
    trainer = cls(cfg, data=_data(), resume=resume, overwrite=not resume)
    return _report(trainer, trainer.fit())


def _refuse_indivisible_batch(rank, run_dir):
    with pytest.raises(ConfigError, match="divide evenly"):
        Trainer(_config(run_dir, batch_size=33), data=_data())
    return True


# --- pure parts: no processes --------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["batch", "sequential"])
def test_gathered_history_scores_like_one_history_of_everyones_losses(mode):
    g = torch.Generator().manual_seed(0)
    batches = [(torch.rand(48, generator=g), torch.rand(48, generator=g) + 0.3) for _ in range(30)]
    reference = LossHistory(100, mode)
    ranks = [LossHistory(100, mode), LossHistory(100, mode)]
    for a, b in batches:
        everyone = torch.cat([a, b]).double()
        for r, history in enumerate(ranks):
            history.gather = lambda own, r=r: (everyone, r * 48)
        expected = reference.update_and_cdf(everyone)
        assert torch.equal(ranks[0].update_and_cdf(a), expected[:48])
        assert torch.equal(ranks[1].update_and_cdf(b), expected[48:])
    assert torch.equal(ranks[0].values(), reference.values()) and torch.equal(ranks[1].values(), reference.values())


def test_checkpoint_keeps_one_copy_of_tables_that_hold_nan():
    """Stale-SB's loss cache is NaN for examples not seen yet: such a table still equals rank 0's
    and is stored once (NaN compares equal to NaN here)."""
    policy = StaleSB(8)
    policy.observe(torch.arange(4), torch.rand(4), 0)  # rows 4..7 stay NaN
    stripped = ExampleTables(policy, 8, group=None).strip(policy.state_dict())
    assert stripped["cached_loss"] == SHARED and stripped["loss_epoch"] == SHARED
    restored = fill_shared(stripped, policy.state_dict())
    assert torch.equal(restored["loss_epoch"], policy.loss_epoch)
    assert torch.equal(restored["cached_loss"].nan_to_num(-1), policy.cached_loss.nan_to_num(-1))


def test_sampler_gives_disjoint_equal_shards_of_one_permutation_reshuffled_every_epoch():
    samplers = [DistributedEpochSampler(103, 4, r, seed=7) for r in range(4)]
    first = [s.epoch() for s in samplers]
    second = [s.epoch() for s in samplers]
    for shards in (first, second):
        everything = torch.cat(shards)
        assert all(len(s) == 25 for s in shards) and len(set(everything.tolist())) == 100  # 3 dropped
    assert not torch.equal(first[0], second[0])
    permutation = torch.randperm(103, generator=torch.Generator().manual_seed(7))  # the same on every rank
    assert torch.equal(torch.stack(first, 1).reshape(-1), permutation[:100])


# --- DDP on 2 gloo processes ---------------------------------------------------------------------
def test_selectivity_one_under_ddp_equals_ddp_traditional_step_for_step(tmp_path):
    ranks = run_ranks(tmp_path, _train_each, str(tmp_path),
                      [dict(strategy="traditional"), dict(strategy="sb", selectivity=1.0, prime_epochs=0)])
    for traditional, sb in ranks:
        assert sb["summary"]["forwards"] == sb["summary"]["candidates"] > 0  # SB really selected
        assert sb["step"] == traditional["step"] == 2 * 512 // 32
        for name, value in traditional["weights"].items():
            assert torch.equal(sb["weights"][name], value), name
    for name, value in ranks[0][0]["weights"].items():  # DDP: one model on every rank
        assert torch.equal(ranks[1][0]["weights"][name], value), name
    losses = [[e["train_loss"] for e in load_run(tmp_path / str(i)).of("interval")] for i in (0, 1)]
    assert losses[0] == losses[1] and len(losses[0]) == 8


def test_sb_under_ddp_keeps_the_requested_share_globally_in_lockstep(tmp_path):
    """Rank 1's losses are shifted up by half their range. With the global history the kept share
    holds over all candidates and rank 1 keeps more (one rule: the biggest losers of all ranks);
    with each rank's own history each rank keeps the share of its own candidates."""
    runs = [(history, 0.5, dict(selectivity=0.33, epochs=3, ddp_history=history)) for history in ("global", "local")]
    ranks = run_ranks(tmp_path, _train_on_given_losses, str(tmp_path), runs)
    for (history, _, _), zero, one in zip(runs, *ranks):
        summary = zero["summary"]
        assert _without_time(summary) == _without_time(one["summary"]) and summary["world_size"] == 2
        assert zero["step"] == one["step"] == summary["step"] > 0
        kept = zero["kept"] + one["kept"]
        assert summary["backprops"] + summary["untrained_remainder"] == kept
        assert abs(kept / summary["candidates"] - 0.33) < 0.04, (history, kept / summary["candidates"])
        shares = [r["kept"] / r["candidates"] for r in (zero, one)]
        if history == "global":
            assert torch.equal(zero["history"], one["history"]) and shares[1] > shares[0] + 0.1, shares
        else:
            assert not torch.equal(zero["history"], one["history"])
            assert all(abs(share - 0.33) < 0.06 for share in shares), shares
    run = load_run(tmp_path / "global")
    assert run.config["batch_size"] == 32 and run.of("config")[0]["batch_size_per_rank"] == 16
    assert {e["rank"] for e in run.of("engine_build")} == {0, 1}
    assert run.summary["phases_max"]["backward"] >= run.summary["phases"]["backward"] > 0
    assert run.summary["comm"]["calls"]["loss_gather"] == 3 * 256 // 16
    assert load_run(tmp_path / "local").summary["comm"]["calls"]["loss_gather"] == 0


def test_uneven_selection_never_deadlocks_at_epoch_end(tmp_path):
    """Rank 0's candidates all easy (losses in [0, 1)), rank 1's all hard ([10, 11))."""
    rules = ["carry", "partial", "drop"]
    runs = [(rule, 10.0, dict(selectivity=0.2, epochs=2, end_of_epoch=rule)) for rule in rules]
    ranks = run_ranks(tmp_path, _train_on_given_losses, str(tmp_path), runs)
    for rule, zero, one in zip(rules, *ranks):
        assert one["kept"] > 5 * max(zero["kept"], 1)  # rank 1's shard is all hard, rank 0's all easy
        assert zero["step"] == one["step"], rule
        summary = zero["summary"]
        kept = zero["kept"] + one["kept"]
        if rule == "carry":  # the hard rank's surplus waits in its queue
            assert summary["backprops"] + summary["untrained_remainder"] == kept
        elif rule == "partial":  # ... or is trained at the epoch's end, the easy rank joining with what it has
            assert summary["backprops"] == kept and zero["pending"] == one["pending"] == 0
            assert zero["step"] >= -(-one["kept"] // 16)
        else:  # ... or is dropped
            assert summary["backprops"] + zero["dropped"] + one["dropped"] == kept


def test_killed_mid_epoch_then_resumed_equals_uninterrupted(tmp_path):
    full = run_ranks(tmp_path, _train_killable, str(tmp_path / "full"), False, False)
    run_ranks(tmp_path, _train_killable, str(tmp_path / "cut"), True, False, expect_failure=True)
    assert load_run(tmp_path / "cut").summary is None and (tmp_path / "cut" / "checkpoint.pt").is_file()
    resumed = run_ranks(tmp_path, _train_killable, str(tmp_path / "cut"), False, True)
    for a, b in zip(full, resumed):
        for key in ("step", "backprops", "kept"):
            assert a[key] == b[key], key
        for key in ("step", "backprops", "forwards", "candidates", "test_acc", "untrained_remainder"):
            assert a["summary"][key] == b["summary"][key], key
        for name, value in a["weights"].items():
            assert torch.equal(b["weights"][name], value), name
    kinds = [e["event"] for e in load_run(tmp_path / "cut").events]
    assert kinds.count("resume") == 1 and kinds.count("summary") == 1 and kinds.count("epoch") == 3


def test_global_batch_must_divide_over_the_ranks(tmp_path):
    assert run_ranks(tmp_path, _refuse_indivisible_batch, str(tmp_path)) == [True, True]


def test_torchrun_launch_writes_a_run_that_reports_like_any_other(tmp_path):
    data = _data()
    npz = tmp_path / "tiny.npz"
    np.savez(npz, x_train=data.x_train.permute(0, 2, 3, 1).numpy(), y_train=data.y_train.numpy(),
             x_test=data.x_test.permute(0, 2, 3, 1).numpy(), y_test=data.y_test.numpy())
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(WORLD),
               "-m", "sb_accel", "train", "--dataset", str(npz), "--model", "small_cnn", "--width", "4",
               "--epochs", "2", "--batch-size", "32", "--strategy", "sb", "--prime-epochs", "0",
               "--run-dir", str(run_dir), "--threads", "1", "--no-progress"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=DEADLINE,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    run = load_run(run_dir)
    assert run.summary["world_size"] == WORLD and run.summary["candidates"] == 2 * 512
    assert json.loads((run_dir / "config.json").read_text())["batch_size"] == 32
    from sb_accel.cli import main
    assert main(["report", str(run_dir), "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "report.md").is_file()
